"""`wanctl tune`: options in, a `TuneReport` out (the plan, what would fit instead, the saved
preset), rendered as tables or JSON."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from wanctl import presets
from wanctl.commands.options import (
    ChunkT,
    DecodeDtypeOption,
    DecodeRanks,
    DitOption,
    Json,
    Offload,
    TextEncoder,
    option_value,
)
from wanctl.doctor import nccl_environment
from wanctl.errors import UsageError, WanctlError
from wanctl.memory import (
    Alternative,
    Constraints,
    MemoryPlan,
    Workload,
    alternatives,
    parse_size,
    plan,
)
from wanctl.probe.base import System, fingerprint
from wanctl.probe.local import LocalProbe
from wanctl.render import err_console, show


@dataclass(frozen=True)
class TuneOptions:
    gpus: int | None
    size: str
    frames: int
    rig: str | None
    preset: str | None
    constraints: Constraints
    measure: bool
    save: bool
    force: bool
    json: bool


@dataclass(frozen=True)
class MeasuredPhase:
    phase: str
    allocated_gib: float
    reserved_gib: float | None
    total_gib: float | None
    out_of_memory: bool


@dataclass(frozen=True)
class TuneReport:
    fingerprint: str
    rig: presets.Rig
    plan: MemoryPlan
    alternatives: tuple[Alternative, ...]
    saved: presets.Entry | None  # what the rig's preset already holds for this workload
    preset_error: str | None = None  # why the rig's preset could not be read
    measured: tuple[MeasuredPhase, ...] = ()
    measured_max_chunk_t: int | None = None
    written: str | None = None  # the preset file written by --save / --measure

    @property
    def ran_out_of_memory(self) -> bool:
        return any(phase.out_of_memory for phase in self.measured)


def tune(
    gpus: Annotated[
        int | None,
        typer.Option(min=1, help="GPUs of the run (the Ulysses degree); default: all of the rig."),
    ] = None,
    size: Annotated[str, typer.Option(help="WIDTH*HEIGHT of the video.")] = "1280*704",
    frames: Annotated[int, typer.Option(help="Frames, 4n+1.")] = 121,
    rig: Annotated[
        str | None,
        typer.Option(help='Plan for a described rig instead of this one: "2x RTX 5090 32GB".'),
    ] = None,
    preset: Annotated[
        str | None, typer.Option(help="Plan for the rig of a preset (its fingerprint).")
    ] = None,
    chunk_t: ChunkT = None,
    decode_ranks: DecodeRanks = None,
    decode_dtype: DecodeDtypeOption = None,
    text_encoder: TextEncoder = None,
    offload: Offload = None,
    dit: DitOption = None,
    measure: Annotated[
        bool,
        typer.Option(
            "--measure",
            help="Run the phases on this GPU with synthetic weights (as the planned card when "
            "this GPU is larger) and save the measured figures in the preset.",
        ),
    ] = False,
    save: Annotated[bool, typer.Option("--save", help="Save the plan as the rig's preset.")] = (
        False
    ),
    force: Annotated[
        bool, typer.Option("--force", help="Replace a saved preset with other settings.")
    ] = False,
    json: Json = False,
) -> None:
    """Will this run fit on the rig, and with which settings? Predicts the peak memory of
    each phase per GPU, chooses the decode chunk, decode ranks, offloading, text encoder
    placement, allocator and NCCL settings, and refuses with the nearest runs that fit when
    nothing does (exit 1) or when Ulysses cannot split the run over its GPUs (exit 2)."""
    options = TuneOptions(
        gpus=gpus,
        size=size,
        frames=frames,
        rig=rig,
        preset=preset,
        constraints=Constraints(
            text_encoder=option_value(text_encoder),
            offload=offload,
            dit=option_value(dit),
            decode_dtype=option_value(decode_dtype) or "bf16",
            decode_ranks=decode_ranks,
            chunk_t=chunk_t,
        ),
        measure=measure,
        save=save,
        force=force,
        json=json,
    )
    report = run(options)
    show(report, render, options.json)
    if not report.plan.runnable:
        raise refusal(report)
    if report.ran_out_of_memory:
        raise WanctlError(
            "the measured run ran out of memory although the model predicted it would fit",
            why="the model's coefficients do not match this rig",
            fix="nothing was saved; run benchmarks/memory_model.py on this GPU and add its rows "
            "to wanctl.memory.MEASUREMENTS, or pin --text-encoder cpu",
        )


def resolve_rig(options: TuneOptions) -> tuple[str, presets.Rig, str]:
    """The rig's fingerprint, its description and the platform the run will be on."""
    if options.rig is not None and options.preset is not None:
        raise UsageError("--rig and --preset both name a rig", fix="give one of them")
    if options.rig is not None:
        inventory, rig = presets.rig_of(options.rig)
        return fingerprint(inventory), rig, "linux"
    if options.preset is not None:
        found = presets.require(options.preset)
        return found.fingerprint, found.rig, "linux"
    probe = LocalProbe()
    inventory = probe.gpus()
    if not inventory.live_gpus():
        raise UsageError(
            "no GPU on this machine to plan for",
            why=inventory.error or "NVML reported no GPU",
            fix='plan for a described rig: --rig "2x RTX 5090 32GB"',
        )
    system: System = probe.system()
    rig = presets.rig_from_inventory(inventory, nccl_environment(inventory, system))
    return fingerprint(inventory), rig, sys.platform


