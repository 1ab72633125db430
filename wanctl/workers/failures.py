"""Which failures of a torchrun worker are expected (reported in a line, no traceback) and which
are bugs (their traceback kept): shared by the decode and generate workers."""

from __future__ import annotations

import torch
import torch.distributed as dist

from wanctl.core.status import PEER_LOST, classify
from wanctl.errors import WanctlError

# Failures with a cause to name (out of memory, NCCL or gloo errors and timeouts, a user error);
# anything else is a bug and keeps its traceback.
EXPECTED_FAILURES = (torch.OutOfMemoryError, MemoryError, dist.DistError, WanctlError)


def expected(error: BaseException) -> bool:
    """A failure with a cause to name, not a bug: out of memory, a user error, an error of the
    collectives (gloo reports a peer that died as a RuntimeError)."""
    cause = classify(type(error).__name__, str(error))
    return isinstance(error, EXPECTED_FAILURES) or cause in (PEER_LOST, "collective timeout")
