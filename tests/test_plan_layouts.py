"""tune's choice between Ulysses N and CFG 2 x Ulysses N/2 from predicted seconds per step, on
rigs described as data: the compute of one forward (measured on an H200, scaled by the card's
rate), the communication from the rig's measured links or, without them, an assumed bandwidth
the plan names."""

from __future__ import annotations

import dataclasses

import pytest

from wanctl.core.links import Collective, all_to_all_bytes, cfg_exchange_bytes
from wanctl.core.settings import Settings
from wanctl.core.workload import Workload
from wanctl.generate.options import GenerateOptions
from wanctl.generate.run import prepare
from wanctl.probe.catalog import MODELS
from wanctl.probe.fake import FakeProbe, describe_rig
from wanctl.tune.predict import Card
from wanctl.tune.search import plan
from wanctl.tune.speed import (
    ANCHORS,
    RELATIVE_FORWARD,
    RigLinks,
    forward_seconds,
    relative_forward,
    step_time,
)

RUN = Workload(1280, 704, 121, 2)


def card(model: str) -> Card:
    return Card(MODELS[model].name, MODELS[model].memory_total_mib)


def test_the_forward_reproduces_its_h200_measurement() -> None:
    seconds, assumed = forward_seconds(Workload(1280, 704, 121, 1), "NVIDIA H200")
    assert seconds == pytest.approx(ANCHORS["TI2V-5B"][1]) and assumed == ()
    slower, assumed = forward_seconds(Workload(1280, 704, 121, 1), card("rtx-4090").name)
    assert slower == pytest.approx(1.23 * 989 / 165.2) and "vendor bf16 rates" in assumed[0]


def test_two_4090s_without_p2p_choose_cfg_parallel() -> None:
    """Through host memory, Ulysses 2's all-to-alls (240 a step of 84 MB each way) cost
    seconds; CFG parallel exchanges one 10 MB latent a step."""
    chosen = plan(RUN, card("rtx-4090"), links=RigLinks.of("2x-rtx-4090-24gb-pcie"))
    assert chosen.runnable and chosen.settings.cfg_parallel
    assert chosen.step is not None and chosen.step.layout == "CFG 2 x Ulysses 1"
    ulysses = step_time(RUN, Settings(), chosen.card.name, "pcie")
    assert chosen.step.total_s < ulysses.total_s
    assert any("not measured" in note for note in chosen.step.assumed)


def test_eight_h100s_on_nvlink_choose_the_faster_predicted_layout() -> None:
    eight = dataclasses.replace(RUN, gpus=8)
    links = RigLinks.of("8x-h100-80gb-nvlink")
    chosen = plan(eight, card("h100"), links=links)
    assert chosen.runnable and chosen.step is not None
    times = {cfg: step_time(eight, Settings(cfg_parallel=cfg), chosen.card.name, "nvlink")
             for cfg in (False, True)}  # fmt: skip
    assert chosen.step.total_s == min(t.total_s for t in times.values())


def test_measured_links_replace_the_assumed_bandwidth_and_can_turn_the_choice() -> None:
    """A rig whose all-to-alls were measured fast and whose exchange slow keeps Ulysses."""
    fast = Collective("all_to_all", 2, all_to_all_bytes(RUN, 2), 1e-5, "test: measured")
    slow = Collective("cfg_exchange", 2, cfg_exchange_bytes(RUN), 60.0, "test: measured")
    links = RigLinks("pcie", (fast, slow))
    chosen = plan(RUN, card("rtx-4090"), links=links)
    assert chosen.step is not None and not chosen.settings.cfg_parallel
    assert chosen.step.assumed == (
        "NVIDIA GeForce RTX 4090 at 165.2 / 989 of the H200's measured forward (vendor bf16 "
        "rates)", "the compiled forward's speed-up measured on one GPU (whole blocks); under "
        "Ulysses the blocks compile in pieces around the all-to-alls",
    )  # fmt: skip


