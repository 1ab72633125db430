"""Streaming video writers: frames go to the file as they are decoded, as uint8.

A writer writes to a hidden partial file next to the output and moves it into place only when
every frame is in, so a failed decode never leaves a truncated video under the output's name
(nor destroys an earlier one). The mp4 writer encodes on a thread of its own, a few chunks
behind the decode (`Mp4Writer`); the npy writer copies each chunk into place at once.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

import imageio_ffmpeg
import numpy as np
import torch

from wanctl.core.launch import partial_path
from wanctl.decode.handoff import Handoff
from wanctl.errors import WanctlError

SUFFIXES = (".mp4", ".npy")
# x264's constant rate factor: 10, as the official Wan2.2 `save_video` (imageio quality 8).
CRF = 10
# x264's preset: veryfast, not its default (medium), which encoded a random-weight VAE's frames
# of 1280x704 (noise: x264's worst case) at 29.3 fps on 16 threads, slower than the decode
# (36 fps on one H200), against 97.9 fps, in a smaller file (65.1 MB against 72.3); on smooth
# moving frames 130 and 150 fps (the H200's host, 2026-12-02; `benchmarks/decode_writers.py`
# times both presets). PSNR at CRF 10, medium against veryfast: 17.90 and 17.90 dB on a tiny
# VAE's frames (yuv420p's chroma bounds it), 44.19 and 44.14 dB on smooth ones (this
# repository's CI machine, 2 threads).
PRESET = "veryfast"
# Chunks waiting for the mp4 encoder: at 1280x704, 4 frames of 2.7 MB each.
QUEUE_CHUNKS = 3
ENCODER_THREAD = "wanctl-mp4-encoder"


class FrameWriter(Protocol):
    expected: int  # frames the file will hold

    def write(self, frames: np.ndarray) -> None:
        """Append uint8 frames (n, height, width, 3); they may reach the file later (the mp4
        encoder's thread), so the array must not change afterwards."""
        ...

    def close(self) -> None:
        """Finish the file and move it to the output path."""
        ...

    def abort(self) -> None:
        """Drop the partial file (and stop the encoder)."""
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

    def _drop(self) -> None:
        """Remove the partial file; none there (nor a folder to hold it) is fine."""
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            self.partial.unlink()

    def _publish(self) -> None:
        if self.written != self.expected:
            self._drop()
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
        self._drop()


class Mp4Writer(_Counted):
    """H.264 through ffmpeg, fed by a thread of its own: `write` queues the frames and returns
    at once unless `QUEUE_CHUNKS` chunks already wait, so that neither the decode nor, in a
    multi-rank decode, the ranks exchanging halos with this one wait on the encoder. An error
    of the encoder (ffmpeg died: a full disk) is raised by the next `write` or by `close`."""

    def __init__(self, output: Path, *, frames: int, height: int, width: int, fps: float):
        super().__init__(output, frames)
        command = ffmpeg_command(self.partial, width=width, height=height, fps=fps,
                                 threads=encoder_threads())  # fmt: skip
        self._ffmpeg = _Ffmpeg(command)
        self._queue: Handoff[np.ndarray] = Handoff(
            self._ffmpeg.send, depth=QUEUE_CHUNKS, name=ENCODER_THREAD
        )

    def write(self, frames: np.ndarray) -> None:
        self._count(frames)
        try:
            self._queue.put(frames)
        except OSError as error:
            raise self._failed(error) from error

    def close(self) -> None:
        try:
            self._queue.finish()
            self._ffmpeg.finish()
        except OSError as error:
            raise self._failed(error) from error
        except BaseException:
            self.abort()
            raise
        self._publish()

    def abort(self) -> None:
        """Drop the queued frames, kill ffmpeg (a write under way breaks off) and remove the
        partial file; no thread nor process is left."""
        self._stop()

    def _stop(self) -> str:
        self._queue.cancel(unblock=self._ffmpeg.kill)
        said = self._ffmpeg.stop()
        self._drop()
        return said

    def _failed(self, error: OSError) -> WanctlError:
        said = self._stop()
        return write_failed(self.output, f"ffmpeg stopped: {said or error}")


def ffmpeg_command(path: Path, *, width: int, height: int, fps: float, threads: int) -> list[str]:
    """imageio-ffmpeg's ffmpeg as its `write_frames` runs it (raw rgb24 frames on stdin, H.264
    in yuv420p at `CRF`, errors only on stderr), with x264's preset and threads set, and the
    frame size kept as it is (no scaling to a multiple of 16: H.264 crops any even size)."""
    rate = Fraction(fps).limit_denominator()
    source = ["-f", "rawvideo", "-vcodec", "rawvideo", "-s", f"{width}x{height}"]
    source += ["-pix_fmt", "rgb24", "-r", str(rate), "-i", "-", "-an"]
    video = ["-vcodec", "libx264", "-preset", PRESET, "-pix_fmt", "yuv420p", "-crf", str(CRF)]
    return [imageio_ffmpeg.get_ffmpeg_exe(), "-y", *source, *video, "-threads", str(threads),
            "-v", "error", str(path)]  # fmt: skip


def encoder_threads() -> int:
    """x264's threads: the CPUs this process may run on (its affinity where the OS has one: a
    job scheduler or `taskset` may give it fewer than the machine's). ffmpeg is not held to the
    worker's OMP_NUM_THREADS (torchrun sets 1 per rank; `wanctl.core.launch.thread_env` shares
    the cores of CPU ranks): x264 does not read it."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1


class _Ffmpeg:
    """One ffmpeg process, frames written to its stdin, its errors to a temporary file. Its own
    process rather than imageio-ffmpeg's `write_frames` generator, which is neither to be
    stopped from another thread while it writes, nor reaps ffmpeg once it has killed it."""

    def __init__(self, command: list[str]) -> None:
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by finish or stop)
        # Its own session: a terminal's Ctrl-C reaches the decode, which stops ffmpeg itself.
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            start_new_session=True,
        )

    def send(self, frames: np.ndarray) -> None:
        """Blocks while ffmpeg is behind; BrokenPipeError once it has stopped."""
        assert self._process.stdin is not None
        self._process.stdin.write(np.ascontiguousarray(frames).data)

    def finish(self) -> None:
        """End its input and wait for it to write the file; OSError if it failed."""
        assert self._process.stdin is not None
        try:
            self._process.stdin.close()
        finally:
            code = self._process.wait()
        if code != 0:
            raise OSError(f"exit code {code}")
        self._log.close()

    def kill(self) -> None:
        self._process.kill()  # a no-op once it has been reaped

    def stop(self) -> str:
        """Kill it if it still runs, reap it, and return the first error it printed (the
        cause; the lines after it are its consequences), less the "[out#0/mp4 @ 0x...]" tag."""
        if self._log.closed:
            return ""
        self.kill()
        self._process.wait()
        with contextlib.suppress(OSError):  # frames it never read
            assert self._process.stdin is not None
            self._process.stdin.close()
        self._log.seek(0)
        lines = self._log.read().decode(errors="replace").strip().splitlines()
        self._log.close()
        return re.sub(r"^\[[^]]*\] ", "", lines[0]) if lines else ""
