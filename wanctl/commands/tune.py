"""`wanctl tune`: options in, a `TuneReport` out (the plan, what would fit instead, the saved
preset), rendered as tables or JSON."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from wanctl.commands.options import (
    Backend,
    BackendOption,
    CfgParallel,
    ChunkT,
    Compile,
    DecodeDtypeOption,
    DecodeRanks,
    DitOption,
    DitPrecisionOption,
    DitStorageOption,
    Json,
    Offload,
    Task,
    TextEncoder,
    option_value,
)
from wanctl.core.settings import describe
from wanctl.render import err_console, show
from wanctl.tune.measure import MeasuredPhase
from wanctl.tune.run import TuneOptions, TuneReport, failure, run
from wanctl.tune.search import Alternative, Constraints


def tune(
    gpus: Annotated[
        int | None,
        typer.Option(min=1, help="GPUs of the run (the Ulysses degree); default: all of the rig."),
    ] = None,
    task: Annotated[
        Task, typer.Option(help="The model (official task name); i2v-A14B plans its image encode.")
    ] = Task.ti2v_5b,
    size: Annotated[
        str, typer.Option(help="WIDTH*HEIGHT of the video; default: the model's first official.")
    ] = "",
    frames: Annotated[
        int,
        typer.Option(help="Frames, 4n+1; default: the model's (121, A14B 81).", show_default=False),
    ] = 0,
    rig: Annotated[
        str | None,
        typer.Option(help='Plan for a described rig instead of this one: "2x RTX 5090 32GB".'),
    ] = None,
    host_ram: Annotated[
        float | None,
        typer.Option(
            "--host-ram",
            min=1,
            help="The host's free RAM in GB, to choose settings it holds (default: this "
            "machine's; unknown for --rig and --preset).",
        ),
    ] = None,
    preset: Annotated[
        str | None, typer.Option(help="Plan for the rig of a preset (its fingerprint).")
    ] = None,
    backend: BackendOption = Backend.diffusers,
    chunk_t: ChunkT = None,
    decode_ranks: DecodeRanks = None,
    decode_dtype: DecodeDtypeOption = None,
    text_encoder: TextEncoder = None,
    offload: Offload = None,
    dit: DitOption = None,
    dit_storage: DitStorageOption = None,
    cfg_parallel: CfgParallel = None,
    dit_precision: DitPrecisionOption = None,
    compiled: Compile = None,
    measure: Annotated[
        bool,
        typer.Option(
            "--measure",
            help="Run the plan with the generate worker on this machine's GPUs (synthetic "
            "weights, one step; each GPU acting as the planned card when larger) and save the "
            "measured figures in the preset.",
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
        task=task.value,
        size=size,
        frames=frames,
        host_ram_gb=host_ram,
        rig=rig,
        preset=preset,
        constraints=Constraints(
            backend=backend.value,
            text_encoder=option_value(text_encoder),
            offload=offload,
            dit=option_value(dit),
            dit_storage=option_value(dit_storage),
            cfg_parallel=cfg_parallel,
            dit_precision=option_value(dit_precision),
            compile=compiled,
            decode_dtype=option_value(decode_dtype) or "bf16",
            decode_ranks=decode_ranks,
            chunk_t=chunk_t,
        ),
        measure=measure,
        save=save,
        force=force,
        json=json,
    )
    if options.measure:
        with err_console().status("running the plan with the generate worker (synthetic weights)"):
            report = run(options)
    else:
        report = run(options)
    show(report, render, options.json, failure=failure(report))


def render(report: TuneReport, console: Console) -> None:
    chosen = report.plan
    workload = chosen.workload
    console.print(
        f"[bold]{report.fingerprint}[/]: {workload.family.name} {workload.size}x"
        f"{workload.frames} on {workload.gpus} GPU(s), {workload.tokens} tokens, card "
        f"{chosen.card.name} {chosen.card.gib:.1f} GiB",
        highlight=False,
    )
    for warning in report.warnings:
        console.print(f"[yellow]warning: {escape(warning)}[/]", highlight=False)
    table = Table(title="predicted peak per GPU (GiB)", title_justify="left")
    table.add_column("phase")
    for column in ("weights", "activations", "allocated", "reserved", "+context"):
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
    _render_layouts(report, console)
    if chosen.problem:
        console.print(f"[bold red]cannot run[/]: {chosen.problem}", highlight=False)
    if chosen.host_problem:
        console.print(f"[bold red]the host cannot hold it[/]: {chosen.host_problem}",
                      highlight=False)  # fmt: skip
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
    console.print(f"settings: {describe(settings)}", highlight=False, markup=False)
    for phase in chosen.phases:
        console.print(
            f"  {phase.name}: {phase.placement.describe()}", highlight=False, markup=False
        )
    for key, value in chosen.env.items():
        console.print(f"  export {key}={value}", highlight=False, markup=False)
    if report.host is not None:
        _render_host(report, console)
    for note in chosen.notes:
        console.print(f"[dim]note: {note}[/]", highlight=False)
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


def _render_layouts(report: TuneReport, console: Console) -> None:
    """Each layout's predicted seconds per step and peak, the chosen one in bold, and what the
    prediction assumed."""
    timed = [p for p in report.layouts if p.step is not None]
    if not timed:
        return
    table = Table(title="layouts: predicted seconds per step", title_justify="left")
    for column in ("layout", "s/step", "compute", "communication", "peak GiB", "fits"):
        table.add_column(column, justify="left" if column == "layout" else "right")
    chosen = report.plan.settings
    for layout in timed:
        step = layout.step
        assert step is not None
        table.add_row(
            step.layout, f"{step.total_s:.2f}", f"{step.compute_s:.2f}", f"{step.comm_s:.2f}",
            f"{layout.peak_gib:.2f}", "yes" if layout.runnable else "no",
            style="bold" if layout.settings == chosen else None,
        )  # fmt: skip
    console.print(table)
    for note in dict.fromkeys(a for p in timed if p.step for a in p.step.assumed):
        console.print(f"[dim]assumed: {note}[/]", highlight=False)


def _render_host(report: TuneReport, console: Console) -> None:
    """The host RAM of the run's ranks (loading a checkpoint), against this machine's."""
    host = report.host
    assert host is not None
    line = f"host RAM, loading a checkpoint: {host.describe()}"
    free = report.host_free_gib
    if free is not None:
        line += f" of {free:.1f} GiB free"
    console.print(line, highlight=False, markup=False)


def _render_alternatives(found: tuple[Alternative, ...], console: Console) -> None:
    if not found:  # the refusal's fix says what to do instead
        return
    nearest = Table(title="nearest runs that fit", title_justify="left")
    for column in ("change", "peak GiB", "settings"):
        nearest.add_column(column)
    for alternative in found:
        nearest.add_row(
            escape(alternative.change),
            f"{alternative.plan.peak_gib:.2f}",
            describe(alternative.plan.settings),
        )
    console.print(nearest)


def _measured_cell(phase: MeasuredPhase | None) -> str:
    if phase is None:
        return "-"
    if phase.out_of_memory:
        return "OUT OF MEMORY"
    return f"{phase.total_gib:.2f}" if phase.total_gib is not None else "-"
