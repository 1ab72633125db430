"""A rank that waits for another's work alone outlasts the default group's timeout: real gloo
processes through torchrun, the default group's timeout cut to seconds (as NCCL's watchdog
cuts a GPU run's at 10 minutes), one rank late at the generate worker's waits.

This file is also the torchrun worker of its test (`python -m test_waiting_group ...` with
tests/ on the path): each rank makes the waits of the generate worker (a broadcast of objects
from rank 0, a barrier, a gather of objects) over `waiting_group`, then over the default group,
rank 1 arriving late each time, and writes what happened to it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch.distributed as dist
from conftest import run_test_workers

from wanctl.workers.group import waiting_group

DEFAULT_TIMEOUT_S = 3
LATE_S = 5  # rank 1's delay before each wait: longer than the default group's timeout


def waits(group: dist.ProcessGroup | None) -> str:
    """The generate worker's three waits; 'ok', or why they failed."""
    if dist.get_rank() == 1:
        time.sleep(LATE_S)
    try:
        shapes: list[Any] = [[(2, 3)] if dist.get_rank() == 0 else None]
        dist.broadcast_object_list(shapes, src=0, group=group)
        dist.barrier(group=group)
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, dist.get_rank(), group=group)
        assert shapes == [[(2, 3)]] and gathered == [0, 1]
        return "ok"
    except RuntimeError as error:  # gloo: a timeout, or the peer gone
        return str(error).splitlines()[0]


def worker(out: Path) -> None:
    dist.init_process_group("gloo", timeout=timedelta(seconds=DEFAULT_TIMEOUT_S))
    outcome = {"waiting group": waits(waiting_group())}
    outcome["default group"] = waits(None)
    (out / f"rank{dist.get_rank()}.json").write_text(json.dumps(outcome))
    os._exit(0)  # the default group, broken by its timeout, would abort in its teardown


def test_a_late_rank_outlasts_the_default_timeout_only_over_the_waiting_group(
    tmp_path: Path,
) -> None:
    run_test_workers("test_waiting_group", ["--out", str(tmp_path)], 2, timeout_s=120)

    first, late = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert first["waiting group"] == late["waiting group"] == "ok"
    # the same waits on the default group: rank 0 gives up before rank 1 comes
    assert "timed out" in first["default group"].lower(), first
    assert late["default group"] != "ok"


def test_a_worker_leaves_with_its_code_and_its_output_flushed() -> None:
    """`leave` skips the interpreter's teardown (its exit handlers too) but not what the
    worker printed or logged: buffered output reaches the pipe (Python's own buffer, unbuffered
    mode off; a log handler that holds its records until shut down), the exit code is the one
    given."""
    script = (
        "import atexit, logging, logging.handlers, sys\n"
        "from wanctl.workers.group import leave\n"
        "held = logging.handlers.MemoryHandler(1000, logging.CRITICAL + 1,\n"
        "                                      logging.StreamHandler(sys.stderr))\n"
        "logging.getLogger('w').addHandler(held)\n"
        "atexit.register(lambda: print('teardown ran'))\n"
        "print('the summary is written', end='')\n"
        "logging.getLogger('w').warning('a logged line')\n"
        "leave(3)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=120)  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert done.stdout == "the summary is written"
    assert "a logged line" in done.stderr


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    worker(parser.parse_args().out)
