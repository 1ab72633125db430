"""`wanctl decode` as a library: check the inputs, plan, decode (here, or on N ranks through
torchrun), fall back when the GPU runs out of memory, and return a `DecodeSummary`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from wanctl.core.launch import (
    LaunchSpec,
    Runner,
    SubprocessRunner,
    check_gpus_visible,
    check_output,
    chunk_t,
    partial_path,
    thread_env,
    torchrun_argv,
)
from wanctl.core.progress import announce, progress_bar
from wanctl.core.timeline import Timeline, process_started
from wanctl.decode.fallback import DecodeOutOfMemory, DecodePlan, fallback_plans, run_ladder
from wanctl.decode.latents import Latents, load_latents
from wanctl.decode.load import check_latents_fit, family_of, load_vae, spec_family
from wanctl.decode.parallel import RowSplit, split_dim
from wanctl.decode.stream import StreamResult, decode_tiled_to_file, decode_to_file
from wanctl.errors import INTERRUPTED, UsageError, WanctlError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DEVICES = ("cuda", "cpu")
WORKER = "wanctl.workers.decode"
# Where a worker's own traceback is: --debug shows only this process's.
WORKER_TRACEBACK = (
    "the worker's traceback is in torchrun's output above (--debug shows only wanctl's own); "
    "with none there, the rank was killed: `dmesg | tail` names the out-of-memory killer"
)


@dataclass(frozen=True)
class DecodeOptions:
    """What the user asked for; None means the default."""

    latents: Path
    output: Path
    vae: str
    device: str | None = None
    dtype: str | None = None
    chunk_t: int | None = None
    gpus: int | None = None
    progress: bool = True
    overwrite: bool = False  # replace an existing output (once the new one is complete)


@dataclass(frozen=True)
class DecodeSummary:
    """A finished decode: the video, how it was decoded, and what it cost per rank."""

    output: Path
    frames: int
    width: int
    height: int
    fps: float
    seconds: float
    total_seconds: float
    warmup_seconds: float  # compiling or loading GPU kernels, before `seconds`; slowest rank
    load_seconds: float  # loading the VAE decoder, before that; slowest rank
    kernel_problem: str | None  # why a GPU kernel could not be built (PyTorch ran instead)
    exact: bool
    plan: DecodePlan
    peak_allocated_gib: list[float | None]
    peak_reserved_gib: list[float | None]
    attempts: list[str]
    timeline: Timeline | None = None  # where the wall time went, from the process's start


def run_decode(
    options: DecodeOptions,
    *,
    runner: Runner | None = None,
    env: Mapping[str, str] = os.environ,
    notify: Callable[[str], None] = lambda _: None,
) -> DecodeSummary:
    """Decode `options.latents` into `options.output`, falling back when out of memory. Ctrl-C
    stops every rank and leaves no partial file (exit 130)."""
    start, started = time.perf_counter(), process_started()
    latents = load_latents(options.latents)
    if family := spec_family(options.vae):
        check_latents_fit(latents.vae, family, options.vae)
    check_output(options.output, options.latents, overwrite=options.overwrite)
    gpus = torch.cuda.device_count()
    first = first_plan(options, latents, env, gpus)
    max_ranks = min(gpus, _split_length(latents))
    job = _Job(options, latents, runner or SubprocessRunner())
    try:
        plan, results, attempts = run_ladder(fallback_plans(first, max_ranks), job.attempt,
                                             notify)  # fmt: skip
    except KeyboardInterrupt:
        raise WanctlError(
            f"interrupted during the decode; nothing was written to {options.output}",
            why=f"Ctrl-C stopped every rank; the latents in {options.latents} are untouched",
            fix="run the same `wanctl decode` command again",
            exit_code=INTERRUPTED,
        ) from None
    finally:  # a rank killed mid-write leaves its writer's partial file
        partial_path(options.output).unlink(missing_ok=True)
    return DecodeSummary(
        output=options.output,
        frames=latents.frames,
        width=latents.width,
        height=latents.height,
        fps=latents.fps,
        seconds=results[0].seconds,
        total_seconds=time.perf_counter() - start,
        warmup_seconds=max(r.warmup_seconds for r in results),
        load_seconds=max(r.load_seconds for r in results),
        timeline=decode_timeline(results, started, start, time.perf_counter()),
        kernel_problem=next((r.kernel_problem for r in results if r.kernel_problem), None),
        exact=plan.exact,
        plan=plan,
        peak_allocated_gib=[r.peak_allocated_gib for r in results],
        peak_reserved_gib=[r.peak_reserved_gib for r in results],
        attempts=attempts,
    )


def decode_timeline(
    results: list[StreamResult], started: float | None, start: float, end: float
) -> Timeline | None:
    """From this process's start (`started`, wall clock) to now: Python's start and the
    imports until `run_decode` began (`start`, perf_counter like `end`), the VAE load, the
    kernels, the decode, and the rest (the latents read and checked, torchrun for several
    ranks, a fallback's failed attempts)."""
    if started is None:
        return None
    total = time.time() - started
    first = results[0]
    parts = [("python start and imports", total - (end - start)), ("VAE load", first.load_seconds),
             ("decode kernels", first.warmup_seconds), ("decode", first.seconds)]  # fmt: skip
    parts.append(("other", total - sum(s for _, s in parts)))
    return Timeline(tuple(parts), total, None)


def first_plan(
    options: DecodeOptions, latents: Latents, env: Mapping[str, str], gpus: int
) -> DecodePlan:
    """The plan as asked, defaults filled in: cuda when a GPU is visible, bf16 on GPU and
    float32 on CPU, every visible GPU, chunk_t from `WAN_VAE_DECODE_CHUNK_T`, else what
    keeps that many GPUs busy (`busy_chunk_t`: 1 on one or two, ranks // 2 beyond; 1 on
    CPUs)."""
    device = options.device or ("cuda" if gpus else "cpu")
    if device not in DEVICES:
        raise UsageError(f"unknown device {device!r}", fix="use --device cuda or --device cpu")
    if device == "cuda" and not gpus:
        raise UsageError("no CUDA GPU is visible", fix="decode on the CPU with --device cpu")
    dtype = options.dtype or ("bf16" if device == "cuda" else "fp32")
    if dtype not in DTYPES:
        raise UsageError(f"unknown dtype {dtype!r}", fix=f"use one of {', '.join(DTYPES)}")
    rows = _split_length(latents)
    ranks = options.gpus or (min(gpus, rows) if device == "cuda" else 1)
    _check_ranks(ranks, device, gpus, rows)
    busy = ranks if device == "cuda" else 1  # measured on GPUs; CPU ranks decode one a call
    return DecodePlan(ranks, chunk_t(options.chunk_t, env, busy), device, dtype)


def decode_here(
    options: DecodeOptions,
    latents: Latents,
    plan: DecodePlan,
    split: RowSplit | None = None,
    device: torch.device | None = None,
) -> StreamResult:
    """This process's part of `plan`: load the VAE, decode, write (rank 0). A torchrun worker
    passes its `split` and device; CUDA running out of memory raises torch.OutOfMemoryError."""
    device = device or torch.device(plan.device)
    show = options.progress and (split is None or split.rank == 0)
    if show:
        announce(f"loading the VAE decoder ({options.vae}, {plan.dtype}, {plan.device})")
    loading = time.perf_counter()
    vae = load_vae(options.vae, device=device, dtype=DTYPES[plan.dtype])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    loaded = time.perf_counter() - loading
    check_latents_fit(latents.vae, family_of(vae, options.vae), options.vae)
    z = latents.for_decoder(vae.config["latents_mean"], vae.config["latents_std"])
    if show:
        announce(f"decoding {latents.frames} frames on {plan.ranks} rank(s)")
    with progress_bar("decoding", "frames", latents.frames, show) as on_frames:
        if plan.tiled:
            result = decode_tiled_to_file(
                vae, z, options.output, fps=latents.fps, on_frames=on_frames
            )
        else:
            result = decode_to_file(
                vae, z, options.output, fps=latents.fps, chunk_t=plan.chunk_t, split=split,
                on_frames=on_frames,
            )  # fmt: skip
    return dataclasses.replace(result, load_seconds=loaded)


def decode_rank(
    options: DecodeOptions,
    latents: Latents,
    device: torch.device,
    ranks: int,
    group: dist.ProcessGroup | None = None,
) -> StreamResult:
    """A torchrun worker's part of a decode over `ranks` ranks of `group` (all, by default),
    with `options`' device, dtype and chunk_t."""
    assert options.device and options.dtype and options.chunk_t, "a worker's options are whole"
    plan = DecodePlan(ranks, options.chunk_t, options.device, options.dtype)
    split = RowSplit.for_latents(latents.tensor.shape, group) if ranks > 1 else None
    return decode_here(options, latents, plan, split, device)


class _Job:
    """Runs one plan of a decode: in this process for one rank, through torchrun for more."""

    def __init__(self, options: DecodeOptions, latents: Latents, runner: Runner):
        self.options = options
        self.latents = latents
        self.runner = runner

    def attempt(self, plan: DecodePlan) -> list[StreamResult]:
        if plan.ranks > 1:
            return self._torchrun(plan)
        try:
            return [decode_here(self.options, self.latents, plan)]
        except torch.OutOfMemoryError as error:
            detail = str(error).splitlines()[0]
        # Raised here, after the except block, so that the failed attempt's frames (and the
        # GPU memory they hold) are gone before the next attempt.
        raise DecodeOutOfMemory(detail)

    def _torchrun(self, plan: DecodePlan) -> list[StreamResult]:
        with tempfile.TemporaryDirectory(prefix="wanctl-decode-") as folder:
            report = Path(folder) / "report.json"
            spec = LaunchSpec(
                torchrun_argv(WORKER, worker_args(self.options, plan, report), plan.ranks),
                env=thread_env(plan.device, plan.ranks, os.environ),
                capture_output=False,
            )
            result = self.runner.run(spec)
            return read_report(report, plan.ranks, result.returncode)


def worker_args(options: DecodeOptions, plan: DecodePlan, report: Path) -> list[str]:
    """The command line of `wanctl.workers.decode` for `plan`."""
    args = [
        "--latents", str(options.latents),
        "--output", str(options.output),
        "--vae", options.vae,
        "--device", plan.device,
        "--dtype", plan.dtype,
        "--chunk-t", str(plan.chunk_t),
        "--report", str(report),
    ]  # fmt: skip
    return args if options.progress else [*args, "--no-progress"]


def failure_path(report: Path, rank: int) -> Path:
    """Where rank `rank` of a worker group writes why it failed."""
    return report.with_name(f"{report.stem}.rank{rank}.json")


def read_report(report: Path, ranks: int, returncode: int | None) -> list[StreamResult]:
    """The per-rank results rank 0 wrote, or the failure the ranks reported: out of memory
    on any rank first (the others die of its absence), then a user error, then the exit."""
    if returncode == 0 and report.is_file():
        return [StreamResult(**r) for r in json.loads(report.read_text())]
    failures = [
        json.loads(path.read_text())
        for rank in range(ranks)
        if (path := failure_path(report, rank)).is_file()
    ]
    for failure in failures:
        if failure["kind"] == "oom":
            raise DecodeOutOfMemory(failure["message"])
    if failures:
        f = failures[0]
        raise WanctlError(f["message"], why=f["why"], fix=f["fix"], exit_code=f["exit_code"])
    raise WanctlError(
        f"the decode workers failed (torchrun exit code {returncode})",
        why="a worker stopped with an error wanctl does not know (a bug), or was killed",
        fix=WORKER_TRACEBACK + "; on GPUs, NCCL_DEBUG=INFO shows transport problems",
    )


def write_report(report: Path, results: list[StreamResult]) -> None:
    report.write_text(json.dumps([asdict(r) for r in results]))


def write_failure(report: Path, rank: int, error: torch.OutOfMemoryError | WanctlError) -> None:
    """Record why this rank failed, for the parent to report (or to fall back on)."""
    failure: dict[str, object]
    if isinstance(error, WanctlError):
        failure = {"kind": "error", "message": error.message, "why": error.why}
        failure.update(fix=error.fix, exit_code=error.exit_code)
    else:
        failure = {"kind": "oom", "message": str(error).splitlines()[0]}
    failure_path(report, rank).write_text(json.dumps(failure))


def _split_length(latents: Latents) -> int:
    shape = latents.tensor.shape
    return int(shape[split_dim(shape[-2], shape[-1])])


def _check_ranks(ranks: int, device: str, gpus: int, rows: int) -> None:
    if ranks < 1:
        raise UsageError(f"--gpus is {ranks}; it must be at least 1")
    if device == "cuda":
        check_gpus_visible(ranks, gpus)
    if ranks > rows:
        raise UsageError(
            f"--gpus {ranks} is more than the frame's {rows} latent rows along its longer side",
            fix=f"use at most --gpus {rows}",
        )
