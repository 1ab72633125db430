"""What the user asked `generate` for (`GenerateOptions`) and where the run writes (`RunPaths`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wanctl.core.workload import parse_size

BACKENDS = ("diffusers", "wan-repo")
DEVICES = ("cuda", "cpu")


@dataclass(frozen=True)
class GenerateOptions:
    """What the user asked for; None leaves a setting to the preset or the default."""

    prompt: str
    output: Path
    size: str = "1280*704"
    frames: int = 121
    steps: int = 50
    seed: int = 42
    gpus: int | None = None
    backend: str = "diffusers"
    model: str | None = None  # "tiny" | "synthetic-5b"; else --ckpt-dir
    ckpt_dir: Path | None = None
    wan_repo: Path | None = None
    image: Path | None = None
    negative_prompt: str | None = None
    guidance: float | None = None
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
    env: tuple[tuple[str, str], ...] = ()  # --env KEY=VALUE
    preflight: bool = True
    timeout_s: float | None = None
    json_stdout: bool = False  # stdout carries one JSON document (--json)

    def __post_init__(self) -> None:
        # One spelling from here on: 1280x704 and 1280×704 become 1280*704, the form the
        # workers and the official generate.py read.
        width, height = parse_size(self.size)
        object.__setattr__(self, "size", f"{width}*{height}")

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
            run_dir=output.with_name(f".{output.name}.wanctl"),
        )

    @property
    def placeholder(self) -> Path:
        """The official generate.py's --save_file: what it writes there is a placeholder."""
        return self.run_dir / "official-placeholder.mp4"
