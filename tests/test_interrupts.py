"""Never lose or clobber work, with real processes on the CPU: `wanctl generate` and `wanctl
decode` started as a user would (their own process group, stderr a pipe as in a log), Ctrl-C
sent to that group at each phase, `--timeout`; an existing video or latents file refused
without `--overwrite`; the progress lines a log gets."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from wanctl.cli import app
from wanctl.core.progress import LogProgress, progress_bar
from wanctl.decode.latents import Latents, save_latents
from wanctl.errors import INTERRUPTED, TIMED_OUT

WANCTL = [sys.executable, "-m", "wanctl"]
TINY = ["--model", "tiny", "--device", "cpu", "--gpus", "2", "--prompt", "a fox"]
# Long enough to be caught in the middle: sampling tens of ms a step, a decode of seconds.
LONG_SAMPLING = [*TINY, "--size", "128*64", "--frames", "9", "--steps", "400"]
LONG_DECODE = [*TINY, "--size", "192*192", "--frames", "33", "--steps", "1"]
ENV = {**os.environ, "COLUMNS": "200"}  # no path cut by the error's wrapping


@dataclass
class Stopped:
    returncode: int
    stderr: str
    stdout: str


def interrupt(argv: list[str], when: str, cwd: Path) -> Stopped:
    """Run `wanctl argv`, and send SIGINT to its process group (a terminal's Ctrl-C) as soon as
    a line of its stderr contains `when`."""
    process = subprocess.Popen([*WANCTL, *argv], cwd=cwd, env=ENV, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True)  # fmt: skip
    assert process.stderr is not None
    seen = []
    for line in process.stderr:
        seen.append(line)
        if when in line:
            os.killpg(process.pid, signal.SIGINT)
            break
    stdout, rest = process.communicate(timeout=120)
    return Stopped(process.returncode, "".join(seen) + rest, stdout)


def no_partial_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if ".partial" in p.name or p.name.endswith(".wanctl")]


def assert_clean(stopped: Stopped, code: int = INTERRUPTED) -> None:
    assert stopped.returncode == code, stopped.stderr
    assert "Traceback" not in stopped.stderr, stopped.stderr


def test_ctrl_c_before_sampling_stops_every_rank_and_writes_nothing(tmp_path: Path) -> None:
    video = tmp_path / "a.mp4"
    stopped = interrupt(["generate", *LONG_SAMPLING, "-o", str(video)], "encoding the prompt",
                        tmp_path)  # fmt: skip
    assert_clean(stopped)
    assert "interrupted during" in stopped.stderr and "no latents were saved" in stopped.stderr
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_while_sampling_keeps_an_earlier_runs_latents_untouched(tmp_path: Path) -> None:
    """An --overwrite run stopped while sampling: the earlier video and latents stay as they
    were (replaced only once the new ones are complete), and are not claimed as this run's."""
    video = tmp_path / "a.mp4"
    latents = tmp_path / "a.latents.safetensors"
    video.write_bytes(b"earlier video")
    latents.write_bytes(b"earlier latents")
    argv = ["generate", *LONG_SAMPLING, "-o", str(video), "--overwrite"]
    stopped = interrupt(argv, "sampling: step 3/", tmp_path)
    assert_clean(stopped)
    assert "interrupted during sampling: no latents were saved" in " ".join(stopped.stderr.split())
    assert video.read_bytes() == b"earlier video" and latents.read_bytes() == b"earlier latents"
    assert no_partial_files(tmp_path)


def test_ctrl_c_after_the_latents_keeps_them_and_prints_the_command_that_finishes(
    tmp_path: Path,
) -> None:
    video = tmp_path / "a.mp4"
    stopped = interrupt(["generate", *LONG_DECODE, "-o", str(video)], "] decoding", tmp_path)
    assert_clean(stopped)
    text = " ".join(stopped.stderr.split())
    assert "interrupted during decode; the sampled latents are kept in" in text
    assert f"finish the job with: wanctl decode {tmp_path / 'a.latents.safetensors'}" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.latents.safetensors"]
    # the progress a log gets: each phase announced, one line per step
    for announced in ("starting 2 rank(s)", "] encoding the prompt", "] loading the DiT(s)",
                      "] sampling 1 steps on 2 rank(s)", "sampling: step 1/1",
                      "] saving the latents"):  # fmt: skip
        assert announced in stopped.stderr, announced
    # the printed command runs; stopped on two ranks, it leaves nothing either
    command = text.split("finish the job with: ")[1].split()
    decode = interrupt(command[1:], "] decoding 33 frames on 2 rank(s)", tmp_path)
    assert_clean(decode)
    assert "interrupted during the decode; nothing was written to" in decode.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.latents.safetensors"]


def test_a_timeout_stops_every_rank_with_its_own_code(tmp_path: Path) -> None:
    video = tmp_path / "a.mp4"
    argv = [*WANCTL, "generate", *LONG_SAMPLING, "-o", str(video), "--timeout", "8"]
    done = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == TIMED_OUT, done.stderr
    assert "Traceback" not in done.stderr
    assert "did not finish within --timeout 8 s; no latents were saved" in " ".join(
        done.stderr.split()
    )
    assert list(tmp_path.iterdir()) == []


def test_existing_outputs_are_refused_before_anything_runs(cli: CliRunner, tmp_path: Path) -> None:
    """generate (a video or a latents file there, --dry-run too) and decode: exit 2, naming the
    file and --overwrite; nothing touched."""
    video = tmp_path / "a.mp4"
    for existing in (video, tmp_path / "a.latents.safetensors"):
        existing.write_bytes(b"earlier work")
        for extra in ([], ["--dry-run"]):
            done = cli.invoke(app, ["generate", *TINY, "-o", str(video), *extra],
                              env={"COLUMNS": "300"})  # fmt: skip
            assert done.exit_code == 2, done.output
            assert f"{existing} exists" in done.stderr and "--overwrite" in done.stderr
            assert existing.read_bytes() == b"earlier work"
        existing.unlink()
    latents = tiny_latents(tmp_path / "z.safetensors")
    video.write_bytes(b"earlier video")
    decode = ["decode", str(latents), "-o", str(video), "--vae", "tiny", "--device", "cpu"]
    done = cli.invoke(app, decode, env={"COLUMNS": "300"})
    assert done.exit_code == 2 and f"{video} exists" in done.stderr
    assert video.read_bytes() == b"earlier video"
    replaced = cli.invoke(app, [*decode, "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert video.read_bytes()[4:8] == b"ftyp" and no_partial_files(tmp_path)


def tiny_latents(path: Path) -> Path:
    """Latents of the tiny model's VAE (Wan2.2-shaped: 48 channels), 3 latent frames."""
    tensor = torch.randn(1, 48, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    save_latents(path, Latents(tensor, normalized=True, fps=24.0))
    return path


def test_progress_in_a_log_is_one_line_per_step_and_every_few_seconds_of_frames() -> None:
    log = io.StringIO()  # not a terminal
    steps = LogProgress("sampling", "steps", 4, log)
    for _ in range(4):
        steps.advance()
    lines = log.getvalue().splitlines()
    assert len(lines) == 4 and lines[0].startswith("sampling: step 1/4 ")
    assert " s/step eta " in lines[0]
    frames = io.StringIO()
    with progress_bar("decoding", "frames", 121, stream=frames) as advance:
        for _ in range(121):
            advance(1)
    assert frames.getvalue().splitlines() == [frames.getvalue().splitlines()[-1]]
    assert frames.getvalue().startswith("decoding: 121/121 frames")


@pytest.mark.parametrize("unit", ["steps", "frames"])
def test_a_disabled_progress_prints_nothing(unit: str) -> None:
    log = io.StringIO()
    with progress_bar("x", unit, 3, enabled=False, stream=log) as advance:
        advance(3)
    assert log.getvalue() == ""
