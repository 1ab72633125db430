"""NvmlReader against an NVML library described as data: the same function names and error
classes as pynvml, answering for a 2-GPU NVLink board, NotSupported fields and a lost GPU."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from wanctl.probe.base import fingerprint
from wanctl.probe.nvml import NvmlReader


class NVMLError(Exception):
    pass


class NotSupported(NVMLError):
    pass


class GpuIsLost(NVMLError):
    pass


@dataclass
class Board:
    name: str
    bus: str
    total_mib: int = 81559
    nvlink_peers: list[str] = field(default_factory=list)
    supports_optional_fields: bool = True
    lost: bool = False


class FakeNvml:
    NVMLError = NVMLError
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
    NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
    NVML_VOLATILE_ECC = 0
    NVML_NVLINK_MAX_LINKS = 18

    def __init__(self, boards: list[Board], ancestor: int = 40, p2p: int = 0) -> None:
        self.boards, self.ancestor, self.p2p = boards, ancestor, p2p
        self.initialised = False

    def nvmlInit(self) -> None:
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self.initialised = False

    def nvmlDeviceGetCount(self) -> int:
        return len(self.boards)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Board:
        if self.boards[index].lost:
            raise GpuIsLost("GPU is lost")
        return self.boards[index]

    def nvmlSystemGetDriverVersion(self) -> str:
        return "580.95.05"

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return 13000

    def nvmlSystemGetNVMLVersion(self) -> str:
        return "13.580.95.05"

    def nvmlDeviceGetName(self, board: Board) -> str:
        return board.name

    def nvmlDeviceGetMemoryInfo(self, board: Board) -> Any:
        mib = 1024 * 1024
        return SimpleNamespace(
            total=board.total_mib * mib, used=512 * mib, free=(board.total_mib - 512) * mib
        )

    def nvmlDeviceGetPciInfo(self, board: Board) -> Any:
        return SimpleNamespace(busId=board.bus.encode())

    def _optional(self, board: Board, value: Any) -> Any:
        if not board.supports_optional_fields:
            raise NotSupported("Not Supported")
        return value

    def nvmlDeviceGetUUID(self, board):
        return self._optional(board, f"GPU-{board.bus}")

    def nvmlDeviceGetCudaComputeCapability(self, board):
        return (9, 0)

    def nvmlDeviceGetCurrPcieLinkGeneration(self, board):
        return self._optional(board, 5)

    def nvmlDeviceGetMaxPcieLinkGeneration(self, board):
        return self._optional(board, 5)

    def nvmlDeviceGetCurrPcieLinkWidth(self, board):
        return self._optional(board, 16)

    def nvmlDeviceGetMaxPcieLinkWidth(self, board):
        return self._optional(board, 16)

    def nvmlDeviceGetBAR1MemoryInfo(self, board):
        return self._optional(board, SimpleNamespace(bar1Total=256 * 1024 * 1024))

    def nvmlDeviceGetPersistenceMode(self, board):
        return self._optional(board, 1)

    def nvmlDeviceGetComputeMode(self, board):
        return self._optional(board, 0)

    def nvmlDeviceGetTotalEccErrors(self, board, error_type, counter):
        return self._optional(board, 0)

    def nvmlDeviceGetCurrentClocksEventReasons(self, board):
        return self._optional(board, 0x1 | 0x40)  # idle + hw thermal slowdown

    def nvmlDeviceGetDisplayActive(self, board):
        return self._optional(board, 0)

    def nvmlDeviceGetComputeRunningProcesses(self, board):
        return self._optional(board, [SimpleNamespace(pid=4242, usedGpuMemory=300 * 1024**2)])

    def nvmlSystemGetProcessName(self, pid):
        return b"python3"

    def nvmlDeviceGetCpuAffinity(self, board, words):
        return self._optional(board, [0xFF] + [0] * (words - 1))

    def nvmlDeviceGetNumaNodeId(self, board):
        return self._optional(board, 0)

    def nvmlDeviceGetNvLinkState(self, board, link):
        if not board.nvlink_peers:
            raise NotSupported("Not Supported")
        return 1 if link < len(board.nvlink_peers) else 0

    def nvmlDeviceGetNvLinkRemotePciInfo(self, board, link):
        return SimpleNamespace(busId=board.nvlink_peers[link].encode())

    def nvmlDeviceGetTopologyCommonAncestor(self, a, b):
        return self.ancestor

    def nvmlDeviceGetP2PStatus(self, a, b, index):
        return self.p2p


def test_nvlink_pair_reads_as_nvidia_smi_shows_it() -> None:
    a, b = "00000000:18:00.0", "00000000:2A:00.0"
    boards = [
        Board("NVIDIA H100 80GB HBM3", a, nvlink_peers=[b] * 4),
        Board("NVIDIA H100 80GB HBM3", b, nvlink_peers=[a] * 4),
    ]
    inventory = NvmlReader(FakeNvml(boards)).read()
    assert inventory.driver_version == "580.95.05" and inventory.cuda_driver_version == "13.0"
    assert inventory.topology == (("X", "NV4"), ("NV4", "X"))
    assert inventory.p2p[0][1].read == "OK" and inventory.p2p[0][0] is None
    gpu = inventory.gpus[0]
    assert gpu.nvlinks_active == 4 and gpu.cpu_affinity == "0-7"
    assert gpu.clock_event_reasons == ("gpu_idle", "hw_thermal_slowdown")
    assert gpu.processes[0].name == "python3" and gpu.processes[0].used_mib == 300
    assert fingerprint(inventory) == "2x-h100-80gb-nvlink"


def test_pcie_pair_without_p2p() -> None:
    boards = [
        Board("NVIDIA GeForce RTX 4090", "00000000:01:00.0", 24564),
        Board("NVIDIA GeForce RTX 4090", "00000000:02:00.0", 24564),
    ]
    inventory = NvmlReader(FakeNvml(boards, ancestor=30, p2p=1)).read()
    assert inventory.topology[0][1] == "PHB"
    assert inventory.p2p[1][0].read == "CNS" and not inventory.p2p[1][0].supported
    assert fingerprint(inventory) == "2x-rtx-4090-24gb-pcie"


def test_not_supported_fields_become_none() -> None:
    board = Board(
        "NVIDIA GeForce RTX 3090", "00000000:01:00.0", 24576, supports_optional_fields=False
    )
    gpu = NvmlReader(FakeNvml([board])).read().gpus[0]
    assert gpu.name == "NVIDIA GeForce RTX 3090" and gpu.memory_total_mib == 24576
    assert gpu.uuid is None and gpu.pcie.width_max is None and gpu.processes is None
    assert gpu.clock_event_reasons is None and gpu.ecc_uncorrected is None
    assert gpu.nvlinks_active == 0


def test_a_lost_gpu_is_reported_and_the_others_still_read() -> None:
    boards = [
        Board("NVIDIA H100 80GB HBM3", "00000000:18:00.0"),
        Board("NVIDIA H100 80GB HBM3", "00000000:2A:00.0", lost=True),
    ]
    inventory = NvmlReader(FakeNvml(boards)).read()
    assert inventory.gpus[0].name and inventory.gpus[1].lost == "GPU is lost"
    assert inventory.topology[0][1] == "N/A" and inventory.p2p[0][1] is None


def test_nvml_that_cannot_start_is_an_error_value() -> None:
    class NoDriver(FakeNvml):
        def nvmlInit(self) -> None:
            raise NVMLError("Driver Not Loaded")

    inventory = NvmlReader(NoDriver([])).read()
    assert inventory.error == "Driver Not Loaded" and inventory.gpus == ()
