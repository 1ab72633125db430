"""Decode the same synthetic latents with diffusers' `vae.decode` and with wanctl's chunked
decode, in one process, and print times, peak memory, the time ratio and the difference.

On one GPU (the figures of the decode issues: the Wan2.2 VAE of TI2V-5B, the Wan2.1 VAE of
the A14B models):

    python benchmarks/decode.py --size 1280*704 --frames 121 --dtype bf16
    python benchmarks/decode.py --vae synthetic-wan2.1 --size 1280*720 --frames 81 --psnr

A smoke test anywhere (tiny VAE, small frames, float32 on the CPU):

    python benchmarks/decode.py --check-only

Each side runs once to warm up (kernels, allocator), then once timed. Before that, wanctl's
Triton kernels are compiled (or loaded from the cache) and timed apart: with
`--cold-kernels`, into an empty cache, as on a machine's first decode. diffusers' output stays
on the device as floats, as `vae.decode` returns it; wanctl's timed run includes what its
writers need: every chunk turned into uint8 frames and copied to the host. The warm-up run of
wanctl is compared, chunk by chunk, with diffusers' output.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from wanctl.core.architectures import WAN22_VAE
from wanctl.decode.engine import decode_chunks, warm_up
from wanctl.decode.load import load_vae, spec_family
from wanctl.decode.modules import as_diffusers
from wanctl.decode.run import DTYPES
from wanctl.decode.writers import frames_behind, to_uint8

GIB = 2**30


@dataclass(frozen=True)
class Run:
    seconds: float
    peak_allocated_gib: float | None
    peak_reserved_gib: float | None


def add_workload_options(parser: argparse.ArgumentParser, *, chunk_t: bool = True) -> None:
    """What to decode, and how: the options the decode benchmarks share (`chunk_t`: with
    --chunk-t, for those that decode at one)."""
    parser.add_argument("--size", default="1280*704", help="WIDTH*HEIGHT in pixels (x16).")
    parser.add_argument("--frames", type=int, default=121, help="Video frames (4n+1).")
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    if chunk_t:
        parser.add_argument("--chunk-t", type=int, default=1, help="wanctl latent frames per call.")
    parser.add_argument(
        "--vae",
        default="synthetic",
        help="synthetic, synthetic-wan2.1, tiny, tiny-wan2.1, or a VAE path.",
    )


def add_check_only(parser: argparse.ArgumentParser, size: str, frames: int) -> None:
    parser.add_argument(
        "--check-only",
        action="store_const",
        const=(size, frames),
        help=f"Smoke test: the tiny VAE of --vae's family, {size}, {frames} frames, float32 on "
        "the CPU.",
    )


def smoke_workload(args: argparse.Namespace) -> None:
    """With --check-only, its size and frames of the tiny VAE, float32 on the CPU."""
    if args.check_only:
        args.size, args.frames = args.check_only
        args.vae = "tiny-wan2.1" if "wan2.1" in args.vae else "tiny"
        args.dtype, args.device = "fp32", "cpu"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_workload_options(parser)
    parser.add_argument(
        "--psnr",
        action="store_true",
        help="Also decode with diffusers in float32 without TF32, and report both sides' PSNR "
        "against it (peak-to-peak 2: pixels in [-1, 1]).",
    )
    parser.add_argument(
        "--cold-kernels",
        action="store_true",
        help="Compile wanctl's Triton kernels into an empty cache ($TRITON_CACHE_DIR set to a "
        "new folder), as the first decode on a machine does, and report that time.",
    )
    add_check_only(parser, "160*96", 9)
    args = parser.parse_args()
    smoke_workload(args)
    return args


def latents(size: str, frames: int, vae: str) -> torch.Tensor:
    family = spec_family(vae) or WAN22_VAE
    width, height = (int(v) for v in size.split("*"))
    space = family.spatial
    if width % space or height % space or (frames - 1) % 4:
        raise SystemExit(
            f"--size must be multiples of {space} and --frames 4n+1, got {size} {frames}"
        )
    shape = (1, family.channels, (frames - 1) // 4 + 1, height // space, width // space)
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


def measure(device: torch.device, work: Callable[[], object]) -> tuple[Run, object]:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    value = work()
    if device.type != "cuda":
        return Run(time.perf_counter() - start, None, None), value
    torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    peaks = (
        torch.cuda.max_memory_allocated(device) / GIB,
        torch.cuda.max_memory_reserved(device) / GIB,
    )
    return Run(seconds, *peaks), value


def float32_reference(args: argparse.Namespace, z: torch.Tensor) -> torch.Tensor:
    """diffusers' decode in float32 with TF32 off, on the host: the reference for PSNR."""
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    vae = as_diffusers(load_vae(args.vae, device=args.device, dtype=torch.float32))
    with torch.inference_mode():
        video = vae.decode(z.to(args.device)).sample.cpu()
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    del vae
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return video


