"""doctor --full's link check: what the parallel layouts send, measured through NCCL (gloo on
CPUs) at the message sizes of the default run, 1280*704 x 121 frames of TI2V-5B, for every GPU
count a Ulysses layout can use here. One torchrun launch per count, each under the hard
timeout, so that a count that hangs loses only its own figures.

The figures become `Collective`s (seconds per call, GB/s per rank) with their provenance;
`wanctl doctor --full --save` keeps them with the rig's preset.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from wanctl.core.launch import Runner
from wanctl.core.links import Collective, all_to_all_bytes, cfg_exchange_bytes
from wanctl.core.workload import Workload, ulysses_degrees
from wanctl.doctor.children import Attempt, launch
from wanctl.doctor.report import Check, Status
from wanctl.probe.base import GpuInventory, Software

LINKS_WORKER = "wanctl.workers.links"
RUN = (1280, 704, 121)  # the default run (width, height, frames), whose messages are measured
LABELS = {
    "all_to_all": "all-to-all (one of Ulysses' 4 per attention layer)",
    "cfg_exchange": "CFG exchange (CFG parallel's one a step)",
}
SHELL = "NCCL_DEBUG=INFO torchrun --standalone --nproc-per-node N -m wanctl.workers.links ..."


def link_counts(gpus: int) -> tuple[int, ...]:
    """The GPU counts measured: every Ulysses degree of TI2V-5B from 2 up to `gpus`."""
    return tuple(n for n in ulysses_degrees() if 2 <= n <= gpus)


def worker_args(gpus: int, backend: str) -> list[str]:
    """The message sizes of the default run on `gpus` ranks; the CFG exchange on even counts
    only (CFG parallel splits the ranks in two groups)."""
    workload = Workload(*RUN, gpus)
    cfg = cfg_exchange_bytes(workload) if gpus % 2 == 0 else 0
    return ["--backend", backend, "--all-to-all-bytes", str(all_to_all_bytes(workload, gpus)),
            "--cfg-bytes", str(cfg)]  # fmt: skip


def link_source(inventory: GpuInventory, software: Software, gpus: int, day: str) -> str:
    """Where figures came from: "doctor --full on 2x NVIDIA GeForce RTX 4090, NCCL 2.26.2,
    2026-12-02"."""
    names = " + ".join(sorted({gpu.name or "GPU" for gpu in inventory.live_gpus()[:gpus]}))
    nccl = f", NCCL {software.nccl}" if software.nccl else ""
    return f"doctor --full on {gpus}x {names}{nccl}, {day}"


def links_check(
    runner: Runner,
    gpus: int,
    timeout_s: float,
    *,
    source: str,
    backend: str = "auto",
    env: Mapping[str, str] | None = None,
    worker: str = LINKS_WORKER,
    extra_env: Mapping[str, str] | None = None,
) -> tuple[list[Check], tuple[Collective, ...]]:
    """Measure every collective at every count of `link_counts(gpus)`, with `env` (the NCCL
    settings the all-reduce check proved). Returns a check per collective and count (one per
    count that failed) and the figures."""
    if not link_counts(gpus):
        return [Check("links", "active", Status.SKIPPED, "one GPU: no collective to measure")], ()
    checks: list[Check] = []
    links: list[Collective] = []
    for count in link_counts(gpus):
        args = worker_args(count, backend)
        attempt = launch(runner, worker, args, count, env or {}, timeout_s, extra_env)
        if not attempt.ok:
            checks.append(_failed(attempt, count))
            continue
        measured = collectives(attempt.ranks, source)
        links += measured
        checks += [_measured_check(collective) for collective in measured]
    return checks, tuple(links)


def collectives(ranks: Sequence[Mapping[str, Any]], source: str) -> list[Collective]:
    """One `Collective` per op the ranks timed: the slowest rank's median, since a layer
    waits for its last rank."""
    per_rank = [rank["results"] for rank in ranks]
    return [
        Collective(str(op["op"]), len(ranks), int(op["bytes_per_rank"]),
                   max(float(results[index]["seconds"]) for results in per_rank), source)
        for index, op in enumerate(per_rank[0])
    ]  # fmt: skip


def _measured_check(collective: Collective) -> Check:
    mb = collective.bytes_per_rank / 1e6
    return Check(
        f"links.{collective.op}.{collective.ranks}",
        "active",
        Status.OK,
        f"{LABELS[collective.op]} of {mb:.1f} MB per rank at {RUN[0]}*{RUN[1]}x{RUN[2]} over "
        f"{collective.ranks} GPUs: {collective.seconds * 1e3:.2f} ms, "
        f"{collective.gb_per_s:.1f} GB/s per rank, exact",
        shell=SHELL,
    )


def _failed(attempt: Attempt, count: int) -> Check:
    return Check(
        f"links.{count}",
        "active",
        Status.FAIL,
        f"the all-to-all and CFG exchange over {count} GPUs {attempt.failure()}",
        fix="run with NCCL_DEBUG=INFO to see where it stops; leave the GPUs that hang out with "
        "CUDA_VISIBLE_DEVICES, or lower --gpus to a count that passed",
        shell=SHELL,
    )
