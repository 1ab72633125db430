"""Host memory: what one rank of the diffusers worker holds in host RAM, and the check a launch
makes against the host's free memory before any rank starts (Wan2.2 issue 58: two ranks with
32 GB of RAM, killed by the kernel's OOM killer while loading).

Per rank, on top of the process itself (`BASELINE_GIB`: python, torch, CUDA's host side):
- a checkpoint's weights pass through host memory on their way to the GPU: `from_pretrained`
  reads each network there first, one at a time (UMT5 on rank 0 alone, which broadcasts the
  prompt's embeddings; then each DiT; the fp32 VAE with an image), so the largest of them is
  the transient;
- with `--offload`, the A14B's low-noise expert waits there until the boundary (bf16 or fp8);
- an I2V run keeps its conditioning clip (3 x F x H x W float32) there for the pipeline's
  encode to be answered from (`wanctl.models.condition`).
The built-in synthetic models are allocated where they live: only the waiting expert.

Measured on one H200 (synthetic-a14b, 1280*720 x 81): 2.50 GB of RSS with nothing on the host
(fp8 storage), 30.3 GB with the low-noise expert waiting there (26.6 GiB predicted on top of
the baseline: 29.2 GB). A checkpoint's load was not measured. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass

from wanctl.core.settings import GIB, Resident, Settings
from wanctl.core.workload import Workload
from wanctl.tune.predict import PARAMS, resident_gib

HOST_MARGIN = 0.9  # of the host's free memory a run may take: the page cache and the rest
BASELINE_GIB = 2.50e9 / GIB  # measured: the worker's RSS with no weights on the host


@dataclass(frozen=True)
class HostPlan:
    """GiB of host RAM rank 0 holds at its peak, what it is made of, and the ranks of this
    host; the others hold `encoder_gib` less (rank 0 alone loads the text encoder, whose
    weights may be the largest to pass through)."""

    parts: tuple[tuple[str, float], ...]
    ranks: int
    encoder_gib: float = 0.0

    @property
    def per_rank_gib(self) -> float:
        return sum(gib for _, gib in self.parts)

    @property
    def total_gib(self) -> float:
        return self.per_rank_gib * self.ranks - self.encoder_gib * (self.ranks - 1)

    def describe(self) -> str:
        shown = " + ".join(f"{name} {gib:.1f}" for name, gib in self.parts)
        less = (f", the other ranks {self.encoder_gib:.1f} less (no text encoder)"
                if self.encoder_gib and self.ranks > 1 else "")  # fmt: skip
        return f"{self.ranks} rank(s) x ({shown}){less} = {self.total_gib:.1f} GiB"


def dit_gib(workload: Workload, storage: str) -> float:
    """One DiT's weights (an A14B expert, or TI2V-5B's), bf16 or fp8-stored."""
    return resident_gib(Resident("DiT", storage), workload.family)


def host_plan(workload: Workload, settings: Settings, ranks: int, *, checkpoint: bool) -> HostPlan:
    """The host RAM of the diffusers worker's ranks on one host."""
    parts = [("process", BASELINE_GIB)]
    waiting = dit_gib(workload, settings.dit_storage) if settings.offload else 0.0
    encoder_gib = 0.0
    if checkpoint:
        params = PARAMS[workload.family.name]
        loads = [dit_gib(workload, "bf16")]
        if workload.image:
            loads.append(params["vae"] * 4 / GIB)
        # the low-noise expert is read last: while it waits, nothing else passes through
        others = max(max(loads), waiting)
        rank0 = max(others, params["text_encoder"] * 2 / GIB)  # it alone encodes the prompt
        encoder_gib = rank0 - others
        parts.append(("weights on their way to the GPU", rank0))
    elif waiting:
        parts.append(("the waiting expert", waiting))
    if workload.image and workload.family.experts == 2:
        parts.append(("the conditioning clip", 3 * workload.frames * workload.width
                      * workload.height * 4 / GIB))  # fmt: skip
    return HostPlan(tuple(parts), ranks, encoder_gib)
