"""What wanctl knows about a rig, as plain data, and the one interface that reads it.

`Probe` has three readings: the GPUs (through NVML, never through CUDA), the software stack and
the host system. The real probe is `wanctl.probe.local.LocalProbe`; tests and `tune --rig`
build `FakeProbe`s from rigs described as data (`wanctl.probe.fake`). A field the hardware does
not report is None (shown as N/A), never an exception.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

# nvidia-smi topo -m labels, best first; "NV<n>" is n bonded NVLinks.
P2P_OK = "OK"
# nvidia-smi topo -p2p status codes.
P2P_STATUS_TEXT = {
    "OK": "supported",
    "CNS": "chipset not supported",
    "GNS": "GPU not supported",
    "TNS": "topology not supported",
    "DR": "disabled by registry key",
    "NS": "not supported",
    "U": "unknown",
}


@dataclass(frozen=True)
class PcieLink:
    gen_current: int | None = None
    gen_max: int | None = None
    width_current: int | None = None
    width_max: int | None = None


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    name: str
    used_mib: int | None


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as `nvidia-smi -q` describes it; memory in MiB."""

    index: int
    name: str | None = None
    uuid: str | None = None
    pci_bus_id: str | None = None
    memory_total_mib: int | None = None
    memory_used_mib: int | None = None
    memory_free_mib: int | None = None
    compute_capability: tuple[int, int] | None = None
    pcie: PcieLink = field(default_factory=PcieLink)
    bar1_total_mib: int | None = None
    persistence_mode: bool | None = None
    compute_mode: str | None = None
    ecc_uncorrected: int | None = None
    ecc_corrected: int | None = None
    clock_event_reasons: tuple[str, ...] | None = None
    display_active: bool | None = None
    processes: tuple[GpuProcess, ...] | None = None
    cpu_affinity: str | None = None
    numa_node: int | None = None
    nvlinks_active: int | None = None
    lost: str | None = None  # why the GPU could not be read, when it could not

    @property
    def sm(self) -> str | None:
        """`sm_90` for compute capability 9.0."""
        return (
            f"sm_{self.compute_capability[0]}{self.compute_capability[1]}"
            if self.compute_capability
            else None
        )


@dataclass(frozen=True)
class P2PCaps:
    """One ordered pair's `nvidia-smi topo -p2p` statuses (OK, CNS, GNS, TNS, DR, NS, U)."""

    read: str = "U"
    write: str = "U"
    nvlink: str = "U"
    atomics: str = "U"

    @property
    def supported(self) -> bool:
        return self.read == P2P_OK and self.write == P2P_OK


@dataclass(frozen=True)
class GpuInventory:
    """Everything NVML says about the GPUs. `error` is set when NVML itself could not start
    (no driver); then `gpus` is empty."""

    driver_version: str | None = None
    cuda_driver_version: str | None = None
    nvml_version: str | None = None
    gpus: tuple[GpuInfo, ...] = ()
    topology: tuple[tuple[str, ...], ...] = ()  # [i][j]: "X", "NV4", "PIX", ... "SYS"
    p2p: tuple[tuple[P2PCaps | None, ...], ...] = ()  # [i][j], None on the diagonal
    error: str | None = None

    def live_gpus(self) -> tuple[GpuInfo, ...]:
        return tuple(gpu for gpu in self.gpus if gpu.lost is None)

    def live_pairs(self) -> list[tuple[int, int]]:
        """Each pair of live GPUs once, (i, j) with i < j."""
        live = [gpu.index for gpu in self.live_gpus()]
        return [(i, j) for i in live for j in live if i < j]

    def link(self, i: int, j: int) -> str:
        try:
            return self.topology[i][j]
        except IndexError:
            return "N/A"

    def caps(self, i: int, j: int) -> P2PCaps | None:
        try:
            return self.p2p[i][j]
        except IndexError:
            return None


@dataclass(frozen=True)
class Software:
    python: str
    torch: str | None = None
    torch_cuda: str | None = None  # CUDA version torch was built for; None for a CPU build
    torch_arch_list: tuple[str, ...] | None = ()  # e.g. ("sm_80", "sm_90"); None: unreadable
    nccl: str | None = None  # "2.27.3"
    diffusers: str | None = None
    ffmpeg: str | None = None  # "path (version)"
    env: dict[str, str] = field(default_factory=dict)  # allocator, NCCL, CUDA_* in force


@dataclass(frozen=True)
class System:
    shm_total_bytes: int | None = None
    memlock_bytes: int | None = None  # None: unlimited
    iommu: str = "unknown"  # "off", "on", "passthrough", "unknown"
    kernel_cmdline: str | None = None
    host_mem_available_bytes: int | None = None
    host_mem_total_bytes: int | None = None
    in_container: bool = False
    network_interfaces: tuple[str, ...] | None = None  # /sys/class/net; None: unknown


class Probe(Protocol):
    """The one interface to hardware: NVML for GPUs, the local stack, the host system."""

    def gpus(self) -> GpuInventory: ...

    def software(self) -> Software: ...

    def system(self) -> System: ...


def model_slug(name: str) -> str:
    """'NVIDIA GeForce RTX 4090' -> 'rtx-4090'; 'NVIDIA H100 80GB HBM3' -> 'h100'."""
    text = re.sub(
        r"\b(nvidia|geforce|tesla|quadro|\d+\s*gb|hbm\d*e?|pcie|sxm\d*)\b", " ", name.lower()
    )
    return "-".join(re.findall(r"[a-z0-9]+", text)) or "gpu"


# Card sizes as sold; NVML reports a little less (ECC and firmware reservations).
MEMORY_CLASSES_GB = (
    4,
    6,
    8,
    10,
    11,
    12,
    16,
    20,
    24,
    32,
    40,
    48,
    64,
    80,
    94,
    96,
    141,
    144,
    180,
    192,
)


def memory_class_gb(total_mib: int | None) -> int:
    """The size the card is sold as, from NVML's MiB: 81559 -> 80, 46068 -> 48, 143771 -> 141."""
    gib = (total_mib or 0) / 1024
    return next((size for size in MEMORY_CLASSES_GB if size >= gib - 0.5), round(gib))


def interconnect(inventory: GpuInventory) -> str:
    """'single', 'nvlink' (every pair), 'pcie-p2p' (every pair), 'pcie' (no P2P) or 'mixed'."""
    pairs = inventory.live_pairs()
    if not pairs:
        return "single"
    if all(inventory.link(i, j).startswith("NV") for i, j in pairs):
        return "nvlink"
    supported = [bool((caps := inventory.caps(i, j)) and caps.supported) for i, j in pairs]
    if all(supported):
        return "pcie-p2p"
    return "pcie" if not any(supported) else "mixed"


def fingerprint(inventory: GpuInventory) -> str:
    """A short, stable id of the rig from GPU models, count, memory and interconnect, never
    from free memory, UUIDs or other volatile values: '2x-rtx-4090-24gb-pcie'."""
    models = Counter(
        (model_slug(gpu.name or "gpu"), memory_class_gb(gpu.memory_total_mib))
        for gpu in inventory.live_gpus()
    )
    if not models:
        return "no-gpu"
    groups = "+".join(f"{count}x-{slug}-{gb}gb" for (slug, gb), count in sorted(models.items()))
    return f"{groups}-{interconnect(inventory)}"
