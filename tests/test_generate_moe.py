"""The two-expert (A14B) models end to end on the CPU, real processes: `tiny-moe` T2V and I2V on
two ranks over gloo (Ulysses over 40 heads, the Wan2.1 VAE's decode split over both ranks),
the same latents from one rank, the expert switching at the boundary step, a diffusers A14B
checkpoint folder read as the model it holds, and the refusals."""

from __future__ import annotations

import json
from pathlib import Path

import imageio_ffmpeg
import pytest
import torch
from fake_checkpoints import model_index
from PIL import Image
from typer.testing import CliRunner

from wanctl.cli import app
from wanctl.core.families import I2V_A14B, T2V_A14B, Family
from wanctl.decode.latents import load_latents
from wanctl.models.builtin import (
    tiny_expert_config,
    tiny_text_encoder,
    tiny_transformer,
    tiny_vae,
)
from wanctl.models.pipelines import wan_scheduler

FRAMES, STEPS = 9, 6
SIZE = ("--size", "128*64")
MOE = ("--model", "tiny-moe", "--device", "cpu", "--prompt", "a red fox", *SIZE,
       "--frames", str(FRAMES), "--steps", str(STEPS))  # fmt: skip


def generate(cli: CliRunner, output: Path, *args: str) -> dict:
    result = cli.invoke(app, ["generate", *args, "-o", str(output), "--json"],
                        env={"COLUMNS": "200"})  # fmt: skip
    assert result.exit_code == 0, result.output
    summary: dict = json.loads(result.stdout)
    return summary


def expected_experts(family: Family, steps: int) -> list[str]:
    """The high-noise expert while the scheduler's timestep is at or past the boundary."""
    scheduler = wan_scheduler(family)
    scheduler.set_timesteps(steps)
    boundary = family.boundary * 1000  # type: ignore[operator]
    return ["high" if t >= boundary else "low" for t in scheduler.timesteps.tolist()]


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("image") / "cat.png"
    pixels = torch.randint(0, 256, (64, 128, 3), generator=torch.Generator().manual_seed(1))
    Image.fromarray(pixels.to(torch.uint8).numpy()).save(path)
    return path


class Replicated:
    """The replicated two-rank run of each kind (t2v, i2v), made once when first asked for."""

    def __init__(self, folder: pytest.TempPathFactory, image: Path):
        self.folder, self.image = folder, image
        self.runs: dict[str, tuple[str, Path, dict]] = {}

    def __call__(self, kind: str) -> tuple[str, Path, dict]:
        if kind not in self.runs:
            output = self.folder.mktemp(kind) / "fox.mp4"
            extra = ("--image", str(self.image)) if kind == "i2v" else ()
            summary = generate(CliRunner(), output, *MOE, *extra, "--gpus", "2")
            self.runs[kind] = kind, output, summary
        return self.runs[kind]


@pytest.fixture(scope="module")
def replicated(tmp_path_factory: pytest.TempPathFactory, image: Path) -> Replicated:
    return Replicated(tmp_path_factory, image)


@pytest.fixture(params=["t2v", "i2v"])
def two_ranks(request: pytest.FixtureRequest, replicated: Replicated) -> tuple[str, Path, dict]:
    return replicated(request.param)


def test_two_ranks_write_every_frame_and_the_wan21_latents(
    two_ranks: tuple[str, Path, dict],
) -> None:
    kind, output, summary = two_ranks
    family = I2V_A14B if kind == "i2v" else T2V_A14B
    assert imageio_ffmpeg.count_frames_and_secs(str(output))[0] == FRAMES
    latents = load_latents(output.with_name("fox.latents.safetensors"))
    assert latents.tensor.shape == (1, 16, 3, 8, 16) and latents.vae.name == "wan2.1"
    assert (latents.frames, latents.width, latents.height, latents.fps) == (FRAMES, 128, 64, 16)
    assert summary["family"] == family.name and summary["ranks"] == 2
    assert summary["experts"] == expected_experts(family, STEPS)


def test_the_expert_switches_at_the_boundary_step(two_ranks: tuple[str, Path, dict]) -> None:
    """T2V's boundary 0.875 with shift 12 and I2V's 0.9 with shift 5: both experts run, the
    high-noise one first, each step on one expert only."""
    kind, _, summary = two_ranks
    experts = summary["experts"]
    switch = experts.index("low")
    assert switch > 0 and experts == ["high"] * switch + ["low"] * (STEPS - switch)
    assert (switch, kind) in ((4, "t2v"), (3, "i2v"))


