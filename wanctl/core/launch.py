"""How wanctl starts its child processes: pure builders of torchrun command lines and
environments, and one `Runner` boundary that executes them under a hard timeout.

Every multi-process job (doctor's NCCL check, decode, generate) goes through torchrun
(`python -m torch.distributed.run`), the existing engine; tests swap the runner for a recorder
or run tiny real workers on the CPU.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from wanctl.core.variables import CHUNK_ENV, busy_chunk_t, chunk_t_problem
from wanctl.errors import UsageError

# torch.distributed.run, without its traceback when a worker fails (wanctl reports why)
TORCHRUN = "wanctl.workers.torchrun"
# Set by `wanctl --debug` for the children: their launcher keeps its tracebacks.
DEBUG_ENV = "WANCTL_DEBUG"
# What a video can be written as (`wanctl.decode.writers.SUFFIXES`, which imports torch).
VIDEO_SUFFIXES = (".mp4", ".npy")


@dataclass(frozen=True)
class LaunchSpec:
    """One child process to run: its argv, the variables wanctl sets on top of the inherited
    environment, and a hard wall-clock limit (None: no limit)."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float | None = None
    capture_output: bool = True

    def command_line(self) -> str:
        """The shell line a user could paste, environment first."""
        assignments = [f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items())]
        return " ".join([*assignments, *(shlex.quote(a) for a in self.argv)])


@dataclass(frozen=True)
class RunResult:
    returncode: int | None
    timed_out: bool
    seconds: float
    output: str = ""

    @property
    def ok(self) -> bool:
        return not self.timed_out and self.returncode == 0


def torchrun_argv(
    module: str,
    module_args: Sequence[str],
    nproc: int,
    *,
    nnodes: str | None = None,
    rdzv_endpoint: str | None = None,
    python: str = sys.executable,
) -> tuple[str, ...]:
    """`python -m wanctl.workers.torchrun ... -m MODULE ARGS` (torchrun, see that module):
    standalone on one node, or the rendezvous flags passed through for several nodes."""
    launcher = [python, "-m", TORCHRUN]
    if nnodes is None and rdzv_endpoint is None:
        launcher.append("--standalone")
    else:
        launcher += [f"--nnodes={nnodes or 1}", "--rdzv-backend=c10d"]
        if rdzv_endpoint:
            launcher.append(f"--rdzv-endpoint={rdzv_endpoint}")
    launcher += [f"--nproc-per-node={nproc}", "-m", module, *module_args]
    return tuple(launcher)