def test_without_the_rigs_links_the_layout_is_ulysses_unless_pinned() -> None:
    assert not plan(RUN, card("rtx-4090")).settings.cfg_parallel


def test_generate_predicts_the_seconds_per_step_of_the_layout_it_runs(tmp_path: object) -> None:
    """On a 2x RTX 4090 rig generate takes tune's layout and its prediction goes with it."""
    from pathlib import Path

    folder = Path(str(tmp_path))
    probe = FakeProbe(describe_rig(2, MODELS["rtx-4090"]))
    options = GenerateOptions(prompt="a fox", output=folder / "a.mp4", model="synthetic-5b",
                              gpus=2)  # fmt: skip
    launched = prepare(options, probe=probe, env={}, disk_free=lambda _: 2**40)
    assert launched.settings.cfg_parallel and "--cfg-parallel" in launched.spec.argv
    assert launched.predicted is not None and launched.predicted.step is not None
    assert launched.predicted.step.layout == "CFG 2 x Ulysses 1"


def test_the_links_doctor_saved_with_the_rig_reach_tunes_choice(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`doctor --full --save` keeps the measured collectives in the rig's preset; tune (and
    generate, through the same plan) prices the layouts from them instead of assuming."""
    import json

    from typer.testing import CliRunner

    from wanctl.cli import app
    from wanctl.tune import presets
    from wanctl.tune.rig_links import save_links

    monkeypatch.setenv(presets.CONFIG_DIR_ENV, str(tmp_path))
    _, rig = presets.rig_of("2x RTX 4090")
    fast = Collective("all_to_all", 2, all_to_all_bytes(RUN, 2), 1e-5, "test: measured")
    slow = Collective("cfg_exchange", 2, cfg_exchange_bytes(RUN), 60.0, "test: measured")
    save_links("2x-rtx-4090-24gb-pcie", rig, (fast, slow))
    result = CliRunner().invoke(app, ["tune", "--rig", "2x RTX 4090", "--json"])
    assert result.exit_code == 0, result.output
    chosen = json.loads(result.stdout)["plan"]
    assert not chosen["settings"]["cfg_parallel"]
    assert not any("not measured" in note for note in chosen["step"]["assumed"])


def test_guidance_off_drops_the_presets_cfg_parallel(tmp_path: object) -> None:
    """With --guidance 1 the pipeline runs one pass a step: the shipped 2x RTX 4090 preset's
    CFG parallel is dropped for Ulysses (a pinned --cfg-parallel is refused instead)."""
    from pathlib import Path

    folder = Path(str(tmp_path))
    probe = FakeProbe(describe_rig(2, MODELS["rtx-4090"]))
    options = GenerateOptions(prompt="a fox", output=folder / "a.mp4", model="synthetic-5b",
                              gpus=2, guidance=1.0)  # fmt: skip
    launched = prepare(options, probe=probe, env={}, disk_free=lambda _: 2**40)
    assert not launched.settings.cfg_parallel and "--cfg-parallel" not in launched.spec.argv


def test_the_step_prediction_follows_compile_and_fp8_compute_as_measured() -> None:
    five = RELATIVE_FORWARD["TI2V-5B"]
    assert relative_forward(Settings(), "TI2V-5B") == (five[True, "bf16"], ())
    assert relative_forward(Settings(compile=False), "TI2V-5B") == (1.0, ())
    assert relative_forward(Settings(backend="wan-repo"), "TI2V-5B") == (1.0, ())  # eager there
    fp8 = Settings(dit_precision="fp8", dit_storage="fp8")
    assert relative_forward(fp8, "A14B expert") == (
        RELATIVE_FORWARD["A14B expert"][True, "fp8"],
        (),
    )
    eager, compiled = (step_time(Workload(1280, 704, 121, 1), Settings(compile=c), "NVIDIA H200",
                                 "single") for c in (False, True))  # fmt: skip
    assert compiled.compute_s == eager.compute_s * five[True, "bf16"]
