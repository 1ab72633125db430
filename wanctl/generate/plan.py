"""What `prepare` resolves before launch (`GeneratePlan`) and what a run reports
(`GenerateSummary`), with its phases' predicted and measured peaks."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wanctl.core.launch import LaunchSpec
from wanctl.core.settings import Settings
from wanctl.core.timeline import Timeline
from wanctl.generate.options import GenerateOptions, RunPaths
from wanctl.models.attention import AttentionChoice
from wanctl.tune.host import HostPlan
from wanctl.tune.predict import MemoryPlan


@dataclass(frozen=True)
class GeneratePlan:
    """Everything resolved before launch: how many ranks, on what, with which settings (and
    where each came from), the environment, and the command."""

    options: GenerateOptions
    device: str
    ranks: int  # processes on this node
    world: int  # all ranks: the Ulysses degree
    settings: Settings
    source: str  # where the settings come from: a preset, the model, the CPU defaults
    overridden: tuple[str, ...]  # settings set by flags or by the environment
    env: dict[str, str]  # what wanctl sets for the children
    kept_env: dict[str, str]  # the user's own values, kept over the preset's
    paths: RunPaths
    vae: str  # the decoder `wanctl decode --vae` loads
    spec: LaunchSpec
    decode_command: str
    predicted: MemoryPlan | None
    notes: tuple[str, ...]
    host: HostPlan | None = None  # host RAM of this node's ranks


@dataclass(frozen=True)
class RankFigures:
    """One rank's peak device memory per phase, GiB (None on the CPU or not measured), and
    its peak host memory (resident set), GiB, where the rank reported it."""

    rank: int
    peak_allocated_gib: dict[str, float | None]
    peak_reserved_gib: dict[str, float | None]
    host_rss_gib: float | None = None


@dataclass(frozen=True)
class GenerateSummary:
    output: Path
    latents: Path
    backend: str
    model: str
    family: str  # the official task name: ti2v-5B, t2v-A14B, i2v-A14B
    device: str
    ranks: int
    frames: int
    width: int
    height: int
    fps: float
    steps: int
    seconds_per_step: float | None  # mean over the steps after the first
    first_step_s: float | None
    text_encode_s: float | None
    load_s: float | None
    sampling_s: float | None
    decode_s: float | None
    decode_warmup_s: float | None  # GPU kernels compiled or loaded before the decode
    expert_swap_s: float | None  # A14B with --offload: the low-noise expert brought in
    total_s: float
    settings: Settings
    source: str
    per_rank: list[RankFigures]
    # The memory model's prediction of each phase against each rank's measured peak.
    memory: list[PhaseCheck] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # The DiT's attention backend and the timings it was chosen from (diffusers on GPUs).
    attention: AttentionChoice | None = None
    # The DiT that ran each step: "dit", or the A14B's "high" / "low" noise expert.
    experts: list[str] = field(default_factory=list)
    layout: str = ""  # how the ranks split a step: "Ulysses 4", "CFG 2 x Ulysses 2"
    predicted_step_s: float | None = None  # tune's seconds per step for this layout
    encoded_on: list[int] = field(default_factory=list)  # the ranks that loaded the encoder
    # CFG parallel: the DiT passes each rank computed (one a step; the other half's came by
    # the exchange)
    guidance_passes: list[int] = field(default_factory=list)
    # how compiling the DiT went on rank 0 (`wanctl.models.compiled.CompileReport` as a dict)
    compile: dict[str, Any] | None = None
    timeline: Timeline | None = None  # where the wall time went, and the time to first step

    @property
    def expert_steps(self) -> str | None:
        """Which steps each expert ran, as "high 1-4, low 5-40"; None for a single DiT."""
        if not self.experts or set(self.experts) <= {"dit"}:
            return None
        runs: list[list[Any]] = []
        for step, name in enumerate(self.experts, start=1):
            if runs and runs[-1][0] == name:
                runs[-1][2] = step
            else:
                runs.append([name, step, step])
        return ", ".join(f"{n} {a}-{b}" if a != b else f"{n} {a}" for n, a, b in runs)


@dataclass(frozen=True)
class PhaseCheck:
    """One phase on one rank: the memory model's peak for the worst rank against the measured
    one, GiB, and the relative errors (predicted / measured - 1)."""

    phase: str
    rank: int
    predicted_allocated_gib: float
    measured_allocated_gib: float
    allocated_error: float
    predicted_reserved_gib: float
    measured_reserved_gib: float
    reserved_error: float


# Beyond this the model is told to be refitted (the model's own target, issue 11).
MODEL_TOLERANCE = 0.10
REFIT_COMMAND = (
    "python benchmarks/memory_model.py on this GPU, then paste its rows into "
    "wanctl/tune/measurements.py"
)


def memory_checks(predicted: MemoryPlan | None, per_rank: list[RankFigures]) -> list[PhaseCheck]:
    """Each predicted phase against every rank that measured it (a rank past the decode ranks
    does not decode; rank 0 alone encodes the prompt)."""
    if predicted is None:
        return []
    checks = []
    for phase in predicted.phases:
        for figures in per_rank:
            allocated = figures.peak_allocated_gib.get(phase.name)
            reserved = figures.peak_reserved_gib.get(phase.name)
            skipped = (phase.name == "decode" and figures.rank >= predicted.settings.decode_ranks
                       or phase.name == "text_encode" and figures.rank != 0)  # fmt: skip
            if allocated is None or reserved is None or skipped or not allocated:
                continue
            checks.append(
                PhaseCheck(
                    phase.name,
                    figures.rank,
                    round(phase.allocated_gib, 3),
                    round(allocated, 3),
                    round(phase.allocated_gib / allocated - 1, 4),
                    round(phase.reserved_gib, 3),
                    round(reserved, 3),
                    round(phase.reserved_gib / reserved - 1, 4),
                )  # fmt: skip
            )
    return checks


def model_note(checks: list[PhaseCheck]) -> str | None:
    """One line when a phase missed by more than `MODEL_TOLERANCE`, naming the worst."""
    worst = max(
        checks, key=lambda c: max(abs(c.allocated_error), abs(c.reserved_error)), default=None
    )
    if (
        worst is None
        or max(abs(worst.allocated_error), abs(worst.reserved_error)) <= MODEL_TOLERANCE
    ):
        return None
    return (
        f"the memory model missed {worst.phase} on rank {worst.rank} by "
        f"{worst.allocated_error:+.0%} allocated, {worst.reserved_error:+.0%} reserved "
        f"(predicted {worst.predicted_reserved_gib:.2f}, measured "
        f"{worst.measured_reserved_gib:.2f} GiB reserved): refit with {REFIT_COMMAND}"
    )


def summary(
    plan: GeneratePlan, start: float, *, notes: list[str] | None = None, **figures: Any
) -> GenerateSummary:
    options = plan.options
    width, height = options.dimensions
    checks = memory_checks(plan.predicted, figures.get("per_rank", []))
    missed = model_note(checks)
    return GenerateSummary(
        output=plan.paths.output,
        latents=plan.paths.latents,
        backend=options.backend,
        model=options.model or str(options.ckpt_dir),
        family=options.family.name,
        device=plan.device,
        ranks=plan.world,
        frames=options.frames,
        width=width,
        height=height,
        fps=options.family.fps,
        steps=options.steps,
        total_s=time.perf_counter() - start,
        settings=plan.settings,
        source=plan.source,
        notes=[*plan.notes, *(notes or []), *([missed] if missed else [])],
        memory=checks,
        layout=plan.settings.layout(plan.world),
        predicted_step_s=plan.predicted.step.total_s
        if plan.predicted and plan.predicted.step
        else None,
        **figures,
    )


def node_note(plan: GeneratePlan, node: int) -> list[str]:
    """On a node other than the first, where the video and the latents are."""
    if node == 0:
        return []
    return [f"this is node {node} of {plan.options.nnodes}: the video and the latents were "
            "written on node 0 (by rank 0, at that node's --output path)"]  # fmt: skip
