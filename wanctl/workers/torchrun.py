"""`python -m torch.distributed.run`, less its own traceback when a worker fails.

Every wanctl launch goes through this module: the ranks say why they stopped (their lines, their
reports to wanctl), and wanctl prints the error with its fix; torchrun's traceback of its launch
agent and its failure table would only bury that. Its log lines stay, and so does a worker's own
traceback (a bug). Any other failure of torchrun itself keeps its traceback.
"""

from __future__ import annotations

import sys

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import main

if __name__ == "__main__":
    try:
        main()
    except ChildFailedError as failure:
        ranks = ", ".join(str(rank) for rank in sorted(failure.failures))
        print(f"torchrun: rank(s) {ranks} of {failure.name} stopped", file=sys.stderr)
        sys.exit(1)
