"""fp8 compute for the DiT (`--dit-precision fp8`): the linear layers of its transformer blocks
run as float8 (e4m3) matrix multiplications, with torchao's training-free inference recipe
(`Float8DynamicActivationFloat8WeightConfig`): each weight row quantized once with its own
scale, each activation row scaled as it comes (dynamic scaling), products in fp8 on the tensor
cores and accumulated in fp32 (`torch._scaled_mm`). Attention, norms, RoPE, the embeddings and
the output projection stay in bf16.

The weights are stored in fp8 (half the memory, as `--dit-storage fp8`), so the memory model
prices this as fp8 storage. Unlike fp8 storage (diffusers' layerwise casting: an unscaled cast,
the product in bf16), the per-row scales keep small weights out of fp8's subnormal range; its
error against bf16 is measured per forward by `benchmarks/dit.py`.

It needs a GPU with fp8 tensor cores (compute capability 8.9 and up: Ada, Hopper, Blackwell)
and torchao (`pip install 'wanctl[fp8]'`); the quantization kernels pay only once compiled, so
it is meant to run with the compiled DiT (`wanctl.models.compiled`).
"""

from __future__ import annotations

from typing import Any

import torch

from wanctl.core.settings import FP8_CAPABILITY, FP8_INSTALL


def fp8_problem(device: torch.device) -> str | None:
    """Why the DiT cannot compute in fp8 on `device`, or None."""
    if device.type != "cuda":
        return "fp8 matrix multiplications need an NVIDIA GPU; this run is on the CPU"
    capability = torch.cuda.get_device_capability(device)
    if capability < FP8_CAPABILITY:
        name = torch.cuda.get_device_name(device)
        return (
            f"{name} (compute capability {capability[0]}.{capability[1]}) has no fp8 tensor "
            "cores: they start at 8.9 (RTX 40xx, L40S, H100)"
        )
    try:
        import torchao  # noqa: F401
    except ImportError:
        return f"torchao is not installed: {FP8_INSTALL}"
    return None


def quantize_fp8(dit: Any, *, per_row: bool = True) -> None:
    """The linear layers of `dit`'s transformer blocks as `quantize_block` makes them."""
    for block in dit.blocks:
        quantize_block(block, per_row=per_row)


def quantize_block(block: Any, *, per_row: bool = True) -> None:
    """The linear layers of a transformer block, in place, as fp8 weights with per-row scales
    that quantize their input per row at each call (torchao's `quantize_`; `per_row` False:
    one scale per tensor, which `benchmarks/dit.py` weighs). A DiT's load calls it on each
    block as it is filled (`wanctl.models.weights`): one block in bf16 at a time. torchao's
    changes to Inductor's global settings are left out: its coordinate descent tuning made
    the cold compile of TI2V-5B's block 30.7 s instead of 8.0 s for a forward 0.4% faster
    (one H200, `benchmarks/dit.py`, 2026-12-02)."""
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        PerRow,
        PerTensor,
        quantize_,
    )

    granularity = PerRow() if per_row else PerTensor()
    config = Float8DynamicActivationFloat8WeightConfig(
        granularity=granularity, set_inductor_config=False
    )
    quantize_(block, config)
