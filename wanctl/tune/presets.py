"""Presets: tune's answers for a rig, remembered. One TOML file per rig fingerprint
(`wanctl.probe.base.fingerprint`, e.g. `2x-rtx-5090-32gb-pcie.toml`) holds the rig, and for
each workload (size, frames, GPUs) the settings, the environment to export, the figures behind
them (predicted by the model, or measured) and when; plus the wanctl version that wrote it.

User presets live in `<user config dir>/wanctl/presets/` (platformdirs; `WANCTL_CONFIG_DIR`
replaces `<user config dir>/wanctl`). Presets for common rigs ship inside the package
(`wanctl/presets_data/`, which the repository's `presets/` points to), generated from the model
by `python -m wanctl.tune.presets --regenerate-shipped`. A user preset wins over a shipped one.

A file that is not a wanctl preset, was written for another rig or by a newer schema is refused
with a UsageError and never overwritten unless `force`; nor is a saved workload whose settings
differ from the new ones.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import platformdirs
import tomli_w

from wanctl import __version__
from wanctl.core.links import Collective, from_table
from wanctl.core.settings import Settings, describe
from wanctl.core.workload import Workload
from wanctl.errors import UsageError, WanctlError
from wanctl.probe.base import GpuInventory, fingerprint
from wanctl.probe.catalog import find_model, parse_rig
from wanctl.probe.fake import describe_rig
from wanctl.tune.measurements import MEASUREMENTS
from wanctl.tune.predict import Card, MemoryPlan, predict
from wanctl.tune.search import Constraints, fp8_computable, plan, with_step
from wanctl.tune.speed import RigLinks

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SCHEMA = 1
KIND = "wanctl-preset"
CONFIG_DIR_ENV = "WANCTL_CONFIG_DIR"
SHIPPED_RIGS = ("1x RTX 4090 24GB", "2x RTX 4090 24GB", "2x RTX 5090 32GB", "1x H100 80GB",
                "8x H100 80GB")  # fmt: skip
SHIPPED_SIZES = ((1280, 704), (704, 1280))  # ti2v-5B's sizes, 121 frames, Ulysses over all GPUs
SHIPPED_FRAMES = 121


@dataclass(frozen=True)
class Rig:
    """The rig a preset is for: what planning needs, NCCL settings from doctor's findings
    when it was saved, and what its links cost the parallel layouts (`doctor --full --save`)."""

    description: str  # "2x RTX 5090 32GB"
    gpu_name: str
    gpus: int
    memory_mib: int
    nccl_env: dict[str, str] = field(default_factory=dict)
    links: tuple[Collective, ...] = ()

    @property
    def card(self) -> Card:
        """The rig's card, its compute capability the catalog's for its name (None for a
        model the catalog lacks)."""
        model = find_model(self.gpu_name, round(self.memory_mib / 1024))
        return Card(self.gpu_name, self.memory_mib, model.compute_capability)


@dataclass(frozen=True)
class Figures:
    """One phase's peak, GiB: allocated, reserved, and with the context (total)."""

    allocated: float
    reserved: float
    total: float

    @classmethod
    def rounded(cls, allocated: float, reserved: float, total: float) -> Figures:
        """As stored: to the hundredth of a GiB."""
        return cls(round(allocated, 2), round(reserved, 2), round(total, 2))


@dataclass(frozen=True)
class Entry:
    """One workload's answer."""

    size: str
    frames: int
    gpus: int
    settings: Settings
    env: dict[str, str]
    source: str  # "model" or "measured"
    created: str  # ISO date (time for user presets)
    predicted: dict[str, Figures]
    measured: dict[str, Figures] = field(default_factory=dict)
    max_chunk_t: int = 0
    model: str = "ti2v-5B"  # the official task name: entries before the A14B models are 5B's

    @property
    def key(self) -> tuple[str, str, int, int, str]:
        """The run it answers for: a preset holds one entry per key."""
        return self.model, self.size, self.frames, self.gpus, self.settings.backend

    def matches(self, workload: Workload, backend: str) -> bool:
        wanted = (workload.family.name, workload.size, workload.frames, workload.gpus, backend)
        return self.key == wanted


@dataclass(frozen=True)
class Preset:
    fingerprint: str
    rig: Rig
    wanctl_version: str
    entries: tuple[Entry, ...]
    origin: str = "user"  # "user" or "shipped": where it was read from (not stored)
    path: Path | None = None  # (not stored)

    def find(self, workload: Workload, backend: str = "diffusers") -> Entry | None:
        return next((entry for entry in self.entries if entry.matches(workload, backend)), None)


