"""What a rank is doing, recorded for the parent (`RankStatus`), and the cause of a failure
from its exception (`classify`)."""

from __future__ import annotations

import json
import time
from pathlib import Path

PEER_LOST = "lost contact with another rank"


def classify(type_name: str, message: str) -> str:
    """The cause of a rank's failure, from its exception's type and message."""
    text = message.lower()
    if type_name == "OutOfMemoryError" or "out of memory" in text:
        return "out of GPU memory"
    if type_name == "MemoryError":
        return "out of host memory"
    if "timeout" in text or "timed out" in text:
        return "NCCL timeout" if "nccl" in text or "watchdog" in text else "collective timeout"
    if any(s in text for s in ("connection closed by peer", "connection reset", "broken pipe")):
        return PEER_LOST
    if "nccl" in text or type_name == "DistBackendError":
        return "NCCL error"
    return "error" if type_name in ("UsageError", "WanctlError") else type_name


class RankStatus:
    """What one rank is doing, in `<run dir>/rank<r>.json`: the phase it started last, and
    when it fails, why. The parent reads these to name the rank, the phase and the cause."""

    def __init__(self, run_dir: Path, rank: int, phase: str = "start"):
        self.path = run_dir / f"rank{rank}.json"
        self.rank = rank
        self.current = phase

    def phase(self, name: str) -> None:
        self.current = name
        self._write(state="running")

    def failed(self, error: BaseException) -> None:
        message = (str(error).strip().splitlines() or [""])[0][:400]
        self._write(
            state="failed",
            cause=classify(type(error).__name__, message),
            type=type(error).__name__,
            message=message,
            fix=getattr(error, "fix", ""),
        )

    def done(self) -> None:
        self._write(state="done")

    def _write(self, **fields: str) -> None:
        record = {"rank": self.rank, "phase": self.current, "time": time.time(), **fields}
        partial = self.path.with_suffix(".partial")
        partial.write_text(json.dumps(record))
        partial.replace(self.path)
