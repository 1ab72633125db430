"""Known GPU models as data: what NVML would report for each, used to describe rigs one does
not have (`tune --rig "2x RTX 5090 32GB"`) and to build the fake rigs of the tests.

`p2p` is the stock-driver PCIe peer-to-peer status between two such cards: GeForce cards
report CNS (no P2P; NCCL falls back to shared memory).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from wanctl.errors import UsageError


@dataclass(frozen=True)
class GpuModel:
    name: str  # as NVML reports it
    memory_total_mib: int
    compute_capability: tuple[int, int]
    pcie_gen: int
    pcie_width: int = 16
    bar1_mib: int = 256
    p2p: str = "OK"
    nvlinks: int = 0  # per GPU on an SXM board


MODELS: dict[str, GpuModel] = {
    "rtx-3090": GpuModel("NVIDIA GeForce RTX 3090", 24576, (8, 6), 4, p2p="CNS"),
    "rtx-4090": GpuModel("NVIDIA GeForce RTX 4090", 24564, (8, 9), 4, p2p="CNS"),
    "rtx-5090": GpuModel("NVIDIA GeForce RTX 5090", 32607, (12, 0), 5, bar1_mib=32768, p2p="CNS"),
    "rtx-6000-ada": GpuModel("NVIDIA RTX 6000 Ada Generation", 49140, (8, 9), 4, bar1_mib=65536),
    "l40s": GpuModel("NVIDIA L40S", 46068, (8, 9), 4, bar1_mib=65536),
    "a100": GpuModel("NVIDIA A100-SXM4-80GB", 81920, (8, 0), 4, bar1_mib=131072, nvlinks=12),
    "h100": GpuModel("NVIDIA H100 80GB HBM3", 81559, (9, 0), 5, bar1_mib=131072, nvlinks=18),
    "h200": GpuModel("NVIDIA H200", 143771, (9, 0), 5, bar1_mib=262144, nvlinks=18),
}


def find_model(text: str) -> GpuModel:
    """'RTX 5090', 'rtx5090', 'H100' -> the catalog entry."""
    key = "-".join(re.findall(r"[a-z]+|\d+", text.lower().replace("geforce", "")))
    key = key.replace("nvidia-", "")
    for slug, model in MODELS.items():
        if key == slug or key.replace("-", "") == slug.replace("-", ""):
            return model
    raise UsageError(
        f"unknown GPU model {text!r}",
        why="wanctl plans only for GPUs whose memory and links it knows",
        fix=f"use one of: {', '.join(sorted(MODELS))}",
    )


def parse_rig(description: str) -> tuple[int, GpuModel, int | None]:
    """'2x RTX 5090 32GB' -> (2, RTX 5090, 32). The memory size is optional."""
    match = re.fullmatch(r"\s*(\d+)\s*[x×*]\s*(.+?)\s*(?:(\d+)\s*gi?b)?\s*", description, re.I)
    if not match:
        raise UsageError(
            f"cannot read the rig {description!r}",
            why="a rig is written as COUNTx MODEL [MEMORYGB]",
            fix='write it like "2x RTX 5090 32GB" or "8x H100"',
        )
    count, model_text, memory_gb = match.groups()
    if int(count) < 1:
        raise UsageError(f"a rig needs at least one GPU, not {count}", fix='e.g. "1x RTX 4090"')
    return int(count), find_model(model_text), int(memory_gb) if memory_gb else None