@dataclass(frozen=True)
class Listing:
    """A preset file as `presets list` shows it: the preset, or why it cannot be read."""

    fingerprint: str
    origin: str
    path: Path
    preset: Preset | None
    error: str | None = None


def config_dir() -> Path:
    override = os.environ.get(CONFIG_DIR_ENV)
    return Path(override) if override else Path(platformdirs.user_config_dir("wanctl"))


def user_dir() -> Path:
    return config_dir() / "presets"


def shipped_dir() -> Path:
    return Path(str(resources.files("wanctl") / "presets_data"))


def rig_of(description: str) -> tuple[GpuInventory, Rig]:
    """The inventory NVML would report for a described rig ("2x RTX 5090 32GB"), and the
    preset's view of it."""
    count, card = Card.described(description)
    _, model, _ = parse_rig(description)
    inventory = describe_rig(count, model, memory_mib=card.memory_mib)
    return inventory, Rig(description, card.name, count, card.memory_mib)


def rig_from_inventory(inventory: GpuInventory, nccl_env: dict[str, str]) -> Rig:
    card = Card.smallest(inventory)
    count = len(inventory.live_gpus())
    memory_gb = round(card.memory_mib / 1024)
    return Rig(f"{count}x {card.name} {memory_gb}GB", card.name, count, card.memory_mib, nccl_env)


def entry_of(memory_plan: MemoryPlan, *, created: str, source: str = "model") -> Entry:
    workload = memory_plan.workload
    return Entry(
        model=workload.family.name,
        size=workload.size,
        frames=workload.frames,
        gpus=workload.gpus,
        settings=memory_plan.settings,
        env=dict(memory_plan.env),
        source=source,
        created=created,
        predicted={
            phase.name: Figures.rounded(phase.allocated_gib, phase.reserved_gib, phase.total_gib)
            for phase in memory_plan.phases
        },
        max_chunk_t=memory_plan.max_chunk_t,
    )


# TOML <-> dataclasses


def to_toml(preset: Preset) -> str:
    document: dict[str, Any] = {
        "kind": KIND,
        "schema": SCHEMA,
        "fingerprint": preset.fingerprint,
        "wanctl_version": preset.wanctl_version,
        "rig": _rig_table(preset.rig),
        "entries": [_entry_table(entry) for entry in preset.entries],
    }
    return tomli_w.dumps(document)


def _rig_table(rig: Rig) -> dict[str, Any]:
    table = dataclasses.asdict(rig)
    if not rig.links:  # a preset without figures reads as before them
        del table["links"]
    return table


def _entry_table(entry: Entry) -> dict[str, Any]:
    table = dataclasses.asdict(entry)
    if not entry.measured:
        del table["measured"]
    return table


def from_toml(text: str, *, path: Path, expected: str | None = None) -> Preset:
    """Read a preset; `expected` is the fingerprint it must be for (the file name's)."""
    fix = f"remove it (wanctl presets rm {path.stem}) or save over it with --force"
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise UsageError(f"preset {path} is not valid TOML", why=str(error), fix=fix) from None
    if document.get("kind") != KIND:
        raise UsageError(f"{path} is not a wanctl preset", why="it has no kind = \"wanctl-preset\"",
                         fix=fix)  # fmt: skip
    if not isinstance(document.get("schema"), int) or document["schema"] > SCHEMA:
        raise UsageError(
            f"preset {path} has schema {document.get('schema')!r}; this wanctl reads {SCHEMA}",
            why="it was written by another (newer) wanctl",
            fix="upgrade wanctl, or " + fix,
        )
    found = document.get("fingerprint")
    if expected is not None and found != expected:
        raise UsageError(
            f"preset {path} is for the rig {found!r}, not {expected!r}",
            why="a preset is keyed by the fingerprint of the rig it was tuned on",
            fix=fix,
        )
    try:
        rig = document["rig"]
        return Preset(
            fingerprint=str(found),
            rig=Rig(
                description=str(rig["description"]),
                gpu_name=str(rig["gpu_name"]),
                gpus=int(rig["gpus"]),
                memory_mib=int(rig["memory_mib"]),
                nccl_env={str(k): str(v) for k, v in rig.get("nccl_env", {}).items()},
                links=tuple(from_table(table) for table in rig.get("links", ())),
            ),
            wanctl_version=str(document["wanctl_version"]),
            entries=tuple(_entry(table) for table in document["entries"]),
            path=path,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise UsageError(
            f"preset {path} is damaged", why=f"missing or malformed field: {error}", fix=fix
        ) from None


def _entry(table: dict[str, Any]) -> Entry:
    def figures(phases: dict[str, Any]) -> dict[str, Figures]:
        return {name: Figures(**{k: float(v) for k, v in f.items()}) for name, f in phases.items()}

    settings = Settings(**table["settings"])
    for setting in dataclasses.fields(Settings):
        if type(getattr(settings, setting.name)) is not type(setting.default):
            raise ValueError(f"settings.{setting.name}")
    return Entry(
        size=str(table["size"]),
        frames=int(table["frames"]),
        gpus=int(table["gpus"]),
        settings=settings,
        env={str(k): str(v) for k, v in table["env"].items()},
        source=str(table["source"]),
        created=str(table["created"]),
        predicted=figures(table["predicted"]),
        measured=figures(table.get("measured", {})),
        max_chunk_t=int(table.get("max_chunk_t", 0)),
        model=str(table.get("model", "ti2v-5B")),
    )


# Files


def read(path: Path, *, origin: str) -> Preset:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"cannot read preset {path}", why=str(error)) from None
    return dataclasses.replace(from_toml(text, path=path, expected=path.stem), origin=origin)


