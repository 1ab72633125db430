"""What a decode does when the GPU runs out of memory: try again another way, never give up
while a way is left.

The ladder, in order: more ranks (when GPUs are left over), `chunk_t=1`, diffusers' spatial
tiling (approximate: tiles are blended at their seams), the CPU in float32. Each attempt starts
the decode over from the latents file, which nothing ever writes to.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TypeVar

import torch

from wanctl.errors import WanctlError

T = TypeVar("T")


class DecodeOutOfMemory(WanctlError):
    """A decode attempt ran out of GPU memory."""

    def __init__(self, detail: str):
        super().__init__(
            "the VAE decode ran out of GPU memory",
            why=detail,
            fix="free the GPUs (nvidia-smi shows who holds them), decode on more GPUs with"
            " --gpus, or set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True",
        )


@dataclass(frozen=True)
class DecodePlan:
    """How one attempt decodes; `step` names the rung of the ladder that chose it."""

    ranks: int
    chunk_t: int
    device: str
    dtype: str
    tiled: bool = False
    step: str = "as asked"

    @property
    def exact(self) -> bool:
        return not self.tiled

    def describe(self) -> str:
        how = "diffusers tiling (approximate)" if self.tiled else f"chunk_t={self.chunk_t}"
        where = f"{self.ranks} ranks" if self.ranks > 1 else "1 process"
        return f"{where}, {how}, {self.device} {self.dtype}"


def fallback_plans(first: DecodePlan, max_ranks: int) -> list[DecodePlan]:
    """`first`, then the rungs that apply, in order. `max_ranks`: the GPUs that can be used
    (visible, and no more than the frame's latent rows). Nothing to fall back to on the CPU."""
    plans = [first]
    if first.device != "cuda":
        return plans
    if max_ranks > first.ranks:
        plans.append(replace(plans[-1], ranks=max_ranks, step="more ranks"))
    if first.chunk_t > 1:
        plans.append(replace(plans[-1], chunk_t=1, step="chunk_t=1"))
    plans.append(replace(first, ranks=1, chunk_t=1, tiled=True, step="diffusers tiling"))
    plans.append(DecodePlan(ranks=1, chunk_t=1, device="cpu", dtype="fp32", step="cpu"))
    return plans


def run_ladder(
    plans: list[DecodePlan],
    attempt: Callable[[DecodePlan], T],
    notify: Callable[[str], None] = lambda _: None,
) -> tuple[DecodePlan, T, list[str]]:
    """Try `plans` in order until one does not run out of memory: (the plan that worked, what
    its attempt returned, one line per attempt). Other errors stop the ladder at once."""
    attempts: list[str] = []
    failure = DecodeOutOfMemory("no decode plan to try")
    for index, plan in enumerate(plans):
        try:
            value = attempt(plan)
        except DecodeOutOfMemory as error:
            attempts.append(f"{plan.describe()}: out of memory")
            failure = error.with_traceback(None)  # drop the failed attempt's frames
        else:
            attempts.append(f"{plan.describe()}: ok")
            return plan, value, attempts
        release_device_memory()
        if index + 1 < len(plans):
            following = plans[index + 1]
            notify(f"out of GPU memory ({plan.describe()}); trying {following.describe()}")
    raise failure


def release_device_memory() -> None:
    """Give the memory of a failed attempt back to the driver before the next one."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
