"""`python -m torch.distributed.run`, less its own tracebacks when a worker fails or when
wanctl stops it.

Every wanctl launch goes through this module: the ranks say why they stopped (their lines, their
reports to wanctl), and wanctl prints the error with its fix; torchrun's traceback of its launch
agent and its failure table would only bury that. Its log lines stay, and so does a worker's own
traceback (a bug). When wanctl stops the run (Ctrl-C, --timeout) it sends torchrun SIGTERM:
torchrun stops its workers and raises `SignalException`, whose traceback is dropped too. With
`wanctl --debug` (`WANCTL_DEBUG=1` in the environment) every traceback stays.
"""

from __future__ import annotations

import os
import sys

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import main

from wanctl.core.launch import DEBUG_ENV

if __name__ == "__main__":
    try:
        main()
    except ChildFailedError as failure:
        if os.environ.get(DEBUG_ENV):
            raise
        ranks = ", ".join(str(rank) for rank in sorted(failure.failures))
        print(f"torchrun: rank(s) {ranks} of {failure.name} stopped", file=sys.stderr)
        sys.exit(1)
    except SignalException as stopped:
        if os.environ.get(DEBUG_ENV):
            raise
        print(f"torchrun: stopped by {stopped.sigval.name}; its ranks too", file=sys.stderr)
        sys.exit(128 + int(stopped.sigval))
