"""doctor --full's orchestration, run for real on the CPU: torchrun, gloo, hangs, retries."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import pytest

from wanctl.core.launch import LaunchSpec, RunResult, SubprocessRunner
from wanctl.doctor.active import (
    active_checks,
    allreduce_check,
    expected_pair_gbps,
    transfer_checks,
)
from wanctl.doctor.report import Status
from wanctl.probe.catalog import MODELS
from wanctl.probe.fake import describe_rig, scenario

HANG_UNLESS_P2P_DISABLED = """
import os, time
from wanctl.workers.allreduce import main
if os.environ.get("NCCL_P2P_DISABLE") != "1":
    time.sleep(600)
main()
"""


def worker_env(directory: Path) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join([str(directory), os.environ.get("PYTHONPATH", "")])}


def test_gloo_allreduce_over_two_processes_passes() -> None:
    check, env = allreduce_check(SubprocessRunner(), 2, timeout_s=120, backend="gloo")
    assert check.status is Status.OK, check.finding
    assert "over 2 process(es) (gloo" in check.finding and "exact" in check.finding
    assert env == {}


def test_a_hanging_worker_is_reported_as_a_hang_within_its_timeout(tmp_path: Path) -> None:
    (tmp_path / "hangs_always.py").write_text("import time\ntime.sleep(600)\n")
    start = time.monotonic()
    check, env = allreduce_check(
        SubprocessRunner(),
        2,
        timeout_s=6,
        backend="gloo",
        variants=[{}],
        worker="hangs_always",
        extra_env=worker_env(tmp_path),
    )
    assert time.monotonic() - start < 6 + 2 * SubprocessRunner.grace_s
    assert check.status is Status.FAIL
    assert "hung: no result within 6 s" in check.finding and check.fix
    assert env == {}


def test_retry_with_p2p_disabled_becomes_the_recommendation(tmp_path: Path) -> None:
    (tmp_path / "hang_unless_p2p_disabled.py").write_text(HANG_UNLESS_P2P_DISABLED)
    check, env = allreduce_check(
        SubprocessRunner(),
        2,
        timeout_s=20,
        backend="gloo",
        worker="hang_unless_p2p_disabled",
        extra_env=worker_env(tmp_path),
    )
    assert check.status is Status.FAIL  # the rig does not work as it is
    assert "default settings: hung" in check.finding
    assert "with NCCL_P2P_DISABLE=1: all-reduce of known values" in check.finding
    assert check.fix.startswith("export NCCL_P2P_DISABLE=1")
    assert env == {"NCCL_P2P_DISABLE": "1"}


def test_a_crashing_worker_names_its_error(tmp_path: Path) -> None:
    (tmp_path / "crashes.py").write_text(
        "raise RuntimeError('NCCL error: unhandled system error')\n"
    )
    check, _ = allreduce_check(
        SubprocessRunner(),
        1,
        timeout_s=60,
        backend="gloo",
        variants=[{}],
        worker="crashes",
        extra_env=worker_env(tmp_path),
    )
    assert check.status is Status.FAIL and "NCCL error: unhandled system error" in check.finding


def test_active_checks_skip_without_gpus() -> None:
    rig = scenario("no_driver")
    found = active_checks(SubprocessRunner(), 5)(rig.gpus(), rig.software())
    assert [c.status for c in found.checks] == [Status.SKIPPED] and found.env == {}
    assert found.links == ()


@pytest.mark.parametrize(
    ("visible", "torch_cuda", "reason"),
    [
        ("-1", "12.8", "CUDA_VISIBLE_DEVICES hides them"),
        (None, None, "torch cannot use the GPUs"),
    ],
)
def test_active_checks_skip_what_cuda_cannot_use(
    monkeypatch: pytest.MonkeyPatch, visible: str | None, torch_cuda: str | None, reason: str
) -> None:
    """Nothing launched: a CPU torch would pass the all-reduce over gloo and copy nothing."""
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    rig = scenario("rtx4090x2_no_p2p")
    software = dataclasses.replace(rig.software(), torch_cuda=torch_cuda)
    checks = active_checks(Unlaunchable(), 5)(rig.gpus(), software).checks
    assert [c.status for c in checks] == [Status.SKIPPED] and reason in checks[0].finding


class Unlaunchable:
    def run(self, spec: LaunchSpec) -> RunResult:
        raise AssertionError(f"launched {spec.command}")


def test_transfer_report_becomes_checks() -> None:
    inventory = describe_rig(2, MODELS["rtx-4090"])  # Gen4 x16, no P2P
    report = {
        "host": [
            {"gpu": 0, "h2d_gbps": 25.0, "d2h_gbps": 26.0},
            {"gpu": 1, "h2d_gbps": 6.0, "d2h_gbps": 6.5},
        ],
        "pairs": [
            {
                "src": 0,
                "dst": 1,
                "peer_access": False,
                "bit_exact": True,
                "mismatched_bytes": 0,
                "gbps": 12.0,
            },
            {
                "src": 1,
                "dst": 0,
                "peer_access": False,
                "bit_exact": False,
                "mismatched_bytes": 4096,
                "gbps": 12.0,
            },
        ],
    }
    checks = {c.name: c for c in transfer_checks(report, inventory)}
    assert checks["gpu0.host_copy"].status is Status.OK
    assert "79% of the link's 32 GB/s" in checks["gpu0.host_copy"].finding
    assert checks["gpu1.host_copy"].status is Status.WARN and checks["gpu1.host_copy"].fix
    assert checks["p2p.0-1"].status is Status.OK and "through host" in checks["p2p.0-1"].finding
    assert checks["p2p.1-0"].status is Status.FAIL and "4096 bytes" in checks["p2p.1-0"].finding


@pytest.mark.parametrize(
    ("rig", "expected"),
    [
        (describe_rig(2, MODELS["h100"]), 450.0),
        (describe_rig(2, MODELS["l40s"]), 31.504),
        (describe_rig(2, MODELS["rtx-4090"]), 15.752),
    ],
)
def test_expected_pair_bandwidth(rig, expected: float) -> None:
    assert expected_pair_gbps(rig, 0, 1) == pytest.approx(expected)
