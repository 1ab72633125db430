"""The generate worker's request and report: the one description of a run that `generate`
launches and `tune --measure` (and `benchmarks/memory_model.py`, through generate) measures, so
that a measured peak is a peak of the run that will happen. Torch-free.

`WorkerRequest.argv` is the command line of `wanctl.workers.generate`, which parses it back;
rank 0 writes `summary.json` in the run folder with every rank's figures (`write_summary`,
`read_summary`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wanctl.core.settings import Settings

GENERATE_WORKER = "wanctl.workers.generate"
SUMMARY = "summary.json"


@dataclass(frozen=True)
class WorkerRequest:
    """One run of the worker: a built-in `model` or a diffusers `ckpt_dir`, what to generate,
    the settings it executes, where it writes. `memory_cap_gib` makes each rank act as a card of
    that size (the caching allocator capped at what such a card leaves after the context), for
    measuring a smaller card's plan on a larger GPU."""

    prompt: str
    size: str
    frames: int
    steps: int
    seed: int
    device: str
    settings: Settings
    latents: Path
    output: Path
    vae: str
    run_dir: Path
    model: str | None = None
    ckpt_dir: Path | None = None
    negative_prompt: str | None = None
    image: Path | None = None
    guidance: float | None = None
    guidance_2: float | None = None
    memory_cap_gib: float | None = None

    def argv(self) -> list[str]:
        source = ["--model", self.model] if self.model else ["--ckpt-dir", str(self.ckpt_dir)]
        s = self.settings
        args = [
            *source,
            "--prompt", self.prompt,
            "--size", self.size,
            "--frames", str(self.frames),
            "--steps", str(self.steps),
            "--seed", str(self.seed),
            "--device", self.device,
            "--text-encoder", s.text_encoder,
            "--latents", str(self.latents),
            "--output", str(self.output),
            "--vae", self.vae,
            "--decode-dtype", s.decode_dtype,
            "--chunk-t", str(s.chunk_t),
            "--decode-ranks", str(s.decode_ranks),
            "--dit", s.dit,
            "--dit-storage", s.dit_storage,
            "--dit-precision", s.dit_precision,
            "--run-dir", str(self.run_dir),
        ]  # fmt: skip
        optional = {
            "--negative-prompt": self.negative_prompt,
            "--image": self.image,
            "--guidance": self.guidance,
            "--guidance-2": self.guidance_2,
            "--memory-cap-gib": self.memory_cap_gib,
        }
        for flag, value in optional.items():
            if value is not None:
                args += [flag, str(value)]
        flags = {"--offload": s.offload, "--cfg-parallel": s.cfg_parallel,
                 "--no-compile": not s.compile}  # fmt: skip
        return [*args, *(flag for flag, on in flags.items() if on)]


@dataclass(frozen=True)
class NodeSummary:
    """What this node's first rank wrote once every rank had decoded: every rank's figures,
    this node's number in the run (torchrun's GROUP_RANK: 0 writes the video and latents) and
    when it was written (wall clock: the run's finish, before the processes exit)."""

    ranks: list[dict[str, Any]]
    node: int
    written: float


def write_summary(run_dir: Path, ranks: list[dict[str, Any]], node: int) -> None:
    import time

    summary = {"ranks": ranks, "node": node, "written": time.time()}
    (run_dir / SUMMARY).write_text(json.dumps(summary))


def read_summary(run_dir: Path) -> NodeSummary | None:
    """The summary of `write_summary`; None if none was written."""
    path = run_dir / SUMMARY
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    return NodeSummary(summary["ranks"], summary["node"], summary["written"])
