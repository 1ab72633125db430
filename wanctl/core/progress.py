"""Progress of long work on stderr: a live bar in a terminal; in a log (stderr a file, a pipe,
nohup, Slurm, CI), plain lines a log can hold: one per step, or every few seconds of frames
(`sampling: step 5/20 2.5 s/step eta 37 s`, `decoding: 60/121 frames 4.1 s eta 4 s`). Each
phase is announced as it starts (`announce`), in both."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

# In a log, units counted in the hundreds (frames) are reported at most this often; steps,
# each seconds to minutes long, every one.
LOG_EVERY_S = {"steps": 0.0, "frames": 5.0}


@contextmanager
def progress_bar(
    label: str, unit: str, total: int, enabled: bool = True, stream: TextIO | None = None
) -> Iterator[Callable[..., None]]:
    """Progress of `total` `unit`s on `stream` (stderr): a bar in a terminal, lines in a log;
    yields `advance(n)`."""
    stream = stream or sys.stderr
    if enabled and not stream.isatty():
        yield LogProgress(label, unit, total, stream).advance
        return
    columns = (
        TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
        TimeElapsedColumn(), TimeRemainingColumn(),
    )  # fmt: skip
    with Progress(
        *columns, console=Console(file=stream, soft_wrap=False), disable=not enabled
    ) as progress:
        task = progress.add_task(label, total=total)

        def advance(done: int = 1) -> None:
            progress.advance(task, done)

        yield advance


class LogProgress:
    """Plain progress lines: the count, the rate (seconds per step, or the time so far) and the
    time left at that rate; the last one always."""

    def __init__(self, label: str, unit: str, total: int, stream: TextIO):
        self.label, self.unit, self.total, self.stream = label, unit, total, stream
        self.every_s = LOG_EVERY_S.get(unit, 5.0)
        self.done = 0
        self.start = self.last = time.monotonic()

    def advance(self, done: int = 1) -> None:
        self.done += done
        now = time.monotonic()
        if now - self.last < self.every_s and self.done < self.total:
            return
        self.last = now
        print(self.line(now - self.start), file=self.stream, flush=True)

    def line(self, elapsed: float) -> str:
        left = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        if self.unit == "steps":
            rate = elapsed / self.done if self.done else 0.0
            return (f"{self.label}: step {self.done}/{self.total} {rate:.1f} s/step "
                    f"eta {left:.0f} s")  # fmt: skip
        return (f"{self.label}: {self.done}/{self.total} {self.unit} {elapsed:.1f} s "
                f"eta {left:.0f} s")  # fmt: skip


def announce(what: str, stream: TextIO | None = None) -> None:
    """One line as a phase starts, with the seconds since this process began."""
    elapsed = time.monotonic() - _STARTED
    print(f"[{elapsed:6.1f} s] {what}", file=stream or sys.stderr, flush=True)


_STARTED = time.monotonic()
