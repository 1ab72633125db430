"""Where a run's wall time went, from the moment wanctl started to its exit: the fixed costs
(start-up, imports, the process group, loading) beside the work (steps, decode), and the time
to the first step. Torch-free.

The parent and rank 0 run on one machine, so their wall clocks (`time.time()`) agree; a
process's own start is read from /proc (Linux), so that Python's start and its imports, which
no line of wanctl can time, are counted too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


def process_started() -> float | None:
    """The wall-clock time this process started (Linux: /proc/self/stat's start, in clock
    ticks after boot, plus the boot time); None elsewhere."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # field 22 of stat(5), the 20th after the command's name
        boot = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Timeline:
    """The run's wall time in consecutive parts, (name, seconds), summing to `total_s`; and
    the seconds from wanctl's start to the end of the first sampling step."""

    parts: tuple[tuple[str, float], ...]
    total_s: float
    first_step_after_s: float | None

    def describe(self) -> str:
        shown = ", ".join(f"{name} {s:.1f}" for name, s in self.parts if s >= 0.05)
        first = (
            f"first step done {self.first_step_after_s:.1f} s after start; "
            if self.first_step_after_s is not None
            else ""
        )
        return f"{first}{shown} (of {self.total_s:.1f} s)"


# The worker's phases, in the order they run, and what the timeline calls them.
PHASES = (("text_encode", "text encode"), ("image_encode", "image encode"))


def run_timeline(
    marks: Mapping[str, float],
    seconds: Mapping[str, float],
    steps: list[float],
    *,
    started: float,
    launched: float,
    ended: float,
) -> Timeline:
    """Rank 0's `marks` (wall-clock times: "process", "main", "group", "first_step", each
    phase's start as "<phase>_start", and the summary's writing, "written") and `seconds`
    (each phase's, and "load", "attention", "vae_decode", "vae_warmup" within them,
    "pipeline_vae" between them), its `steps`; the parent's start, launch of torchrun and end.
    What no part names is "other"."""
    parts: list[tuple[str, float]] = [("wanctl start and preflight", launched - started)]
    if "process" in marks:
        parts += [("torchrun and python start", marks["process"] - launched),
                  ("imports", marks["main"] - marks["process"])]  # fmt: skip
    else:
        parts.append(("torchrun start and imports", marks["main"] - launched))
    parts.append(("process group", marks["group"] - marks["main"]))
    parts += [(name, seconds[phase]) for phase, name in PHASES if phase in seconds]
    parts.append(("the pipeline's VAE", seconds.get("pipeline_vae", 0.0)))
    work = [seconds.get("load", 0.0), seconds.get("attention", 0.0), sum(steps)]
    parts += [("DiT load", work[0]), ("attention choice", work[1])]
    if steps:
        parts += [("first step", steps[0]), (f"{len(steps) - 1} more steps", sum(steps[1:]))]
    parts.append(("sampling, the rest", seconds["sampling"] - sum(work)))
    parts.append(("save latents", seconds.get("save", 0.0)))
    if "decode" in seconds:
        decode, warmup = seconds.get("vae_decode", 0.0), seconds.get("vae_warmup", 0.0)
        parts += [("VAE load", seconds["decode"] - decode - warmup),
                  ("decode kernels", warmup), ("decode", decode)]  # fmt: skip
        finished = marks["decode_start"] + seconds["decode"]
        written = marks.get("written", ended)
        parts += [("results gathered and summary written", written - finished),
                  ("process group and process exit", ended - written)]  # fmt: skip
    total = ended - started
    parts.append(("other", total - sum(s for _, s in parts)))
    first = marks["first_step"] - started if "first_step" in marks else None
    return Timeline(tuple(parts), total, first)