def thread_env(device: str, ranks: int, base: Mapping[str, str]) -> dict[str, str]:
    """CPU ranks share the cores (torchrun would give each one thread), unless the user chose."""
    if device != "cpu" or "OMP_NUM_THREADS" in base:
        return {}
    return {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // ranks))}


def chunk_t(option: int | None, env: Mapping[str, str], ranks: int = 1) -> int:
    """Latent frames per decoder call: `--chunk-t`, else `WAN_VAE_DECODE_CHUNK_T`, else what
    keeps each of `ranks` GPUs busy (`busy_chunk_t`)."""
    if option is not None:
        if option < 1:
            raise UsageError(f"--chunk-t is {option}; it must be at least 1", fix="use --chunk-t 1")
        return option
    if CHUNK_ENV not in env:
        return busy_chunk_t(ranks)
    value = env[CHUNK_ENV]
    problem = chunk_t_problem(value)
    if problem:
        raise problem.refusal()
    return int(value)


def check_gpus_visible(ranks: int, visible: int) -> None:
    """Refuse more GPU ranks than this node shows."""
    if ranks > visible:
        raise UsageError(
            f"--gpus {ranks} asked, {visible} visible",
            why="each rank on this node runs on a GPU of its own",
            fix="lower --gpus, or check CUDA_VISIBLE_DEVICES and `nvidia-smi -L`",
        )


def partial_path(output: Path) -> Path:
    """Where `output` (a video, a latents file) is written until it is complete: same folder,
    same suffix, hidden; moved into place at the end, removed if the work stops."""
    return output.with_name(f".{output.stem}.partial{output.suffix}")


def check_new(path: Path, what: str, overwrite: bool) -> None:
    """Refuse to replace an existing `what` at `path` unless `overwrite` (then it is replaced
    only once the new one is complete: see `partial_path`)."""
    if path.exists() and not overwrite:
        raise UsageError(
            f"{path} exists: wanctl does not replace {what} unless asked",
            why="it may hold earlier work (minutes to hours of GPU time)",
            fix="pass --overwrite to replace it once the new one is complete, or name another "
            "output",
        )


def check_output(output: Path, latents: Path | None = None, *, overwrite: bool = False) -> None:
    """The video must be an .mp4 or .npy, not a folder nor the latents file, new unless
    `overwrite`, in a folder where a file can be created: a probe file is created and removed
    (`os.access` says yes to root even where nothing can be created, /proc for one), so that no
    run fails at its very end."""
    fix = "create the folder or pick another output path"
    if output.is_dir():
        raise UsageError(f"cannot write {output}: it is a folder", fix="name a file in it")
    if output.suffix not in VIDEO_SUFFIXES:
        raise UsageError(
            f"cannot write {output}: unknown video type '{output.suffix}'",
            fix="name the output .mp4 (H.264) or .npy (uint8 frames, lossless)",
        )
    if latents is not None and output.resolve() == latents.resolve():
        raise UsageError("the output would overwrite the latents file", fix="name another output")
    check_new(output, "a video", overwrite)
    folder = output.parent
    if not folder.is_dir():
        raise UsageError(
            f"cannot write {output}: {folder} is not a writable folder",
            why="it does not exist" if not folder.exists() else "it is not a folder",
            fix=fix,
        )
    probe = folder / f".wanctl-write-probe-{os.getpid()}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as error:
        raise UsageError(
            f"cannot write {output}: {folder} is not a writable folder",
            why=f"creating a file there failed: {error.strerror or error}",
            fix=fix,
        ) from None
    with contextlib.suppress(OSError):
        probe.unlink()


def visible_gpus(live: int, env: Mapping[str, str]) -> int:
    """How many of the `live` GPUs (NVML's count) CUDA_VISIBLE_DEVICES leaves to CUDA. CUDA
    reads the list up to its first entry that is not an index or a UUID: "-1" hides every
    GPU, "0,-1,2" leaves one."""
    if "CUDA_VISIBLE_DEVICES" not in env:
        return live
    listed = 0
    for entry in env["CUDA_VISIBLE_DEVICES"].split(","):
        entry = entry.strip()
        if not (entry.isdigit() or entry.startswith(("GPU-", "MIG-"))):
            break
        listed += 1
    return min(live, listed)


_EXCEPTION_LINE = re.compile(r"(?:\[rank\d+\]:\s*)?(?:[\w.]+\.)?(\w*(?:Error|Exception)): (.+)")


def worker_error(output: str) -> str:
    """The exception a worker died of, as `Type: message`, from a torchrun log; torchrun's own
    ChildFailedError wrapper is skipped. Falls back to the last non-empty line."""
    found = [
        f"{m[1]}: {m[2].strip()}"
        for line in output.splitlines()
        if (m := _EXCEPTION_LINE.search(line)) and m[1] != "ChildFailedError" and m[2].strip()
    ]
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return (found or lines or [""])[-1][:300]


class Runner(Protocol):
    def run(self, spec: LaunchSpec) -> RunResult: ...


class SubprocessRunner:
    """Runs a spec in its own process group, so that a hang is killed whole at the timeout
    (torchrun and all its workers) and reported, never inherited."""

    # torchrun gives its workers 30 s between SIGTERM and SIGKILL (they run in sessions of
    # their own, out of reach of our killpg): wait that long before killing torchrun itself
    grace_s = 35.0

    def run(self, spec: LaunchSpec) -> RunResult:
        start = time.monotonic()
        pipe = subprocess.PIPE if spec.capture_output else None
        process = subprocess.Popen(
            spec.argv,
            # inherited (a host's NCCL_NVLS_ENABLE=0 and the like stay), wanctl's on top
            env={**os.environ, **spec.env},
            stdout=pipe,
            stderr=subprocess.STDOUT if spec.capture_output else None,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        try:
            output, _ = process.communicate(timeout=spec.timeout_s)
        except subprocess.TimeoutExpired:
            output = self._kill_group(process)
            return RunResult(None, True, time.monotonic() - start, output or "")
        except KeyboardInterrupt:
            self._kill_group(process)
            raise
        return RunResult(process.returncode, False, time.monotonic() - start, output or "")

    def _kill_group(self, process: subprocess.Popen[str]) -> str:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                output, _ = process.communicate(timeout=self.grace_s)
                return output or ""
            except subprocess.TimeoutExpired:
                continue
        return ""
