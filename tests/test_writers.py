"""The streaming writers turn a failed file into a clear error and never publish it."""

import logging
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest

from wanctl.decode.writers import open_writer
from wanctl.errors import WanctlError


def test_an_encoder_that_leaves_no_file_is_a_clear_error(tmp_path: Path) -> None:
    """ffmpeg that cannot create its file exits at once; the writer says so, and publishes
    nothing under the output's name."""
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where a folder should be")
    writer = open_writer(blocked / "video.mp4", frames=1, height=16, width=16, fps=24)
    with pytest.raises(WanctlError, match="could not write the video") as caught:
        writer.write(np.zeros((1, 16, 16, 3), np.uint8))
        writer.close()
    assert caught.value.fix and not (blocked / "video.mp4").exists()


def test_an_npy_in_a_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(WanctlError, match="could not write the video"):
        open_writer(tmp_path / "missing" / "video.npy", frames=1, height=16, width=16, fps=24)


def test_a_complete_mp4_is_published(tmp_path: Path) -> None:
    writer = open_writer(tmp_path / "video.mp4", frames=2, height=16, width=16, fps=24)
    writer.write(np.zeros((2, 16, 16, 3), np.uint8))
    writer.close()
    assert imageio_ffmpeg.count_frames_and_secs(str(tmp_path / "video.mp4"))[0] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["video.mp4"]  # no partial file left


def test_an_aborted_mp4_leaves_no_file_and_no_alarm(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """As on Ctrl-C before the first frame: nothing published, no partial file, and no
    "the written video is invalid" from imageio-ffmpeg about a file wanctl drops."""
    writer = open_writer(tmp_path / "video.mp4", frames=2, height=16, width=16, fps=24)
    with caplog.at_level(logging.WARNING, logger="imageio_ffmpeg"):
        writer.abort()
    assert list(tmp_path.iterdir()) == [] and caplog.records == []
