"""Host RAM per rank (`wanctl.tune.host`) against the runs measured on a GPU, and the launch
refused before any rank starts when this host's ranks would not fit its free memory (the
kernel's OOM killer of Wan2.2 issue 58), with the settings that would."""

from __future__ import annotations

from pathlib import Path

import pytest
from fake_checkpoints import diffusers_checkpoint

from wanctl.core.families import I2V_A14B, T2V_A14B
from wanctl.core.settings import GIB, Settings
from wanctl.core.workload import Workload
from wanctl.errors import UsageError
from wanctl.generate.options import GenerateOptions
from wanctl.generate.run import prepare
from wanctl.probe.catalog import MODELS
from wanctl.probe.fake import FakeProbe, describe_rig, healthy_system
from wanctl.tune.host import host_plan

A14B_720P = Workload(1280, 720, 81, 1, family=T2V_A14B)
GB = 1e9


def test_the_waiting_expert_is_priced_within_10_percent_of_the_measured_rss() -> None:
    """synthetic-a14b on one H200, 1280*720 x 81: 30.3 GB of RSS with --offload (the I2V run;
    the baseline, 2.50 GB, is the RSS of a run holding nothing on the host)."""
    i2v = Workload(1280, 720, 81, 1, image=True, family=I2V_A14B)
    offload = host_plan(i2v, Settings(offload=True), 1, checkpoint=False)
    assert abs(offload.per_rank_gib * GIB / (30.3 * GB) - 1) < 0.10
    assert [name for name, _ in offload.parts] == [
        "process", "the waiting expert", "the conditioning clip",
    ]  # fmt: skip


def test_a_checkpoint_passes_its_largest_network_through_host_memory() -> None:
    plan = host_plan(A14B_720P, Settings(), 2, checkpoint=True)
    assert dict(plan.parts)["weights on their way to the GPU"] == pytest.approx(26.6, abs=0.1)
    assert plan.total_gib == pytest.approx(2 * plan.per_rank_gib)
    fp8_offload = host_plan(A14B_720P, Settings(offload=True, dit_storage="fp8"), 1,
                            checkpoint=False)  # fmt: skip
    assert dict(fp8_offload.parts)["the waiting expert"] == pytest.approx(13.5, abs=0.1)


@pytest.fixture
def a14b_folder(tmp_path: Path) -> Path:
    """A T2V-A14B diffusers checkpoint as far as the checks before launch read it."""
    return diffusers_checkpoint(tmp_path / "Wan2.2-T2V-A14B-Diffusers", T2V_A14B)


def launch(folder: Path, tmp_path: Path, free_gib: float, *flags: tuple[str, object]) -> object:
    probe = FakeProbe(
        describe_rig(2, MODELS["rtx-4090"]),
        system_info=healthy_system(host_mem_available_bytes=int(free_gib * GIB)),
    )
    options = GenerateOptions(
        prompt="a fox", output=tmp_path / "fox.mp4", gpus=2, ckpt_dir=folder, **dict(flags)
    )  # type: ignore[arg-type]
    return prepare(options, probe=probe, env={}, disk_free=lambda _: 2**40)  # fmt: skip


def test_two_ranks_that_would_not_fit_the_hosts_ram_are_refused_before_launch(
    a14b_folder: Path, tmp_path: Path
) -> None:
    """2x RTX 4090 with 32 GB free: each rank reads a 26.6 GiB expert into host memory."""
    with pytest.raises(UsageError) as refused:
        launch(a14b_folder, tmp_path, 32 * GB / GIB)
    error = refused.value
    assert error.message.startswith("host RAM: this run needs about 58.0 GiB")
    assert "2 rank(s) x (process 2.3 + weights on their way to the GPU 26.7)" in error.why
    assert "free host memory" in error.fix
    assert list(tmp_path.iterdir()) == [a14b_folder]


def test_the_fix_names_the_ranks_and_settings_that_fit(a14b_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError) as refused:
        launch(a14b_folder, tmp_path, 40, ("offload", True), ("dit_storage", "bf16"))
    assert "--gpus 1 (each rank needs 29.0 GiB)" in refused.value.fix
    assert "drop --offload" in refused.value.fix and "--dit-storage fp8" in refused.value.fix


def test_a_host_with_room_launches_and_the_plan_shows_its_ram(
    a14b_folder: Path, tmp_path: Path
) -> None:
    plan = launch(a14b_folder, tmp_path, 200)
    assert plan.host is not None and plan.host.total_gib == pytest.approx(58.0, abs=0.1)  # type: ignore[attr-defined]


def test_generate_runs_the_plan_tune_makes_for_the_rig(a14b_folder: Path, tmp_path: Path) -> None:
    """2x RTX 4090 with 200 GB free: generate takes tune's plan (fp8 experts, the idle one on
    the CPU) and the prediction of each phase goes with the run."""
    from wanctl.tune.predict import Card
    from wanctl.tune.search import plan as tune_plan

    launched = launch(a14b_folder, tmp_path, 200)
    predicted = launched.predicted  # type: ignore[attr-defined]
    settings = launched.settings  # type: ignore[attr-defined]
    assert predicted is not None and predicted.runnable
    assert (settings.dit_storage, settings.offload) == ("fp8", True)
    assert launched.source.startswith("memory model")  # type: ignore[attr-defined]
    rig = Card(MODELS["rtx-4090"].name, MODELS["rtx-4090"].memory_total_mib)
    workload = Workload(1280, 720, 81, 2, family=T2V_A14B)
    assert tune_plan(workload, rig, host_free_gib=200 * GB / GIB).settings == settings
