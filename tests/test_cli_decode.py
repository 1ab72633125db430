"""`wanctl decode` end to end on the CPU with the tiny VAE: files written and read back, JSON,
two ranks through torchrun, and bad inputs refused without a traceback or harm to the latents."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import torch
from conftest import crashed
from safetensors.torch import save_file
from typer.testing import CliRunner

from wanctl.cli import app
from wanctl.decode.engine import decode_chunks
from wanctl.decode.latents import Latents, load_latents, save_latents
from wanctl.decode.load import load_vae
from wanctl.decode.writers import to_uint8

T, H, W = 3, 3, 5  # 9 frames of 48x80


@pytest.fixture
def latents_file(tmp_path: Path) -> Path:
    path = tmp_path / "latents.safetensors"
    z = torch.randn(1, 48, T, H, W, generator=torch.Generator().manual_seed(5))
    save_latents(path, Latents(z, normalized=True, fps=16, source={"seed": "5"}))
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def decode(cli: CliRunner, *args: str | Path, env: dict[str, str] | None = None):
    return cli.invoke(app, ["decode", *map(str, args)], env={"COLUMNS": "200", **(env or {})})


def expected_frames(latents_file: Path) -> np.ndarray:
    vae = load_vae("tiny")
    latents = load_latents(latents_file)
    z = latents.for_decoder(vae.config["latents_mean"], vae.config["latents_std"])
    return np.concatenate([to_uint8(c) for c in decode_chunks(vae, z)])


def test_npy_output_is_the_decoded_video(
    cli: CliRunner, latents_file: Path, tmp_path: Path
) -> None:
    before = digest(latents_file)
    result = decode(cli, latents_file, "-o", tmp_path / "v.npy", "--vae", "tiny", "--chunk-t", "2")

    assert result.exit_code == 0, result.output
    assert "9 frames, 80x48, 16 fps" in result.stdout
    assert "1 process, chunk_t=2, cpu fp32" in result.stdout
    video = np.load(tmp_path / "v.npy")
    assert video.shape == (9, 48, 80, 3) and video.dtype == np.uint8
    assert np.abs(video.astype(int) - expected_frames(latents_file)).max() <= 1
    assert digest(latents_file) == before


def test_mp4_output_has_every_frame(cli: CliRunner, latents_file: Path, tmp_path: Path) -> None:
    result = decode(cli, latents_file, "-o", tmp_path / "v.mp4", "--vae", "tiny")

    assert result.exit_code == 0, result.output
    frames, seconds = imageio_ffmpeg.count_frames_and_secs(str(tmp_path / "v.mp4"))
    assert frames == 9 and seconds == pytest.approx(9 / 16, abs=0.07)
    reader = imageio_ffmpeg.read_frames(str(tmp_path / "v.mp4"))
    meta = next(reader)
    assert meta["size"] == (80, 48) and meta["fps"] == 16
    assert sum(1 for _ in reader) == 9


def test_json_summary(cli: CliRunner, latents_file: Path, tmp_path: Path) -> None:
    env = {"WAN_VAE_DECODE_CHUNK_T": "3"}
    result = decode(cli, latents_file, "-o", tmp_path / "v.npy", "--vae", "tiny", "--json", env=env)

    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["frames"], summary["width"], summary["height"]) == (9, 80, 48)
    assert summary["exact"] is True and summary["seconds"] > 0
    assert summary["plan"] == {"ranks": 1, "chunk_t": 3, "device": "cpu", "dtype": "fp32",
                               "tiled": False, "step": "as asked"}  # fmt: skip
    assert summary["peak_allocated_gib"] == [None]
    assert summary["warmup_seconds"] == 0.0  # no kernel to compile on the CPU
    assert summary["attempts"] == ["1 process, chunk_t=3, cpu fp32: ok"]


def test_two_ranks_through_torchrun_write_the_same_video(
    cli: CliRunner, latents_file: Path, tmp_path: Path
) -> None:
    args = ("-o", tmp_path / "v.npy", "--vae", "tiny", "--device", "cpu", "--gpus", "2", "--json")
    result = decode(cli, latents_file, *args)

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["plan"]["ranks"] == 2
    video = np.load(tmp_path / "v.npy")
    assert np.abs(video.astype(int) - expected_frames(latents_file)).max() <= 1


def test_wan21_latents_decode_on_two_ranks_as_on_one(cli: CliRunner, tmp_path: Path) -> None:
    """The A14B models' latents (16 channels, 8x in space) through the Wan2.1 VAE."""
    path = tmp_path / "a14b.safetensors"
    z = torch.randn(1, 16, T, H, W, generator=torch.Generator().manual_seed(6))
    save_latents(path, Latents(z, normalized=True, fps=16))
    videos = []
    for ranks in ("1", "2"):
        out = tmp_path / f"v{ranks}.npy"
        args = ("--vae", "tiny-wan2.1", "--device", "cpu", "--gpus", ranks, "--json")
        result = decode(cli, path, "-o", out, *args)
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["frames"] == 9
        videos.append(np.load(out).astype(int))

    assert videos[0].shape == (9, 8 * H, 8 * W, 3)
    assert np.abs(videos[0] - videos[1]).max() <= 1


def bad_tensor_name(tmp_path: Path) -> Path:
    path = tmp_path / "named.safetensors"
    save_file({"x0": torch.zeros(48, 2, 2, 2)}, str(path), metadata={"normalized": "true"})
    return path


