"""`tune --measure` runs the plan through the generate worker (the code `generate` runs): the
command it launches, the figures it reads back, an out-of-memory run as a measurement, and the
refusal where this machine cannot hold the plan. A recorder stands in for torchrun; the worker
itself runs for real in tests/test_generate_e2e.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wanctl.core.launch import LaunchSpec, RunResult
from wanctl.core.worker import write_summary
from wanctl.core.workload import Workload
from wanctl.errors import WanctlError
from wanctl.probe.catalog import MODELS
from wanctl.probe.fake import describe_rig
from wanctl.tune.measure import measure_plan
from wanctl.tune.predict import Card
from wanctl.tune.search import plan

RTX_5090 = Card(MODELS["rtx-5090"].name, MODELS["rtx-5090"].memory_total_mib)
PLAN = plan(Workload(1280, 704, 121, 2), RTX_5090)


class Recorder:
    """Writes what the worker's ranks would report in its run folder."""

    def __init__(self, ranks: list[dict[str, object]] | None, failed: dict[str, str] | None = None):
        self.ranks, self.failed, self.specs = ranks, failed, []  # type: ignore[var-annotated]

    def run(self, spec: LaunchSpec) -> RunResult:
        self.specs.append(spec)
        run_dir = Path(spec.argv[spec.argv.index("--run-dir") + 1])
        if self.ranks is not None:
            write_summary(run_dir, self.ranks, node=0)
        if self.failed is not None:
            (run_dir / "rank1.json").write_text(json.dumps({"rank": 1, "time": 0, **self.failed}))
        return RunResult(0 if self.ranks else 1, False, 1.0, "")


def rank(index: int, sampling: float, context: float = 0.6) -> dict[str, object]:
    allocated = {"text_encode": 11.1, "sampling": sampling - 1, "decode": 4.0}
    reserved = {"text_encode": 11.2, "sampling": sampling, "decode": 5.5}
    return {"rank": index, "context_gib": context, "peak_allocated_gib": allocated,
            "peak_reserved_gib": reserved}  # fmt: skip


def test_measure_runs_the_generate_worker_with_the_plans_settings_and_reads_the_worst_rank() -> (
    None
):
    recorder = Recorder([rank(0, 12.5), rank(1, 13.0)])
    measured = measure_plan(PLAN, describe_rig(2, MODELS["h100"]), runner=recorder)
    (spec,) = recorder.specs
    argv = list(spec.argv)
    assert argv[argv.index("-m", 3) + 1] == "wanctl.workers.generate"
    assert "--nproc-per-node=2" in argv
    for flag, value in (("--model", "synthetic-5b"), ("--steps", "1"), ("--size", "1280*704"),
                        ("--chunk-t", str(PLAN.settings.chunk_t)), ("--decode-ranks", "2"),
                        ("--text-encoder", PLAN.settings.text_encoder),
                        ("--memory-cap-gib", str(RTX_5090.gib))):  # fmt: skip
        assert argv[argv.index(flag) + 1] == value
    assert spec.env["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    by_phase = {m.phase: m for m in measured}
    assert [m.phase for m in measured] == [p.name for p in PLAN.phases]
    assert by_phase["sampling"].reserved_gib == 13.0 and by_phase["sampling"].allocated_gib == 12.0
    assert by_phase["sampling"].total_gib == pytest.approx(13.6)
    assert not any(m.out_of_memory for m in measured)


def test_a_card_as_large_as_the_plans_is_not_capped() -> None:
    recorder = Recorder([rank(0, 12.5), rank(1, 13.0)])
    measure_plan(PLAN, describe_rig(2, MODELS["rtx-5090"]), runner=recorder)
    assert "--memory-cap-gib" not in recorder.specs[0].argv


def test_a_run_out_of_memory_marks_the_phase_it_died_in_and_the_later_ones() -> None:
    failed = {"state": "failed", "phase": "sampling", "type": "OutOfMemoryError",
              "message": "CUDA out of memory. Tried to allocate 2 GiB"}  # fmt: skip
    measured = measure_plan(PLAN, describe_rig(2, MODELS["h100"]), runner=Recorder(None, failed))
    assert {m.phase: m.out_of_memory for m in measured} == {
        "text_encode": False, "sampling": True, "decode": True}  # fmt: skip


def test_another_failure_is_an_error_naming_the_rank() -> None:
    failed = {"state": "failed", "phase": "decode", "type": "RuntimeError", "message": "boom"}
    with pytest.raises(WanctlError, match="the measuring run failed") as caught:
        measure_plan(PLAN, describe_rig(2, MODELS["h100"]), runner=Recorder(None, failed))
    assert "rank 1 in decode: boom" in (caught.value.why or "")


def test_a_machine_with_fewer_or_smaller_gpus_is_refused_before_launch() -> None:
    recorder = Recorder([rank(0, 12.5)])
    for inventory in (describe_rig(1, MODELS["h100"]), describe_rig(2, MODELS["rtx-4090"])):
        with pytest.raises(WanctlError, match="--measure runs the plan on 2 GPU"):
            measure_plan(PLAN, inventory, runner=recorder)
    assert recorder.specs == []
