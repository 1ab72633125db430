"""What a rig's links cost, kept with its preset: `wanctl doctor --full --save` writes the
collectives doctor measured (`wanctl.core.links`) into the rig's user preset, which
`wanctl tune` reads with the rest of the rig."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from wanctl import __version__
from wanctl.core.links import Collective, merge
from wanctl.doctor.report import DoctorReport
from wanctl.errors import UsageError
from wanctl.tune.presets import (
    Preset,
    Rig,
    load,
    preset_path,
    read,
    rig_from_inventory,
    write,
)
from wanctl.tune.speed import RigLinks


def keep(report: DoctorReport) -> DoctorReport:
    """`report` with its links saved in the rig's user preset (`saved` says where), or as it
    is when it measured none (one GPU, or every count failed)."""
    if not report.links:
        return report
    rig = rig_from_inventory(report.inventory, report.recommended_env)
    path = save_links(report.fingerprint, rig, report.links)
    return dataclasses.replace(report, saved=path)


def save_links(
    rig_fingerprint: str, rig: Rig, links: tuple[Collective, ...], *, folder: Path | None = None
) -> Path:
    """Keep `links` in the rig's user preset (or `folder`'s), over the figures of the same
    collective, count and size; its entries and the rest of its rig stay (`rig` is for a new
    file, which has no entry). Refuses to replace a file it cannot read."""
    path = preset_path(rig_fingerprint, folder)
    try:
        saved = read(path, origin="user") if path.exists() else Preset("", rig, "", ())
    except UsageError as error:
        raise UsageError(
            f"will not overwrite {path}",
            why=error.message,
            fix=f"look at it, then remove it (wanctl presets rm {path.stem})",
        ) from None
    rig = dataclasses.replace(saved.rig, links=merge(saved.rig.links, links))
    return write(path, Preset(rig_fingerprint, rig, __version__, saved.entries))


def links_of(rig_fingerprint: str) -> RigLinks:
    """The rig's interconnect and the collectives `doctor --full --save` measured on it (none
    when its preset is missing or cannot be read: planning goes on with assumed figures)."""
    try:
        preset = load(rig_fingerprint)
    except UsageError:
        preset = None
    return RigLinks.of(rig_fingerprint, preset.rig.links if preset else ())