def run(options: TuneOptions) -> TuneReport:
    rig_fingerprint, rig, platform = resolve_rig(options)
    width, height = parse_size(options.size)
    gpus = rig.gpus if options.gpus is None else options.gpus
    if gpus > rig.gpus:
        raise UsageError(
            f"--gpus {gpus} on a rig of {rig.gpus} GPU{'s' if rig.gpus > 1 else ''}",
            fix=f"use --gpus {rig.gpus} or fewer, or plan for a larger rig with --rig",
        )
    workload = Workload(width, height, options.frames, gpus)
    constraints = options.constraints
    chosen = plan(workload, rig.card, constraints, platform=platform, nccl_env=rig.nccl_env)
    saved, preset_error = _saved_entry(rig_fingerprint, workload)
    report = TuneReport(
        fingerprint=rig_fingerprint,
        rig=rig,
        plan=chosen,
        alternatives=()
        if chosen.runnable
        else alternatives(workload, rig.card, constraints, platform=platform),
        saved=saved,
        preset_error=preset_error,
    )
    if not chosen.runnable:
        return report
    entry = presets.entry_of(chosen, created=presets.now())
    saving = options.save or options.measure
    if saving:  # refused now, not after minutes of measuring
        presets.check_save(presets.preset_path(rig_fingerprint), entry, force=options.force)
    if options.measure:
        report, entry = _measure(report, entry)
        if report.ran_out_of_memory:
            return report
    if saving:
        path = presets.save(rig_fingerprint, rig, entry, force=options.force)
        report = dataclasses.replace(report, written=str(path))
    return report


def _saved_entry(
    rig_fingerprint: str, workload: Workload
) -> tuple[presets.Entry | None, str | None]:
    """What the rig's preset holds for this run; an unreadable preset does not stop planning
    (saving over it is refused)."""
    try:
        existing = presets.load(rig_fingerprint)
    except UsageError as error:
        return None, error.message
    return (existing.find(workload) if existing else None), None


def _measure(report: TuneReport, entry: presets.Entry) -> tuple[TuneReport, presets.Entry]:
    from wanctl.measure import measure_plan  # torch and diffusers: only when measuring

    with err_console().status("running the phases on the GPU with synthetic weights"):
        measured = measure_plan(report.plan)
    phases = tuple(
        MeasuredPhase(
            peak.phase,
            peak.allocated_gib,
            peak.reserved_gib,
            None if peak.reserved_gib is None else peak.reserved_gib + measured.context_gib,
            peak.out_of_memory,
        )
        for peak in measured.peaks
    )
    figures = {
        p.phase: presets.Figures.rounded(p.allocated_gib, p.reserved_gib, p.total_gib)
        for p in phases
        if p.reserved_gib is not None and p.total_gib is not None
    }  # fmt: skip
    entry = dataclasses.replace(
        entry, source="measured", measured=figures, max_chunk_t=measured.max_chunk_t
    )
    report = dataclasses.replace(report, measured=phases, measured_max_chunk_t=measured.max_chunk_t)
    return report, entry


def refusal(report: TuneReport) -> WanctlError:
    """Why the plan cannot run: Ulysses cannot split it over its GPUs (a bad request, exit 2,
    like --gpus not dividing the heads), else nothing fits in memory (exit 1)."""
    chosen = report.plan
    nearest = "; ".join(alternative.change for alternative in report.alternatives)
    if chosen.problem:
        workload = chosen.workload
        return UsageError(
            f"{workload.size}x{workload.frames} cannot run on {workload.gpus} GPU(s)",
            why=chosen.problem,
            fix=f"nearest runs that fit: {nearest}"
            if nearest
            else "use another size, frame count or number of GPUs",
        )
    return no_fit(report)


