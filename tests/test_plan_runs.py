"""One plan, one run: every plan `wanctl tune` returns, for rigs described as data and both
backends (its own plan, and each of the nearest runs it proposes instead), is accepted by
`generate --dry-run` with the same settings, and generate prices the same run. The 12 GB
cards are given their memory in the description (the catalog's own 12 GB models are another
issue's)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from wanctl.errors import UsageError
from wanctl.generate.options import GenerateOptions
from wanctl.generate.run import prepare
from wanctl.probe.catalog import parse_rig
from wanctl.probe.fake import FakeProbe, describe_rig
from wanctl.tune import presets
from wanctl.tune.predict import MemoryPlan
from wanctl.tune.run import TuneOptions, run
from wanctl.tune.search import Constraints

RIGS = ("1x RTX 4090 12GB", "4x RTX 4090 12GB", "2x RTX 4090 24GB", "2x RTX 5090 32GB",
        "8x H100 80GB")  # fmt: skip
WORKLOADS = (("1280*704", 121), ("704*1280", 241), ("832*480", 81))


@pytest.fixture(autouse=True)
def no_user_presets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(presets.CONFIG_DIR_ENV, str(tmp_path / "config"))


def tune_plans(rig: str, backend: str, size: str, frames: int) -> list[MemoryPlan]:
    """What tune returns: its plan when it can run, and the plans of the runs it proposes."""
    options = TuneOptions(
        gpus=None, size=size, frames=frames, rig=rig, preset=None,
        constraints=Constraints(backend=backend), measure=False, save=False, force=False,
        json=False,
    )  # fmt: skip
    report = run(options)
    found = [report.plan] if report.plan.runnable else []
    return found + [alternative.plan for alternative in report.alternatives]


def generate_options(plan: MemoryPlan, out: Path, wan: tuple[Path, Path]) -> GenerateOptions:
    """`wanctl generate` with every setting of the plan given as its flag."""
    s, w = plan.settings, plan.workload
    official = s.backend == "wan-repo"
    repo, ckpt = wan
    return GenerateOptions(
        prompt="two cats box", output=out / "cats.mp4", size=w.size, frames=w.frames,
        gpus=w.gpus, backend=s.backend, model=None if official else "synthetic-5b",
        ckpt_dir=ckpt if official else None, wan_repo=repo if official else None,
        chunk_t=s.chunk_t, decode_ranks=s.decode_ranks, decode_dtype=s.decode_dtype,
        text_encoder=s.text_encoder, dit=s.dit, offload=s.offload if official else None,
        cfg_parallel=None if official else s.cfg_parallel,
        dit_storage=None if official else s.dit_storage,
        dit_precision=None if official else s.dit_precision,
    )  # fmt: skip


@pytest.mark.parametrize("rig", RIGS)
def test_every_plan_tune_returns_is_one_generate_runs(
    rig: str, tmp_path: Path, wan: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """torchao taken as installed by generate: the fp8 compute tune proposes asks for it."""
    monkeypatch.setattr("wanctl.generate.checks.torchao_installed", lambda: True)
    count, model, memory_gb = parse_rig(rig)
    accepted = 0
    for backend in ("diffusers", "wan-repo"):
        for size, frames in WORKLOADS:
            for plan in tune_plans(rig, backend, size, frames):
                assert plan.runnable, (rig, backend, size, plan.problem)
                # the rig the plan is for: a proposal of more GPUs is a rig of that many
                probe = FakeProbe(
                    describe_rig(plan.workload.gpus, model, memory_mib=plan.card.memory_mib)
                )
                out = tmp_path / f"out{accepted}"
                out.mkdir()
                try:
                    launched = prepare(
                        generate_options(plan, out, wan), probe=probe, env={},
                        disk_free=lambda _: 2**40,
                    )  # fmt: skip
                except UsageError as refused:
                    pytest.fail(f"{rig} {backend} {size}x{frames}: generate refused tune's "
                                f"plan {plan.settings}: {refused.message}")  # fmt: skip
                assert launched.settings == plan.settings
                assert launched.predicted is not None
                assert [p.name for p in launched.predicted.phases] == [p.name for p in plan.phases]
                assert launched.predicted.peak_gib == pytest.approx(plan.peak_gib)
                assert list(out.iterdir()) == []  # a dry run writes nothing
                accepted += 1
    assert accepted, f"tune proposed nothing that runs on {rig}"


def test_tune_does_not_offer_the_diffusers_worker_fsdp_on_small_cards() -> None:
    """Where only sharding would fit (4x 12 GB at 1280*704x121), the diffusers plan does not
    shard; the proposal to shard is the official code's."""
    plans = tune_plans("4x RTX 4090 12GB", "diffusers", "1280*704", 121)
    assert all(p.settings.dit == "replicated" for p in plans if p.settings.backend == "diffusers")
    sharded = [p for p in plans if p.settings.dit == "fsdp"]
    assert all(p.settings.backend == "wan-repo" for p in sharded)


def test_a_plan_for_the_official_code_on_the_cpu_is_refused(
    tmp_path: Path, wan: tuple[Path, Path]
) -> None:
    plan = tune_plans("2x RTX 5090 32GB", "wan-repo", "1280*704", 121)[0]
    options = dataclasses.replace(generate_options(plan, tmp_path, wan), device="cpu")
    with pytest.raises(UsageError, match="CUDA GPUs only"):
        prepare(options, probe=FakeProbe(describe_rig(2, parse_rig("2x RTX 5090")[1])), env={},
                disk_free=lambda _: 2**40)  # fmt: skip
