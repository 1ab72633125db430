"""`wanctl doctor` as a library: `run` takes the options and returns the `DoctorReport`; the
passive checks read the rig, the active ones (`--full`) prove it with real transfers."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from wanctl.core.launch import SubprocessRunner
from wanctl.doctor.active import active_checks
from wanctl.doctor.host import check_environment, check_system
from wanctl.doctor.passive import (
    check_driver,
    check_gpu,
    check_software,
    check_topology,
    nccl_environment,
)
from wanctl.doctor.report import ActiveFindings, Check, DoctorReport, Status
from wanctl.errors import UsageError, WanctlError
from wanctl.probe.base import (
    GpuInventory,
    Probe,
    Software,
    System,
    fingerprint,
)
from wanctl.probe.local import LocalProbe


def diagnose(
    probe: Probe,
    active: Callable[[GpuInventory, Software], ActiveFindings] | None = None,
) -> DoctorReport:
    """Run every passive check, and the active ones when `active` is given."""
    start = time.monotonic()
    inventory, software, system = probe.gpus(), probe.software(), probe.system()
    checks = passive_checks(inventory, software, system)
    env = nccl_environment(inventory, system)
    found = active(inventory, software) if active is not None else ActiveFindings([], {})
    checks += found.checks
    env.update(found.env)
    return DoctorReport(
        fingerprint=fingerprint(inventory),
        inventory=inventory,
        software=software,
        system=system,
        checks=tuple(checks),
        seconds=time.monotonic() - start,
        recommended_env=env,
        links=found.links,
    )


@dataclass(frozen=True)
class DoctorOptions:
    full: bool
    json: bool
    timeout_s: float
    save: bool = False  # keep --full's link figures with the rig's preset

    def __post_init__(self) -> None:
        if self.save and not self.full:
            raise UsageError(
                "--save keeps what --full measures",
                why="without --full doctor measures no link",
                fix="run `wanctl doctor --full --save`",
            )


def run(options: DoctorOptions) -> DoctorReport:
    """This machine's report: the passive checks, and with `full` the active ones."""
    if not options.full:
        return diagnose(LocalProbe())
    return diagnose(LocalProbe(), active_checks(SubprocessRunner(), options.timeout_s))


def failure(report: DoctorReport) -> WanctlError | None:
    """The error of a report with failed checks (exit 1): their names, findings and fixes."""
    failed = [check for check in report.checks if check.status is Status.FAIL]
    if not failed:
        return None
    return WanctlError(
        f"{len(failed)} check{'s' if len(failed) > 1 else ''} failed: "
        + ", ".join(check.name for check in failed),
        why="; ".join(f"{check.name}: {check.finding}" for check in failed),
        fix="; ".join(f"{check.name}: {check.fix}" for check in failed),
    )


def passive_checks(inventory: GpuInventory, software: Software, system: System) -> list[Check]:
    checks = check_driver(inventory)
    for gpu in inventory.gpus:
        checks += check_gpu(gpu)
    checks += check_topology(inventory, system)
    checks += check_software(inventory, software)
    checks += check_environment(inventory, software, system)
    checks += check_system(inventory, system)
    return checks
