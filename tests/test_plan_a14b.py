"""The memory model and tune's search for the A14B models: what each placement holds, the
measured runs reproduced, the choices for rigs described as data, and `tune --task`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from wanctl.cli import app
from wanctl.core.families import I2V_A14B, T2V_A14B
from wanctl.core.settings import DTYPE_BYTES, GIB, Settings, placements
from wanctl.core.workload import Workload
from wanctl.errors import UsageError
from wanctl.probe.catalog import MODELS
from wanctl.tune import predict as memory
from wanctl.tune import presets
from wanctl.tune.fit import in_effect
from wanctl.tune.measurements import A14B_SOURCE, MEASUREMENTS
from wanctl.tune.predict import Card, predict
from wanctl.tune.search import plan

T2V = Workload(1280, 720, 81, 1, family=T2V_A14B)
I2V = Workload(1280, 720, 81, 1, image=True, family=I2V_A14B)
EXPERT = memory.PARAMS["t2v-A14B"]
ROWS = [m for m in in_effect(MEASUREMENTS) if m.source == A14B_SOURCE]


def card(model: str) -> Card:
    return Card(MODELS[model].name, MODELS[model].memory_total_mib)


def held(workload: Workload, settings: Settings) -> dict[str, list[str]]:
    return {
        p.phase: [r.describe() for r in p.resident]
        for p in placements(settings, workload.gpus, image=workload.image, family=workload.family)
    }


def test_each_placement_holds_what_the_worker_holds() -> None:
    """Both experts; the high-noise one alone with the low-noise one waiting on the CPU; 1/N
    shards; fp8 storage; I2V's clip encoded with the fp32 VAE before any expert, the VAE kept
    for the pipeline through sampling."""
    both = held(T2V, Settings())
    assert both["sampling"] == ["high-noise expert bf16", "low-noise expert bf16"]
    assert "image_encode" not in both
    assert held(T2V, Settings(offload=True))["sampling"] == ["high-noise expert bf16"]
    four = dataclasses.replace(T2V, gpus=4)
    assert held(four, Settings(dit="fsdp", dit_storage="fp8", decode_ranks=4))["sampling"] == [
        "high-noise expert fp8 1/4 shard", "low-noise expert fp8 1/4 shard"
    ]  # fmt: skip
    image = held(I2V, Settings())
    assert image["image_encode"] == ["VAE fp32"]
    assert image["sampling"][-1] == "VAE fp32"
    assert list(image) == ["text_encode", "image_encode", "sampling", "decode"]


def test_weights_are_the_parameter_counts() -> None:
    """bf16 with diffusers' fp32 modules; fp8 for the linear layers alone; a 1/N shard plus two
    gathered bf16 blocks; the Wan2.1 VAE's decoder for the decode."""
    sampling = {
        storage: next(p for p in memory.phases(T2V, Settings(dit_storage=storage))
                      if p.name == "sampling")
        for storage in ("bf16", "fp8")
    }  # fmt: skip
    bf16 = (EXPERT["dit"] - EXPERT["dit_fp32"]) * 2 + EXPERT["dit_fp32"] * 4
    assert sampling["bf16"].weights_gib == pytest.approx(2 * bf16 / GIB)
    fp8 = EXPERT["dit_fp8"] + (EXPERT["dit"] - EXPERT["dit_fp8"] - EXPERT["dit_fp32"]) * 2
    assert sampling["fp8"].weights_gib == pytest.approx(2 * (fp8 + EXPERT["dit_fp32"] * 4) / GIB)
    eight = dataclasses.replace(T2V, gpus=8)
    sharded = next(p for p in memory.phases(eight, Settings(dit="fsdp", decode_ranks=8))
                   if p.name == "sampling")  # fmt: skip
    replicated = next(p for p in memory.phases(eight, Settings(decode_ranks=8))
                      if p.name == "sampling")  # fmt: skip
    assert sharded.weights_gib == pytest.approx(replicated.weights_gib / 8)
    gathered = 2 * EXPERT["dit_block"] * DTYPE_BYTES["bf16"] / GIB
    assert sharded.activations_gib - replicated.activations_gib == pytest.approx(gathered)
    decode = next(p for p in memory.phases(T2V, Settings()) if p.name == "decode")
    assert decode.weights_gib == pytest.approx(EXPERT["vae_decoder"] * 2 / GIB)


