"""The search for settings that fit a card: the candidates a backend can execute, cheapest
compromise first, and the nearest runs that would fit when none does."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from wanctl.core.settings import FP8_INSTALL, Settings, check_fp8_pins, torchao_installed
from wanctl.core.variables import busy_chunk_t
from wanctl.core.workload import TEMPORAL, Workload, ulysses_degrees, ulysses_problem
from wanctl.tune.host import HOST_MARGIN, host_plan
from wanctl.tune.predict import Card, MemoryPlan, allocator_conf, predict, unplanned
from wanctl.tune.speed import RigLinks, step_time


@dataclass(frozen=True)
class Constraints:
    """What the user pinned; None leaves it to the search."""

    backend: str = "diffusers"
    text_encoder: str | None = None
    offload: bool | None = None
    dit: str | None = None
    decode_dtype: str = "bf16"
    decode_ranks: int | None = None
    chunk_t: int | None = None
    dit_storage: str | None = None
    cfg_parallel: bool | None = None
    dit_precision: str | None = None
    compile: bool | None = None
    # Not a pin: the search may compute in fp8 where the DiT's weights must be fp8 to fit (the
    # rig's GPUs have fp8 tensor cores and torchao is installed: `fp8_computable`).
    fp8_compute: bool = False

    def __post_init__(self) -> None:
        check_fp8_pins(self.dit_precision, self.dit_storage)


@dataclass(frozen=True)
class Alternative:
    change: str  # "81 frames instead of 121"
    plan: MemoryPlan


def candidates(workload: Workload, constraints: Constraints, platform: str) -> Iterator[Settings]:
    """Settings the backend executes, cheapest compromise first (`placements_tried`), each
    with the text encoder on the GPU before the CPU (a CPU encode of 5.7 B parameters takes
    tens of seconds). Decode on every rank, unless pinned, at the chunk_t that keeps each
    decoding GPU busy (`busy_chunk_t`), then at chunk_t 1 where that does not fit."""
    ranks = constraints.decode_ranks or workload.gpus
    chunks = [constraints.chunk_t] if constraints.chunk_t else sorted({busy_chunk_t(ranks), 1},
                                                                       reverse=True)  # fmt: skip
    for dit, storage, offload, precision in placements_tried(workload, constraints):
        for encoder in [constraints.text_encoder] if constraints.text_encoder else ["gpu", "cpu"]:
            for cfg, chunk_t in itertools.product(layouts_tried(workload, constraints), chunks):
                yield Settings(
                    backend=constraints.backend,
                    chunk_t=chunk_t,
                    decode_ranks=ranks,
                    decode_dtype=constraints.decode_dtype,
                    dit=dit,
                    offload=offload,
                    text_encoder=encoder,
                    expandable_segments=allocator_conf(platform) is not None,
                    dit_storage=storage,
                    cfg_parallel=cfg,
                    dit_precision=precision,
                    compile=True if constraints.compile is None else constraints.compile,
                )


def layouts_tried(workload: Workload, constraints: Constraints) -> tuple[bool, ...]:
    """CFG parallel off, and on where the diffusers worker can split the ranks in two (the
    plan keeps the faster that fits: `plan`)."""
    if constraints.cfg_parallel is not None:
        return (constraints.cfg_parallel,)
    splits = constraints.backend == "diffusers" and workload.gpus % 2 == 0
    return (False, True) if splits else (False,)


def placements_tried(
    workload: Workload, constraints: Constraints
) -> list[tuple[str, str, bool, str]]:
    """(dit, dit_storage, offload, dit_precision) in the order tried, those the user pinned
    kept:

    - the official code: the DiT replicated before `--dit_fsdp` (FSDP all-gathers every layer
      at every step; several GPUs only), `--offload_model` (seconds of copies a run) after
      not; in bf16 (it has no fp8 storage);
    - diffusers, TI2V-5B: replicated in bf16 (the DiT is freed before the decode anyway;
      sharding saves at most its 9.3 GiB);
    - diffusers, A14B: both experts on the GPU; the idle one on the CPU (one swap of an expert
      a run, about 7 s on an H200, and an expert's worth of host RAM per rank); both sharded
      (an all-gather per block and forward: several GPUs only); then the same three with the
      experts stored in fp8, which costs quality (`wanctl.tune.predict.FP8_ERROR`).
    Where fp8 weights are tried and the rig can compute in fp8 (`Constraints.fp8_compute`),
    the replicated DiT computed in fp8 comes first among them: it stores the same bytes, runs
    faster than bf16 once compiled (layerwise casting runs slower, eager) and errs about half
    as much (`FP8_COMPUTE_ERROR`); for TI2V-5B it is the one fp8 placement.
    A pinned placement outside these is tried alone: the user asked for it (and
    `run_problem` says when the backend cannot run it)."""
    several = workload.gpus > 1
    if constraints.backend == "wan-repo":
        order = [(dit, "bf16", offload) for dit in ("replicated", "fsdp")[: 1 + several]
                 for offload in (False, True)]  # fmt: skip
    elif workload.family.experts == 1:
        order = [("replicated", "bf16", False)]
    else:
        order = [(dit, storage, offload) for storage in ("bf16", "fp8")
                 for dit, offload in (("replicated", False), ("replicated", True),
                                      ("fsdp", False))[: 2 + several]]  # fmt: skip
    if constraints.dit_precision == "fp8":  # fp8 compute multiplies fp8-stored weights
        order = list(dict.fromkeys((dit, "fp8", offload) for dit, _, offload in order))
    pins = (constraints.dit, constraints.dit_storage, constraints.offload)
    kept = [p for p in order if all(pin in (None, v) for pin, v in zip(pins, p, strict=True))]
    if not kept:
        dit, storage, offload = order[0]
        pinned_offload = offload if constraints.offload is None else constraints.offload
        kept = [(constraints.dit or dit, constraints.dit_storage or storage, pinned_offload)]
    return with_precision(kept, constraints)


def with_precision(
    placements: list[tuple[str, str, bool]], constraints: Constraints
) -> list[tuple[str, str, bool, str]]:
    """Each placement with the precision it computes in (the pinned one, else bf16), and,
    where the rig can compute in fp8 and the pins allow it, the replicated DiT computed in fp8
    before the first fp8-stored placement (`placements_tried`)."""
    tried = [(*p, constraints.dit_precision or "bf16") for p in placements]
    if constraints.dit_precision is not None or not constraints.fp8_compute:
        return tried
    computed = ("replicated", "fp8", False)
    pins = (constraints.dit, constraints.dit_storage, constraints.offload)
    if constraints.backend != "diffusers" or any(
        pin not in (None, value) for pin, value in zip(pins, computed, strict=True)
    ):
        return tried
    at = next((i for i, p in enumerate(tried) if p[1] == "fp8"), len(tried))
    return [*tried[:at], (*computed, "fp8"), *tried[at:]]


def fp8_computable(card: Card) -> bool:
    """The run can compute its DiT in fp8: the card has fp8 tensor cores and torchao is
    installed here (`generate` refuses fp8 compute otherwise)."""
    return card.fp8_tensor_cores and torchao_installed()


def plan(
    workload: Workload,
    card: Card,
    constraints: Constraints = Constraints(),
    *,
    platform: str = "linux",
    nccl_env: Mapping[str, str] | None = None,
    host_free_gib: float | None = None,
    links: RigLinks | None = None,
) -> MemoryPlan:
    """The first placement that fits, in `candidates` order, in the layout (Ulysses N, or CFG
    2 x Ulysses N/2) predicted fastest over the rig's `links` (without them, the first layout
    that fits: Ulysses unless pinned); when none fits, the plan with the lowest peak (`fits`
    False: see `alternatives`). A run diffusers' Ulysses cannot split over
    its GPUs is planned all the same but carries the `problem` (`ulysses_problem`), so that it
    is not `runnable` whatever the memory: `fits` stays the memory's verdict. With the host's
    free RAM known, settings whose ranks the host cannot hold carry a `host_problem`."""
    tried = [
        with_step(with_host(predict(workload, card, settings, platform=platform,
                                    nccl_env=nccl_env), host_free_gib), links)
        for settings in candidates(workload, constraints, platform)
    ]  # fmt: skip
    runnable = [p for p in tried if p.runnable]
    if runnable:  # the first placement that runs, in its fastest layout
        first = _placement(runnable[0].settings)
        same = [p for p in runnable if _placement(p.settings) == first]
        return min(same, key=lambda p: p.step.total_s if p.step else 0.0)
    return next((p for p in tried if p.fits), min(tried, key=lambda p: p.peak_gib))


def _placement(settings: Settings) -> Settings:
    return dataclasses.replace(settings, cfg_parallel=False)


def with_step(memory_plan: MemoryPlan, links: RigLinks | None) -> MemoryPlan:
    """The plan with its layout's predicted seconds per step, where the rig's links are known
    (`wanctl.tune.speed`)."""
    if links is None or memory_plan.settings.backend != "diffusers":
        return memory_plan
    step = step_time(memory_plan.workload, memory_plan.settings, memory_plan.card.name,
                     links.interconnect, links.measured)  # fmt: skip
    return dataclasses.replace(memory_plan, step=step)


def with_host(memory_plan: MemoryPlan, host_free_gib: float | None) -> MemoryPlan:
    """The plan with its `host_problem` when the diffusers worker's ranks (all on this host,
    loading a checkpoint) need more than `HOST_MARGIN` of `host_free_gib`."""
    if host_free_gib is None or memory_plan.settings.backend != "diffusers":
        return memory_plan
    workload = memory_plan.workload
    host = host_plan(workload, memory_plan.settings, workload.gpus, checkpoint=True)
    if host.total_gib <= HOST_MARGIN * host_free_gib:
        return memory_plan
    return dataclasses.replace(
        memory_plan,
        host_problem=f"its ranks need {host.describe()} of host RAM, more than "
        f"{HOST_MARGIN:.0%} of the {host_free_gib:.1f} GiB free",
    )


def alternatives(
    workload: Workload,
    card: Card,
    constraints: Constraints = Constraints(),
    *,
    platform: str = "linux",
    host_free_gib: float | None = None,
) -> tuple[Alternative, ...]:
    """The nearest runs that would fit and that the backend can split: each pin released, fp8
    compute where the card has it but torchao is missing, fewer frames, a smaller size of the
    same shape, the other backend (the official code shards the
    DiT with --dit_fsdp), more GPUs (fewer first, when the tokens or heads do not split over
    these)."""

    def fitting(w: Workload, c: Constraints = constraints) -> MemoryPlan | None:
        if ulysses_problem(w, c.backend) or unplanned(w, c.backend):
            return None
        found = plan(w, card, c, platform=platform, host_free_gib=host_free_gib)
        return found if found.runnable else None

    found: list[Alternative] = []
    released = {
        "text_encoder": dataclasses.replace(constraints, text_encoder=None),
        "offload": dataclasses.replace(constraints, offload=None),
        "dit": dataclasses.replace(constraints, dit=None),
        "dit_storage": dataclasses.replace(constraints, dit_storage=None),
        "decode_ranks": dataclasses.replace(constraints, decode_ranks=None),
        "chunk_t": dataclasses.replace(constraints, chunk_t=None),
    }
    for name, unpinned in released.items():
        pinned = getattr(constraints, name)
        if pinned is not None and (p := fitting(workload, unpinned)):
            found.append(Alternative(f"{_label(name, p.settings)} (instead of {pinned})", p))
    if card.fp8_tensor_cores and not constraints.fp8_compute and constraints.backend == "diffusers":
        computed = dataclasses.replace(constraints, fp8_compute=True)
        if (p := fitting(workload, computed)) and p.settings.dit_precision == "fp8":
            found.append(Alternative(f"the DiT computed in fp8, once torchao is installed: "
                                     f"{FP8_INSTALL}", p))  # fmt: skip
    if constraints.decode_dtype == "fp32" and (
        p := fitting(workload, dataclasses.replace(constraints, decode_dtype="bf16"))
    ):
        found.append(Alternative("decode in bf16 (instead of fp32)", p))
    for frames in range(workload.frames - TEMPORAL, 0, -TEMPORAL):
        if p := fitting(dataclasses.replace(workload, frames=frames)):
            found.append(Alternative(f"{frames} frames (instead of {workload.frames})", p))
            break
    for width, height in _smaller_sizes(workload.width, workload.height):
        if p := fitting(dataclasses.replace(workload, width=width, height=height)):
            found.append(Alternative(f"{width}*{height} (instead of {workload.size})", p))
            break
    other = "wan-repo" if constraints.backend == "diffusers" else "diffusers"
    unpinned = Constraints(backend=other, decode_dtype=constraints.decode_dtype)
    if p := fitting(workload, unpinned):
        sharded = " (the DiT sharded with --dit_fsdp)" if p.settings.dit == "fsdp" else ""
        found.append(Alternative(f"--backend {other}{sharded}", p))
    pins = dataclasses.replace(constraints, decode_ranks=None)
    # fewer ranks when these cannot split the run, or hold less host RAM
    if ulysses_problem(workload, constraints.backend) or host_free_gib is not None:
        for gpus in (n for n in reversed(ulysses_degrees(workload.family.heads))
                     if n < workload.gpus):  # fmt: skip
            if p := fitting(dataclasses.replace(workload, gpus=gpus), pins):
                found.append(Alternative(f"{gpus} GPUs (instead of {workload.gpus})", p))
                break
    for gpus in (n for n in ulysses_degrees(workload.family.heads) if n > workload.gpus):
        if p := fitting(dataclasses.replace(workload, gpus=gpus), pins):
            found.append(Alternative(f"{gpus} GPUs (instead of {workload.gpus})", p))
            break
    return tuple(found)  # fmt: skip


def _label(name: str, settings: Settings) -> str:
    value = getattr(settings, name)
    if name == "text_encoder":
        return f"text encoder on {value.upper()}"
    if name == "offload":
        if settings.backend == "diffusers":
            return "the idle expert on the CPU" if value else "both experts on the GPU"
        return "offload the DiT" if value else "no offload"
    if name == "dit_storage":
        return f"DiT stored in {value}"
    if name == "decode_ranks":
        return f"decode on {value} ranks"
    return f"DiT {value}" if name == "dit" else f"chunk_t {value}"


def _smaller_sizes(width: int, height: int) -> Iterator[tuple[int, int]]:
    """Sizes of about the same shape, multiples of 32, largest first."""
    for new_width in range(width - 32, 31, -32):
        new_height = max(32, round(new_width * height / width / 32) * 32)
        if new_height <= height:
            yield new_width, new_height
