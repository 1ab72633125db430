"""Streaming video writers: frames go to the file as they are decoded, as uint8.

A writer writes to a hidden partial file next to the output and moves it into place only when
every frame is in, so a failed decode never leaves a truncated video under the output's name
(nor destroys an earlier one).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Generator, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import imageio_ffmpeg
import numpy as np
import torch

from wanctl.core.launch import partial_path
from wanctl.errors import WanctlError

SUFFIXES = (".mp4", ".npy")
# Constant rate factor 10, as the official Wan2.2 `save_video` (imageio quality 8).
MP4_QUALITY = 8


class FrameWriter(Protocol):
    expected: int  # frames the file will hold

    def write(self, frames: np.ndarray) -> None:
        """Append uint8 frames (n, height, width, 3)."""
        ...

    def close(self) -> None:
        """Finish the file and move it to the output path."""
        ...

    def abort(self) -> None:
        """Drop the partial file."""
        ...


def uint8_frames(pixels: torch.Tensor) -> torch.Tensor:
    """Decoded pixels (1, 3, f, H, W) in [-1, 1] -> uint8 frames (f, H, W, 3) on the same
    device: round((clamp(x, -1, 1) + 1) * 127.5), computed in float32."""
    levels = (pixels[0].float().clamp(-1.0, 1.0) + 1.0).mul_(127.5).round_()
    return levels.to(torch.uint8).permute(1, 2, 3, 0).contiguous()


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """`uint8_frames` on the host, at once."""
    return uint8_frames(pixels).cpu().numpy()


Staged = tuple[torch.Tensor, "torch.cuda.Event | None"]


def _stage(pixels: torch.Tensor) -> Staged:
    """Queue the uint8 conversion and the copy into pinned host memory; return at once."""
    frames = uint8_frames(pixels)
    if frames.device.type != "cuda":
        return frames, None
    host = torch.empty(frames.shape, dtype=torch.uint8, pin_memory=True)
    host.copy_(frames, non_blocking=True)
    copied = torch.cuda.Event()
    copied.record()
    return host, copied


def _ready(staged: Staged) -> np.ndarray:
    host, copied = staged
    if copied is not None:
        copied.synchronize()
    return host.numpy()


def frames_behind(chunks: Iterable[torch.Tensor | None]) -> Iterator[np.ndarray | None]:
    """Host uint8 frames of each chunk, one chunk late: chunk k's conversion and copy are
    queued, then chunk k+1's decode is queued behind them, and only then are chunk k's frames
    handed over (to the encoder), so the GPU computes while the host writes. None (a rank
    that writes nothing) passes through."""
    pending: Staged | None = None
    has_pending = False
    for pixels in chunks:
        staged = None if pixels is None else _stage(pixels)
        if has_pending:
            yield None if pending is None else _ready(pending)
        pending, has_pending = staged, True
    if has_pending:
        yield None if pending is None else _ready(pending)


def write_failed(output: Path, why: str) -> WanctlError:
    return WanctlError(
        f"could not write the video {output}",
        why=why,
        fix="write to a folder you can write to, with room for the video (`df -h`); the "
        "latents file is untouched: `wanctl decode` can write it again",
    )


def open_writer(output: Path, *, frames: int, height: int, width: int, fps: float) -> FrameWriter:
    """A writer for `output`, by suffix: `.mp4` (H.264, yuv420p, `fps`) or `.npy` (uint8
    array (frames, height, width, 3), allocated up front and filled in place). Failures to
    create, write or finish the file are `WanctlError`s that say so."""
    try:
        if output.suffix == ".npy":
            return NpyWriter(output, frames=frames, height=height, width=width)
        if output.suffix == ".mp4":
            return Mp4Writer(output, frames=frames, height=height, width=width, fps=fps)
    except OSError as error:
        raise write_failed(output, str(error)) from error
    raise ValueError(f"no writer for {output.suffix!r}; use one of {SUFFIXES}")


class _Counted:
    """Shared bookkeeping: the partial file, the final name, frames expected and written."""

    def __init__(self, output: Path, frames: int):
        self.output = output
        self.partial = partial_path(output)
        self.expected = frames
        self.written = 0

    def _count(self, frames: np.ndarray) -> None:
        if self.written + len(frames) > self.expected:
            raise ValueError(f"more than the {self.expected} frames announced")
        self.written += len(frames)

    def _publish(self) -> None:
        if self.written != self.expected:
            self.partial.unlink(missing_ok=True)
            raise ValueError(f"{self.written} frames written, {self.expected} announced")
        if not self.partial.is_file() or self.partial.stat().st_size == 0:
            raise write_failed(self.output, "the encoder left no file behind")
        try:
            os.replace(self.partial, self.output)
        except OSError as error:
            raise write_failed(self.output, str(error)) from error


class NpyWriter(_Counted):
    def __init__(self, output: Path, *, frames: int, height: int, width: int):
        super().__init__(output, frames)
        shape = (frames, height, width, 3)
        self._array: Any = np.lib.format.open_memmap(
            self.partial, mode="w+", dtype=np.uint8, shape=shape
        )

    def write(self, frames: np.ndarray) -> None:
        start = self.written
        self._count(frames)
        self._array[start : self.written] = frames

    def close(self) -> None:
        self._array.flush()
        self._array = None
        self._publish()

    def abort(self) -> None:
        self._array = None
        self.partial.unlink(missing_ok=True)


class Mp4Writer(_Counted):
    def __init__(self, output: Path, *, frames: int, height: int, width: int, fps: float):
        super().__init__(output, frames)
        self._encoder: Generator[None, Any, None] = imageio_ffmpeg.write_frames(
            str(self.partial),
            (width, height),
            fps=fps,
            codec="libx264",
            pix_fmt_in="rgb24",
            pix_fmt_out="yuv420p",
            quality=MP4_QUALITY,
            ffmpeg_log_level="error",
        )
        self._encoder.send(None)  # starts ffmpeg

    def write(self, frames: np.ndarray) -> None:
        self._count(frames)
        try:
            self._encoder.send(np.ascontiguousarray(frames))  # written as is, no copy
        except OSError as error:  # ffmpeg died: a full disk, an unwritable path
            raise write_failed(self.output, f"ffmpeg stopped: {error}") from error

    def close(self) -> None:
        try:
            self._encoder.close()
        except OSError as error:
            raise write_failed(self.output, f"ffmpeg stopped: {error}") from error
        self._publish()

    def abort(self) -> None:
        # The file is dropped: imageio-ffmpeg's warnings about it ("no frames have been
        # written", "had to kill ffmpeg") would only alarm.
        quiet = logging.getLogger("imageio_ffmpeg")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            self._encoder.close()
        finally:
            quiet.setLevel(level)
        self.partial.unlink(missing_ok=True)
