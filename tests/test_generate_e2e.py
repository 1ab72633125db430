"""`wanctl generate` end to end on the CPU, real processes: the tiny model on two ranks over gloo
(torchrun, Ulysses sampling, the latents saved, the decode split over both ranks), the same
latents from one rank, a rank that dies named with its cause, and a failed decode that keeps
the latents and gives the command that finishes the job."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import imageio_ffmpeg
import pytest
import torch
from fake_checkpoints import model_index
from PIL import Image
from typer.testing import CliRunner

from wanctl.cli import app
from wanctl.core.families import TI2V_5B
from wanctl.core.launch import LaunchSpec, RunResult, SubprocessRunner
from wanctl.core.worker import GENERATE_WORKER
from wanctl.decode.latents import load_latents
from wanctl.errors import WanctlError
from wanctl.generate.failures import DecodeFailed
from wanctl.generate.options import GenerateOptions
from wanctl.generate.run import prepare, run_generate
from wanctl.models.builtin import tiny_text_encoder, tiny_transformer, tiny_vae
from wanctl.models.pipelines import wan_scheduler
from wanctl.probe.local import LocalProbe

FRAMES = 17
TINY = ("--model", "tiny", "--device", "cpu", "--prompt", "a red fox", "--size", "64*64",
        "--frames", str(FRAMES), "--steps", "3")  # fmt: skip
# Runs the real worker, with one of its functions failing on rank 1 as a GPU out of memory would.
FAILING_WORKER = """
import os, sys
import torch
from wanctl.workers import generate as worker

