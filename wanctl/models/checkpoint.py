"""A local diffusers checkpoint (`Wan2.2-TI2V-5B-Diffusers`, `Wan2.2-T2V-A14B-Diffusers`,
`Wan2.2-I2V-A14B-Diffusers`), read from its subfolders."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from wanctl.core.families import TI2V_5B, Family
from wanctl.models.catalog import model_family
from wanctl.models.pipelines import encode_with

if TYPE_CHECKING:
    import torch
    from diffusers import AutoencoderKLWan, WanTransformer3DModel


@dataclass
class DiffusersCheckpoint:
    folder: Path
    dtype: torch.dtype
    name: str = ""
    family: Family = field(default=TI2V_5B)
    staging: ClassVar[str] = "cpu"  # from_pretrained reads the weights into host memory

    def __post_init__(self) -> None:
        self.name = self.folder.name
        self.family = model_family(None, self.folder, image=False)

    def encode_prompts(
        self, prompt: str, negative: str, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        from transformers import AutoTokenizer, UMT5EncoderModel

        tokenizer = AutoTokenizer.from_pretrained(self.folder / "tokenizer")
        encoder: Any = UMT5EncoderModel.from_pretrained(
            self.folder / "text_encoder", torch_dtype=self.dtype
        )
        return encode_with(tokenizer, encoder.to(device).eval(), prompt, negative)

    def transformer(self, device: torch.device) -> WanTransformer3DModel:
        return self._dit("transformer", device)

    def transformer_2(self, device: torch.device) -> WanTransformer3DModel | None:
        return self._dit("transformer_2", device) if self.family.experts == 2 else None

    def vae(self, device: torch.device, *, encoder: bool) -> AutoencoderKLWan:
        """float32, as the Wan pipelines run it, when an image is to be encoded; else on the
        meta device from its config alone (the decode reloads the decoder by itself)."""
        import torch
        from diffusers import AutoencoderKLWan

        if encoder:
            vae = AutoencoderKLWan.from_pretrained(
                self.folder, subfolder="vae", torch_dtype=torch.float32
            )
            return vae.to(device)
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

    def _dit(self, subfolder: str, device: torch.device) -> WanTransformer3DModel:
        from diffusers import WanTransformer3DModel

        model = WanTransformer3DModel.from_pretrained(
            self.folder, subfolder=subfolder, torch_dtype=self.dtype
        )
        return model.to(device).eval()
