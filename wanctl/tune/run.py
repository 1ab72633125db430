"""`wanctl tune` as a library: `run` takes `TuneOptions` and returns the `TuneReport` (the
plan, what would fit instead, the preset saved, the figures measured)."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass

from wanctl.core.families import FAMILIES
from wanctl.core.settings import GIB
from wanctl.core.workload import Workload, parse_size
from wanctl.doctor.passive import nccl_environment
from wanctl.errors import UsageError, WanctlError
from wanctl.probe.base import System, fingerprint
from wanctl.probe.catalog import parse_rig
from wanctl.probe.local import LocalProbe
from wanctl.tune import presets
from wanctl.tune.host import HostPlan, host_plan
from wanctl.tune.measure import MeasuredPhase, measure_plan
from wanctl.tune.predict import MemoryPlan, predict
from wanctl.tune.rig_links import links_of
from wanctl.tune.search import (
    Alternative,
    Constraints,
    alternatives,
    fp8_computable,
    layouts_tried,
    plan,
    with_host,
    with_step,
)
from wanctl.tune.speed import RigLinks


@dataclass(frozen=True)
class TuneOptions:
    gpus: int | None
    size: str  # "": the model's first official size
    frames: int  # 0: the model's frames
    rig: str | None
    preset: str | None
    constraints: Constraints
    measure: bool
    save: bool
    force: bool
    json: bool
    task: str = "ti2v-5B"  # the model: an official task name (`wanctl.core.families`)
    # The host's free RAM; None: this machine's (a described rig's: unknown).
    host_ram_gb: float | None = None


@dataclass(frozen=True)
class TuneReport:
    fingerprint: str
    rig: presets.Rig
    plan: MemoryPlan
    alternatives: tuple[Alternative, ...]
    saved: presets.Entry | None  # what the rig's preset already holds for this workload
    preset_error: str | None = None  # why the rig's preset could not be read
    measured: tuple[MeasuredPhase, ...] = ()
    written: str | None = None  # the preset file written by --save / --measure
    host: HostPlan | None = None  # the diffusers worker's host RAM, loading a checkpoint
    host_free_gib: float | None = None  # this machine's free RAM (a described rig: unknown)
    # The chosen placement in each layout the backend can run here, with its seconds per step.
    layouts: tuple[MemoryPlan, ...] = ()
    warnings: tuple[str, ...] = ()  # what the plan assumes: a model the catalog lacks

    @property
    def ran_out_of_memory(self) -> bool:
        return any(phase.out_of_memory for phase in self.measured)


def resolve_rig(options: TuneOptions) -> tuple[str, presets.Rig, str, float | None]:
    """The rig's fingerprint, its description, the platform the run will be on and the host's
    free RAM in GiB (known for this machine only)."""
    if options.rig is not None and options.preset is not None:
        raise UsageError("--rig and --preset both name a rig", fix="give one of them")
    if options.rig is not None:
        inventory, rig = presets.rig_of(options.rig)
        return fingerprint(inventory), rig, "linux", None
    if options.preset is not None:
        found = presets.require(options.preset)
        return found.fingerprint, found.rig, "linux", None
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
    free = system.host_mem_available_bytes
    return fingerprint(inventory), rig, sys.platform, free / GIB if free else None


def rig_warnings(options: TuneOptions) -> tuple[str, ...]:
    """What planning for the described rig assumes (a model the catalog lacks)."""
    warning = parse_rig(options.rig)[1].warning if options.rig is not None else None
    return (warning,) if warning else ()


def run(options: TuneOptions) -> TuneReport:
    rig_fingerprint, rig, platform, host_free_gib = resolve_rig(options)
    if options.host_ram_gb is not None:
        host_free_gib = options.host_ram_gb * 1e9 / GIB
    family = FAMILIES[options.task]
    width, height = parse_size(options.size or family.sizes[0])
    gpus = rig.gpus if options.gpus is None else options.gpus
    if gpus > rig.gpus:
        raise UsageError(
            f"--gpus {gpus} on a rig of {rig.gpus} GPU{'s' if rig.gpus > 1 else ''}",
            fix=f"use --gpus {rig.gpus} or fewer, or plan for a larger rig with --rig",
        )
    workload = Workload(width, height, options.frames or family.frames, gpus,
                        image=family.image == "required", family=family)  # fmt: skip
    constraints = dataclasses.replace(options.constraints, fp8_compute=fp8_computable(rig.card))
    links = links_of(rig_fingerprint)
    chosen = plan(workload, rig.card, constraints, platform=platform, nccl_env=rig.nccl_env,
                  host_free_gib=host_free_gib, links=links)  # fmt: skip
    saved, preset_error = _saved_entry(rig_fingerprint, workload, constraints.backend)
    report = TuneReport(
        fingerprint=rig_fingerprint,
        rig=rig,
        plan=chosen,
        alternatives=()
        if chosen.runnable
        else alternatives(
            workload, rig.card, constraints, platform=platform, host_free_gib=host_free_gib
        ),  # fmt: skip
        saved=saved,
        preset_error=preset_error,
        host=host_plan(workload, chosen.settings, gpus, checkpoint=True)
        if chosen.settings.backend == "diffusers"
        else None,
        host_free_gib=host_free_gib,
        layouts=layout_plans(chosen, host_free_gib, links),
        warnings=rig_warnings(options),
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


def layout_plans(
    chosen: MemoryPlan, host_free_gib: float | None, links: RigLinks
) -> tuple[MemoryPlan, ...]:
    """`chosen`'s placement in Ulysses N and, where the ranks split in two, CFG 2 x Ulysses
    N/2: the memory and predicted seconds per step of each (the diffusers backend's)."""
    if chosen.settings.backend != "diffusers":
        return ()
    workload, card = chosen.workload, chosen.card
    return tuple(
        with_step(with_host(predict(workload, card, dataclasses.replace(chosen.settings,
                  cfg_parallel=cfg)), host_free_gib), links)
        for cfg in layouts_tried(workload, Constraints())
    )  # fmt: skip


def _saved_entry(
    rig_fingerprint: str, workload: Workload, backend: str
) -> tuple[presets.Entry | None, str | None]:
    """What the rig's preset holds for this run; an unreadable preset does not stop planning
    (saving over it is refused)."""
    try:
        existing = presets.load(rig_fingerprint)
    except UsageError as error:
        return None, error.message
    return (existing.find(workload, backend) if existing else None), None


def _measure(report: TuneReport, entry: presets.Entry) -> tuple[TuneReport, presets.Entry]:
    """The plan run by the generate worker on this machine's GPUs; the figures go with it."""
    phases = measure_plan(report.plan, LocalProbe().gpus())
    figures = {
        p.phase: presets.Figures.rounded(p.allocated_gib, p.reserved_gib, p.total_gib)
        for p in phases
        if p.reserved_gib is not None and p.total_gib is not None
    }  # fmt: skip
    entry = dataclasses.replace(entry, source="measured", measured=figures)
    return dataclasses.replace(report, measured=phases), entry


def failure(report: TuneReport) -> WanctlError | None:
    """The error a report ends in: the plan cannot run, or the measured run ran out of memory
    although the model predicted it would fit; None when neither."""
    if not report.plan.runnable:
        return refusal(report)
    if report.ran_out_of_memory:
        return WanctlError(
            "the measured run ran out of memory although the model predicted it would fit",
            why="the model's coefficients do not match this rig",
            fix="nothing was saved; run benchmarks/memory_model.py on this GPU and add its rows "
            "to wanctl/tune/measurements.py, or pin --text-encoder cpu",
        )
    return None


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
    if chosen.fits and chosen.host_problem:
        workload = chosen.workload
        return WanctlError(
            f"{workload.family.name} {workload.size}x{workload.frames} on {workload.gpus} GPU(s)"
            " does not fit the host's RAM",
            why=chosen.host_problem,
            fix=f"nearest runs that fit: {nearest}"
            if nearest
            else "free host memory or add RAM, or run on fewer GPUs",
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
