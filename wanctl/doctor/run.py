"""`wanctl doctor` as a library: `run` takes the options and returns the `DoctorReport`; the
passive checks read the rig, the active ones (`--full`) prove it with real transfers."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from wanctl.core.launch import SubprocessRunner
from wanctl.doctor.active import active_checks
from wanctl.doctor.passive import nccl_environment, passive_checks
from wanctl.doctor.report import Check, DoctorReport
from wanctl.probe.base import (
    GpuInventory,
    Probe,
    Software,
    fingerprint,
)
from wanctl.probe.local import LocalProbe
from wanctl.render import err_console


def diagnose(
    probe: Probe,
    active: Callable[[GpuInventory, Software], tuple[list[Check], dict[str, str]]] | None = None,
) -> DoctorReport:
    """Run every passive check, and the active ones when `active` is given."""
    start = time.monotonic()
    inventory, software, system = probe.gpus(), probe.software(), probe.system()
    checks = passive_checks(inventory, software, system)
    env = nccl_environment(inventory, system)
    if active is not None:
        active_checks, active_env = active(inventory, software)
        checks += active_checks
        env.update(active_env)
    return DoctorReport(
        fingerprint=fingerprint(inventory),
        inventory=inventory,
        software=software,
        system=system,
        checks=tuple(checks),
        seconds=time.monotonic() - start,
        recommended_env=env,
    )


@dataclass(frozen=True)
class DoctorOptions:
    full: bool
    json: bool
    timeout_s: float


def run(options: DoctorOptions) -> DoctorReport:
    if not options.full:
        return diagnose(LocalProbe())
    with err_console().status("running P2P copies and the NCCL all-reduce in child processes"):
        return diagnose(LocalProbe(), active_checks(SubprocessRunner(), options.timeout_s))