@pytest.mark.parametrize("m", ROWS, ids=lambda m: f"{m.model}-{m.placement}-{m.phase}-"
                         f"{m.width}x{m.height}x{m.frames}-k{m.chunk_t}")  # fmt: skip
def test_every_measured_a14b_phase_is_reproduced_within_10_percent(m: object) -> None:
    """`benchmarks/memory_model.py --model synthetic-a14b` on one H200: every phase of every
    placement, allocated and reserved, in-sample and held-out alike."""
    from wanctl.tune.measurements import Measurement

    assert isinstance(m, Measurement) and m.reserved_gib is not None
    workload, settings = m.run()
    phase = next(p for p in memory.phases(workload, settings) if p.name == m.phase)
    assert phase.weights_gib == pytest.approx(m.weights_gib, abs=1e-3)
    assert phase.allocated_gib / m.allocated_gib - 1 == pytest.approx(0, abs=0.10)
    assert phase.reserved_gib / m.reserved_gib - 1 == pytest.approx(0, abs=0.10)


def test_the_held_out_runs_are_sizes_and_placements_the_fit_never_saw() -> None:
    held_out = [m for m in ROWS if m.held_out]
    fitted = [m for m in ROWS if not m.held_out]
    assert {m.phase for m in held_out} >= {"sampling", "image_encode", "decode"}
    fit_tokens = {m.run()[0].tokens for m in fitted if m.phase == "sampling"}
    assert all(m.run()[0].tokens not in fit_tokens for m in held_out if m.phase == "sampling")
    assert {m.placement for m in held_out} - {m.placement for m in fitted}  # fp8 + offload
    assert {m.frames for m in held_out if m.phase == "image_encode"} - {
        m.frames for m in fitted if m.phase == "image_encode"
    }  # fmt: skip


@pytest.mark.parametrize(
    ("rig", "gpus", "dit", "storage", "offload"),
    [
        ("rtx-5090", 2, "replicated", "fp8", True),  # both in fp8 do not fit 32 GB
        ("l40s", 4, "replicated", "bf16", True),  # one bf16 expert at a time fits 48 GB
        ("h100", 8, "replicated", "bf16", False),  # both experts whole
        ("h200", 1, "replicated", "bf16", False),
    ],
)
def test_tune_keeps_bf16_and_both_experts_as_long_as_they_fit(
    rig: str, gpus: int, dit: str, storage: str, offload: bool
) -> None:
    """The cheapest compromise that fits: both experts on the GPU, then the idle one on the
    CPU, then FSDP shards; fp8 storage (which costs quality) only after all three in bf16."""
    for family in (T2V_A14B, I2V_A14B):
        workload = Workload(1280, 720, 81, gpus, image=family is I2V_A14B, family=family)
        chosen = plan(workload, card(rig))
        assert chosen.runnable, (rig, family.name)
        settings = chosen.settings
        assert (settings.dit, settings.dit_storage, settings.offload) == (dit, storage, offload)
        assert chosen.peak_phase in ("sampling", "image_encode")
        if storage == "fp8":
            assert any("fp8" in note and "5.8e-02" in note for note in chosen.notes)


