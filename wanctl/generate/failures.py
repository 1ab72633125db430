"""A failed run in a few lines: the rank that failed first for its own reason, its phase and
cause, with the fix; a failed decode keeps the latents and names the command that finishes it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from wanctl.core.launch import (
    RunResult,
    worker_error,
)
from wanctl.core.status import PEER_LOST
from wanctl.errors import INTERRUPTED, TIMED_OUT, WanctlError
from wanctl.generate.plan import GeneratePlan


class DecodeFailed(WanctlError):
    """Sampling finished and its latents are on disk; only the decode failed. A script reads
    the kept latents, the output and the command that finishes the job from `details`."""

    def __init__(self, plan: GeneratePlan, cause: str, detail: str, exit_code: int = 1):
        super().__init__(
            f"the decode failed ({cause}); the sampled latents are kept in {plan.paths.latents}",
            why=detail,
            fix=f"finish the job with: {plan.decode_command}",
            exit_code=exit_code,
            details={"latents": str(plan.paths.latents), "output": str(plan.paths.output),
                     "decode_command": plan.decode_command},
        )  # fmt: skip


Stamp = tuple[int, int] | None  # a file's inode and mtime (ns), None when there is none


def file_stamp(path: Path) -> Stamp:
    """What tells a file written later from the one there now: a save replaces it (new inode)."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def interrupted(plan: GeneratePlan, statuses: list[dict[str, Any]], before: Stamp) -> WanctlError:
    """Ctrl-C: every rank was stopped (torchrun's process group) and no partial file is left;
    the latents this run saved (not the file stamped `before` it started) are kept, with the
    command that finishes the job."""
    where = _where(statuses)
    if kept_latents(plan, before):
        return WanctlError(
            f"interrupted during {_phase(statuses)}; the sampled latents are kept in "
            f"{plan.paths.latents}",
            why=f"Ctrl-C stopped every rank ({where}); no partial video was left",
            fix=f"finish the job with: {plan.decode_command}",
            exit_code=INTERRUPTED,
        )
    return WanctlError(
        f"interrupted during {_phase(statuses)}: no latents were saved",
        why=f"Ctrl-C stopped every rank ({where}) before the latents were saved; nothing was "
        "written",
        fix="run the same command again",
        exit_code=INTERRUPTED,
    )


def kept_latents(plan: GeneratePlan, before: Stamp) -> bool:
    """This run's latents are on disk (not the older file, stamped `before` the run, that an
    --overwrite run would replace)."""
    stamp = file_stamp(plan.paths.latents)
    return stamp is not None and stamp != before


def _phase(statuses: list[dict[str, Any]]) -> str:
    phases = [s["phase"] for s in statuses if s.get("state") == "running"]
    return phases[0] if phases else "start-up"


_FIXES = {
    "out of GPU memory": "lower --size or --frames, or run on more GPUs; `wanctl tune` shows "
    "what fits (--text-encoder cpu if it ran out while encoding the prompt)",
    "out of host memory": "close other programs, or keep the text encoder on the GPU",
    "NCCL timeout": "run `wanctl doctor --full`: it proves whether P2P works and tries "
    "NCCL_P2P_DISABLE=1; then pass --env NCCL_P2P_DISABLE=1 if it says so",
    "NCCL error": "run `wanctl doctor --full`; NCCL_DEBUG=INFO (--env) shows the transport",
    "collective timeout": "another rank stopped answering; its error is above",
    PEER_LOST: "another rank stopped first; its error is above",
}


def read_statuses(run_dir: Path) -> list[dict[str, Any]]:
    """Every rank's last record, in rank order."""
    found = []
    for path in run_dir.glob("rank*.json"):
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return sorted(found, key=lambda s: int(s["rank"]))


def failure(
    plan: GeneratePlan, statuses: list[dict[str, Any]], result: RunResult, before: Stamp
) -> WanctlError:
    """The error of a failed run: the rank that failed first for its own reason (others only
    lose contact with it), the phase it was in, and the cause. `before`: the latents file's
    stamp as the run started, to tell this run's latents from an older file."""
    failed = sorted((s for s in statuses if s.get("state") == "failed"), key=lambda s: s["time"])
    genuine = [s for s in failed if s["cause"] not in (PEER_LOST, "collective timeout")]
    # stopped at --timeout, a rank only sees its peers go: the timeout is the cause
    root = genuine or ([] if result.timed_out else failed)
    if root:
        first = root[0]
        cause, phase = first["cause"], first["phase"]
        detail = f"rank {first['rank']}: {first['type']}: {first['message']}"
        if phase == "decode" and kept_latents(plan, before):
            return DecodeFailed(plan, f"rank {first['rank']}: {cause}", detail)
        return WanctlError(
            f"rank {first['rank']} failed during {phase}: {cause}",
            why=detail,
            fix=first.get("fix") or _FIXES.get(cause) or traceback_fix(plan, first["rank"]),
        )
    if result.timed_out:
        limit = f"--timeout {plan.options.timeout_s:g} s"
        if kept_latents(plan, before):
            return DecodeFailed(plan, f"stopped at {limit}", _where(statuses), TIMED_OUT)
        return WanctlError(
            f"the run did not finish within {limit}; no latents were saved",
            why=f"every rank was stopped ({_where(statuses)}); nothing was written",
            fix="raise --timeout; a hang in NCCL shows with `wanctl doctor --full`",
            exit_code=TIMED_OUT,
        )
    stopped = [s for s in statuses if s.get("state") == "running"]
    if stopped and all(s["phase"] == "decode" for s in stopped) and kept_latents(plan, before):
        return DecodeFailed(plan, "a rank was killed", _where(statuses))
    return WanctlError(
        f"the workers stopped with torchrun exit code {result.returncode}",
        why=(_where(statuses) + " with no Python error: killed by a signal (the kernel's "
             "out-of-memory killer, or an NCCL watchdog abort)") if stopped
        else worker_error(result.output) or "torchrun's output above says why",
        fix="torchrun's report above names the rank and the signal; `dmesg | tail` shows the "
        "out-of-memory killer",
    )  # fmt: skip


def traceback_fix(plan: GeneratePlan, rank: int) -> str:
    """Where a rank's own traceback is: `--debug` shows only the parent's."""
    if plan.spec.capture_output:  # --json with the official code: its output was captured
        return (f"run again without --json: rank {rank}'s traceback then shows in torchrun's "
                "output")  # fmt: skip
    return (f"rank {rank}'s traceback is in torchrun's output above (and in its 'Root Cause' "
            "summary); --debug shows only wanctl's own process")  # fmt: skip


def _where(statuses: list[dict[str, Any]]) -> str:
    running = [f"rank {s['rank']} in {s['phase']}" for s in statuses if s["state"] == "running"]
    return ", ".join(running) or "no rank had started"
