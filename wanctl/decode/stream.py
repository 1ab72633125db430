"""One process's part of a decode: latents in, a video file out, chunk by chunk.

`decode_to_file` is what a torchrun worker (decode or generate) calls once torch.distributed is
up: every rank decodes its slab of each chunk, rank 0 gathers the pixels and writes them. With
no split it is the one-process decode. Neither the device nor the host ever holds the whole
video as floats: each chunk becomes uint8 frames, handed to the writer one chunk late
(`frames_behind`: the GPU decodes the next meanwhile); an mp4's encoder takes them on a thread
of its own, at most a few chunks behind (`wanctl.decode.writers.Mp4Writer`), so that the decode,
and the other ranks' halo exchanges with rank 0, do not wait on x264.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from wanctl.decode.engine import decode_chunks, warm_up
from wanctl.decode.fused import build_problem
from wanctl.decode.modules import WanVaeDecoder, as_diffusers
from wanctl.decode.parallel import RowSplit
from wanctl.decode.writers import FrameWriter, frames_behind, open_writer, to_uint8

FramesDone = Callable[[int], None]
GIB = 2**30


@dataclass(frozen=True)
class StreamResult:
    """What one process did: frames it wrote (0 on ranks other than 0), wall seconds, its
    peak device memory in GiB (None on the CPU), the seconds spent before the decode
    compiling or loading its GPU kernels (not counted in `seconds`), and why a kernel could
    not be built (`wanctl.decode.fused.build_problem`); `load_seconds`, loading the VAE
    before all that, is filled in by the caller that loaded it."""

    frames: int
    seconds: float
    peak_allocated_gib: float | None
    peak_reserved_gib: float | None
    warmup_seconds: float = 0.0
    kernel_problem: str | None = None
    load_seconds: float = 0.0


def output_geometry(vae: WanVaeDecoder, z: torch.Tensor) -> tuple[int, int, int]:
    """(frames, height, width) that latents (B, C, T, h, w) decode to."""
    time, space = vae.config["scale_factor_temporal"], vae.config["scale_factor_spatial"]
    return time * (z.shape[2] - 1) + 1, space * z.shape[3], space * z.shape[4]


def decode_to_file(
    vae: WanVaeDecoder,
    z: torch.Tensor,
    output: Path,
    *,
    fps: float,
    chunk_t: int = 1,
    split: RowSplit | None = None,
    on_frames: FramesDone | None = None,
) -> StreamResult:
    """Decode latents `z` (1, C, T, h, w), already in the decoder's space (see
    `Latents.for_decoder`), into `output` (.mp4 or .npy). With `split`, every rank of its group
    must call this with the same `z`; rank 0 writes and reports frames through `on_frames`."""
    device = vae.device
    warmup = warm_up(vae)
    _reset_peak(device)
    start = time.perf_counter()
    writer = _writer(vae, z, output, fps) if split is None or split.rank == 0 else None
    local = z if split is None else split.shard(z)
    chunks = decode_chunks(vae, local, chunk_t=chunk_t, halo=split)
    wholes = chunks if split is None else (split.gather_frames(pixels) for pixels in chunks)
    try:
        for frames in frames_behind(wholes):
            if writer is not None and frames is not None:
                _write(writer, frames, on_frames)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return _finish(writer, device, start, warmup)


def decode_tiled_to_file(
    vae: WanVaeDecoder,
    z: torch.Tensor,
    output: Path,
    *,
    fps: float,
    on_frames: FramesDone | None = None,
) -> StreamResult:
    """The last resort on a GPU: diffusers' spatial tiling (`enable_tiling`, 256-pixel tiles).
    Approximate: tiles are decoded apart and blended at their seams. It returns the whole
    video at once on the device, which is then written out four frames at a time."""
    device = vae.device
    _reset_peak(device)
    start = time.perf_counter()
    writer = _writer(vae, z, output, fps)
    try:
        tiled = as_diffusers(vae)
        tiled.enable_tiling()
        with torch.inference_mode():
            video = tiled.decode(z.to(device, vae.dtype)).sample
        step = vae.config["scale_factor_temporal"]
        for first in range(0, video.shape[2], step):
            _write(writer, to_uint8(video[:, :, first : first + step]), on_frames)
    except BaseException:
        writer.abort()
        raise
    return _finish(writer, device, start)


def _writer(vae: WanVaeDecoder, z: torch.Tensor, output: Path, fps: float) -> FrameWriter:
    frames, height, width = output_geometry(vae, z)
    return open_writer(output, frames=frames, height=height, width=width, fps=fps)


def _write(writer: FrameWriter, frames: np.ndarray, on_frames: FramesDone | None) -> None:
    writer.write(frames)
    if on_frames is not None:
        on_frames(len(frames))


def _finish(
    writer: FrameWriter | None, device: torch.device, start: float, warmup: float = 0.0
) -> StreamResult:
    written = 0
    if writer is not None:
        writer.close()
        written = writer.expected
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return StreamResult(
            written,
            time.perf_counter() - start,
            torch.cuda.max_memory_allocated(device) / GIB,
            torch.cuda.max_memory_reserved(device) / GIB,
            warmup,
            build_problem(),
        )
    return StreamResult(written, time.perf_counter() - start, None, None, warmup)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
