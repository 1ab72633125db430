"""doctor --full's children: one torchrun launch of a worker that writes one rank*.json per
rank into its --result-dir, under a hard timeout, and what came back (`Attempt`)."""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from wanctl.core.launch import LaunchSpec, Runner, RunResult, torchrun_argv, worker_error


@dataclass(frozen=True)
class Attempt:
    env: Mapping[str, str]
    result: RunResult
    ranks: tuple[dict[str, object], ...]
    world_size: int
    timeout_s: float

    @property
    def wrong_ranks(self) -> list[int]:
        return [int(r["rank"]) for r in self.ranks if r.get("wrong_elements")]  # type: ignore[call-overload]

    @property
    def ok(self) -> bool:
        return self.result.ok and len(self.ranks) == self.world_size and not self.wrong_ranks

    def failure(self) -> str:
        if self.result.timed_out:
            return f"hung: no result within {self.timeout_s:g} s"
        if self.wrong_ranks:
            return f"wrong values on rank(s) {', '.join(map(str, self.wrong_ranks))}"
        tail = worker_error(self.result.output)
        return f"exited with code {self.result.returncode}" + (f": {tail}" if tail else "")

    def transports(self) -> list[str]:
        """What NCCL_DEBUG=INFO says NCCL chose: 'P2P/CUMEM', 'SHM', 'NET/Socket', ..."""
        return sorted(set(re.findall(r" via (\S+)", self.result.output)))


def launch(
    runner: Runner,
    worker: str,
    args: Sequence[str],
    nproc: int,
    env: Mapping[str, str],
    timeout_s: float,
    extra_env: Mapping[str, str] | None = None,
) -> Attempt:
    """Run a torchrun `worker` that writes one rank*.json into its --result-dir per rank."""
    with tempfile.TemporaryDirectory(prefix="wanctl-active-") as workdir:
        argv = torchrun_argv(worker, ["--result-dir", workdir, *args], nproc)
        spec = LaunchSpec(argv, {"NCCL_DEBUG": "INFO", **(extra_env or {}), **env}, timeout_s)
        result = runner.run(spec)
        ranks = tuple(json.loads(p.read_text()) for p in sorted(Path(workdir).glob("rank*.json")))
    return Attempt(env, result, ranks, nproc, timeout_s)