def load(rig_fingerprint: str) -> Preset | None:
    """The user's preset for the rig, else the shipped one, else None."""
    for origin, folder in (("user", user_dir()), ("shipped", shipped_dir())):
        path = folder / f"{rig_fingerprint}.toml"
        if path.is_file():
            return read(path, origin=origin)
    return None


def listing() -> list[Listing]:
    """Every preset file, user ones first; unreadable files are listed with their error."""
    found = []
    for origin, folder in (("user", user_dir()), ("shipped", shipped_dir())):
        for path in sorted(folder.glob("*.toml")) if folder.is_dir() else []:
            try:
                found.append(Listing(path.stem, origin, path, read(path, origin=origin)))
            except UsageError as error:
                found.append(Listing(path.stem, origin, path, None, error.message))
    return found


def save(
    rig_fingerprint: str, rig: Rig, entry: Entry, *, force: bool = False, folder: Path | None = None
) -> Path:
    """Add or update the workload's entry in the rig's user preset (or `folder`). Refuses to
    replace a file it cannot read, or an entry whose settings differ, unless `force`."""
    path = preset_path(rig_fingerprint, folder)
    kept = check_save(path, entry, force=force)
    if not rig.links and (saved := _readable(path)):  # doctor's figures stay
        rig = dataclasses.replace(rig, links=saved.rig.links)
    return write(path, Preset(rig_fingerprint, rig, __version__, (*kept, entry)))


def _readable(path: Path) -> Preset | None:
    """The preset at `path`, or None when there is none or it cannot be read."""
    try:
        return read(path, origin="user") if path.exists() else None
    except UsageError:
        return None


