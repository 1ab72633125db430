"""The search for settings that fit a card: the candidates a backend can execute, cheapest
compromise first, and the nearest runs that would fit when none does."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from wanctl.core.settings import Settings
from wanctl.core.workload import TEMPORAL, Workload, ulysses_degrees, ulysses_problem
from wanctl.tune.predict import Card, MemoryPlan, allocator_conf, predict


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


@dataclass(frozen=True)
class Alternative:
    change: str  # "81 frames instead of 121"
    plan: MemoryPlan


def candidates(workload: Workload, constraints: Constraints, platform: str) -> Iterator[Settings]:
    """Settings the backend executes, cheapest compromise first. The text encoder on the GPU
    before the CPU (a CPU encode of 5.7 B parameters takes tens of seconds); for the official
    code, `--offload_model` (seconds of copies a run) before `--t5_cpu`, and the DiT replicated
    before `--dit_fsdp` (FSDP all-gathers every layer at every step; several GPUs only). For
    the diffusers worker neither is proposed (TI2V-5B's DiT is freed before the decode anyway;
    sharding saves at most its 9.3 GiB): only tried when pinned. Decode on every
    rank and chunk_t 1 unless pinned: fewer ranks or larger chunks only add memory."""
    official = constraints.backend == "wan-repo"
    dits = ["replicated", "fsdp"] if official and workload.gpus > 1 else ["replicated"]
    encoders = ["gpu", "cpu"]
    offloads = [False, True] if official else [False]
    choices = itertools.product(
        [constraints.dit] if constraints.dit else dits,
        [constraints.text_encoder] if constraints.text_encoder else encoders,
        [constraints.offload] if constraints.offload is not None else offloads,
    )
    for dit, encoder, offload in choices:
        yield Settings(
            backend=constraints.backend,
            chunk_t=constraints.chunk_t or 1,
            decode_ranks=constraints.decode_ranks or workload.gpus,
            decode_dtype=constraints.decode_dtype,
            dit=dit,
            offload=offload,
            text_encoder=encoder,
            expandable_segments=allocator_conf(platform) is not None,
        )


def plan(
    workload: Workload,
    card: Card,
    constraints: Constraints = Constraints(),
    *,
    platform: str = "linux",
    nccl_env: Mapping[str, str] | None = None,
) -> MemoryPlan:
    """The first settings that fit, in `candidates` order; when none does, the plan with the
    lowest peak (`fits` False: see `alternatives`). A run diffusers' Ulysses cannot split over
    its GPUs is planned all the same but carries the `problem` (`ulysses_problem`), so that it
    is not `runnable` whatever the memory: `fits` stays the memory's verdict."""
    tried = [
        predict(workload, card, settings, platform=platform, nccl_env=nccl_env)
        for settings in candidates(workload, constraints, platform)
    ]
    return next(
        (p for p in tried if p.runnable),
        next((p for p in tried if p.fits), min(tried, key=lambda p: p.peak_gib)),
    )


def alternatives(
    workload: Workload,
    card: Card,
    constraints: Constraints = Constraints(),
    *,
    platform: str = "linux",
) -> tuple[Alternative, ...]:
    """The nearest runs that would fit and that the backend can split: each pin released, fewer
    frames, a smaller size of the same shape, the other backend (the official code shards the
    DiT with --dit_fsdp), more GPUs (fewer first, when the tokens or heads do not split over
    these)."""

    def fitting(w: Workload, c: Constraints = constraints) -> MemoryPlan | None:
        if ulysses_problem(w, c.backend):
            return None
        found = plan(w, card, c, platform=platform)
        return found if found.runnable else None

    found: list[Alternative] = []
    released = {
        "text_encoder": dataclasses.replace(constraints, text_encoder=None),
        "offload": dataclasses.replace(constraints, offload=None),
        "dit": dataclasses.replace(constraints, dit=None),
        "decode_ranks": dataclasses.replace(constraints, decode_ranks=None),
        "chunk_t": dataclasses.replace(constraints, chunk_t=None),
    }
    for name, unpinned in released.items():
        pinned = getattr(constraints, name)
        if pinned is not None and (p := fitting(workload, unpinned)):
            found.append(Alternative(f"{_label(name, p.settings)} (instead of {pinned})", p))
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
    if ulysses_problem(workload, constraints.backend):
        for gpus in (n for n in reversed(ulysses_degrees()) if n < workload.gpus):
            if p := fitting(dataclasses.replace(workload, gpus=gpus), pins):
                found.append(Alternative(f"{gpus} GPUs (instead of {workload.gpus})", p))
                break
    for gpus in (n for n in ulysses_degrees() if n > workload.gpus):
        if p := fitting(dataclasses.replace(workload, gpus=gpus), pins):
            found.append(Alternative(f"{gpus} GPUs (instead of {workload.gpus})", p))
            break
    return tuple(found)  # fmt: skip


def _label(name: str, settings: Settings) -> str:
    value = getattr(settings, name)
    if name == "text_encoder":
        return f"text encoder on {value.upper()}"
    if name == "offload":
        return "offload the DiT" if value else "no offload"
    if name == "decode_ranks":
        return f"decode on {value} ranks"
    return f"DiT {value}" if name == "dit" else f"chunk_t {value}"


def _smaller_sizes(width: int, height: int) -> Iterator[tuple[int, int]]:
    """Sizes of about the same shape, multiples of 32, largest first."""
    for new_width in range(width - 32, 31, -32):
        new_height = max(32, round(new_width * height / width / 32) * 32)
        if new_height <= height:
            yield new_width, new_height
