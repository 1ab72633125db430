"""Rigs described as data, behind the same `Probe` interface as the real one.

`describe_rig` turns "2x RTX 5090" into the inventory NVML would report (used by
`tune --rig`); `SCENARIOS` names the rigs the tests and demos reason about.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

from wanctl.probe.base import GpuInfo, GpuInventory, P2PCaps, PcieLink, Software, System
from wanctl.probe.catalog import MODELS, GpuModel

GIB = 1024**3


@dataclass(frozen=True)
class FakeProbe:
    inventory: GpuInventory
    software_info: Software = field(default_factory=lambda: healthy_software())
    system_info: System = field(default_factory=lambda: healthy_system())

    def gpus(self) -> GpuInventory:
        return self.inventory

    def software(self) -> Software:
        return self.software_info

    def system(self) -> System:
        return self.system_info


def healthy_software(**changes: object) -> Software:
    software = Software(
        python="3.11.7",
        torch="2.9.1+cu128",
        torch_cuda="12.8",
        torch_arch_list=("sm_75", "sm_80", "sm_86", "sm_89", "sm_90", "sm_100", "sm_120"),
        nccl="2.27.3",
        diffusers="0.42.1",
        ffmpeg="/usr/bin/ffmpeg (7.1)",
    )
    return dataclasses.replace(software, **changes)  # type: ignore[arg-type]


def healthy_system(**changes: object) -> System:
    system = System(
        shm_total_bytes=64 * GIB,
        memlock_bytes=None,
        iommu="off",
        kernel_cmdline="BOOT_IMAGE=/vmlinuz root=/dev/nvme0n1p2 ro quiet",
        host_mem_available_bytes=200 * GIB,
        host_mem_total_bytes=256 * GIB,
        network_interfaces=("eth0", "lo"),
    )
    return dataclasses.replace(system, **changes)  # type: ignore[arg-type]


def _gpu(index: int, model: GpuModel, memory_mib: int, numa: int) -> GpuInfo:
    return GpuInfo(
        index=index,
        name=model.name,
        uuid=f"GPU-fake-{index:04d}",
        pci_bus_id=f"00000000:{0x18 + 0x10 * index:02X}:00.0",
        memory_total_mib=memory_mib,
        memory_used_mib=1,
        memory_free_mib=memory_mib - 1,
        compute_capability=model.compute_capability,
        pcie=PcieLink(model.pcie_gen, model.pcie_gen, model.pcie_width, model.pcie_width),
        bar1_total_mib=model.bar1_mib,
        persistence_mode=True,
        compute_mode="Default",
        ecc_uncorrected=0,
        ecc_corrected=0,
        clock_event_reasons=(),
        display_active=False,
        processes=(),
        cpu_affinity="0-31" if numa == 0 else "32-63",
        numa_node=numa,
        nvlinks_active=model.nvlinks,
    )


def describe_rig(
    count: int,
    model: GpuModel,
    *,
    memory_mib: int | None = None,
    nvlink: bool | None = None,
    sockets: int = 1,
    p2p: str | None = None,
) -> GpuInventory:
    """The inventory of `count` identical GPUs: on NVLink when the model has links (or
    `nvlink`), else PCIe with the model's stock P2P status (or `p2p`), split over `sockets`."""
    memory_mib = memory_mib or model.memory_total_mib
    use_nvlink = model.nvlinks > 0 if nvlink is None else nvlink
    per_socket = -(-count // sockets)
    numa = [index // per_socket for index in range(count)]
    gpus = tuple(_gpu(index, model, memory_mib, numa[index]) for index in range(count))

    def label(i: int, j: int) -> str:
        if i == j:
            return "X"
        if use_nvlink:
            return f"NV{model.nvlinks or 4}"
        return "SYS" if numa[i] != numa[j] else "NODE"

    def caps(i: int, j: int) -> P2PCaps | None:
        if i == j:
            return None
        status = p2p or ("OK" if use_nvlink else model.p2p)
        link = "OK" if use_nvlink else "NS"
        return P2PCaps(read=status, write=status, nvlink=link, atomics=status)

    return GpuInventory(
        driver_version="580.95.05",
        cuda_driver_version="13.0",
        nvml_version="13.580.95.05",
        gpus=gpus,
        topology=tuple(tuple(label(i, j) for j in range(count)) for i in range(count)),
        p2p=tuple(tuple(caps(i, j) for j in range(count)) for i in range(count)),
    )


def _not_supported_fields() -> FakeProbe:
    """A GPU whose optional fields all raise NotSupported (older or consumer boards)."""
    inventory = describe_rig(1, MODELS["rtx-3090"])
    bare = GpuInfo(
        index=0, name=inventory.gpus[0].name, memory_total_mib=24576, compute_capability=(8, 6)
    )
    return FakeProbe(dataclasses.replace(inventory, gpus=(bare,)))


def _gpu_lost() -> FakeProbe:
    inventory = describe_rig(4, MODELS["h100"])
    lost = GpuInfo(index=3, lost="GPU is lost (NVML_ERROR_GPU_IS_LOST)")
    return FakeProbe(dataclasses.replace(inventory, gpus=(*inventory.gpus[:3], lost)))


SCENARIOS: dict[str, Callable[[], FakeProbe]] = {
    "h100x1": lambda: FakeProbe(describe_rig(1, MODELS["h100"])),
    "h100x8_nvlink": lambda: FakeProbe(describe_rig(8, MODELS["h100"])),
    "rtx4090x2_no_p2p": lambda: FakeProbe(describe_rig(2, MODELS["rtx-4090"])),
    "rtx5090x2_old_nccl": lambda: FakeProbe(
        describe_rig(2, MODELS["rtx-5090"]), healthy_software(nccl="2.25.1")
    ),
    "l40sx4_two_sockets": lambda: FakeProbe(describe_rig(4, MODELS["l40s"], sockets=2)),
    "not_supported_fields": _not_supported_fields,
    "gpu_lost": _gpu_lost,
    "no_driver": lambda: FakeProbe(
        GpuInventory(error="NVML Shared Library Not Found"),
        healthy_software(torch_cuda=None, torch_arch_list=(), nccl=None),
    ),
}


def scenario(name: str) -> FakeProbe:
    return SCENARIOS[name]()
