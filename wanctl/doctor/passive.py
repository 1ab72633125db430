"""What is wrong with this rig, and how to fix it.

`passive_checks` derives findings from a probe's readings alone (no CUDA in this process);
`wanctl.doctor.active` adds the checks that need real transfers in child processes. Every check that
warns or fails says how to fix it, and names the shell command that shows the same thing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from wanctl.doctor.report import Check, Status
from wanctl.probe.base import (
    P2P_STATUS_TEXT,
    GpuInfo,
    GpuInventory,
    P2PCaps,
    Software,
    System,
    interconnect,
)

# RTX 50xx (sm_120) needs NCCL 2.26.2 or newer.
NCCL_MIN_FOR_MAJOR = {12: (2, 26, 2)}
DIFFUSERS_MIN = (0, 36)
BUSY_FRACTION = 0.10
BAD_CLOCK_EVENTS = {
    "hw_slowdown": "hardware slowdown (power or temperature)",
    "hw_thermal_slowdown": "hardware thermal slowdown",
    "hw_power_brake_slowdown": "power brake (external power supply signal)",
    "sw_thermal_slowdown": "software thermal slowdown",
}
TORCH_CUDA_INSTALL = "pip install -U torch --index-url https://download.pytorch.org/whl/cu128"


def _version_tuple(text: str | None) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text or "")[:3])


def _gib(mib: int | None) -> str:
    return "N/A" if mib is None else f"{mib / 1024:.1f} GiB"


# --- the driver and each GPU -------------------------------------------------------------


def check_driver(inventory: GpuInventory) -> list[Check]:
    if inventory.error:
        return [
            Check(
                "driver",
                "gpu",
                Status.FAIL,
                f"no NVIDIA driver answers: {inventory.error}",
                fix="install the NVIDIA driver (570 or newer for RTX 50xx) and check that "
                "`nvidia-smi` lists your GPUs; in a container, run it with --gpus all",
                shell="nvidia-smi",
            )
        ]
    if not inventory.gpus:
        return [
            Check(
                "driver",
                "gpu",
                Status.FAIL,
                "the driver answers but sees no GPU",
                fix="check CUDA_VISIBLE_DEVICES and `nvidia-smi -L`",
                shell="nvidia-smi -L",
            )
        ]
    return [
        Check(
            "driver",
            "gpu",
            Status.OK,
            f"driver {inventory.driver_version}, CUDA {inventory.cuda_driver_version}, "
            f"NVML {inventory.nvml_version}, {len(inventory.gpus)} GPU(s)",
            shell="nvidia-smi",
        )
    ]


def check_gpu(gpu: GpuInfo) -> list[Check]:
    """Loss, memory held by others, display, compute mode, ECC, clock events, PCIe width."""
    name = f"gpu{gpu.index}"
    if gpu.lost:
        return [
            Check(
                f"{name}.lost",
                "gpu",
                Status.FAIL,
                f"GPU {gpu.index}: lost ({gpu.lost})",
                fix=f"look for Xid errors (`dmesg | grep -i xid`), reset it "
                f"(`nvidia-smi -r -i {gpu.index}`) or reboot",
                shell=f"nvidia-smi -q -i {gpu.index}",
            )
        ]
    checks = [_memory_check(gpu), _clock_check(gpu), _pcie_width_check(gpu)]
    if gpu.display_active:
        checks.append(
            Check(
                f"{name}.display",
                "gpu",
                Status.WARN,
                f"GPU {gpu.index} drives a display: the desktop holds memory and time slices",
                fix="run headless (`sudo systemctl isolate multi-user.target`) or leave this "
                "GPU out with CUDA_VISIBLE_DEVICES",
                shell=f"nvidia-smi -q -i {gpu.index} -d DISPLAY",
            )
        )
    if gpu.compute_mode == "Prohibited":
        checks.append(
            Check(
                f"{name}.compute_mode",
                "gpu",
                Status.FAIL,
                f"GPU {gpu.index} is in compute mode Prohibited: no process may use it",
                fix=f"sudo nvidia-smi -i {gpu.index} -c DEFAULT",
                shell=f"nvidia-smi -q -i {gpu.index} -d COMPUTE",
            )
        )
    if gpu.ecc_uncorrected:
        checks.append(
            Check(
                f"{name}.ecc",
                "gpu",
                Status.FAIL,
                f"GPU {gpu.index} has {gpu.ecc_uncorrected} uncorrected ECC errors since boot",
                fix=f"reset the GPU (`nvidia-smi -r -i {gpu.index}`); if errors return, the "
                "card needs service",
                shell=f"nvidia-smi -q -i {gpu.index} -d ECC",
            )
        )
    return checks


def _memory_check(gpu: GpuInfo) -> Check:
    name = f"gpu{gpu.index}.memory"
    used, total = gpu.memory_used_mib, gpu.memory_total_mib
    summary = f"GPU {gpu.index} {gpu.name}: {_gib(total)}, {_gib(used)} in use"
    holders = ", ".join(f"{p.name}[{p.pid}]" for p in gpu.processes or ())
    if used is not None and total and used > BUSY_FRACTION * total:
        return Check(
            name,
            "gpu",
            Status.WARN,
            f"{summary}" + (f" by {holders}" if holders else ""),
            fix="stop those processes, or leave this GPU out with CUDA_VISIBLE_DEVICES: "
            "wanctl plans with the whole card",
            shell="nvidia-smi --query-compute-apps=pid,name,used_memory --format=csv",
        )
    return Check(name, "gpu", Status.OK, summary, shell="nvidia-smi")


def _clock_check(gpu: GpuInfo) -> Check:
    name = f"gpu{gpu.index}.clocks"
    shell = f"nvidia-smi -q -i {gpu.index} -d PERFORMANCE"
    if gpu.clock_event_reasons is None:
        return Check(name, "gpu", Status.SKIPPED, "clock-event reasons: N/A", shell=shell)
    bad = [BAD_CLOCK_EVENTS[r] for r in gpu.clock_event_reasons if r in BAD_CLOCK_EVENTS]
    if bad:
        return Check(
            name,
            "gpu",
            Status.WARN,
            f"GPU {gpu.index} is slowed: {', '.join(bad)}",
            fix="check cooling (fans, airflow, dust) and the power cables and supply",
            shell=shell,
        )
    return Check(
        name, "gpu", Status.OK, f"GPU {gpu.index}: no thermal or power slowdown", shell=shell
    )


def _pcie_width_check(gpu: GpuInfo) -> Check:
    name = f"gpu{gpu.index}.pcie"
    link = gpu.pcie
    shell = f"nvidia-smi -q -i {gpu.index} -d PCIE"
    if link.width_current is None or link.width_max is None:
        return Check(name, "gpu", Status.SKIPPED, f"GPU {gpu.index}: PCIe link N/A", shell=shell)
    text = (
        f"GPU {gpu.index}: PCIe Gen{link.gen_current} x{link.width_current} "
        f"(max Gen{link.gen_max} x{link.width_max}; an idle GPU lowers its generation)"
    )
    if link.width_current < link.width_max:
        return Check(
            name,
            "gpu",
            Status.WARN,
            text + f": the link runs at x{link.width_current}",
            fix="reseat the card or its riser, and check the slot's lane split (bifurcation) "
            "in the BIOS",
            shell=shell,
        )
    return Check(name, "gpu", Status.OK, text, shell=shell)


# --- topology and P2P --------------------------------------------------------------------


def check_topology(inventory: GpuInventory, system: System) -> list[Check]:
    pairs = inventory.live_pairs()
    if not pairs:
        count = "no GPU" if not inventory.live_gpus() else "one GPU"
        return [
            Check(
                "topology",
                "topology",
                Status.SKIPPED,
                f"{count}: no pair to link",
                shell="nvidia-smi topo -m",
            )
        ]
    checks = [_socket_check(inventory, pairs), _p2p_check(inventory, pairs)]
    if _iommu_harms_p2p(inventory, system):
        checks.append(
            Check(
                "topology.iommu",
                "topology",
                Status.WARN,
                "PCIe P2P with the IOMMU translating: transfers can be redirected through the "
                "root complex and NCCL can hang",
                fix="boot with iommu=pt (or disable ACS in the BIOS); if NCCL still hangs, "
                "export NCCL_P2P_DISABLE=1; `wanctl doctor --full` proves which works",
                shell="cat /proc/cmdline; ls /sys/class/iommu",
            )
        )
    return checks


def _iommu_harms_p2p(inventory: GpuInventory, system: System) -> bool:
    """PCIe P2P with the IOMMU translating: peer traffic can be redirected through the root
    complex, and NCCL can hang."""
    return system.iommu == "on" and interconnect(inventory) in ("pcie-p2p", "mixed")


def _socket_check(inventory: GpuInventory, pairs: list[tuple[int, int]]) -> Check:
    far = [(i, j) for i, j in pairs if inventory.link(i, j) == "SYS"]
    if far:
        shown = ", ".join(f"{i}-{j}" for i, j in far[:6])
        return Check(
            "topology.sockets",
            "topology",
            Status.WARN,
            f"GPU pairs {shown} sit on different CPU sockets (SYS): their traffic crosses the "
            "CPU interconnect",
            fix="run a job on GPUs of one socket (CUDA_VISIBLE_DEVICES=...), see the CPU and "
            "NUMA affinity columns",
            shell="nvidia-smi topo -m",
        )
    kinds = sorted({inventory.link(i, j) for i, j in pairs})
    return Check(
        "topology.sockets",
        "topology",
        Status.OK,
        f"all GPUs on one socket; links: {', '.join(kinds)}",
        shell="nvidia-smi topo -m",
    )


def _p2p_check(inventory: GpuInventory, pairs: list[tuple[int, int]]) -> Check:
    kind = interconnect(inventory)
    shell = "nvidia-smi topo -p2p rwna"
    if kind == "nvlink":
        return Check(
            "p2p", "topology", Status.OK, "every pair on NVLink, P2P supported", shell=shell
        )
    if kind == "pcie-p2p":
        return Check(
            "p2p", "topology", Status.OK, "PCIe P2P supported between every pair", shell=shell
        )
    missing = [(i, j) for i, j in pairs if not ((c := inventory.caps(i, j)) and c.supported)]
    statuses = sorted({(inventory.caps(i, j) or P2PCaps()).read for i, j in missing})
    reasons = ", ".join(f"{s} ({P2P_STATUS_TEXT.get(s, s)})" for s in statuses)
    return Check(
        "p2p",
        "topology",
        Status.OK,
        f"no P2P between {len(missing)} pair(s): {reasons}; NCCL detects it and moves data "
        "through host shared memory (SHM), which needs /dev/shm of 1 GiB or more",
        shell=shell,
    )


# --- software ----------------------------------------------------------------------------


def _arch_covers(arch_list: Iterable[str], capability: tuple[int, int]) -> bool:
    """sm_XY code runs on X.Y' for Y' >= Y (same major); compute_XY PTX runs on newer GPUs."""
    major, minor = capability
    for arch in arch_list:
        match = re.fullmatch(r"(sm|compute)_(\d+?)(\d)a?", arch)
        if not match:
            continue
        kind, arch_major, arch_minor = match[1], int(match[2]), int(match[3])
        if kind == "sm" and arch_major == major and arch_minor <= minor:
            return True
        if kind == "compute" and (arch_major, arch_minor) <= (major, minor):
            return True
    return False


def check_software(inventory: GpuInventory, software: Software) -> list[Check]:
    checks = [_torch_check(inventory, software), _nccl_check(inventory, software)]
    checks.append(_diffusers_check(software))
    if software.ffmpeg:
        checks.append(Check("ffmpeg", "software", Status.OK, f"ffmpeg {software.ffmpeg}"))
    else:
        checks.append(
            Check(
                "ffmpeg",
                "software",
                Status.FAIL,
                "no ffmpeg from imageio-ffmpeg: wanctl cannot write mp4",
                fix="pip install -U imageio-ffmpeg",
            )
        )
    return [check for check in checks if check is not None]


def _torch_check(inventory: GpuInventory, software: Software) -> Check:
    gpus = inventory.live_gpus()
    if software.torch is None:
        return Check(
            "torch", "software", Status.FAIL, "PyTorch is not installed", fix=TORCH_CUDA_INSTALL
        )
    if not software.torch_cuda:
        status = Status.FAIL if gpus else Status.OK
        finding = f"torch {software.torch} is a CPU build" + (
            "; it cannot use the GPUs" if gpus else ""
        )
        return Check("torch", "software", status, finding, fix=TORCH_CUDA_INSTALL if gpus else "")
    if software.torch_arch_list is None:
        return Check(
            "torch",
            "software",
            Status.WARN,
            f"torch {software.torch} (CUDA {software.torch_cuda}) could not be asked which GPUs "
            "it was built for: importing it failed",
            fix="run the command below and fix what it prints (a broken install?)",
            shell="python -c 'import torch; print(torch.cuda.get_arch_list())'",
        )
    arch_list = software.torch_arch_list
    uncovered = sorted(
        {
            g.sm or "?"
            for g in gpus
            if g.compute_capability and not _arch_covers(arch_list, g.compute_capability)
        }
    )
    arch = " ".join(arch_list) or "N/A"
    if uncovered:
        return Check(
            "torch",
            "software",
            Status.FAIL,
            f"torch {software.torch} (CUDA {software.torch_cuda}, built for {arch}) has no "
            f"kernels for {', '.join(uncovered)}",
            fix=f"install a PyTorch build that targets {', '.join(uncovered)} "
            f"(CUDA 12.8 or newer): {TORCH_CUDA_INSTALL}",
            shell="python -c 'import torch; print(torch.cuda.get_arch_list())'",
        )
    return Check(
        "torch",
        "software",
        Status.OK,
        f"torch {software.torch}, CUDA {software.torch_cuda}, built for {arch}",
    )


def _nccl_check(inventory: GpuInventory, software: Software) -> Check | None:
    gpus = inventory.live_gpus()
    if not gpus:
        return None
    if software.nccl is None:
        status = Status.FAIL if len(gpus) > 1 else Status.SKIPPED
        return Check(
            "nccl",
            "software",
            status,
            "torch has no NCCL: no multi-GPU runs",
            fix=TORCH_CUDA_INSTALL if status is Status.FAIL else "",
        )
    have = _version_tuple(software.nccl)
    for gpu in gpus:
        needed = NCCL_MIN_FOR_MAJOR.get((gpu.compute_capability or (0, 0))[0])
        if needed and have < needed:
            wanted = ".".join(map(str, needed))
            return Check(
                "nccl",
                "software",
                Status.FAIL if len(gpus) > 1 else Status.WARN,
                f"NCCL {software.nccl} is older than {wanted}, the first that supports "
                f"{gpu.name} ({gpu.sm}): multi-GPU runs fail or hang",
                fix=f"pip install -U 'nvidia-nccl-cu12>={wanted}' (or a torch 2.7+ cu128 build)",
                shell="python -c 'import torch; print(torch.cuda.nccl.version())'",
            )
    return Check("nccl", "software", Status.OK, f"NCCL {software.nccl}")


def _diffusers_check(software: Software) -> Check:
    wanted = ".".join(map(str, DIFFUSERS_MIN))
    if software.diffusers is None or _version_tuple(software.diffusers) < DIFFUSERS_MIN:
        found = software.diffusers or "not installed"
        return Check(
            "diffusers",
            "software",
            Status.FAIL,
            f"diffusers {found}: Wan2.2 decode and Ulysses need {wanted} or newer",
            fix=f"pip install -U 'diffusers>={wanted}'",
        )
    return Check("diffusers", "software", Status.OK, f"diffusers {software.diffusers}")


# --- the host ----------------------------------------------------------------------------


# --- putting it together -----------------------------------------------------------------


def nccl_environment(inventory: GpuInventory, system: System) -> dict[str, str]:
    """NCCL settings from the readings alone. NCCL detects missing P2P by itself (CNS on
    GeForce) and uses SHM, and NCCL_P2P_DISABLE=1 where P2P works costs bandwidth: so it is
    set only where PCIe P2P is known harmful (the IOMMU translating peer traffic, which hangs
    NCCL). The active all-reduce check (`wanctl.doctor.active`) overrides this with what it
    proved."""
    if _iommu_harms_p2p(inventory, system):
        return {"NCCL_P2P_DISABLE": "1"}
    return {}