def psnr(squared_error: float, count: int) -> float:
    """dB, for pixels in [-1, 1] (peak-to-peak 2)."""
    return 10 * math.log10(4 / max(squared_error / count, 1e-30))


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    z = latents(args.size, args.frames, args.vae)
    exact = float32_reference(args, z) if args.psnr else None
    vae = load_vae(args.vae, device=device, dtype=DTYPES[args.dtype])
    console = Console()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    console.print(f"{args.vae} VAE, latents {tuple(z.shape)}, {args.dtype} on {name}")
    if args.cold_kernels:
        os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="wanctl-triton-")
    kernels = warm_up(vae)
    state = "empty cache: compiled" if args.cold_kernels else "cache as found"
    console.print(f"wanctl kernel warm-up ({state}): {kernels:.2f} s")

    whole = as_diffusers(vae)

    def diffusers_decode() -> torch.Tensor:
        with torch.inference_mode():
            return whole.decode(z.to(device, vae.dtype)).sample

    diffusers_decode()
    reference_run, output = measure(device, diffusers_decode)
    assert isinstance(output, torch.Tensor)
    reference = output.float().cpu()
    del output
    errors = {"wanctl": 0.0}
    if exact is not None:
        errors["diffusers"] = (reference - exact).double().pow(2).sum().item()

    frames = args.frames
    video = np.empty((frames, *reference.shape[-2:], 3), np.uint8)

    def wanctl_decode(compare: bool = False) -> float:
        start, worst = 0, 0.0
        chunks = decode_chunks(vae, z, chunk_t=args.chunk_t)
        if compare:  # compare each chunk's floats; the timed run streams as `wanctl decode` does
            for pixels in chunks:
                stop = start + pixels.shape[2]
                video[start:stop] = to_uint8(pixels)
                chunk = pixels.float().cpu()
                worst = max(worst, (chunk - reference[:, :, start:stop]).abs().max().item())
                if exact is not None:
                    difference = chunk - exact[:, :, start:stop]
                    errors["wanctl"] += difference.double().pow(2).sum().item()
                start = stop
        for block in () if compare else frames_behind(chunks):
            assert block is not None
            video[start : start + len(block)] = block
            start += len(block)
        assert start == frames, f"wanctl gave {start} frames, expected {frames}"
        return worst

    float_diff = wanctl_decode(compare=True)
    wanctl_run, _ = measure(device, wanctl_decode)
    levels = np.abs(video.astype(np.int16) - to_uint8(reference).astype(np.int16))
    render(console, args, reference_run, wanctl_run, float_diff, levels)
    console.print(f"kernel warm-up / wanctl decode: {kernels / wanctl_run.seconds:.2f}")
    if exact is None:
        return
    for side, error in errors.items():
        console.print(
            f"PSNR {side} {args.dtype} vs diffusers float32 (no TF32): "
            f"{psnr(error, exact.numel()):.1f} dB"
        )


def render(
    console: Console,
    args: argparse.Namespace,
    reference: Run,
    wanctl: Run,
    float_diff: float,
    levels: np.ndarray,
) -> None:
    def gib(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    table = Table(title=f"decode {args.size} x {args.frames} frames, {args.dtype}")
    for column in ("decode", "seconds", "peak allocated GiB", "peak reserved GiB"):
        table.add_column(column)
    for label, run in (
        ("diffusers vae.decode", reference),
        (f"wanctl chunk_t={args.chunk_t}", wanctl),
    ):
        table.add_row(
            label, f"{run.seconds:.2f}", gib(run.peak_allocated_gib), gib(run.peak_reserved_gib)
        )
    console.print(table)
    console.print(f"time ratio diffusers / wanctl: {reference.seconds / wanctl.seconds:.2f}x")
    console.print(f"max abs diff, float: {float_diff:.3g}")
    console.print(
        f"max abs diff, uint8 levels: {int(levels.max())}"
        f" ({np.count_nonzero(levels) / levels.size:.2%} of values differ)"
    )


if __name__ == "__main__":
    main()
