"""SiLU(RMS norm(x)) in one pass on CUDA, written straight into a causal conv's input stream.

The decoder's largest tensors go through norm, SiLU and a copy into the conv's stream (its
cached frames in front of the new ones): three reads and writes of the whole tensor. A Triton
kernel does all three in one, reducing in float32 and rounding once. Without Triton (the CPU,
or a torch without it) the same values come from `F.rms_norm` and `F.silu`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU builds of torch come without Triton
    triton = None


def rms_norm_silu_into(
    pixels: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    out: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> None:
    """out[...] = silu(rms_norm(pixels + bias) * weight) over the innermost dimension, with
    rms_norm(v) = v / sqrt(mean(v**2) + eps); `pixels` and `out` are dense (..., C) of the same
    shape. `bias` is the producing convolution's, added here rather than in a pass of its own."""
    usable = triton is not None and pixels.is_cuda and pixels.shape[-1] in _BLOCKS
    # The kernel's offsets are 32-bit: past 2**31 elements they wrap (an illegal address,
    # seen on an H100 at chunk_t 10, 1280x704).
    usable = usable and pixels.numel() < 2**31
    if usable and pixels.is_contiguous() and out.is_contiguous():
        _launch(pixels, weight, eps, out, bias)
        return
    if bias is not None:
        pixels = pixels + bias
    out.copy_(F.silu(F.rms_norm(pixels, (pixels.shape[-1],), weight, eps=eps), inplace=True))


_BLOCKS = (64, 128, 256, 512, 1024, 2048)  # channel counts the kernel takes (powers of two)


if triton is not None:

    @triton.jit
    def _rms_norm_silu_kernel(
        x_ptr,
        w_ptr,
        b_ptr,
        out_ptr,
        rows,
        eps,
        C: tl.constexpr,
        BLOCK_ROWS: tl.constexpr,
        HAS_BIAS: tl.constexpr,
    ):
        row = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)[:, None]
        col = tl.arange(0, C)[None, :]
        mask = row < rows
        x = tl.load(x_ptr + row * C + col, mask=mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            x += tl.load(b_ptr + col).to(tl.float32)
        scale = tl.rsqrt(tl.sum(x * x, axis=1) / C + eps)[:, None]
        y = x * scale * tl.load(w_ptr + col).to(tl.float32)
        y = y * tl.sigmoid(y)
        tl.store(out_ptr + row * C + col, y.to(out_ptr.dtype.element_ty), mask=mask)


def _launch(
    pixels: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    out: torch.Tensor,
    bias: torch.Tensor | None,
) -> None:
    channels = pixels.shape[-1]
    rows = pixels.numel() // channels
    block_rows = max(1, 4096 // channels)
    grid = (triton.cdiv(rows, block_rows),)
    _rms_norm_silu_kernel[grid](
        pixels,
        weight.contiguous(),
        weight if bias is None else bias.contiguous(),  # any pointer when HAS_BIAS is off
        out,
        rows,
        eps,
        C=channels,
        BLOCK_ROWS=block_rows,
        HAS_BIAS=bias is not None,
    )
