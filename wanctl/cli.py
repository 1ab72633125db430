"""The Typer app: registers the commands and turns `WanctlError` into a message, a JSON
document (`--json`) and an exit code."""

from __future__ import annotations

import functools
import os
import traceback
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, TypeVar

import typer
from typer.core import TyperCommand, TyperGroup

from wanctl import __version__
from wanctl.commands import decode, doctor, generate, presets, tune
from wanctl.core.launch import DEBUG_ENV
from wanctl.errors import INTERRUPTED, UsageError, WanctlError
from wanctl.render import err_console, error_document, print_json, show_error

F = TypeVar("F", bound=Callable[..., Any])


_reported: weakref.WeakSet[typer.TyperException] = weakref.WeakSet()


@contextmanager
def usage_errors_as_json(command_path: str, args: list[str]) -> Iterator[None]:
    """A command line that asks for --json and is refused by the parser (a bad value, a
    missing or unknown option, an unknown command) gets the error's JSON document on stdout
    too; typer then prints the usage message on stderr and exits with its code (2)."""
    as_json = "--json" in args  # read first: parsing consumes the list
    try:
        yield
    except typer.TyperException as error:  # typer's parser errors (its vendored Click's)
        if as_json and error not in _reported:  # once: resolve_command may parse again
            _reported.add(error)
            refused = UsageError(error.format_message(), fix=f"see `{command_path} --help`",
                                 exit_code=error.exit_code)  # fmt: skip
            print_json(error_document(refused))
        raise


class Command(TyperCommand):
    """A command whose refused command line, with --json, gets the JSON error document."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        with usage_errors_as_json(ctx.command_path, args):
            return super().parse_args(ctx, args)


class Group(TyperGroup):
    """A group (wanctl, wanctl presets) whose refused options or unknown command, with
    --json, get the JSON error document."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        with usage_errors_as_json(ctx.command_path, args):
            return super().parse_args(ctx, args)

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        with usage_errors_as_json(ctx.command_path, args):
            return super().resolve_command(ctx, args)


# Plain help (no rich panels): at 80 columns rich's table shrinks every column alike, option
# names included, and shows a type (`<bool>`) for flags; click's layout cuts neither.
app = typer.Typer(
    name="wanctl",
    help="Safe, fast and boring multi-GPU video generation with Wan2.2.",
    cls=Group,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

_state = {"debug": False}


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
    """Print a `WanctlError` as what/why/fix in red (and, when the command was given --json,
    as its JSON document on stdout) and exit with its code; no traceback unless `--debug`."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except WanctlError as error:
            if _state["debug"]:
                err_console().print(traceback.format_exc(), highlight=False, markup=False)
            show_error(error, as_json=kwargs.get("json") is True)
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt:  # outside the runs, which report their own interruption
            if _state["debug"]:
                err_console().print(traceback.format_exc(), highlight=False, markup=False)
            stopped = WanctlError("interrupted", fix="run the command again",
                                  exit_code=INTERRUPTED)  # fmt: skip
            show_error(stopped, as_json=kwargs.get("json") is True)
            raise typer.Exit(INTERRUPTED) from None

    return wrapper  # type: ignore[return-value]


def _register(group: typer.Typer, commands: dict[str, Callable[..., None]]) -> None:
    for name, command in commands.items():
        group.command(name, cls=Command)(handle_errors(command))


_register(app, {"doctor": doctor.doctor, "decode": decode.decode,
                "generate": generate.generate, "tune": tune.tune})  # fmt: skip
presets_app = typer.Typer(help=presets.HELP, cls=Group, no_args_is_help=True)
_register(presets_app, presets.COMMANDS)
app.add_typer(presets_app, name="presets")


def main() -> None:
    app(prog_name="wanctl")
