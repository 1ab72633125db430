"""fp8 compute chosen by the search where memory needs it (`wanctl.tune.search`): only where no
bf16 placement fits, only on cards with fp8 tensor cores and torchao, never against a pin;
offered as the nearest run when torchao is missing; shown by `wanctl tune`."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest
from fake_checkpoints import diffusers_checkpoint
from typer.testing import CliRunner

from wanctl.cli import app
from wanctl.core.families import T2V_A14B, TI2V_5B, Family
from wanctl.core.workload import Workload
from wanctl.generate.options import GenerateOptions
from wanctl.generate.run import prepare
from wanctl.probe.catalog import find_model
from wanctl.probe.fake import FakeProbe, describe_rig
from wanctl.tune import presets
from wanctl.tune.predict import Card
from wanctl.tune.presets import rig_of
from wanctl.tune.search import Constraints, alternatives, fp8_computable, placements_tried, plan

FP8_OK = Constraints(fp8_compute=True)


def workload(
    description: str, size: tuple[int, int] = (1280, 704), frames: int = 121,
    family: Family = TI2V_5B,
) -> tuple[Workload, Card]:  # fmt: skip
    count, card = Card.described(description)
    return Workload(*size, frames, count, family=family), card


def test_fp8_compute_is_chosen_where_only_fp8_weights_fit() -> None:
    """TI2V-5B at 1280*704 x 121 needs 16.2 GiB in bf16: more than a 16 GB RTX 4080 leaves."""
    w, card = workload("1x RTX 4080 16GB")
    assert not plan(w, card).runnable
    chosen = plan(w, card, FP8_OK)
    assert chosen.runnable
    s = chosen.settings
    assert (s.dit, s.dit_storage, s.offload, s.dit_precision) == ("replicated", "fp8", False, "fp8")
    assert any("computed in fp8" in note for note in chosen.notes)


def test_bf16_is_kept_where_it_fits() -> None:
    w, card = workload("1x RTX 4090 24GB")
    assert plan(w, card, FP8_OK).settings.dit_precision == "bf16"


def test_fp8_compute_comes_just_before_the_fp8_stored_experts() -> None:
    w, _ = workload("2x RTX 5090 32GB", (1280, 720), 81, T2V_A14B)
    tried = placements_tried(w, FP8_OK)
    first_fp8 = next(i for i, p in enumerate(tried) if p[1] == "fp8")
    assert tried[first_fp8] == ("replicated", "fp8", False, "fp8")
    assert all(p[3] == "bf16" for i, p in enumerate(tried) if i != first_fp8)
    assert all(p[3] == "bf16" for p in placements_tried(w, Constraints()))


@pytest.mark.parametrize(
    "pins",
    [{"dit": "fsdp"}, {"offload": True}, {"dit_storage": "bf16"}, {"dit_precision": "bf16"},
     {"backend": "wan-repo"}],
)  # fmt: skip
def test_a_pin_keeps_fp8_compute_out(pins: dict[str, object]) -> None:
    w, _ = workload("2x RTX 5090 32GB", (1280, 720), 81, T2V_A14B)
    tried = placements_tried(w, Constraints(fp8_compute=True, **pins))  # type: ignore[arg-type]
    assert all(p[3] == "bf16" for p in tried)


def test_only_cards_with_fp8_tensor_cores_and_torchao_compute_in_fp8() -> None:
    torchao = importlib.util.find_spec("torchao") is not None
    assert fp8_computable(Card.described("RTX 4090")[1]) is torchao  # 8.9
    assert not fp8_computable(Card.described("RTX 3090")[1])  # 8.6
    assert not Card("a GPU of unknown kind", 24 * 1024).fp8_tensor_cores


def test_a_rig_s_card_has_its_lowest_compute_capability() -> None:
    rig = describe_rig(2, find_model("RTX 4090"))
    older = dataclasses.replace(rig.gpus[1], compute_capability=(8, 6))
    mixed = dataclasses.replace(rig, gpus=(rig.gpus[0], older))
    assert Card.smallest(mixed).compute_capability == (8, 6)
    assert Card.smallest(rig).compute_capability == (8, 9)
    assert rig_of("2x RTX 5090 32GB")[1].card.compute_capability == (12, 0)


def test_without_torchao_the_nearest_run_says_to_install_it() -> None:
    w, card = workload("1x RTX 4080 16GB")
    found = alternatives(w, card, Constraints())
    assert found[0].change.startswith("the DiT computed in fp8, once torchao is installed")
    assert "wanctl[fp8]" in found[0].change and found[0].plan.settings.dit_precision == "fp8"


def test_tune_shows_the_fp8_compute_it_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchao taken as installed (this machine has none)."""
    monkeypatch.setattr("wanctl.tune.run.fp8_computable", lambda card: card.fp8_tensor_cores)
    result = CliRunner().invoke(
        app, ["tune", "--rig", "1x RTX 4080 16GB", "--task", "ti2v-5B", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["plan"]["settings"]["dit_precision"] == "fp8"
    assert any("computed in fp8" in note for note in report["plan"]["notes"])


def test_generate_runs_the_fp8_compute_the_plan_chose(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No preset for the rig: generate plans as tune does, and launches that plan (torchao
    taken as installed)."""
    monkeypatch.setenv(presets.CONFIG_DIR_ENV, str(tmp_path / "config"))
    for module in ("wanctl.tune.search", "wanctl.generate.checks"):
        monkeypatch.setattr(f"{module}.torchao_installed", lambda: True)
    ckpt = diffusers_checkpoint(tmp_path / "Wan2.2-TI2V-5B-Diffusers")
    options = GenerateOptions(prompt="a fox", output=tmp_path / "fox.mp4", gpus=1, ckpt_dir=ckpt)
    probe = FakeProbe(describe_rig(1, find_model("RTX 4080")))
    launched = prepare(options, probe=probe, env={}, disk_free=lambda _: 2**40)
    assert launched.settings.dit_precision == "fp8" and launched.source.startswith("memory model")
    argv = launched.spec.argv
    assert argv[argv.index("--dit-precision") + 1] == "fp8"
    assert any("computed in fp8" in note for note in launched.notes)
