"""Output helpers shared by the commands: consoles, JSON documents (results and errors)."""

from __future__ import annotations

import dataclasses
import enum
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from wanctl.core.links import Collective
from wanctl.errors import WanctlError

T = TypeVar("T")


def out_console() -> Console:
    """Console on stdout (tables when not in --json mode)."""
    return Console(file=sys.stdout, soft_wrap=False)


def err_console() -> Console:
    """Console on stderr: progress, tables in --json mode, errors."""
    return Console(file=sys.stderr, soft_wrap=False)


def to_jsonable(value: Any) -> Any:
    """Dataclasses, enums, paths and tuples become plain JSON values; a dataclass's derived
    figures named in its `JSON_PROPERTIES` (a `Collective`'s GB/s) are written beside its
    fields."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        names = [f.name for f in dataclasses.fields(value)]
        names += getattr(value, "JSON_PROPERTIES", ())
        return {name: to_jsonable(getattr(value, name)) for name in names}
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


def show(
    value: T,
    render: Callable[[T, Console], None],
    as_json: bool,
    failure: WanctlError | None = None,
) -> None:
    """A command's result: with --json the document on stdout and the tables on stderr,
    else the tables on stdout. A result that is a failure (tune's refusal, doctor's failed
    checks) is shown, then raised carrying the result: its JSON document is the error's."""
    render(value, err_console() if as_json else out_console())
    if failure is not None:
        failure.result = value
        raise failure
    if as_json:
        print_json(value)


def error_document(error: WanctlError) -> dict[str, Any]:
    """A failed command's JSON document: under "error" its message (what), why, fix, exit code
    and details; beside it the members of the result it had produced (a report), if any."""
    described = {"message": error.message, "why": error.why, "fix": error.fix,
                 "exit_code": error.exit_code, **to_jsonable(error.details)}  # fmt: skip
    produced = {} if error.result is None else to_jsonable(error.result)
    return {**produced, "error": described}


def show_error(error: WanctlError, as_json: bool) -> None:
    """What, why and fix in colour on stderr; with --json also the error's document on stdout."""
    console = err_console()
    # escaped: messages quote what the user typed, which may look like markup ("[/]"); each
    # line unbroken (soft wrap): a path or the fix's command stays whole to copy, or to grep
    for label, text in (("[bold red]error:[/]", error.message), ("[red]why:[/]", error.why),
                        ("[green]fix:[/]", error.fix)):  # fmt: skip
        if text:
            console.print(f"{label} {escape(text)}", highlight=False, soft_wrap=True)
    if as_json:
        print_json(error_document(error))


def links_table(links: tuple[Collective, ...], title: str) -> Table:
    """What the parallel layouts' collectives cost: one row a collective and GPU count."""
    table = Table(title=title, title_justify="left")
    for column in ("collective", "GPUs", "MB per rank", "ms", "GB/s per rank"):
        table.add_column(column, justify="left" if column == "collective" else "right")
    for link in links:
        table.add_row(link.op, str(link.ranks), f"{link.bytes_per_rank / 1e6:.1f}",
                      f"{link.seconds * 1e3:.2f}", f"{link.gb_per_s:.1f}")  # fmt: skip
    return table


def warmup_worth_showing(seconds: float | None) -> bool:
    """A kernel warm-up long enough to mention in a summary table (JSON always has it): none
    on the CPU, milliseconds when nothing was compiled or loaded."""
    return seconds is not None and seconds >= 0.05
