"""What the user asked `generate` for (`GenerateOptions`) and where the run writes (`RunPaths`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from wanctl.core.families import TI2V_5B, Family
from wanctl.core.workload import parse_size
from wanctl.models.catalog import MODELS, checkpoint_family, model_family, official_family

BACKENDS = ("diffusers", "wan-repo")
DEVICES = ("cuda", "cpu")


@dataclass(frozen=True)
class GenerateOptions:
    """What the user asked for; None leaves a setting to the preset or the default. An empty
    `size`, or 0 `frames` or `steps`, is the model's official default (`family`)."""

    prompt: str
    output: Path
    size: str = ""
    frames: int = 0
    steps: int = 0
    seed: int = 42
    gpus: int | None = None
    backend: str = "diffusers"
    model: str | None = None  # "tiny" | "synthetic-5b"; else --ckpt-dir
    ckpt_dir: Path | None = None
    wan_repo: Path | None = None
    image: Path | None = None
    negative_prompt: str | None = None
    guidance: float | None = None  # the DiT's, or the high-noise expert's
    guidance_2: float | None = None  # the low-noise expert's
    device: str | None = None  # "cuda" | "cpu"; None: cuda when a GPU is visible
    nnodes: int | None = None
    rdzv_endpoint: str | None = None
    # Overrides of the preset's settings.
    chunk_t: int | None = None
    decode_ranks: int | None = None
    decode_dtype: str | None = None
    text_encoder: str | None = None
    offload: bool | None = None
    dit: str | None = None
    dit_storage: str | None = None  # "bf16" | "fp8"
    cfg_parallel: bool | None = None  # the two guidance passes on two halves of the ranks
    dit_precision: str | None = None  # "bf16" | "fp8" (compute)
    compile: bool | None = None  # the DiT's repeated block compiled (GPUs)
    env: tuple[tuple[str, str], ...] = ()  # --env KEY=VALUE
    preflight: bool = True
    timeout_s: float | None = None
    json_stdout: bool = False  # stdout carries one JSON document (--json)
    overwrite: bool = False  # replace an existing video and latents (once the new ones are done)
    family: Family = field(init=False, default=TI2V_5B)

    def __post_init__(self) -> None:
        family = self._family()
        object.__setattr__(self, "family", family)
        # One spelling from here on: 1280x704 and 1280×704 become 1280*704, the form the
        # workers and the official generate.py read.
        width, height = parse_size(self.size or family.sizes[0])
        object.__setattr__(self, "size", f"{width}*{height}")
        object.__setattr__(self, "frames", self.frames or family.frames)
        object.__setattr__(self, "steps", self.steps or family.steps)

    def _family(self) -> Family:
        """The model's family; TI2V-5B where the model is not known yet (the checks before
        launch refuse it, with the reason)."""
        if self.backend == "wan-repo":
            return official_family(self.ckpt_dir) if self.ckpt_dir else TI2V_5B
        if self.model is not None and self.model not in MODELS:
            return TI2V_5B
        if self.model is None:
            return (checkpoint_family(self.ckpt_dir) if self.ckpt_dir else None) or TI2V_5B
        return model_family(self.model, self.ckpt_dir, image=self.image is not None)

    @property
    def dimensions(self) -> tuple[int, int]:
        return parse_size(self.size)


@dataclass(frozen=True)
class RunPaths:
    """Where a run writes: the video, the latents beside it, and a hidden folder beside it for
    what the ranks report (removed at the end)."""

    output: Path
    latents: Path
    run_dir: Path

    @classmethod
    def for_output(cls, output: Path) -> RunPaths:
        return cls(
            output=output,
            latents=output.with_name(f"{output.stem}.latents.safetensors"),
            # one per invocation: no other run's (or node's, on a shared filesystem) reports
            run_dir=output.with_name(f".{output.name}.{os.getpid()}.wanctl"),
        )

    @property
    def placeholder(self) -> Path:
        """The official generate.py's --save_file: what it writes there is a placeholder."""
        return self.run_dir / "official-placeholder.mp4"
