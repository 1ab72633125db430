"""fp8 compute's load on a GPU (`--dit-precision fp8`): each transformer block quantized by
torchao as soon as it is filled (`each_block`), so that the DiT is never whole in bf16 on the
GPU; the fp8 weights those of quantizing the whole bf16 DiT after its load. Skipped without a
GPU with fp8 tensor cores and torchao."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest
import torch

from wanctl.core.architectures import DIT_TI2V_5B
from wanctl.core.settings import FP8_CAPABILITY
from wanctl.models.configs import place
from wanctl.models.weights import empty_dit

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available()
    or torch.cuda.get_device_capability() < FP8_CAPABILITY
    or importlib.util.find_spec("torchao") is None,
    reason="needs a GPU with fp8 tensor cores (compute capability 8.9+) and torchao",
)
LAYERS = 16  # TI2V-5B's blocks, fewer of them: 2.6 G parameters
GIB = 2**30


def placed(each_block: Any | None) -> tuple[Any, float]:
    """The DiT with seeded random weights, quantized a block at a time (`each_block`) or
    whole after its load, and the GPU's peak allocated GiB meanwhile."""
    from wanctl.models.precision import quantize_block, quantize_fp8

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    dit = empty_dit({**DIT_TI2V_5B, "num_layers": LAYERS}, torch.bfloat16)
    torch.manual_seed(7)
    if each_block:
        dit = place(dit, "cuda", each_block=quantize_block)
    else:
        dit = place(dit, "cuda")
        quantize_fp8(dit)
    torch.cuda.synchronize()
    return dit, (torch.cuda.max_memory_allocated() - base) / GIB


def bf16_gib(module: Any) -> float:
    return sum(p.numel() * 2 for p in module.parameters()) / GIB


def test_fp8_compute_loads_a_block_at_a_time_to_the_same_weights() -> None:
    from wanctl.models.precision import quantize_block

    whole, whole_peak = placed(None)
    expected = {n: p.dequantize() for n, p in whole.blocks.named_parameters() if p.dim() == 2}
    total, block = bf16_gib(whole), bf16_gib(whole.blocks[0])
    del whole
    blockwise, peak = placed(quantize_block)
    after = torch.cuda.memory_allocated() / GIB
    print(f"peak GiB: whole then quantized {whole_peak:.2f}, a block at a time {peak:.2f}; "
          f"bf16 DiT {total:.2f}, one block {block:.2f}, fp8 DiT held {after:.2f}")  # fmt: skip
    assert whole_peak >= total  # the whole bf16 DiT was on the GPU
    # the blocks' linear layers in fp8 (half), one block in bf16 and its fp8 copy, and a
    # block's worth of torchao's temporaries: not the whole bf16 DiT
    assert peak <= total - LAYERS * block / 2 + 2.5 * block
    for name, parameter in blockwise.blocks.named_parameters():
        if parameter.dim() == 2:
            assert torch.equal(parameter.dequantize(), expected[name]), name