def out_of_memory(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

if os.environ["RANK"] == "1":
    setattr(worker, os.environ["FAIL_FUNCTION"], out_of_memory)
sys.exit(worker.main(sys.argv[1:]))
"""


@dataclasses.dataclass
class FailingRank:
    """Runs the launch with `wanctl.workers.generate` swapped for FAILING_WORKER."""

    folder: Path
    function: str

    def run(self, spec: LaunchSpec) -> RunResult:
        (self.folder / "failing_worker.py").write_text(FAILING_WORKER)
        argv = tuple("failing_worker" if arg == GENERATE_WORKER else arg for arg in spec.argv)
        env = {**spec.env, "PYTHONPATH": str(self.folder), "FAIL_FUNCTION": self.function}
        return SubprocessRunner().run(dataclasses.replace(spec, argv=argv, env=env))


def generate(cli: CliRunner, output: Path, *args: str, json_output: bool = True):
    summary = ["--json"] if json_output else []
    return cli.invoke(app, ["generate", *TINY, "-o", str(output), *args, *summary],
                      env={"COLUMNS": "200"})  # fmt: skip


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    output = tmp_path_factory.mktemp("two-ranks") / "fox.mp4"
    result = generate(CliRunner(), output, "--gpus", "2")
    assert result.exit_code == 0, result.output
    return output, json.loads(result.stdout)


def test_two_ranks_write_every_frame_and_keep_the_latents(two_ranks: tuple[Path, dict]) -> None:
    output, summary = two_ranks
    frames, _ = imageio_ffmpeg.count_frames_and_secs(str(output))
    assert frames == FRAMES
    reader = imageio_ffmpeg.read_frames(str(output))
    assert next(reader)["size"] == (64, 64)
    reader.close()
    latents = load_latents(output.with_name("fox.latents.safetensors"))
    assert latents.tensor.shape == (1, 48, 5, 4, 4) and latents.normalized
    assert latents.frames == FRAMES and latents.fps == 24
    assert dict(latents.source) == {"model": "tiny", "prompt": "a red fox", "seed": "42",
                                    "steps": "3", "size": "64*64"}  # fmt: skip
    assert summary["ranks"] == 2 and summary["frames"] == FRAMES and summary["device"] == "cpu"
    assert summary["seconds_per_step"] > 0 and summary["decode_s"] > 0
    assert summary["decode_warmup_s"] == 0.0  # no GPU kernel to compile on the CPU
    assert [rank["rank"] for rank in summary["per_rank"]] == [0, 1]
    # rank 0 alone loaded the text encoder; rank 1 got the embeddings by broadcast (the
    # latents are one rank's: test_one_rank_samples_the_same_latents_as_two)
    assert summary["encoded_on"] == [0]
    # each rank's peak host memory, from the rank itself (a CPU run holds the models there)
    assert all(0.1 < rank["host_rss_gib"] < 64 for rank in summary["per_rank"])
    # where the time went, from wanctl's start: the parts add up, the first step is in them
    timeline = summary["timeline"]
    parts = dict(timeline["parts"])
    assert abs(sum(parts.values()) - timeline["total_s"]) < 1e-6
    assert parts["first step"] > 0 and parts["imports"] > 0 and parts["decode"] > 0
    assert 0 < timeline["first_step_after_s"] < timeline["total_s"]
    assert summary["compile"]["compiled"] is False and "CPU" in summary["compile"]["reason"]
    assert sorted(p.name for p in output.parent.iterdir()) == ["fox.latents.safetensors",
                                                               "fox.mp4"]  # fmt: skip


@pytest.fixture
def tiny_checkpoint(tmp_path: Path) -> Path:
    """The tiny model saved as a diffusers checkpoint, as Wan2.2-TI2V-5B-Diffusers is laid out."""
    from transformers import ByT5Tokenizer

    folder = tmp_path / "Wan2.2-tiny-Diffusers"
    tiny_transformer().save_pretrained(folder / "transformer")
    tiny_vae().save_pretrained(folder / "vae")
    tiny_text_encoder().save_pretrained(folder / "text_encoder")
    ByT5Tokenizer().save_pretrained(folder / "tokenizer")
    wan_scheduler(TI2V_5B).save_pretrained(folder / "scheduler")
    index = {**model_index(TI2V_5B), "tokenizer": ["transformers", "ByT5Tokenizer"]}
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def test_a_diffusers_checkpoint_samples_and_decodes_as_the_model_it_holds(
    two_ranks: tuple[Path, dict], tiny_checkpoint: Path, cli: CliRunner, tmp_path: Path
) -> None:
    """The checkpoint path (tokenizer, UMT5, DiT and scheduler read from their folders, the
    decoder from vae/) gives what the built-in tiny model gives, on two ranks."""
    output = tmp_path / "out" / "fox.mp4"
    output.parent.mkdir()
    args = [arg for arg in TINY if arg not in ("--model", "tiny")]
    result = cli.invoke(app, ["generate", *args, "--ckpt-dir", str(tiny_checkpoint),
                              "--gpus", "2", "-o", str(output), "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    from_checkpoint = load_latents(output.with_name("fox.latents.safetensors"))
    built_in = load_latents(two_ranks[0].with_name("fox.latents.safetensors"))
    torch.testing.assert_close(from_checkpoint.tensor, built_in.tensor, rtol=0, atol=1e-5)
    assert from_checkpoint.source["model"] == "Wan2.2-tiny-Diffusers"
    assert imageio_ffmpeg.count_frames_and_secs(str(output))[0] == FRAMES


def test_one_rank_samples_the_same_latents_as_two(
    two_ranks: tuple[Path, dict], cli: CliRunner, tmp_path: Path
) -> None:
    # --size as 64x64: every spelling the checks accept reaches the worker as 64*64
    result = generate(cli, tmp_path / "fox.mp4", "--gpus", "1", "--size", "64x64",
                      json_output=False)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "generated" in result.stdout and "s/step" in result.stdout  # the summary table
    assert "decode warm-up" not in result.stdout  # nothing compiled on the CPU: not shown
    saved = load_latents(tmp_path / "fox.latents.safetensors")
    assert saved.source["size"] == "64*64"
    one = saved.tensor
    two = load_latents(two_ranks[0].with_name("fox.latents.safetensors")).tensor
    torch.testing.assert_close(one, two, rtol=0, atol=1e-5)


def _plan(output: Path):
    options = GenerateOptions(prompt="a red fox", output=output, size="64*64", frames=FRAMES,
                              steps=2, gpus=2, model="tiny", device="cpu")  # fmt: skip
    return prepare(options, probe=LocalProbe())


def test_a_rank_that_dies_is_named_with_its_cause(tmp_path: Path) -> None:
    plan = _plan(tmp_path / "fox.mp4")
    with pytest.raises(WanctlError) as failed:
        run_generate(plan, runner=FailingRank(tmp_path, "sample"))
    error = failed.value
    assert not isinstance(error, DecodeFailed)
    assert error.message == "rank 1 failed during sampling: out of GPU memory"
    assert "OutOfMemoryError: CUDA out of memory" in error.why and "wanctl tune" in error.fix
    assert sorted(p.name for p in tmp_path.iterdir()) == ["failing_worker.py"]


def test_a_failed_decode_keeps_the_latents_and_gives_the_command_that_finishes(
    tmp_path: Path, cli: CliRunner
) -> None:
    plan = _plan(tmp_path / "fox.mp4")
    with pytest.raises(DecodeFailed) as failed:
        run_generate(plan, runner=FailingRank(tmp_path, "decode_rank"))
    latents = tmp_path / "fox.latents.safetensors"
    assert load_latents(latents).frames == FRAMES and not plan.paths.output.exists()
    assert f"the sampled latents are kept in {latents}" in failed.value.message
    command = failed.value.fix.removeprefix("finish the job with: ")
    assert command == plan.decode_command
    words = shlex.split(command)
    assert words[:2] == ["wanctl", "decode"]
    finished = cli.invoke(app, words[1:])
    assert finished.exit_code == 0, finished.output
    assert imageio_ffmpeg.count_frames_and_secs(str(plan.paths.output))[0] == FRAMES


def test_a_failed_decode_with_json_leaves_one_document_on_stdout(tmp_path: Path) -> None:
    """A real process, so that what torchrun and the ranks print would show: the decode fails
    (no working ffmpeg), and stdout holds the error's document alone, with the kept latents and
    the command that finishes the job."""
    output = tmp_path / "fox.mp4"
    command = [sys.executable, "-m", "wanctl", "generate", *TINY, "--gpus", "1", "-o", str(output),
               "--skip-preflight", "--json"]  # fmt: skip
    env = {**os.environ, "IMAGEIO_FFMPEG_EXE": "/bin/false"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    error = json.loads(done.stdout)["error"]
    latents = tmp_path / "fox.latents.safetensors"
    assert error["exit_code"] == 1 and "could not write the video" in error["why"]
    assert error["latents"] == str(latents) and load_latents(latents).frames == FRAMES
    assert error["decode_command"].startswith(f"wanctl decode {latents} -o {output}")
    assert "error: the decode failed" in done.stderr


def test_an_image_fixes_the_first_frame_whatever_the_seed(cli: CliRunner, tmp_path: Path) -> None:
    """TI2V image to video: the first latent frame is the encoded image, the rest is sampled."""
    image = tmp_path / "cat.png"
    pixels = torch.randint(0, 256, (64, 64, 3), generator=torch.Generator().manual_seed(1))
    Image.fromarray(pixels.to(torch.uint8).numpy()).save(image)
    latents = []
    for seed in ("1", "2"):
        output = tmp_path / f"cat{seed}.mp4"
        result = generate(cli, output, "--gpus", "1", "--image", str(image), "--seed", seed)
        assert result.exit_code == 0, result.output
        latents.append(load_latents(output.with_name(f"cat{seed}.latents.safetensors")).tensor)
    first, second = latents
    assert torch.equal(first[:, :, 0], second[:, :, 0])
    assert not torch.allclose(first[:, :, 1:], second[:, :, 1:])
