"""How wanctl starts its child processes: pure builders of torchrun command lines and
environments, and one `Runner` boundary that executes them under a hard timeout.

Every multi-process job (doctor's NCCL check, decode, generate) goes through torchrun
(`python -m torch.distributed.run`), the existing engine; tests swap the runner for a recorder
or run tiny real workers on the CPU.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

# Variables that keep NVLink multicast off; a host that sets them wants every child to keep them.
MULTICAST_OFF = ("NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST", "NVSHMEM_DISABLE_NVLS")


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
    """`python -m torch.distributed.run ... -m MODULE ARGS`: standalone on one node, or the
    rendezvous flags passed through for several nodes."""
    launcher = [python, "-m", "torch.distributed.run"]
    if nnodes is None and rdzv_endpoint is None:
        launcher.append("--standalone")
    else:
        launcher += [f"--nnodes={nnodes or 1}", "--rdzv-backend=c10d"]
        if rdzv_endpoint:
            launcher.append(f"--rdzv-endpoint={rdzv_endpoint}")
    launcher += [f"--nproc-per-node={nproc}", "-m", module, *module_args]
    return tuple(launcher)


def child_environment(overrides: Mapping[str, str], base: Mapping[str, str]) -> dict[str, str]:
    """The environment a child sees: the inherited one (multicast-off variables included)
    with wanctl's settings on top."""
    return {**base, **overrides}


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

    grace_s = 5.0

    def run(self, spec: LaunchSpec) -> RunResult:
        start = time.monotonic()
        pipe = subprocess.PIPE if spec.capture_output else None
        process = subprocess.Popen(
            spec.argv,
            env=child_environment(spec.env, os.environ),
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