def test_one_rank_samples_the_latents_of_two(
    two_ranks: tuple[str, Path, dict], cli: CliRunner, tmp_path: Path, image: Path
) -> None:
    kind, output, _ = two_ranks
    extra = ("--image", str(image)) if kind == "i2v" else ()
    generate(cli, tmp_path / "fox.mp4", *MOE, *extra, "--gpus", "1")
    one = load_latents(tmp_path / "fox.latents.safetensors").tensor
    two = load_latents(output.with_name("fox.latents.safetensors")).tensor
    torch.testing.assert_close(one, two, rtol=0, atol=1e-5)


def a14b_checkpoint(folder: Path, family: Family) -> Path:
    """tiny-moe saved as a diffusers A14B checkpoint, laid out as Wan2.2-T2V-A14B-Diffusers
    (or I2V): two transformers, the Wan2.1 VAE, the boundary in model_index.json."""
    from transformers import ByT5Tokenizer

    config = tiny_expert_config(family)
    tiny_transformer(config, 0).save_pretrained(folder / "transformer")
    tiny_transformer(config, 1).save_pretrained(folder / "transformer_2")
    tiny_vae("tiny-wan2.1").save_pretrained(folder / "vae")
    tiny_text_encoder().save_pretrained(folder / "text_encoder")
    ByT5Tokenizer().save_pretrained(folder / "tokenizer")
    wan_scheduler(family).save_pretrained(folder / "scheduler")
    index = {**model_index(family), "tokenizer": ["transformers", "ByT5Tokenizer"]}
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def test_an_a14b_checkpoint_samples_as_the_model_it_holds(
    two_ranks: tuple[str, Path, dict], cli: CliRunner, tmp_path: Path, image: Path
) -> None:
    kind, output, _ = two_ranks
    family = I2V_A14B if kind == "i2v" else T2V_A14B
    folder = a14b_checkpoint(tmp_path / f"Wan2.2-{family.name}-tiny-Diffusers", family)
    args = [a for a in MOE if a not in ("--model", "tiny-moe")]
    extra = ("--image", str(image)) if kind == "i2v" else ()
    out = tmp_path / "out" / "fox.mp4"
    out.parent.mkdir()
    summary = generate(cli, out, *args, *extra, "--ckpt-dir", str(folder), "--gpus", "2")
    assert summary["family"] == family.name
    mine = load_latents(out.with_name("fox.latents.safetensors")).tensor
    built_in = load_latents(output.with_name("fox.latents.safetensors")).tensor
    torch.testing.assert_close(mine, built_in, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("family", "extra", "message"),
    [
        (I2V_A14B, (), "i2v-A14B generates from an image, and none was given"),
        (T2V_A14B, ("--image", "IMAGE"), "t2v-A14B takes no image"),
    ],
)
def test_a_checkpoint_used_against_its_kind_is_refused(
    cli: CliRunner,
    tmp_path: Path,
    image: Path,
    family: Family,
    extra: tuple[str, ...],
    message: str,
) -> None:
    folder = a14b_checkpoint(tmp_path / "ckpt", family)
    args = [a for a in MOE if a not in ("--model", "tiny-moe")]
    extra = tuple(str(image) if a == "IMAGE" else a for a in extra)
    result = cli.invoke(app, ["generate", *args, *extra, "--ckpt-dir", str(folder),
                              "-o", str(tmp_path / "v.mp4"), "--dry-run"])  # fmt: skip
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "v.mp4").exists()


def test_forty_heads_refuse_three_ranks_with_the_degrees_that_work(
    cli: CliRunner, tmp_path: Path
) -> None:
    result = cli.invoke(app, ["generate", *MOE, "--gpus", "3", "-o", str(tmp_path / "v.mp4"),
                              "--dry-run"])  # fmt: skip
    assert result.exit_code == 2
    assert "t2v-A14B's 40 attention heads do not split over 3 GPUs" in result.output
    assert "1, 2, 4, 5, 8" in result.output


def test_guidance_2_needs_two_experts(cli: CliRunner, tmp_path: Path) -> None:
    args = ["generate", "--model", "tiny", "--device", "cpu", "--prompt", "a fox",
            "--guidance-2", "3", "-o", str(tmp_path / "v.mp4"), "--dry-run"]  # fmt: skip
    result = cli.invoke(app, args)
    assert result.exit_code == 2 and "--guidance-2 is the low-noise expert's scale" in result.output


