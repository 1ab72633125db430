"""Host memory: what one rank of the diffusers worker holds in host RAM, and the check a launch
makes against the host's free memory before any rank starts (Wan2.2 issue 58: two ranks with
32 GB of RAM, killed by the kernel's OOM killer while loading).

Every network goes straight from its files to the device it runs on (`wanctl.models.weights`
streams a DiT tensor by tensor into its GPU, or its FSDP shard; UMT5 and the VAE load with a
`device_map` of the GPU): no weights pass through host memory but those that live there. Per
rank, on top of the process itself (`BASELINE_GIB`: python, torch, CUDA's host side):
- with `--offload`, the A14B's low-noise expert waits there until the boundary (bf16 or fp8);
- an I2V run keeps its conditioning clip (3 x F x H x W float32) there for the pipeline's
  encode to be answered from (`wanctl.models.condition`);
- rank 0 alone encodes the prompt, before any DiT is loaded: with `--text-encoder cpu` UMT5
  runs there; on the GPU, transformers casts each tensor in host memory before its copy when
  the files hold another dtype (torch converts a blocking host-to-GPU copy on the host), the
  largest being UMT5's embedding table (1.96 GiB in bf16).
What is not priced: the file pages of the tensor being read (page cache mapped while it is
copied: RssFile, reclaimable; the largest, an A14B expert's FFN weight, is 0.26 GiB in
float32) and a tensor's bf16 cast on its way to fp8 storage in host memory.

Measured on one H200 (synthetic-a14b, 1280*720 x 81): 2.50 GB of RSS with nothing on the host
(fp8 storage), 30.3 GB with the low-noise expert waiting there (26.6 GiB predicted on top of
the baseline: 29.2 GB). A checkpoint's load has not been measured on a GPU yet
(`benchmarks/host_memory.py` compares it with `from_pretrained`'s). Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass

from wanctl.core.architectures import UMT5_XXL
from wanctl.core.settings import GIB, Resident, Settings
from wanctl.core.workload import Workload
from wanctl.tune.predict import PARAMS, resident_gib

HOST_MARGIN = 0.9  # of the host's free memory a run may take: the page cache and the rest
BASELINE_GIB = 2.50e9 / GIB  # measured: the worker's RSS with no weights on the host
EMBEDDING_GIB = UMT5_XXL["vocab_size"] * UMT5_XXL["d_model"] * 2 / GIB  # UMT5's largest, bf16


@dataclass(frozen=True)
class HostPlan:
    """GiB of host RAM the ranks of one host hold at their peaks, and what makes them: every
    rank's while it samples (`parts`), and rank 0's while it alone encodes the prompt, before
    any DiT is loaded (`encode`)."""

    parts: tuple[tuple[str, float], ...]
    ranks: int
    encode: tuple[tuple[str, float], ...] = ()

    @property
    def sampling_gib(self) -> float:
        return sum(gib for _, gib in self.parts)

    @property
    def per_rank_gib(self) -> float:
        """The largest rank's peak: rank 0's."""
        return max(self.sampling_gib, sum(gib for _, gib in self.encode))

    @property
    def total_gib(self) -> float:
        return self.per_rank_gib + self.sampling_gib * (self.ranks - 1)

    def describe(self) -> str:
        shown = " + ".join(f"{name} {gib:.1f}" for name, gib in self.parts)
        encode = " + ".join(f"{name} {gib:.1f}" for name, gib in self.encode)
        first = (f", rank 0 {self.per_rank_gib:.1f} at first ({encode})"
                 if self.per_rank_gib > self.sampling_gib else "")  # fmt: skip
        return f"{self.ranks} rank(s) x ({shown}){first} = {self.total_gib:.1f} GiB"


def dit_gib(workload: Workload, storage: str) -> float:
    """One DiT's weights (an A14B expert, or TI2V-5B's), bf16 or fp8-stored."""
    return resident_gib(Resident("DiT", storage), workload.family)


def host_plan(workload: Workload, settings: Settings, ranks: int, *, checkpoint: bool) -> HostPlan:
    """The host RAM of the diffusers worker's ranks on one host (`checkpoint`: loading one;
    the built-in models encode no prompt there)."""
    parts = [("process", BASELINE_GIB)]
    if settings.offload:
        parts.append(("the waiting expert", dit_gib(workload, settings.dit_storage)))
    if workload.image and workload.family.experts == 2:
        parts.append(("the conditioning clip", 3 * workload.frames * workload.width
                      * workload.height * 4 / GIB))  # fmt: skip
    encode = (
        (("process", BASELINE_GIB), text_encoder_part(workload, settings)) if checkpoint else ()
    )
    return HostPlan(tuple(parts), ranks, encode)


def text_encoder_part(workload: Workload, settings: Settings) -> tuple[str, float]:
    """What rank 0's text encode holds in host memory: UMT5 whole on the CPU, else its
    largest tensor (the embedding table) cast there on its way to the GPU."""
    if settings.text_encoder == "cpu":
        return "the text encoder", PARAMS[workload.family.name]["text_encoder"] * 2 / GIB
    return "UMT5's embedding table on its way", EMBEDDING_GIB
