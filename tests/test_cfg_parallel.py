"""CFG parallel on the CPU with real processes (torchrun, gloo): the two guidance passes on two
groups of ranks give the latents of one rank, alone (CFG 2) and with Ulysses inside each group
(CFG 2 x Ulysses 2); each rank computes one DiT pass a step; the requests that cannot split are
refused with the layouts that work."""

from __future__ import annotations

from pathlib import Path

import imageio_ffmpeg
import pytest
from typer.testing import CliRunner

from wanctl.cli import app
from wanctl.core.settings import Settings
from wanctl.decode.latents import load_latents
from wanctl.generate.options import GenerateOptions
from wanctl.generate.plan import GenerateSummary
from wanctl.generate.run import prepare, run_generate
from wanctl.probe.local import LocalProbe

STEPS, FRAMES = 3, 9
TINY = ["--model", "tiny", "--device", "cpu", "--prompt", "a fox", "--size", "64*64",
        "--frames", str(FRAMES), "--steps", str(STEPS)]  # fmt: skip


def generate(folder: Path, gpus: int, cfg_parallel: bool | None = None) -> GenerateSummary:
    options = GenerateOptions(
        prompt="a fox", output=folder / f"{gpus}-{cfg_parallel}.mp4", size="64*64",
        frames=FRAMES, steps=STEPS, gpus=gpus, model="tiny", device="cpu",
        cfg_parallel=cfg_parallel,
    )  # fmt: skip
    return run_generate(prepare(options, probe=LocalProbe()))


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory: pytest.TempPathFactory) -> GenerateSummary:
    return generate(tmp_path_factory.mktemp("one"), 1)


@pytest.mark.parametrize("gpus", [2, 4], ids=["cfg2", "cfg2-x-ulysses2"])
def test_cfg_parallel_gives_the_latents_of_one_rank(
    gpus: int, one_rank: GenerateSummary, tmp_path: Path
) -> None:
    split = generate(tmp_path, gpus, cfg_parallel=True)
    assert split.layout == f"CFG 2 x Ulysses {gpus // 2}" and one_rank.layout == "Ulysses 1"
    assert split.guidance_passes == [STEPS] * gpus  # one pass a step; the other came over
    reference = load_latents(one_rank.latents).tensor
    assert (load_latents(split.latents).tensor - reference).abs().max() <= 1e-5
    reader = imageio_ffmpeg.read_frames(str(split.output))
    next(reader)  # the header
    assert sum(1 for _ in reader) == FRAMES  # decoded on every rank
    assert not one_rank.guidance_passes  # sequential: no CFG exchange


@pytest.mark.parametrize(
    ("extra", "why", "fix"),
    [
        (["--gpus", "3"], "3 GPUs do not split in two", "CFG 2 x Ulysses 1 with --gpus 2"),
        (["--gpus", "2", "--guidance", "1"], "turns classifier-free guidance off",
         "drop --cfg-parallel"),
    ],
)  # fmt: skip
def test_requests_that_cannot_split_are_refused_with_the_layouts_that_work(
    cli: CliRunner, tmp_path: Path, extra: list[str], why: str, fix: str
) -> None:
    result = cli.invoke(
        app, ["generate", *TINY, *extra, "--cfg-parallel", "--dry-run", "-o",
              str(tmp_path / "a.mp4")], env={"COLUMNS": "300"},
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    text = " ".join(result.stderr.split())
    assert why in text and fix in text


def test_the_official_code_has_no_cfg_parallel() -> None:
    from wanctl.core.settings import run_problem
    from wanctl.core.workload import Workload

    problem = run_problem(Workload(1280, 704, 121, 2), Settings("wan-repo", cfg_parallel=True))
    assert problem is not None and "no CFG parallel" in problem


def test_the_plan_prices_half_the_ranks_per_ulysses_group() -> None:
    """Memory: each group's ranks share the tokens of one pass, so a rank's activations are
    those of Ulysses N/2; the weights stay whole on every rank."""
    from wanctl.core.workload import Workload
    from wanctl.tune.predict import phases

    four = Workload(1280, 704, 121, 4)
    two = Workload(1280, 704, 121, 2)
    cfg = {p.name: p for p in phases(four, Settings(decode_ranks=4, cfg_parallel=True))}
    ulysses = {p.name: p for p in phases(two, Settings(decode_ranks=2))}
    assert cfg["sampling"].activations_gib == pytest.approx(ulysses["sampling"].activations_gib)
    assert cfg["sampling"].weights_gib == ulysses["sampling"].weights_gib
