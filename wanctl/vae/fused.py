"""SiLU(RMS norm(x)) in one pass on CUDA, written straight into a causal conv's input stream.

The decoder's largest tensors go through norm, SiLU and a copy into the conv's stream (its
cached frames in front of the new ones): three reads and writes of the whole tensor. A Triton
kernel does all three in one, reducing in float32 and rounding once. Without Triton (the CPU,
or a torch without it) the same values come from `F.rms_norm` and `F.silu`.

Triton compiles the kernel on its first launch for each channel count, dtype and bias (about a
second each, cached in ~/.triton or $TRITON_CACHE_DIR). `warm_up` does it before a decode, so
that the first decode on a machine reports that cost apart instead of hiding it in its time.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

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
    if usable and pixels.is_contiguous() and out.is_contiguous():
        _launch(pixels, weight, eps, out, bias)
        return
    if bias is not None:
        pixels = pixels + bias
    out.copy_(F.silu(F.rms_norm(pixels, (pixels.shape[-1],), weight, eps=eps), inplace=True))


_BLOCKS = (64, 128, 256, 512, 1024, 2048)  # channel counts the kernel takes (powers of two)


def warm_up(
    variants: Iterable[tuple[int, bool]], dtype: torch.dtype, device: torch.device
) -> float:
    """Compile, or load from Triton's cache, the kernel for every (channels, with a bias) in
    `variants`, on a few rows; return the seconds it took (0 where the kernel is not used).
    The compiled kernel fits any number of rows: `rows` is not specialised on."""
    if triton is None or device.type != "cuda":
        return 0.0
    start = time.perf_counter()
    for channels, with_bias in sorted(set(variants)):
        if channels in _BLOCKS:
            pixels = torch.zeros(16, channels, dtype=dtype, device=device)
            weight = torch.ones(channels, dtype=dtype, device=device)
            _launch(pixels, weight, 1e-6, torch.empty_like(pixels), weight if with_bias else None)
    torch.cuda.synchronize(device)
    return time.perf_counter() - start


if triton is not None:
    # `rows` unspecialised: one compiled kernel serves every tensor size, so `warm_up`'s few
    # rows compile the kernel the decode launches.
    @triton.jit(do_not_specialize=["rows"])
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
        # 64-bit rows: `row * C` passes 2**31 in the largest chunks (1280x704, chunk_t 10).
        first_row = tl.program_id(0).to(tl.int64) * BLOCK_ROWS
        row = first_row + tl.arange(0, BLOCK_ROWS)[:, None]
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
