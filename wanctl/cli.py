"""The Typer app: registers the commands and turns `WanctlError` into a message and exit code."""

from __future__ import annotations

import functools
import os
import traceback
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.markup import escape

from wanctl import __version__
from wanctl.commands import decode, doctor, generate, presets, tune
from wanctl.core.launch import DEBUG_ENV
from wanctl.errors import INTERRUPTED, WanctlError
from wanctl.render import err_console

app = typer.Typer(
    name="wanctl",
    help="Safe, fast and boring multi-GPU video generation with Wan2.2.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)

_state = {"debug": False}

F = TypeVar("F", bound=Callable[..., Any])


def _version(show: bool) -> None:
    if show:
        typer.echo(f"wanctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the full tracebacks of an error (torchrun's too).")
    ] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Safe, fast and boring multi-GPU video generation with Wan2.2."""
    _state["debug"] = debug
    if debug:  # inherited by every child wanctl launches
        os.environ[DEBUG_ENV] = "1"


def handle_errors(command: F) -> F:
    """Print a `WanctlError` as what/why/fix in red and exit with its code; no traceback
    unless `--debug`."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except WanctlError as error:
            if _state["debug"]:
                err_console().print(traceback.format_exc(), highlight=False, markup=False)
            # escaped: messages quote what the user typed, which may look like markup ("[/]")
            err_console().print(f"[bold red]error:[/] {escape(error.message)}", highlight=False)
            if error.why:
                err_console().print(f"[red]why:[/] {escape(error.why)}", highlight=False)
            if error.fix:
                err_console().print(f"[green]fix:[/] {escape(error.fix)}", highlight=False)
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt:  # before or after the work a library call reports itself
            if _state["debug"]:
                err_console().print(traceback.format_exc(), highlight=False, markup=False)
            err_console().print("[bold red]interrupted[/]", highlight=False)
            raise typer.Exit(INTERRUPTED) from None

    return wrapper  # type: ignore[return-value]


app.command("doctor")(handle_errors(doctor.doctor))
app.command("decode")(handle_errors(decode.decode))
app.command("generate")(handle_errors(generate.generate))
app.command("tune")(handle_errors(tune.tune))
app.add_typer(presets.build(handle_errors), name="presets")


def main() -> None:
    app(prog_name="wanctl")