def test_the_dry_run_of_a_two_expert_model_uses_its_official_defaults(
    cli: CliRunner, tmp_path: Path
) -> None:
    args = ["generate", "--model", "tiny-moe", "--device", "cpu", "--prompt", "a fox",
            "-o", str(tmp_path / "v.mp4"), "--dry-run", "--json"]  # fmt: skip
    result = cli.invoke(app, args)
    assert result.exit_code == 0, result.output
    argv = json.loads(result.stdout)["argv"]
    for flag, value in (("--size", "1280*720"), ("--frames", "81"), ("--steps", "40"),
                        ("--vae", "tiny-wan2.1")):  # fmt: skip
        assert argv[argv.index(flag) + 1] == value


@pytest.mark.parametrize(
    ("kind", "placement"),
    [("t2v", ("--dit", "fsdp")), ("i2v", ("--offload",))],
)
def test_each_expert_placement_samples_the_replicated_latents(
    replicated: Replicated,
    cli: CliRunner,
    tmp_path: Path,
    image: Path,
    kind: str,
    placement: tuple[str, ...],
) -> None:
    """FSDP2 shards of both experts over the two ranks, or the low-noise expert on the CPU
    until the boundary: the same latents as both experts whole on every rank."""
    _, output, _ = replicated(kind)
    extra = ("--image", str(image)) if kind == "i2v" else ()
    summary = generate(cli, tmp_path / "fox.mp4", *MOE, *extra, "--gpus", "2", *placement)
    assert summary["settings"]["dit" if "--dit" in placement else "offload"] in ("fsdp", True)
    assert summary["experts"] == expected_experts(I2V_A14B if kind == "i2v" else T2V_A14B, STEPS)
    placed = load_latents(tmp_path / "fox.latents.safetensors").tensor
    replicated = load_latents(output.with_name("fox.latents.safetensors")).tensor
    torch.testing.assert_close(placed, replicated, rtol=0, atol=1e-5)


def test_fp8_storage_samples_close_to_the_bf16_weights(
    replicated: Replicated, cli: CliRunner, tmp_path: Path
) -> None:
    """Weights rounded to float8 change the latents, but not into another video: the error
    is about fp8's rounding (3 mantissa bits), not noise."""
    _, output, _ = replicated("t2v")
    summary = generate(cli, tmp_path / "fox.mp4", *MOE, "--gpus", "2", "--dit-storage", "fp8")
    assert summary["settings"]["dit_storage"] == "fp8"
    fp8 = load_latents(tmp_path / "fox.latents.safetensors").tensor
    full = load_latents(output.with_name("fox.latents.safetensors")).tensor
    relative = ((fp8 - full).norm() / full.norm()).item()
    assert 0 < relative < 0.1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--offload", "--dit", "fsdp", "--gpus", "2"), "not both"),
        (("--dit", "fsdp", "--gpus", "1"), "with one GPU there is nothing to share"),
    ],
)
def test_placements_that_cannot_run_are_refused(
    cli: CliRunner, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    result = cli.invoke(app, ["generate", *MOE, *args, "-o", str(tmp_path / "v.mp4"),
                              "--dry-run"])  # fmt: skip
    assert result.exit_code == 2 and message in result.output


def test_a_guidance_of_zero_is_kept_and_the_defaults_are_the_models() -> None:
    from argparse import Namespace

    from wanctl.workers.generate import guidance

    assert guidance(Namespace(guidance=0.0, guidance_2=0.0), T2V_A14B) == {
        "guidance_scale": 0.0, "guidance_scale_2": 0.0,
    }  # fmt: skip
    assert guidance(Namespace(guidance=None, guidance_2=None), I2V_A14B) == {
        "guidance_scale": 3.5, "guidance_scale_2": 3.5,
    }  # fmt: skip


def test_the_two_expert_built_ins_run_where_their_kind_does(
    cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tiny-moe falls back to the CPU without a GPU, as tiny does; synthetic-a14b is refused
    there, as synthetic-5b is."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    base = ["generate", "--prompt", "a fox", "-o", str(tmp_path / "v.mp4"), "--dry-run"]
    moe = cli.invoke(app, [*base, "--model", "tiny-moe", "--json"])
    assert moe.exit_code == 0 and json.loads(moe.stdout)["device"] == "cpu"
    synthetic = cli.invoke(app, [*base, "--model", "synthetic-a14b", "--device", "cpu"])
    assert synthetic.exit_code == 2
    assert "synthetic-a14b is for timing and memory on a GPU" in synthetic.output
