"""Output helpers shared by the commands: consoles, JSON documents, status styles."""

from __future__ import annotations

import dataclasses
import enum
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console

T = TypeVar("T")


def out_console() -> Console:
    """Console on stdout (tables when not in --json mode)."""
    return Console(file=sys.stdout, soft_wrap=False)


def err_console() -> Console:
    """Console on stderr: progress, tables in --json mode, errors."""
    return Console(file=sys.stderr, soft_wrap=False)


def to_jsonable(value: Any) -> Any:
    """Dataclasses, enums, paths and tuples become plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    return value


def print_json(value: Any) -> None:
    """One JSON document on stdout, nothing else."""
    sys.stdout.write(json.dumps(to_jsonable(value), indent=2) + "\n")
    sys.stdout.flush()


def show(value: T, render: Callable[[T, Console], None], as_json: bool) -> None:
    """A command's result: with --json the document on stdout and the tables on stderr,
    else the tables on stdout."""
    if as_json:
        print_json(value)
        render(value, err_console())
    else:
        render(value, out_console())


def warmup_worth_showing(seconds: float | None) -> bool:
    """A kernel warm-up long enough to mention in a summary table (JSON always has it): none
    on the CPU, milliseconds when nothing was compiled or loaded."""
    return seconds is not None and seconds >= 0.05
