"""`wanctl presets list|show|rm`: the saved and shipped presets."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from wanctl.commands.options import Json
from wanctl.render import links_table, out_console, print_json
from wanctl.tune import presets


def list_presets(
    json: Json = False,
) -> None:
    """List the presets: the user's (saved by `tune --save`) first, then those shipped with
    wanctl; unreadable files are listed with their error."""
    found = presets.listing()
    if json:
        print_json(found)
        return
    table = Table(title=f"presets (user: {presets.user_dir()})", title_justify="left")
    # The fingerprint is what users type into `show` and `rm`: kept whole, never cut short.
    table.add_column("fingerprint", no_wrap=True, overflow="fold")
    for column in ("origin", "rig", "runs", "source"):
        table.add_column(column, overflow="fold")
    for item in found:
        if item.preset is None:
            table.add_row(Text(item.fingerprint), item.origin, Text(item.error or "", "red"))
            continue
        entries = item.preset.entries
        cells = (
            item.fingerprint,
            item.origin,
            item.preset.rig.description,
            "\n".join(f"{e.size}x{e.frames}/{e.gpus}" for e in entries),
            ", ".join(sorted({e.source for e in entries})),
        )
        table.add_row(*map(Text, cells))  # text from files, not markup
    out_console().print(table)


def show(
    fingerprint: Annotated[str, typer.Argument(help="The rig fingerprint, as `list` shows it.")],
    json: Json = False,
) -> None:
    """Show a preset: the rig, and for each run its settings, environment and figures."""
    preset = presets.require(fingerprint)
    if json:
        print_json(preset)
        return
    render(preset, out_console())


def rm(
    fingerprint: Annotated[str, typer.Argument(help="The rig fingerprint of a user preset.")],
    json: Json = False,
) -> None:
    """Remove a user preset (shipped presets stay)."""
    path = presets.remove(fingerprint)
    if json:
        print_json({"fingerprint": fingerprint, "removed": path})
        return
    out_console().print(f"removed {path}", highlight=False, markup=False)


def render(preset: presets.Preset, console: Console) -> None:
    rig = preset.rig
    console.print(
        f"[bold]{escape(preset.fingerprint)}[/] ({preset.origin}, {preset.path}): "
        f"{escape(rig.description)}, "
        f"{rig.memory_mib} MiB each, written by wanctl {preset.wanctl_version}",
        highlight=False,
    )
    if rig.links:
        console.print(links_table(rig.links, "links (wanctl doctor --full --save)"))
        for source in sorted({link.source for link in rig.links}):
            console.print(f"  measured by {source}", highlight=False, markup=False)
    for entry in preset.entries:
        table = Table(
            title=f"{entry.size}x{entry.frames} on {entry.gpus} GPU(s): {entry.source}, "
            f"{entry.created}",
            title_justify="left",
        )
        for column in ("phase", "predicted GiB", "measured GiB"):
            table.add_column(column, justify="right")
        for phase, figures in entry.predicted.items():
            measured = entry.measured.get(phase)
            table.add_row(
                phase, f"{figures.total:.2f}", f"{measured.total:.2f}" if measured else "-"
            )
        console.print(table)
        console.print(
            f"settings: {presets.describe(entry.settings)}; chunk_t up to {entry.max_chunk_t}",
            highlight=False,
            markup=False,
        )
        for key, value in entry.env.items():
            console.print(f"  export {key}={value}", highlight=False, markup=False)


HELP = "List, show and remove rig presets."
COMMANDS: dict[str, Callable[..., None]] = {"list": list_presets, "show": show, "rm": rm}
