"""Output helpers shared by the commands: consoles, JSON documents, status styles."""

from __future__ import annotations

import dataclasses
import enum
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console


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
