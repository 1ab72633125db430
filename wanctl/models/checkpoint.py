"""A local diffusers checkpoint (`Wan2.2-TI2V-5B-Diffusers`, `Wan2.2-T2V-A14B-Diffusers`,
`Wan2.2-I2V-A14B-Diffusers`), read from its subfolders, each network straight onto the device
it runs on: the DiTs staged on the meta device and streamed in once placed
(`wanctl.models.weights`), the text encoder and the VAE by their libraries' `from_pretrained`
with a `device_map` of that device (tensor by tensor from the files, as `low_cpu_mem_usage`
does, with no host copy of the network)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from wanctl.core.families import TI2V_5B, Family
from wanctl.models.catalog import model_family
from wanctl.models.layouts import checked_dit_files, diffusers_repo, download_fix
from wanctl.models.pipelines import encode_with

if TYPE_CHECKING:
    import torch
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    from wanctl.models.weights import Weights

DITS = ("transformer", "transformer_2")  # the DiT, or the high-noise expert; the low-noise one


@dataclass
class DiffusersCheckpoint:
    folder: Path
    dtype: torch.dtype
    name: str = ""
    family: Family = field(default=TI2V_5B)
    staging: ClassVar[str] = "meta"  # built from its config; `dit_weights` fills it once placed

    def __post_init__(self) -> None:
        self.name = self.folder.name
        self.family = model_family(None, self.folder, image=False)

    def encode_prompts(
        self, prompt: str, negative: str, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        from transformers import AutoTokenizer, UMT5EncoderModel

        tokenizer = AutoTokenizer.from_pretrained(self.folder / "tokenizer")
        encoder: Any = UMT5EncoderModel.from_pretrained(
            self.folder / "text_encoder", torch_dtype=self.dtype, device_map=device
        )
        return encode_with(tokenizer, encoder.eval(), prompt, negative)

    def transformer(self, device: torch.device) -> WanTransformer3DModel:
        """On the meta device, its staging, whatever `device`: placed, then loaded."""
        return self._dit(0)

    def transformer_2(self, device: torch.device) -> WanTransformer3DModel | None:
        return self._dit(1) if self.family.experts == 2 else None

    def dit_weights(self, expert: int) -> Weights:
        """The files of the DiT `expert`, checked (a shard missing or cut short is refused with
        its download, as before launch)."""
        from wanctl.models.weights import Weights

        folder = self.folder / DITS[expert]
        files = checked_dit_files(self.folder, DITS[expert], self.family)
        fix = download_fix(diffusers_repo(self.family), self.folder, folder)
        return Weights(folder, files, self.dtype, fix)

    def vae(self, device: torch.device, *, encoder: bool) -> AutoencoderKLWan:
        """float32, as the Wan pipelines run it, when an image is to be encoded; else on the
        meta device from its config alone (the decode reloads the decoder by itself)."""
        import torch
        from diffusers import AutoencoderKLWan

        if encoder:
            return AutoencoderKLWan.from_pretrained(
                self.folder, subfolder="vae", torch_dtype=torch.float32, device_map=device
            )
        with torch.device("meta"):
            return AutoencoderKLWan.from_config(
                AutoencoderKLWan.load_config(self.folder, subfolder="vae")
            )

    def scheduler(self) -> Any:
        """The checkpoint's scheduler with the official shift of its model: diffusers'
        conversion of the A14B checkpoints wrote flow_shift 3.0 where the official configs
        sample with 12 (T2V) and 5 (I2V)."""
        import diffusers

        config = json.loads((self.folder / "scheduler" / "scheduler_config.json").read_text())
        scheduler_class = getattr(diffusers, config["_class_name"])
        shift = {"flow_shift": self.family.shift} if "flow_shift" in config else {}
        return scheduler_class.from_pretrained(self.folder, subfolder="scheduler", **shift)

    def _dit(self, expert: int) -> WanTransformer3DModel:
        from diffusers import WanTransformer3DModel

        from wanctl.models.weights import empty_dit

        return empty_dit(WanTransformer3DModel.load_config(self.folder / DITS[expert]), self.dtype)
