"""What doctor finds: one `Check` per finding (status, what, fix, shell equivalent) and the
`DoctorReport` of a rig."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

from wanctl.core.links import Collective
from wanctl.probe.base import (
    GpuInventory,
    Software,
    System,
)


class Status(str, enum.Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class Check:
    """One finding. Warnings and failures carry their fix; `shell` names the command that
    shows the same thing."""

    name: str
    area: str
    status: Status
    finding: str
    fix: str = ""
    shell: str = ""

    def __post_init__(self) -> None:
        if self.status in (Status.WARN, Status.FAIL) and not self.fix:
            raise ValueError(f"check {self.name!r} {self.status.value}s without a fix")


@dataclass(frozen=True)
class ActiveFindings:
    """What doctor --full's children proved: their checks, the NCCL settings that work, and
    what the collectives of the parallel layouts cost on this rig."""

    checks: list[Check]
    env: dict[str, str]
    links: tuple[Collective, ...] = ()


@dataclass(frozen=True)
class DoctorReport:
    fingerprint: str
    inventory: GpuInventory
    software: Software
    system: System
    checks: tuple[Check, ...]
    seconds: float
    recommended_env: dict[str, str] = field(default_factory=dict)
    links: tuple[Collective, ...] = ()  # measured by --full
    saved: Path | None = None  # the preset --save wrote the links to

    @property
    def failed(self) -> bool:
        return any(check.status is Status.FAIL for check in self.checks)

    def count(self, status: Status) -> int:
        return sum(1 for check in self.checks if check.status is status)