@pytest.mark.parametrize("rig", ["rtx-4090", "rtx-5090", "l40s", "h100"])
def test_the_i2v_encode_fits_wherever_the_experts_do(rig: str) -> None:
    """The conditioning clip's encode (16.1 GiB allocated at 1280*720 x 81, measured) sets the
    peak of the leanest I2V plans, but never the verdict: at every official size and GPU count
    a plan's sampling fits, its image encode fits too (so it is not chunked)."""
    for size in I2V_A14B.sizes:
        width, height = (int(side) for side in size.split("*"))
        for gpus in (1, 2, 4, 8):
            workload = Workload(width, height, 81, gpus, image=True, family=I2V_A14B)
            chosen = plan(workload, card(rig))
            phases = {phase.name: phase.total_gib for phase in chosen.phases}
            if phases["sampling"] <= chosen.budget_gib:
                assert phases["image_encode"] <= chosen.budget_gib, (rig, size, gpus)


def test_two_4090s_run_with_32_gb_of_ram_and_are_refused_for_the_host_below_7() -> None:
    """No rank reads an expert through host RAM (each goes straight to its GPU): with 64 GB
    the GPUs' own plan runs (fp8, the idle expert on the CPU: 32 GiB for the waiting experts);
    with 32 GB (Wan2.2 issue 58's host) the experts are sharded instead, nothing waits there;
    below the processes themselves, refused."""
    workload = Workload(1280, 720, 81, 2, family=T2V_A14B)
    roomy = plan(workload, card("rtx-4090"), host_free_gib=64e9 / GIB)
    assert roomy.runnable
    assert (roomy.settings.dit_storage, roomy.settings.offload) == ("fp8", True)
    assert plan(workload, card("rtx-4090")).settings == roomy.settings  # RAM unknown
    tight = plan(workload, card("rtx-4090"), host_free_gib=32e9 / GIB)
    assert tight.runnable
    assert (tight.settings.dit, tight.settings.dit_storage, tight.settings.offload) == (
        "fsdp", "fp8", False,
    )  # fmt: skip
    none = plan(workload, card("rtx-4090"), host_free_gib=6e9 / GIB)
    assert none.fits and not none.runnable and "31.8 GiB" in (none.host_problem or "")


def test_the_official_codes_a14b_runs_are_not_priced() -> None:
    with pytest.raises(UsageError) as refused:
        predict(T2V, card("h100"), Settings(backend="wan-repo"))
    assert "has not been measured" in (refused.value.why or "")
    assert "--backend diffusers" in (refused.value.fix or "")


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv(presets.CONFIG_DIR_ENV, str(tmp_path))
    monkeypatch.setenv("COLUMNS", "250")
    return CliRunner()


def test_tune_task_plans_the_models_defaults_and_saves_them_apart(cli: CliRunner) -> None:
    """`--task i2v-A14B` plans 1280*720 x 81 with its image encode; the preset keeps its entry
    beside TI2V-5B's for the same GPUs."""
    rig = ["tune", "--rig", "2x RTX 5090 32GB", "--save", "--json"]
    result = cli.invoke(app, [*rig, "--task", "i2v-A14B"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    workload = report["plan"]["workload"]
    assert (workload["width"], workload["height"], workload["frames"]) == (1280, 720, 81)
    names = [phase["name"] for phase in report["plan"]["phases"]]
    assert names == ["text_encode", "image_encode", "sampling", "decode"]
    assert cli.invoke(app, [*rig, "--size", "1280*704", "--frames", "121"]).exit_code == 0
    saved = presets.load("2x-rtx-5090-32gb-pcie")
    assert saved is not None and {e.model for e in saved.entries} == {"i2v-A14B", "ti2v-5B"}


def test_tune_refuses_a_host_that_cannot_hold_the_ranks(cli: CliRunner) -> None:
    result = cli.invoke(app, ["tune", "--rig", "2x RTX 4090", "--task", "t2v-A14B",
                              "--host-ram", "6", "--json"])  # fmt: skip
    assert result.exit_code == 1
    assert json.loads(result.stdout)["plan"]["host_problem"].startswith("its ranks need 2 rank")
    assert "does not fit the host's RAM" in result.stderr