def bad_channels(tmp_path: Path) -> Path:
    path = tmp_path / "channels.safetensors"
    save_latents(path, Latents(torch.zeros(1, 16, 2, 2, 2), normalized=True))
    return path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing latents", "latents file not found"),
        ("unreadable latents", "cannot read"),
        ("wrong tensor name", "no tensor named 'latents'"),
        ("wrong channels", "made by the wan2.1 VAE (16 channels) and tiny is the wan2.2 VAE"),
        ("wrong vae", "made by the wan2.2 VAE (48 channels) and tiny-wan2.1 is the wan2.1"),
        ("missing vae", "VAE not found"),
        ("output folder missing", "is not a writable folder"),
        ("output type", "unknown video type '.gif'"),
        ("too many ranks", "more than the frame's 5 latent rows"),
        ("no gpu", "no CUDA GPU is visible"),
    ],
)
def test_bad_inputs_exit_non_zero_with_a_clear_message(
    cli: CliRunner, latents_file: Path, tmp_path: Path, case: str, message: str
) -> None:
    if case == "no gpu" and torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    latents, output, extra = latents_file, tmp_path / "v.mp4", ["--vae", "tiny"]
    if case == "missing latents":
        latents = tmp_path / "absent.safetensors"
    elif case == "unreadable latents":
        latents = garbage
    elif case == "wrong tensor name":
        latents = bad_tensor_name(tmp_path)
    elif case == "wrong channels":
        latents = bad_channels(tmp_path)
    elif case == "wrong vae":
        extra = ["--vae", "tiny-wan2.1"]
    elif case == "missing vae":
        extra = ["--vae", str(tmp_path / "no-vae")]
    elif case == "output folder missing":
        output = tmp_path / "absent" / "v.mp4"
    elif case == "output type":
        output = tmp_path / "v.gif"
    elif case == "too many ranks":
        extra += ["--device", "cpu", "--gpus", "6"]
    elif case == "no gpu":
        extra += ["--device", "cuda"]
    before = digest(latents) if latents.exists() else None

    result = decode(cli, latents, "-o", output, *extra)

    assert result.exit_code == 2, result.output
    assert "error:" in result.stderr and message in result.stderr
    assert not crashed(result)
    assert not output.exists()
    if before is not None:
        assert digest(latents) == before


def test_an_error_line_is_never_broken_so_its_path_copies_whole(
    cli: CliRunner, tmp_path: Path
) -> None:
    """On a narrow terminal or in a log, the what/why/fix lines keep their paths in one piece
    (the terminal wraps them; rich would have cut them at its width)."""
    absent = tmp_path / ("a-folder-with-a-rather-long-name-" * 3) / "latents.safetensors"
    result = decode(cli, absent, "-o", tmp_path / "v.mp4", "--vae", "tiny", env={"COLUMNS": "60"})
    assert result.exit_code == 2
    assert str(absent) in result.stderr.splitlines()[0]


def test_the_output_may_not_be_the_latents_file(cli: CliRunner, tmp_path: Path) -> None:
    latents = tmp_path / "latents.npy"
    save_latents(latents, Latents(torch.zeros(1, 48, 2, 2, 2), normalized=True))
    before = digest(latents)

    result = decode(cli, latents, "-o", latents, "--vae", "tiny")

    assert result.exit_code == 2 and "would overwrite the latents file" in result.stderr
    assert digest(latents) == before


def test_an_output_folder_where_no_file_can_be_created_is_refused_before_decoding(
    cli: CliRunner, latents_file: Path
) -> None:
    """`os.access` says yes to root everywhere; creating a file in /proc fails for everyone."""
    result = decode(cli, latents_file, "-o", "/proc/x.mp4", "--vae", "tiny", "--device", "cpu")
    assert result.exit_code == 2, result.output
    text = " ".join(result.stderr.split())
    assert "/proc is not a writable folder" in text and "creating a file there failed" in text
    assert "decoding" not in result.stderr and not crashed(result)


def test_a_worker_that_failed_of_a_bug_points_to_its_traceback(tmp_path: Path) -> None:
    from wanctl.decode.run import read_report
    from wanctl.errors import WanctlError

    with pytest.raises(WanctlError) as failed:
        read_report(tmp_path / "report.json", 2, 1)
    assert "traceback is in torchrun's output above" in failed.value.fix
    assert "run again with --debug" not in failed.value.fix


def test_the_vae_help_names_every_built_in_decoder(cli: CliRunner) -> None:
    result = cli.invoke(app, ["decode", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    assert "'synthetic'" in text and "'tiny'" in text and "'tiny-wan2.1'" in text
    assert "'synthetic-wan2.1'" in text


def test_a_rank_that_fails_is_reported_without_tracebacks(
    latents_file: Path, tmp_path: Path
) -> None:
    """Two ranks over gloo; rank 0's encoder dies (here: no ffmpeg). The user reads the error
    and its fix, not the other rank's or torchrun's tracebacks; nothing is published and the
    latents are untouched. A real process: CliRunner would hide what the workers print."""
    before = digest(latents_file)
    output = tmp_path / "v.mp4"
    command = [sys.executable, "-m", "wanctl", "decode", str(latents_file), "-o", str(output),
               "--vae", "tiny", "--device", "cpu", "--gpus", "2"]  # fmt: skip
    env = {**os.environ, "IMAGEIO_FFMPEG_EXE": "/bin/false"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert "error: could not write the video" in done.stderr and "fix:" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert digest(latents_file) == before and sorted(p.name for p in tmp_path.iterdir()) == [
        "latents.safetensors"
    ]
