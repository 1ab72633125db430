"""Progress of long work on stderr: a live bar in a terminal."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


@contextmanager
def progress_bar(
    label: str, unit: str, total: int, enabled: bool = True
) -> Iterator[Callable[..., None]]:
    """A progress bar on stderr (done of total, time spent and left); yields `advance(n)`."""
    columns = (
        TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
        TimeElapsedColumn(), TimeRemainingColumn(),
    )  # fmt: skip
    with Progress(
        *columns, console=Console(file=sys.stderr, soft_wrap=False), disable=not enabled
    ) as progress:
        task = progress.add_task(label, total=total)

        def advance(done: int = 1) -> None:
            progress.advance(task, done)

        yield advance