def write(path: Path, preset: Preset) -> Path:
    """Write a whole file then move it into place: a preset is never left half written."""
    partial = path.with_suffix(".toml.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(to_toml(preset), encoding="utf-8")
        partial.replace(path)
    except OSError as error:
        raise _unwritable(path, error) from None
    return path


def preset_path(rig_fingerprint: str, folder: Path | None = None) -> Path:
    """The rig's user preset file (in `folder` rather than the user's presets folder)."""
    return (folder or user_dir()) / f"{rig_fingerprint}.toml"


def check_save(path: Path, entry: Entry, *, force: bool = False) -> tuple[Entry, ...]:
    """The entries of `path` that saving `entry` keeps; raises what `save` would refuse, so
    that a caller can ask before work whose result it means to save."""
    if not path.exists():
        return ()
    try:
        entries = read(path, origin="user").entries
    except UsageError as error:
        if force:
            return ()
        raise UsageError(
            f"will not overwrite {path}", why=error.message,
            fix="look at it, then remove it or add --force",
        ) from None  # fmt: skip
    previous = next((e for e in entries if e.key == entry.key), None)
    if previous and previous.settings != entry.settings and not force:
        raise UsageError(
            f"{path} already holds other settings for {entry.size}x{entry.frames} on "
            f"{entry.gpus} GPUs",
            why=f"saved: {describe(previous.settings)}; new: {describe(entry.settings)}",
            fix="add --force to replace them",
        )
    return tuple(e for e in entries if e.key != entry.key)


def require(rig_fingerprint: str) -> Preset:
    """`load`, with a missing preset as the user's error."""
    found = load(rig_fingerprint)
    if found is None:
        raise _missing(rig_fingerprint)
    return found


def remove(rig_fingerprint: str) -> Path:
    path = preset_path(rig_fingerprint)
    if path.is_file():
        try:
            path.unlink()
        except OSError as error:
            raise _unwritable(path, error) from None
        return path
    if (shipped_dir() / f"{rig_fingerprint}.toml").is_file():
        raise UsageError(
            f"{rig_fingerprint} is a shipped preset",
            why="shipped presets come with wanctl and are not removed",
            fix="a user preset saved with `wanctl tune --save` takes precedence over it",
        )
    raise _missing(rig_fingerprint)


def _missing(rig_fingerprint: str) -> UsageError:
    return UsageError(f"no preset {rig_fingerprint}", fix="see `wanctl presets list`")


def _unwritable(path: Path, error: OSError) -> WanctlError:
    return WanctlError(
        f"could not write {path}",
        why=str(error),
        fix=f"make {path.parent} writable, or set {CONFIG_DIR_ENV} to a folder you can write to",
    )


# What generate calls


def resolve(
    inventory: GpuInventory,
    workload: Workload,
    *,
    backend: str = "diffusers",
    nccl_env: dict[str, str],
    platform: str = sys.platform,
    host_free_gib: float | None = None,
) -> MemoryPlan:
    """The plan for `workload` with `backend` on this rig: a preset's settings when one holds
    this workload for this backend (user before shipped; figures re-predicted by the current
    model, its env as saved with doctor's current `nccl_env` over it: today's finding wins, the
    file is not changed), else the model's own choice for the backend, among the settings the
    host's free RAM holds where given. `source` says which."""
    card = Card.smallest(inventory)
    rig_fingerprint = fingerprint(inventory)
    preset = load(rig_fingerprint)
    links = RigLinks.of(rig_fingerprint, preset.rig.links if preset else ())
    entry = preset.find(workload, backend) if preset else None
    if preset is None or entry is None:
        constraints = Constraints(backend=backend, fp8_compute=fp8_computable(card))
        return plan(workload, card, constraints, platform=platform, nccl_env=nccl_env,
                    host_free_gib=host_free_gib, links=links)  # fmt: skip
    predicted = with_step(
        predict(workload, card, entry.settings, platform=platform, nccl_env=nccl_env), links
    )
    return dataclasses.replace(
        predicted,
        env={**entry.env, **nccl_env},
        source=f"{preset.origin} preset ({entry.source}, {entry.created})",
    )


# Shipped presets


def shipped_presets() -> list[Preset]:
    """The presets for `SHIPPED_RIGS`, from the model alone (no NCCL findings: those need the
    rig), dated by the model's latest measurement so that regenerating is reproducible."""
    model_date = max(m.date for m in MEASUREMENTS)
    presets = []
    for description in SHIPPED_RIGS:
        inventory, rig = rig_of(description)
        links = RigLinks.of(fingerprint(inventory))
        entries = tuple(
            entry_of(plan(Workload(width, height, SHIPPED_FRAMES, rig.gpus), rig.card,
                          links=links), created=model_date)
            for width, height in SHIPPED_SIZES
        )  # fmt: skip
        presets.append(Preset(fingerprint(inventory), rig, __version__, entries, "shipped"))
    return presets


def regenerate_shipped(folder: Path | None = None) -> list[Path]:
    folder = folder or shipped_dir()
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for preset in shipped_presets():
        path = folder / f"{preset.fingerprint}.toml"
        path.write_text(_SHIPPED_HEADER + to_toml(preset), encoding="utf-8")
        written.append(path)
    return written


_SHIPPED_HEADER = (
    '# Shipped with wanctl, derived from the memory model (source = "model"), not measured on\n'
    "# this rig. Regenerate with: python -m wanctl.tune.presets --regenerate-shipped\n"
)


def now() -> str:
    """The `created` stamp of a user preset entry."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


if __name__ == "__main__":
    if sys.argv[1:] != ["--regenerate-shipped"]:
        sys.exit("usage: python -m wanctl.tune.presets --regenerate-shipped")
    for written_path in regenerate_shipped():
        print(written_path)
