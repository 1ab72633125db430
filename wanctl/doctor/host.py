"""Doctor's checks of the host: the CUDA, allocator and NCCL variables in force (their values
read as wanctl, PyTorch and NCCL read them: `wanctl.core.variables`), /dev/shm, memlock, the
IOMMU and free host RAM."""

from __future__ import annotations

from collections.abc import Callable

from wanctl.core.settings import GIB
from wanctl.core.variables import Problem, problems
from wanctl.doctor.passive import nccl_environment
from wanctl.doctor.report import Check, Status
from wanctl.probe.base import (
    GpuInventory,
    Software,
    System,
    interconnect,
)

SHM_MIN_BYTES = 1 * GIB
HOST_RAM_MIN_BYTES = 24 * GIB  # bf16 5B DiT (~10 GB) + UMT5-XXL (~11 GB) offloaded to host


def check_environment(inventory: GpuInventory, software: Software, system: System) -> list[Check]:
    env = software.env
    shown = ", ".join(f"{k}={v}" for k, v in env.items()) or "none set"
    checks = [
        Check(
            "env",
            "software",
            Status.OK,
            f"variables in force: {shown}",
            shell="env | grep -E 'CUDA|NCCL|ALLOC_CONF'",
        )
    ]
    if "CUDA_VISIBLE_DEVICES" in env and env.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID":
        checks.append(
            Check(
                "env.device_order",
                "software",
                Status.WARN,
                "CUDA_VISIBLE_DEVICES is set but CUDA numbers GPUs fastest-first, not as "
                "nvidia-smi does: the indices may name other GPUs",
                fix="export CUDA_DEVICE_ORDER=PCI_BUS_ID",
            )
        )
    p2p_works = interconnect(inventory) in ("nvlink", "pcie-p2p")
    wanted = "NCCL_P2P_DISABLE" in nccl_environment(inventory, system)
    if env.get("NCCL_P2P_DISABLE") == "1" and p2p_works and not wanted:
        checks.append(
            Check(
                "env.p2p_disable",
                "software",
                Status.WARN,
                "NCCL_P2P_DISABLE=1 keeps NCCL off P2P links that this rig reports working",
                fix="unset NCCL_P2P_DISABLE unless `wanctl doctor --full` shows P2P broken",
            )
        )
    return checks + variable_checks(env, software, system)


def variable_checks(env: dict[str, str], software: Software, system: System) -> list[Check]:
    """One check for each variable whose value would not do what it says."""
    found = problems(env, torch=software.torch, interfaces=system.network_interfaces)
    return [_as_check(problem) for problem in found]


def _as_check(problem: Problem) -> Check:
    status = Status.FAIL if problem.fails else Status.WARN
    finding = f"{problem.what}: {problem.why}"
    return Check(f"env.{problem.name}", "software", status, finding, problem.fix, problem.shell)


def check_system(inventory: GpuInventory, system: System) -> list[Check]:
    many = len(inventory.live_gpus()) > 1
    shm = _at_least(
        "shm", system.shm_total_bytes, SHM_MIN_BYTES, "/dev/shm", "df -h /dev/shm",
        lambda gib: Check(
            "shm", "system", Status.FAIL if many else Status.WARN,
            f"/dev/shm is {gib:.2f} GiB: NCCL's shared-memory transport needs 1 GiB or more",
            fix="run the container with --shm-size=16g (or --ipc=host)", shell="df -h /dev/shm",
        ),
    )  # fmt: skip
    memlock = "unlimited" if system.memlock_bytes is None else f"{system.memlock_bytes >> 10} KiB"
    host_ram = _at_least(
        "host_ram", system.host_mem_available_bytes, HOST_RAM_MIN_BYTES, "host RAM free",
        "free -g",
        lambda gib: Check(
            "host_ram", "system", Status.WARN,
            f"{gib:.1f} GiB of host RAM free: offloading the DiT and the text encoder needs "
            "about 24 GiB",
            fix="close other programs, or plan without offloading (`wanctl tune`)",
            shell="free -g",
        ),
    )  # fmt: skip
    return [
        shm,
        Check("memlock", "system", Status.OK, f"memlock limit {memlock}", shell="ulimit -l"),
        Check("iommu", "system", Status.OK, f"IOMMU {system.iommu}", shell="cat /proc/cmdline"),
        host_ram,
    ]


def _at_least(
    name: str,
    value: int | None,
    minimum: int,
    label: str,
    shell: str,
    too_little: Callable[[float], Check],
) -> Check:
    """`too_little(GiB)` below `minimum` bytes; else OK, with the size (N/A: unknown)."""
    if value is not None and value < minimum:
        return too_little(value / GIB)
    size = "N/A" if value is None else f"{value / GIB:.1f} GiB"
    return Check(name, "system", Status.OK, f"{label} {size}", shell=shell)
