"""Decode the same synthetic latents into an .npy and into an .mp4, side by side in one process,
and print the wall seconds of each (the writer's close included), the ratio mp4 / npy and
where it was measured.

On one GPU (issue 15: the decode to mp4 within 10% of the decode to npy at 1280*704 x 121):

    python benchmarks/decode_writers.py --size 1280*704 --frames 121 --dtype bf16

A smoke test anywhere (the tiny VAE, 160*96, 9 frames, float32 on the CPU):

    python benchmarks/decode_writers.py --check-only

Both go through `wanctl.decode.stream.decode_to_file`, as `wanctl decode` on one GPU: the npy
writer copies each chunk's frames into a memory-mapped array, the mp4 writer hands them to
ffmpeg (x264) on a thread of its own. One decode to each warms up (kernels, allocator, ffmpeg's
first start), then the timed decodes alternate npy, mp4, npy, mp4, ...; the ratio is of the
medians. The files go to a temporary folder (`--folder` to pick the disk) and are removed.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import imageio_ffmpeg
import torch
from decode import add_workload_options, latents, smoke_workload
from diffusers.models.autoencoders.autoencoder_kl_wan import AutoencoderKLWan
from rich.console import Console
from rich.table import Table

from wanctl.decode.load import load_vae
from wanctl.decode.run import DTYPES
from wanctl.decode.stream import decode_to_file
from wanctl.decode.writers import QUEUE_CHUNKS, encoder_threads

FPS = 24
WITHIN = 1.10  # issue 15: the mp4 decode within 10% of the npy decode


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_workload_options(parser)
    parser.add_argument("--repeats", type=int, default=3, help="Timed decodes per writer.")
    parser.add_argument("--folder", type=Path, help="Where the videos are written (a temp dir).")
    args = smoke_workload(parser.parse_args())
    if args.check_only:
        args.repeats = 1
    return args


def timed_decode(
    args: argparse.Namespace, vae: AutoencoderKLWan, z: torch.Tensor, output: Path
) -> float:
    """Wall seconds of one `decode_to_file` into `output`, from the writer's opening to its
    close (the file published); the file is removed after."""
    start = time.perf_counter()
    result = decode_to_file(vae, z, output, fps=FPS, chunk_t=args.chunk_t)
    seconds = time.perf_counter() - start
    assert result.frames == args.frames, f"{result.frames} frames written of {args.frames}"
    output.unlink()
    return seconds


def provenance(args: argparse.Namespace, device: torch.device) -> list[str]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    return [
        f"device: {device.type} ({name or 'CPU'}); torch {torch.__version__}; {args.dtype}",
        f"{args.vae} VAE, {args.size} x {args.frames} frames, chunk_t={args.chunk_t}",
        f"x264 threads: {encoder_threads()} (CPUs: {os.cpu_count()}); ffmpeg "
        f"{imageio_ffmpeg.get_ffmpeg_version()}; mp4 queue: {QUEUE_CHUNKS} chunks",
    ]


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    z = latents(args.size, args.frames, args.vae)
    vae = load_vae(args.vae, device=device, dtype=DTYPES[args.dtype])
    console = Console()
    for line in provenance(args, device):
        console.print(line)
    seconds: dict[str, list[float]] = {".npy": [], ".mp4": []}
    with tempfile.TemporaryDirectory(prefix="wanctl-writers-", dir=args.folder) as folder:
        for suffix in seconds:  # warm-up
            timed_decode(args, vae, z, Path(folder) / f"warm-up{suffix}")
        for repeat in range(args.repeats):
            for suffix, runs in seconds.items():
                runs.append(timed_decode(args, vae, z, Path(folder) / f"{repeat}{suffix}"))
    render(console, args, seconds)


def render(console: Console, args: argparse.Namespace, seconds: dict[str, list[float]]) -> None:
    table = Table(title=f"decode_to_file {args.size} x {args.frames} frames, {args.dtype}")
    for column in ("writer", "median s", "min s", "runs s"):
        table.add_column(column)
    for suffix, runs in seconds.items():
        each = " ".join(f"{s:.2f}" for s in runs)
        table.add_row(suffix, f"{statistics.median(runs):.2f}", f"{min(runs):.2f}", each)
    console.print(table)
    ratio = statistics.median(seconds[".mp4"]) / statistics.median(seconds[".npy"])
    verdict = "yes" if ratio <= WITHIN else "no"
    console.print(f"ratio mp4 / npy (medians): {ratio:.2f}; within 10%: {verdict}")


if __name__ == "__main__":
    main()
