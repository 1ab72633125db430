"""Where a run's DiTs live while it samples, as `Settings` says (`wanctl.core.settings`):

- replicated: each DiT whole on every rank's GPU, in bf16;
- `dit_storage="fp8"`: the linear layers stored in float8 (e4m3) and cast to the compute dtype
  layer by layer as they run (diffusers' layerwise casting; norms, embeddings and the output
  projection stay as they were): half the weights' memory, an error `benchmarks/dit.py`
  measures;
- `dit="fsdp"`: each DiT sharded over the ranks with PyTorch's FSDP2 (`fully_shard` per
  transformer block, then the root): 1/N of the weights per rank, a block gathered while the
  previous one computes;
- `offload` (A14B): the low-noise expert waits in host memory; its first forward (at the
  boundary) frees the high-noise expert, done with for this run, and brings it to the GPU.
  (The official code moves the high-noise expert to the host instead, for a next prompt: on
  one H200 that held both experts in host memory at once, 58 GB of RSS, and the swap took
  30 s from pageable memory.)

Every DiT but the tiny models' is staged on the meta device and allocated only where it will
live: a checkpoint's then filled from its files tensor by tensor (`wanctl.models.weights`),
a built-in synthetic one with random values (`wanctl.models.configs.place`). No rank holds
a whole expert it will shard, nor a host copy of one it puts on its GPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from wanctl.models.configs import place

if TYPE_CHECKING:
    from wanctl.models.weights import Weights

FP8 = torch.float8_e4m3fn


def prepare_dit(
    dit: Any,
    *,
    storage: str,
    shard: bool,
    device: torch.device,
    compute: torch.dtype,
    fill_on: torch.device | None = None,
    weights: Weights | None = None,
    each_block: Callable[[Any], None] | None = None,
) -> Any:
    """`dit` stored as asked, sharded if asked, then on `device` (allocated there if it was on
    the meta device, and filled from a checkpoint's `weights`, or with random values drawn on
    `fill_on`, by default `device`), `each_block` called on each transformer block there."""
    dit.requires_grad_(False)  # inference only; FSDP2 also wants one dtype among trainables
    if storage == "fp8":
        dit.enable_layerwise_casting(storage_dtype=FP8, compute_dtype=compute)
    if shard:  # over every rank, on `device`'s type: FSDP2's default is CUDA wherever it is
        from torch.distributed import get_world_size
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(device.type, (get_world_size(),))
        for block in dit.blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(dit, mesh=mesh)
    return materialise(dit, device, fill_on, weights, each_block)


def materialise(
    dit: Any,
    device: torch.device,
    fill_on: torch.device | None = None,
    weights: Weights | None = None,
    each_block: Callable[[Any], None] | None = None,
) -> Any:
    """On `device`: a meta-device DiT allocated there and loaded from its `weights`, or given
    random ones (drawn on `fill_on`: the run's GPU fills a host-resident expert in seconds),
    a block at a time with `each_block` called on each; another moved, then each block
    passed to `each_block`."""
    if weights is not None:
        return weights.load(dit, device, each_block)
    if any(p.is_meta for p in dit.parameters()):
        return place(dit, device, fill_on=fill_on if fill_on != device else None,
                     each_block=each_block)  # fmt: skip
    dit = dit.to(device)
    if each_block is not None:
        for block in dit.blocks:
            each_block(block)
    return dit


class BoundarySwap:
    """The A14B's `offload` placement: the low-noise expert on the host until its first
    forward, which frees the high-noise expert (its storage dropped to the meta device: no
    host copy) and moves it in. `seconds` is the swap's time."""

    def __init__(self, high: Any, low: Any, device: torch.device):
        self.high, self.low, self.device = high, low, device
        self.seconds: float | None = None
        low.register_forward_pre_hook(self._swap)

    def _swap(self, *_: Any) -> None:
        if self.seconds is not None:
            return
        start = time.perf_counter()
        self.high.to_empty(device="meta")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.low.to(self.device)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds = time.perf_counter() - start
