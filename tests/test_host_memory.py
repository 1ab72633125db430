"""Host RAM per rank (`wanctl.tune.host`) against the runs measured on a GPU, and the launch
refused before any rank starts when this host's ranks would not fit its free memory (the
kernel's OOM killer of Wan2.2 issue 58), with the settings that would. A checkpoint's weights
go straight to the GPU: only what lives in host memory is priced there."""

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


def test_a_checkpoint_s_weights_pass_through_no_rank_s_host_memory() -> None:
    """The experts go straight to the GPU; rank 0, which alone encodes the prompt, holds UMT5's
    embedding table on its way there (1.96 GiB), or UMT5 whole (10.6) on the CPU, before any
    expert is loaded."""
    plan = host_plan(A14B_720P, Settings(), 2, checkpoint=True)
    assert [name for name, _ in plan.parts] == ["process"]
    assert plan.per_rank_gib == pytest.approx(plan.sampling_gib + 1.96, abs=0.01)
    assert plan.total_gib == pytest.approx(2 * plan.sampling_gib + 1.96, abs=0.01)
    on_cpu = host_plan(A14B_720P, Settings(text_encoder="cpu"), 2, checkpoint=True)
    assert on_cpu.per_rank_gib == pytest.approx(plan.sampling_gib + 10.6, abs=0.1)
    fp8_offload = host_plan(A14B_720P, Settings(offload=True, dit_storage="fp8"), 2,
                            checkpoint=True)  # fmt: skip
    assert dict(fp8_offload.parts)["the waiting expert"] == pytest.approx(13.5, abs=0.1)
    assert fp8_offload.total_gib == pytest.approx(2 * fp8_offload.sampling_gib)  # UMT5 first


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
    """2x RTX 4090 with 16 GB free, --offload --dit replicated: each rank keeps an fp8 expert
    there."""
    with pytest.raises(UsageError) as refused:
        launch(a14b_folder, tmp_path, 16 * GB / GIB, ("offload", True), ("dit", "replicated"))
    error = refused.value
    assert error.message.startswith("host RAM: this run needs about 31.8 GiB")
    assert "2 rank(s) x (process 2.3 + the waiting expert 13.6) = 31.8 GiB" in error.why
    assert "free host memory" in error.fix
    assert list(tmp_path.iterdir()) == [a14b_folder]


def test_the_32_gb_host_of_issue_58_now_launches_two_ranks(
    a14b_folder: Path, tmp_path: Path
) -> None:
    """2x RTX 4090 with 32 GB free, refused while each rank read a bf16 expert (26.6 GiB)
    into host memory: tune's plan for such a host shards fp8 experts with FSDP, and no rank
    holds more than the process and, rank 0, UMT5's embedding table on its way."""
    launched = launch(a14b_folder, tmp_path, 32 * GB / GIB)
    settings, host = launched.settings, launched.host  # type: ignore[attr-defined]
    assert (settings.dit, settings.dit_storage, settings.offload) == ("fsdp", "fp8", False)
    assert host.total_gib == pytest.approx(6.6, abs=0.1)


def test_the_fix_names_the_ranks_and_settings_that_fit(a14b_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError) as refused:
        launch(a14b_folder, tmp_path, 40, ("offload", True), ("dit_storage", "bf16"))
    assert "--gpus 1 (each rank needs 29.0 GiB)" in refused.value.fix
    assert "drop --offload" in refused.value.fix and "--dit-storage fp8" in refused.value.fix


def test_a_host_with_room_launches_and_the_plan_shows_its_ram(
    a14b_folder: Path, tmp_path: Path
) -> None:
    plan = launch(a14b_folder, tmp_path, 200)
    assert plan.host is not None and plan.host.total_gib == pytest.approx(31.8, abs=0.1)  # type: ignore[attr-defined]


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


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="Linux's VmHWM")
def test_a_rank_s_peak_rss_is_its_own_not_its_launcher_s() -> None:
    """A worker exec'd by a parent holding 1 GiB reports its own peak: getrusage's ru_maxrss
    would carry the parent's over the exec."""
    import subprocess
    import sys

    held = bytearray(2**30)  # touched: resident in this process
    held[::4096] = b"\x01" * len(held[::4096])
    script = (
        "import resource; from wanctl.workers.generate import peak_rss_gib; "
        "print(peak_rss_gib(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    own, inherited = map(float, done.stdout.split())
    del held
    assert inherited > 1.0  # what the old figure would have said
    assert 0.05 < own < 0.9
