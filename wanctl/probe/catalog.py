"""Known GPU models as data: what NVML would report for each, used to describe rigs one does
not have (`tune --rig "2x RTX 5090 32GB"`) and to build the fake rigs of the tests.

Where the figures come from:
- `name` and `memory_total_mib`: NVML's name and memory.total as `nvidia-smi
  --query-gpu=name,memory.total` prints them, read from published nvidia-smi output of each
  card (logs and test fixtures in public repositories, 2025-2026); fingerprints and presets are
  keyed by them (`wanctl.probe.base.fingerprint`), so they stay exact.
- `compute_capability`: NVIDIA's CUDA GPU table (developer.nvidia.com/cuda-gpus): 8.0 GA100
  (A100, A800), 8.6 GA10x, 8.9 Ada, 9.0 Hopper, 10.0 B200, 12.0 GB20x (RTX 50, RTX PRO).
- `pcie_gen` and `pcie_width`: the vendors' spec sheets: Gen4 for Ampere and Ada, Gen5 for
  Hopper and Blackwell; x8 for the RTX 4060 Ti and 5060 Ti, x16 for the others.
- `p2p`, the P2P class: the stock-driver PCIe peer-to-peer status between two such cards.
  GeForce cards report CNS (no P2P; NCCL falls back to shared memory); professional and
  data-center cards OK. `nvlinks`: NVLink links per GPU on an SXM board (A100 12; A800 and H800,
  their export versions, 8; H20, H100, H200 and B200 18). The H100 NVL's bridges join cards in
  pairs only, so it is described as PCIe with P2P.
- `bar1_mib`: shown in doctor's table of a described rig only; 256 MiB where not read.

A model the catalog lacks is planned from the memory given (`"2x FOO 24GB"`), as a card with no
P2P, with a warning (`GpuModel.warning`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from wanctl.errors import UsageError
from wanctl.probe.base import memory_class_gb

# Words a description may carry that name no model.
NOISE = frozenset({"nvidia", "geforce", "rtx", "tesla", "quadro", "gpu", "gpus"})
_MEMORY = re.compile(r"(\d+)\s*gi?b\b", re.I)


@dataclass(frozen=True)
class GpuModel:
    name: str  # as NVML reports it
    memory_total_mib: int
    compute_capability: tuple[int, int] | None
    pcie_gen: int
    pcie_width: int = 16
    bar1_mib: int = 256
    p2p: str = "OK"
    nvlinks: int = 0  # per GPU on an SXM board
    aliases: tuple[str, ...] = ()  # other ways it is written: "H100 SXM", "A100"
    known: bool = True  # False: not in the catalog, planned from the memory given

    @property
    def warning(self) -> str | None:
        if self.known:
            return None
        gb = memory_class_gb(self.memory_total_mib)
        return (
            f"{self.name} is not in wanctl's catalog: planned as a {gb} GB card on PCIe with no "
            "P2P, from the memory given; check the memory NVML reports (`nvidia-smi "
            "--query-gpu=name,memory.total --format=csv`) and give it as MEMORYGB"
        )


def _geforce(
    name: str, mib: int, cc: tuple[int, int], gen: int, pcie_width: int = 16, bar1_mib: int = 256
) -> GpuModel:
    return GpuModel(f"NVIDIA GeForce RTX {name}", mib, cc, gen, pcie_width, bar1_mib, p2p="CNS")


# The first model of a name is the one meant when the memory does not choose ("A100": 80 GB).
MODELS: dict[str, GpuModel] = {
    "rtx-3060": _geforce("3060", 12288, (8, 6), 4),
    "rtx-3080": _geforce("3080", 12288, (8, 6), 4),  # the 12 GB card; the 10 GB one: "3080 10GB"
    "rtx-3080-ti": _geforce("3080 Ti", 12288, (8, 6), 4),
    "rtx-3090": _geforce("3090", 24576, (8, 6), 4),
    "rtx-3090-ti": _geforce("3090 Ti", 24564, (8, 6), 4),
    "rtx-4060-ti": _geforce("4060 Ti", 16380, (8, 9), 4, pcie_width=8),  # the 16 GB card
    "rtx-4070": _geforce("4070", 12282, (8, 9), 4),
    "rtx-4070-super": _geforce("4070 SUPER", 12282, (8, 9), 4),
    "rtx-4070-ti": _geforce("4070 Ti", 12282, (8, 9), 4),
    "rtx-4070-ti-super": _geforce("4070 Ti SUPER", 16376, (8, 9), 4),
    "rtx-4080": _geforce("4080", 16376, (8, 9), 4),
    "rtx-4080-super": _geforce("4080 SUPER", 16376, (8, 9), 4),
    "rtx-4090": _geforce("4090", 24564, (8, 9), 4),
    "rtx-4090-d": _geforce("4090 D", 24564, (8, 9), 4),
    "rtx-5060-ti": _geforce("5060 Ti", 16311, (12, 0), 5, pcie_width=8),  # the 16 GB card
    "rtx-5070": _geforce("5070", 12227, (12, 0), 5),
    "rtx-5070-ti": _geforce("5070 Ti", 16303, (12, 0), 5),
    "rtx-5080": _geforce("5080", 16303, (12, 0), 5),
    "rtx-5090": _geforce("5090", 32607, (12, 0), 5, bar1_mib=32768),
    "rtx-a5000": GpuModel("NVIDIA RTX A5000", 24564, (8, 6), 4),
    "rtx-a6000": GpuModel("NVIDIA RTX A6000", 49140, (8, 6), 4),
    "rtx-6000-ada": GpuModel("NVIDIA RTX 6000 Ada Generation", 49140, (8, 9), 4, bar1_mib=65536,
                             aliases=("RTX 6000 Ada",)),
    "rtx-pro-6000": GpuModel("NVIDIA RTX PRO 6000 Blackwell Workstation Edition", 97887, (12, 0),
                             5, aliases=("RTX PRO 6000", "RTX PRO 6000 Blackwell")),
    "rtx-pro-6000-server": GpuModel("NVIDIA RTX PRO 6000 Blackwell Server Edition", 97887,
                                    (12, 0), 5, aliases=("RTX PRO 6000 Server",)),
    "l4": GpuModel("NVIDIA L4", 23034, (8, 9), 4),
    "l20": GpuModel("NVIDIA L20", 46068, (8, 9), 4),
    "l40": GpuModel("NVIDIA L40", 46068, (8, 9), 4),
    "l40s": GpuModel("NVIDIA L40S", 46068, (8, 9), 4, bar1_mib=65536),
    "a10": GpuModel("NVIDIA A10", 23028, (8, 6), 4),
    "a40": GpuModel("NVIDIA A40", 46068, (8, 6), 4),
    "a100": GpuModel("NVIDIA A100-SXM4-80GB", 81920, (8, 0), 4, bar1_mib=131072, nvlinks=12,
                     aliases=("A100", "A100 SXM", "A100 SXM4")),
    "a100-40gb": GpuModel("NVIDIA A100-SXM4-40GB", 40960, (8, 0), 4, nvlinks=12,
                          aliases=("A100", "A100 SXM", "A100 SXM4")),
    "a100-pcie": GpuModel("NVIDIA A100 80GB PCIe", 81920, (8, 0), 4,
                          aliases=("A100", "A100 PCIe")),
    "a100-pcie-40gb": GpuModel("NVIDIA A100-PCIE-40GB", 40960, (8, 0), 4,
                               aliases=("A100", "A100 PCIe")),
    "a800": GpuModel("NVIDIA A800-SXM4-80GB", 81920, (8, 0), 4, nvlinks=8,
                     aliases=("A800", "A800 SXM", "A800 SXM4")),
    "a800-pcie": GpuModel("NVIDIA A800 80GB PCIe", 81920, (8, 0), 4, aliases=("A800 PCIe",)),
    "h800": GpuModel("NVIDIA H800", 81559, (9, 0), 5, nvlinks=8, aliases=("H800 SXM",)),
    "h800-pcie": GpuModel("NVIDIA H800 PCIe", 81559, (9, 0), 5),
    "h20": GpuModel("NVIDIA H20", 97871, (9, 0), 5, nvlinks=18),
    "h100": GpuModel("NVIDIA H100 80GB HBM3", 81559, (9, 0), 5, bar1_mib=131072, nvlinks=18,
                     aliases=("H100", "H100 SXM", "H100 SXM5")),
    "h100-pcie": GpuModel("NVIDIA H100 PCIe", 81559, (9, 0), 5, aliases=("H100",)),
    "h100-nvl": GpuModel("NVIDIA H100 NVL", 95830, (9, 0), 5, aliases=("H100",)),
    "h200": GpuModel("NVIDIA H200", 143771, (9, 0), 5, bar1_mib=262144, nvlinks=18),
    "b200": GpuModel("NVIDIA B200", 183359, (10, 0), 5, nvlinks=18),
}  # fmt: skip


def _key(text: str) -> str:
    """What names a model in `text`: 'NVIDIA GeForce RTX 4090' -> '4090', 'RTX A6000' ->
    'a6000', 'H100-SXM5' -> 'h100sxm5' (a memory size is not part of it)."""
    words = re.findall(r"[a-z]+|\d+", _MEMORY.sub(" ", text).lower())
    return "".join(word for word in words if word not in NOISE)


def _names(slug: str, model: GpuModel) -> set[str]:
    return {_key(slug), _key(model.name), *(_key(alias) for alias in model.aliases)}


def find_model(text: str, memory_gb: int | None = None) -> GpuModel:
    """'RTX 5090', 'rtx5090', '4090', 'H100' -> the catalog entry; among models of one name the
    one of `memory_gb` ('A100' 40 -> the 40 GB A100), else the first. A model the catalog lacks
    is described from `memory_gb` (with a warning), or refused without it."""
    key = _key(text)
    found = [model for slug, model in MODELS.items() if key and key in _names(slug, model)]
    sized = [model for model in found if memory_class_gb(model.memory_total_mib) == memory_gb]
    if found:
        return (sized or found)[0]
    if memory_gb:
        name = _MEMORY.sub(" ", text).strip()
        return GpuModel(name, memory_gb * 1024, None, 4, p2p="CNS", known=False)
    raise UsageError(
        f"unknown GPU model {text!r}",
        why="wanctl plans only for GPUs whose memory it knows",
        fix=f'give its memory to plan for it anyway ("2x {text.strip()} 24GB"), or use one of: '
        f"{', '.join(MODELS)}",
    )


def parse_rig(description: str) -> tuple[int, GpuModel, int | None]:
    """'2x RTX 5090 32GB' -> (2, RTX 5090, 32); '4090' -> (1, RTX 4090, None). The count and
    the memory size are optional."""
    match = re.fullmatch(r"\s*(?:(\d+)\s*[x×*]\s*)?(.*?)\s*", description, re.I)
    if not match or not _key(match[2]):
        raise UsageError(
            f"cannot read the rig {description!r}",
            why="a rig is written as [COUNTx] MODEL [MEMORYGB]",
            fix='write it like "2x RTX 5090 32GB", "8x H100" or "4090"',
        )
    count, text = int(match[1] or 1), match[2]
    if count < 1:
        raise UsageError(f"a rig needs at least one GPU, not {count}", fix='e.g. "1x RTX 4090"')
    memory = _MEMORY.search(text)
    memory_gb = int(memory[1]) if memory else None
    return count, find_model(text, memory_gb), memory_gb
