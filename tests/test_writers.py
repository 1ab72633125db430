"""The streaming writers: every frame in order, a failed file turned into a clear error and never
published, and the mp4 encoder's thread (fed through a bounded queue) gone, with its ffmpeg,
whatever stops the decode. Real ffmpeg processes (imageio-ffmpeg's), real threads."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import psutil
import pytest
import torch

from wanctl.core.launch import partial_path
from wanctl.decode.handoff import Handoff
from wanctl.decode.load import load_vae
from wanctl.decode.stream import decode_to_file
from wanctl.decode.writers import (
    ENCODER_THREAD,
    QUEUE_CHUNKS,
    encoder_threads,
    ffmpeg_command,
    open_writer,
)
from wanctl.errors import WanctlError


def ffmpegs() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if "ffmpeg" in p.name()]


class Encoders:
    """The mp4 encoder threads, and the ffmpeg processes (zombies too) started since it was
    made: those of earlier tests (imageio-ffmpeg's readers) do not count."""

    def __init__(self) -> None:
        self._before = {p.pid for p in ffmpegs()}

    def started(self) -> list[psutil.Process]:
        return [p for p in ffmpegs() if p.pid not in self._before]

    def left(self) -> list[str]:
        threads = [t.name for t in threading.enumerate() if t.name == ENCODER_THREAD]
        return threads + [f"ffmpeg pid {p.pid}" for p in self.started()]


@pytest.fixture
def encoders() -> Encoders:
    return Encoders()


def levels(count: int) -> list[int]:
    return [12 + 15 * i for i in range(count)]


def flat_frames(values: list[int], size: int = 32) -> np.ndarray:
    """One uniform grey frame per value: each frame tells which it is, whatever the codec."""
    return np.repeat(np.array(values, np.uint8), size * size * 3).reshape(-1, size, size, 3)


def test_every_frame_arrives_in_order(tmp_path: Path, encoders: Encoders) -> None:
    """More chunks than the queue holds, read back: all there, each one where it was written."""
    values = levels(16)
    output = tmp_path / "video.mp4"
    writer = open_writer(output, frames=len(values), height=32, width=32, fps=24)
    for first in range(0, len(values), 2):
        writer.write(flat_frames(values[first : first + 2]))
    writer.close()

    reader = imageio_ffmpeg.read_frames(str(output))
    assert next(reader)["size"] == (32, 32)
    means = [np.frombuffer(frame, np.uint8).mean() for frame in reader]
    assert np.allclose(means, values, atol=2), means
    assert sorted(p.name for p in tmp_path.iterdir()) == ["video.mp4"]  # no partial file left
    assert encoders.left() == []


@pytest.mark.parametrize("stop", [RuntimeError, KeyboardInterrupt])
def test_a_decode_stopped_midway_leaves_no_file_thread_or_ffmpeg(
    tmp_path: Path, stop: type[BaseException], encoders: Encoders
) -> None:
    """A failure (or Ctrl-C) once chunks are queued for the encoder: decode_to_file aborts the
    writer, and nothing is left, neither on disk nor in the process."""
    vae = load_vae("tiny")
    z = torch.randn(1, 48, 6, 2, 2, generator=torch.Generator().manual_seed(0))  # 6 chunks
    chunks = []

    def frames_done(count: int) -> None:
        chunks.append(count)
        if len(chunks) == 3:
            raise stop("stopped after 3 chunks")

    with pytest.raises(stop, match="after 3 chunks"):
        decode_to_file(vae, z, tmp_path / "video.mp4", fps=24, on_frames=frames_done)
    assert list(tmp_path.iterdir()) == [] and encoders.left() == []


def test_abort_stops_an_encoder_that_stalls_at_once(tmp_path: Path, encoders: Encoders) -> None:
    """ffmpeg stopped (SIGSTOP) while the encoder thread writes to it: the writes still return
    at once (the queue takes them), and abort kills ffmpeg mid-write, reaps it and ends the
    thread without waiting on it."""
    frames = np.random.default_rng(0).integers(0, 256, (4, 128, 128, 3), np.uint8)  # > a pipe
    writer = open_writer(tmp_path / "video.mp4", frames=40, height=128, width=128, fps=24)
    (ffmpeg,) = encoders.started()
    ffmpeg.send_signal(signal.SIGSTOP)
    resume = threading.Timer(10, ffmpeg.send_signal, (signal.SIGCONT,))  # a failure, not a hang
    resume.start()
    start = time.perf_counter()
    for _ in range(1 + QUEUE_CHUNKS):  # one in the thread's write, the others queued
        writer.write(frames.copy())
    queued = time.perf_counter() - start
    writer.abort()
    resume.cancel()
    # well under the 10 s stall that a write or abort waiting on ffmpeg would take; slack for
    # a loaded machine (the suite runs two pytest workers on 2 cores)
    assert queued < 3 and time.perf_counter() - start < 6
    assert list(tmp_path.iterdir()) == [] and encoders.left() == []


def test_a_full_disk_is_a_clear_error_at_a_write_or_at_close(
    tmp_path: Path, encoders: Encoders
) -> None:
    """ffmpeg writing to /dev/full (the partial file's name links there) stops with ENOSPC: a
    later write or close raises the writer's error with ffmpeg's reason, and the writer has
    already stopped its thread and ffmpeg and removed the partial file."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    output = tmp_path / "video.mp4"
    partial_path(output).symlink_to("/dev/full")
    writer = open_writer(output, frames=64, height=128, width=128, fps=24)
    noise = np.random.default_rng(0).integers(0, 256, (4, 128, 128, 3), np.uint8)
    with pytest.raises(WanctlError, match="could not write the video") as caught:
        for _ in range(16):
            writer.write(noise.copy())
        writer.close()
    assert "No space left on device" in (caught.value.why or "")
    assert list(tmp_path.iterdir()) == [] and encoders.left() == []
    writer.abort()  # as decode_to_file does on any error: nothing more to do


def test_an_encoder_that_leaves_no_file_is_a_clear_error(
    tmp_path: Path, encoders: Encoders
) -> None:
    """ffmpeg that cannot create its file exits; the writer says so, and publishes nothing
    under the output's name."""
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where a folder should be")
    writer = open_writer(blocked / "video.mp4", frames=1, height=16, width=16, fps=24)
    with pytest.raises(WanctlError, match="could not write the video") as caught:
        writer.write(np.zeros((1, 16, 16, 3), np.uint8))
        writer.close()
    assert caught.value.fix and "Not a directory" in (caught.value.why or "")
    assert not (blocked / "video.mp4").exists() and encoders.left() == []


def test_an_npy_in_a_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(WanctlError, match="could not write the video"):
        open_writer(tmp_path / "missing" / "video.npy", frames=1, height=16, width=16, fps=24)


def test_an_aborted_mp4_before_any_frame_leaves_nothing(tmp_path: Path, encoders: Encoders) -> None:
    """As on Ctrl-C before the first frame: nothing published, no partial file, no encoder."""
    writer = open_writer(tmp_path / "video.mp4", frames=2, height=16, width=16, fps=24)
    writer.abort()
    assert list(tmp_path.iterdir()) == [] and encoders.left() == []


def test_x264_gets_the_cpus_this_process_may_use() -> None:
    command = ffmpeg_command(Path("v.mp4"), width=1280, height=704, fps=24, threads=5)
    assert command[command.index("-threads") + 1] == "5" and command[-1] == "v.mp4"
    assert command[command.index("-crf") + 1] == "10" and "1280x704" in command
    assert command[command.index("-preset") + 1] == "veryfast"  # x264's medium: 3x slower
    assert 1 <= encoder_threads() <= (psutil.cpu_count() or 1)


def test_the_handoff_blocks_the_producer_while_depth_items_wait() -> None:
    """A consumer held on its first item: the producer puts that one and `depth` more, then
    waits; released, the consumer gets every item in order."""
    taken, started, release = [], threading.Event(), threading.Event()

    def slow(item: int) -> None:
        started.set()
        release.wait()
        taken.append(item)

    handoff: Handoff[int] = Handoff(slow, depth=2, name="test-handoff")
    put: list[int] = []

    def produce() -> None:
        for item in range(6):
            handoff.put(item)
            put.append(item)

    producer = threading.Thread(target=produce)
    producer.start()
    assert started.wait(5)
    time.sleep(0.3)
    assert put == [0, 1, 2]  # 0 in the consumer, 1 and 2 queued; 3 waits for room
    release.set()
    producer.join(5)
    handoff.finish()
    assert taken == list(range(6))


def test_a_consumer_error_reaches_the_producer_and_the_rest_is_dropped() -> None:
    taken: list[int] = []

    def fails_on_2(item: int) -> None:
        if item == 2:
            raise OSError("the consumer broke")
        taken.append(item)

    handoff: Handoff[int] = Handoff(fails_on_2, depth=1, name="test-handoff")
    with pytest.raises(OSError, match="the consumer broke"):
        for item in range(100):  # never blocked by a consumer that has stopped
            handoff.put(item)
    with pytest.raises(OSError, match="the consumer broke"):
        handoff.finish()
    assert taken == [0, 1]
    handoff.cancel()  # after the end: nothing to do
