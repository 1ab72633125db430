"""SiLU(RMS norm(x)) in one kernel on CUDA, written straight into a causal conv's input stream.

The decoder's largest tensors go through norm, SiLU and a copy into the conv's stream (its
cached frames in front of the new ones): three reads and writes of the whole tensor. A Triton
kernel does all three in one, reducing in float32 and rounding once. Without Triton (the CPU,
or a torch without it) the same values come from `F.rms_norm` and `F.silu`.

The stream may be the interior of a buffer framed for a split frame (`engine.Halo.empty`): not
dense, but runs of pixels at a regular stride (a frame's rows of a slab split by rows, a row's
pixels of one split by columns). The kernel writes such runs where they are (`pixel_runs`).

Triton compiles the kernel on its first launch and caches it (~/.triton, or $TRITON_CACHE_DIR).
One compiled kernel serves every channel count its block of channels divides, and every size,
with or without a bias: the Wan2.2 decoder's widths (256 to 1024) all take the 256-channel
block, so its decode compiles once per dtype; the Wan2.1 decoder's (384, 192, 96) take blocks
of 128, 64 and 32, three compiles. `warm_up` does them before a decode, which then reports them
apart: on an H100, 1.5-2.0 s for the first in an empty cache, 0.5-0.6 s from the cache (Triton
hashes its own library once per process).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU builds of torch come without Triton
    triton = None

# Channels per step of the kernel's loops (the largest power of two up to this dividing the
# channel count; at least MIN_BLOCK_C) and elements per program (rows = TILE // block).
# Measured on an H100 (1280x704x121 Wan2.2 decode, bf16): 256 x 16 decodes in 3.41 s, 64 x 64
# in 3.44-3.48 s; a kernel compiled per channel count, whole rows at once, 3.38-3.39 s but
# three compiles (1.8-1.9 s in an empty cache against 1.5 s).
BLOCK_C = 256
MIN_BLOCK_C = 16
TILE = 4096


def rms_norm_silu_into(
    pixels: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    out: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> None:
    """out[...] = silu(rms_norm(pixels + bias) * weight) over the innermost dimension, with
    rms_norm(v) = v / sqrt(mean(v**2) + eps); `pixels` is dense (..., C), `out` of the same
    shape, channels dense and its pixels in runs (`pixel_runs`). `bias` is the producing
    convolution's, added here rather than in a pass of its own."""
    usable = _usable(pixels.shape[-1], pixels.device) and pixels.is_contiguous()
    runs = pixel_runs(out) if usable else None
    if runs is not None:
        try:
            _launch(pixels, weight, eps, out, bias, runs)
            return
        except Exception as error:  # a build that failed (Triton's errors share no type)
            _give_up(error)
    if bias is not None:
        pixels = pixels + bias
    out.copy_(F.silu(F.rms_norm(pixels, (pixels.shape[-1],), weight, eps=eps), inplace=True))


def pixel_runs(out: torch.Tensor) -> tuple[int, int] | None:
    """(run, step): the pixels of `out` (..., C), in order, as runs of `run` consecutive pixels
    (C elements each) starting `step` pixels apart; None where its layout is not that."""
    channels = out.shape[-1]
    if out.stride(-1) != 1 and channels > 1:
        return None
    shape, strides = out.shape[:-1], out.stride()[:-1]
    dims = [(n, stride) for n, stride in zip(shape, strides, strict=True) if n > 1]
    run = 1
    while dims and dims[-1][1] == run * channels:
        run *= dims.pop()[0]
    if not dims:
        return run, run
    step, expected = dims[-1][1], dims[-1][1]
    for n, stride in reversed(dims):
        if stride != expected or stride % channels:
            return None
        expected *= n
    return run, step // channels


def warm_up(channels: Iterable[int], dtype: torch.dtype, device: torch.device) -> float:
    """Compile the kernels, or load them from Triton's cache, that norms of these channel
    counts will launch (one per block size); return the seconds it took (0 when none)."""
    blocks = sorted({block_channels(count) for count in channels if _usable(count, device)})
    if not blocks:
        return 0.0
    torch.cuda.synchronize(device)  # not to time work queued before
    start = time.perf_counter()
    for block in blocks:
        pixels = torch.zeros(1, block, dtype=dtype, device=device)
        rms_norm_silu_into(pixels, torch.ones_like(pixels[0]), 1e-6, torch.empty_like(pixels))
    torch.cuda.synchronize(device)
    return time.perf_counter() - start