def no_fit(report: TuneReport) -> WanctlError:
    chosen = report.plan
    nearest = "; ".join(alternative.change for alternative in report.alternatives)
    return WanctlError(
        f"{chosen.workload.size}x{chosen.workload.frames} on {chosen.workload.gpus} GPU(s) "
        f"does not fit on {chosen.card.name} ({chosen.card.gib:.1f} GiB)",
        why=f"even the leanest settings need {chosen.peak_gib:.1f} GiB in {chosen.peak_phase}, "
        f"and {chosen.budget_gib:.1f} GiB can be used",
        fix=f"nearest runs that fit: {nearest}" if nearest else "use a larger GPU",
    )


def render(report: TuneReport, console: Console) -> None:
    chosen = report.plan
    workload = chosen.workload
    console.print(
        f"[bold]{report.fingerprint}[/]: {workload.size}x{workload.frames} on {workload.gpus} "
        f"GPU(s), {workload.tokens} tokens, card {chosen.card.name} {chosen.card.gib:.1f} GiB",
        highlight=False,
    )
    table = Table(title="predicted peak per GPU (GiB)", title_justify="left")
    for column in ("phase", "weights", "activations", "allocated", "reserved", "+context"):
        table.add_column(column, justify="right")
    measured = {phase.phase: phase for phase in report.measured}
    if measured:
        table.add_column("measured", justify="right")
    for phase in chosen.phases:
        row = [
            phase.name,
            f"{phase.weights_gib:.2f}",
            f"{phase.activations_gib:.2f}",
            f"{phase.allocated_gib:.2f}",
            f"{phase.reserved_gib:.2f}",
            f"{phase.total_gib:.2f}",
        ]
        if measured:
            row.append(_measured_cell(measured.get(phase.name)))
        table.add_row(*row, style="bold" if phase.name == chosen.peak_phase else None)
    console.print(table)
    if chosen.problem:
        console.print(f"[bold red]cannot run[/]: {chosen.problem}", highlight=False)
    if not chosen.fits:
        console.print(
            f"[bold red]does not fit[/]: the leanest settings peak at {chosen.peak_gib:.2f} GiB "
            f"in {chosen.peak_phase}; {chosen.budget_gib:.2f} of {chosen.card.gib:.1f} GiB "
            "can be used",
            highlight=False,
        )
    if not chosen.runnable:
        _render_alternatives(report.alternatives, console)
        return
    console.print(
        f"[green]fits[/]: peak {chosen.peak_gib:.2f} GiB in {chosen.peak_phase}, headroom "
        f"{chosen.headroom_gib:.2f} GiB of {chosen.card.gib:.1f} (kept free: "
        f"{chosen.card.gib - chosen.budget_gib:.2f}); chunk_t up to {chosen.max_chunk_t} fits",
        highlight=False,
    )
    settings = chosen.settings
    console.print(
        f"settings: decode on {settings.decode_ranks} rank(s) in {settings.decode_dtype}, "
        f"chunk_t {settings.chunk_t}, DiT {settings.dit}"
        f"{', offloaded before the decode' if settings.offload else ''}, text encoder on "
        f"{settings.text_encoder.upper()}",
        highlight=False,
    )
    for key, value in chosen.env.items():
        console.print(f"  export {key}={value}", highlight=False, markup=False)
    for note in chosen.notes:
        console.print(f"[dim]note: {note}[/]", highlight=False)
    if report.measured_max_chunk_t is not None:
        console.print(f"measured: chunk_t up to {report.measured_max_chunk_t} ran")
    if report.preset_error:
        console.print(f"[yellow]warning: {report.preset_error}[/]", highlight=False)
    if report.saved and report.saved.settings != settings:
        console.print(
            f"[yellow]the saved preset ({report.saved.source}, {report.saved.created}) holds "
            f"other settings for this run[/]",
            highlight=False,
        )
    if report.written:
        console.print(f"saved to {report.written}", highlight=False)


def _render_alternatives(found: tuple[Alternative, ...], console: Console) -> None:
    if not found:  # the refusal's fix says what to do instead
        return
    nearest = Table(title="nearest runs that fit", title_justify="left")
    for column in ("change", "peak GiB", "settings"):
        nearest.add_column(column)
    for alternative in found:
        s = alternative.plan.settings
        nearest.add_row(
            alternative.change,
            f"{alternative.plan.peak_gib:.2f}",
            f"decode on {s.decode_ranks} in {s.decode_dtype}, text encoder {s.text_encoder}, "
            f"offload {'on' if s.offload else 'off'}, DiT {s.dit}",
        )
    console.print(nearest)


def _measured_cell(phase: MeasuredPhase | None) -> str:
    if phase is None:
        return "-"
    if phase.out_of_memory:
        return "OUT OF MEMORY"
    return f"{phase.total_gib:.2f}" if phase.total_gib is not None else "-"
