"""The GPUs as NVML sees them, without initialising CUDA in this process.

Every NVML call goes through `_query`: a field the GPU does not report becomes None (N/A),
a lost GPU becomes a `GpuInfo` with `lost` set, and the other GPUs still report.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any, TypeVar

from wanctl.probe.base import GpuInfo, GpuInventory, GpuProcess, P2PCaps, PcieLink

T = TypeVar("T")

# nvmlDeviceGetTopologyCommonAncestor level -> nvidia-smi topo -m label.
_TOPOLOGY_LABELS = {0: "X", 10: "PIX", 20: "PXB", 30: "PHB", 40: "NODE", 50: "SYS"}
_P2P_STATUS = {0: "OK", 1: "CNS", 2: "GNS", 3: "TNS", 4: "DR", 5: "NS", 6: "U"}
# NVML_P2P_CAPS_INDEX_*; READ is 0 (pynvml spells it `(0,)` by a typo).
_P2P_INDEX = {"read": 0, "write": 1, "nvlink": 2, "atomics": 3}
_COMPUTE_MODES = {0: "Default", 1: "Exclusive_Thread", 2: "Prohibited", 3: "Exclusive_Process"}
_CLOCK_EVENTS = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class NvmlReader:
    """Reads a `GpuInventory`; NVML is initialised lazily, once, and shut down after."""

    def __init__(self, nvml: Any = None) -> None:
        """`nvml` is the pynvml module (from nvidia-ml-py) unless another library with the
        same functions is given."""
        if nvml is None:
            import pynvml

            nvml = pynvml
        self.nvml = nvml

    def _query(self, call: Callable[..., T], *args: Any) -> T | None:
        """The one choke point: NotSupported, NoPermission and friends become None."""
        try:
            return call(*args)
        except self.nvml.NVMLError:
            return None

    def read(self) -> GpuInventory:
        nvml = self.nvml
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as error:
            return GpuInventory(error=str(error))
        try:
            return self._read_initialised()
        finally:
            self._query(nvml.nvmlShutdown)

    def _read_initialised(self) -> GpuInventory:
        nvml = self.nvml
        count = self._query(nvml.nvmlDeviceGetCount) or 0
        handles: list[Any] = []
        gpus: list[GpuInfo] = []
        for index in range(count):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                gpu = self._gpu(index, handle)
            except nvml.NVMLError as error:
                handle, gpu = None, GpuInfo(index=index, lost=str(error))
            handles.append(handle)
            gpus.append(gpu)
        nvlink_peers = [self._nvlink_peers(handle) for handle in handles]
        gpus = [
            dataclasses.replace(gpu, nvlinks_active=len(peers)) if gpu.lost is None else gpu
            for gpu, peers in zip(gpus, nvlink_peers, strict=True)
        ]
        cuda = self._query(nvml.nvmlSystemGetCudaDriverVersion)
        return GpuInventory(
            driver_version=_maybe_text(self._query(nvml.nvmlSystemGetDriverVersion)),
            cuda_driver_version=f"{cuda // 1000}.{cuda % 1000 // 10}" if cuda else None,
            nvml_version=_maybe_text(self._query(nvml.nvmlSystemGetNVMLVersion)),
            gpus=tuple(gpus),
            topology=tuple(
                tuple(
                    self._link(a, b, peers, gpu_b.pci_bus_id)
                    for b, gpu_b in zip(handles, gpus, strict=True)
                )
                for a, peers in zip(handles, nvlink_peers, strict=True)
            ),
            p2p=tuple(tuple(None if a is b else self._p2p(a, b) for b in handles) for a in handles),
        )

    def _gpu(self, index: int, handle: Any) -> GpuInfo:
        """`nvidia-smi -q -i INDEX`. Name and memory must answer (else the GPU is lost)."""
        nvml, q = self.nvml, self._query
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        mib = 1024 * 1024
        bar1 = q(nvml.nvmlDeviceGetBAR1MemoryInfo, handle)
        ecc_uncorrected = q(
            nvml.nvmlDeviceGetTotalEccErrors,
            handle,
            nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
            nvml.NVML_VOLATILE_ECC,
        )
        ecc_corrected = q(
            nvml.nvmlDeviceGetTotalEccErrors,
            handle,
            nvml.NVML_MEMORY_ERROR_TYPE_CORRECTED,
            nvml.NVML_VOLATILE_ECC,
        )
        persistence = q(nvml.nvmlDeviceGetPersistenceMode, handle)
        display = q(nvml.nvmlDeviceGetDisplayActive, handle)
        compute_mode = q(nvml.nvmlDeviceGetComputeMode, handle)
        return GpuInfo(
            index=index,
            name=_text(nvml.nvmlDeviceGetName(handle)),
            uuid=_maybe_text(q(nvml.nvmlDeviceGetUUID, handle)),
            pci_bus_id=self._bus_id(handle),
            memory_total_mib=memory.total // mib,
            memory_used_mib=memory.used // mib,
            memory_free_mib=memory.free // mib,
            compute_capability=q(nvml.nvmlDeviceGetCudaComputeCapability, handle),
            pcie=PcieLink(
                gen_current=q(nvml.nvmlDeviceGetCurrPcieLinkGeneration, handle),
                gen_max=q(nvml.nvmlDeviceGetMaxPcieLinkGeneration, handle),
                width_current=q(nvml.nvmlDeviceGetCurrPcieLinkWidth, handle),
                width_max=q(nvml.nvmlDeviceGetMaxPcieLinkWidth, handle),
            ),
            bar1_total_mib=bar1.bar1Total // mib if bar1 else None,
            persistence_mode=None if persistence is None else bool(persistence),
            compute_mode=None if compute_mode is None else _COMPUTE_MODES.get(compute_mode),
            ecc_uncorrected=ecc_uncorrected,
            ecc_corrected=ecc_corrected,
            clock_event_reasons=self._clock_events(handle),
            display_active=None if display is None else bool(display),
            processes=self._processes(handle),
            cpu_affinity=self._cpu_affinity(handle),
            numa_node=q(nvml.nvmlDeviceGetNumaNodeId, handle),
        )

    def _bus_id(self, handle: Any) -> str | None:
        info = self._query(self.nvml.nvmlDeviceGetPciInfo, handle)
        return _text(info.busId) if info else None

    def _clock_events(self, handle: Any) -> tuple[str, ...] | None:
        """`nvidia-smi -q -d PERFORMANCE`: the active clock-event (throttle) reasons."""
        mask = self._query(self.nvml.nvmlDeviceGetCurrentClocksEventReasons, handle)
        if mask is None:
            return None
        return tuple(name for bit, name in _CLOCK_EVENTS.items() if mask & bit)

    def _processes(self, handle: Any) -> tuple[GpuProcess, ...] | None:
        running = self._query(self.nvml.nvmlDeviceGetComputeRunningProcesses, handle)
        if running is None:
            return None
        return tuple(
            GpuProcess(
                pid=proc.pid,
                name=_maybe_text(self._query(self.nvml.nvmlSystemGetProcessName, proc.pid)) or "?",
                used_mib=proc.usedGpuMemory // (1024 * 1024) if proc.usedGpuMemory else None,
            )
            for proc in running
        )

    def _cpu_affinity(self, handle: Any) -> str | None:
        """`nvidia-smi topo -m` 'CPU Affinity' column, as CPU ranges."""
        words = self._query(
            self.nvml.nvmlDeviceGetCpuAffinity, handle, ((os.cpu_count() or 64) + 63) // 64
        )
        if words is None:
            return None
        cpus = [
            64 * w + bit for w, word in enumerate(words) for bit in range(64) if word >> bit & 1
        ]
        return _ranges(cpus) or None

    def _nvlink_peers(self, handle: Any) -> list[str]:
        """Bus ids at the far end of each active NVLink (`nvidia-smi nvlink -s`)."""
        if handle is None:
            return []
        peers = []
        for link in range(self.nvml.NVML_NVLINK_MAX_LINKS):
            state = self._query(self.nvml.nvmlDeviceGetNvLinkState, handle, link)
            if state is None and link == 0:
                return []  # no NVLink on this board: skip the other links
            if not state:
                continue
            remote = self._query(self.nvml.nvmlDeviceGetNvLinkRemotePciInfo, handle, link)
            peers.append(_text(remote.busId).lower() if remote is not None else "?")
        return peers

    def _link(self, a: Any, b: Any, a_peers: list[str], b_bus_id: str | None) -> str:
        """`nvidia-smi topo -m` cell: NV# when NVLinks join the pair, else the PCIe level."""
        if a is None or b is None:
            return "N/A"
        if a is b:
            return "X"
        bonded = sum(1 for peer in a_peers if b_bus_id and peer == b_bus_id.lower())
        if bonded:
            return f"NV{bonded}"
        level = self._query(self.nvml.nvmlDeviceGetTopologyCommonAncestor, a, b)
        return _TOPOLOGY_LABELS.get(level, "N/A") if level is not None else "N/A"

    def _p2p(self, a: Any, b: Any) -> P2PCaps | None:
        """`nvidia-smi topo -p2p rwna` for one ordered pair."""
        if a is None or b is None:
            return None
        statuses = {
            field: _P2P_STATUS.get(code, "U") if code is not None else "U"
            for field, index in _P2P_INDEX.items()
            for code in [self._query(self.nvml.nvmlDeviceGetP2PStatus, a, b, index)]
        }
        return P2PCaps(**statuses)


def _maybe_text(value: bytes | str | None) -> str | None:
    return None if value is None else _text(value)


def _ranges(numbers: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5'."""
    spans: list[str] = []
    for number in numbers:
        if spans and number == int(spans[-1].split("-")[-1]) + 1:
            spans[-1] = f"{spans[-1].split('-')[0]}-{number}"
        else:
            spans.append(str(number))
    return ",".join(spans)