def block_channels(channels: int) -> int:
    """The channels one step of the kernel's loops takes: the largest power of two up to
    `BLOCK_C` that divides `channels` (0 when below `MIN_BLOCK_C`: no kernel)."""
    block = BLOCK_C
    while block >= MIN_BLOCK_C and channels % block:
        block //= 2
    return block if block >= MIN_BLOCK_C else 0


_build_problem: str | None = None


def build_problem() -> str | None:
    """Why the kernel could not be built in this process, None if it could (or was not
    needed). Where it could not, the norms ran with PyTorch instead."""
    return _build_problem


def _give_up(error: Exception) -> None:
    """Triton builds its launcher with a C compiler and writes to its cache: a runtime-only
    image (no gcc) or a read-only home cannot. The decode goes on without the kernel."""
    global _build_problem
    first_line = next(iter(str(error).strip().splitlines()), "")
    _build_problem = (
        f"the fused norm + SiLU kernel could not be built ({type(error).__name__}: "
        f"{first_line}); PyTorch's norm and SiLU ran instead: the same video up to rounding, "
        "about 10% slower. Triton needs a C compiler (install gcc, or set $CC) and a "
        "writable cache ($TRITON_CACHE_DIR, else ~/.triton)"
    )


def _usable(channels: int, device: torch.device) -> bool:
    on_cuda = triton is not None and device.type == "cuda" and _build_problem is None
    return on_cuda and block_channels(channels) > 0


@functools.cache
def _no_bias(channels: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.zeros(channels, dtype=dtype, device=device)


if triton is not None:
    # Neither `rows` nor `C` is a compile-time constant (the loops step over C): one compiled
    # kernel serves every tensor of a dtype and block, so `warm_up` compiles those the decode
    # runs.
    # `C` keeps Triton's specialisation on divisibility by 16 (every count the kernel takes
    # has it), which lets the loads vectorise; `rows` has none.
    # `run` and `step` (`pixel_runs`) neither: a dense `out` is one run of `rows`.
    @triton.jit(do_not_specialize=["rows", "run", "step"])
    def _rms_norm_silu_kernel(x_ptr, w_ptr, b_ptr, out_ptr, rows, C, eps, run, step,
                              BLOCK_ROWS: tl.constexpr, BLOCK_C: tl.constexpr):  # fmt: skip
        # 64-bit offsets: `row * C` passes 2**31 in the largest chunks (1280x704, chunk_t 10).
        row = tl.program_id(0).to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)[:, None]
        mask = row < rows
        base = row * C
        out_base = ((row // run) * step + row % run) * C  # a multiple of C: stores vectorise
        squares = tl.zeros((BLOCK_ROWS, BLOCK_C), tl.float32)
        for first in range(0, C, BLOCK_C):
            col = first + tl.arange(0, BLOCK_C)[None, :]
            x = tl.load(x_ptr + base + col, mask=mask, other=0.0).to(tl.float32)
            x += tl.load(b_ptr + col).to(tl.float32)
            squares += x * x
        scale = tl.rsqrt(tl.sum(squares, axis=1) / C + eps)[:, None]
        for first in range(0, C, BLOCK_C):  # the rows again, from L2
            col = first + tl.arange(0, BLOCK_C)[None, :]
            x = tl.load(x_ptr + base + col, mask=mask, other=0.0).to(tl.float32)
            x += tl.load(b_ptr + col).to(tl.float32)
            y = x * scale * tl.load(w_ptr + col).to(tl.float32)
            y = y * tl.sigmoid(y)
            tl.store(out_ptr + out_base + col, y.to(out_ptr.dtype.element_ty), mask=mask)


def _launch(
    pixels: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    out: torch.Tensor,
    bias: torch.Tensor | None,
    runs: tuple[int, int],
) -> None:
    channels = pixels.shape[-1]
    rows = pixels.numel() // channels
    if bias is None:
        bias = _no_bias(channels, pixels.dtype, pixels.device)
    block = block_channels(channels)
    block_rows = TILE // block
    _rms_norm_silu_kernel[(triton.cdiv(rows, block_rows),)](
        pixels, weight.contiguous(), bias.contiguous(), out, rows, channels, eps, *runs,
        BLOCK_ROWS=block_rows, BLOCK_C=block,
    )  # fmt: skip
