"""doctor --full's link check, run for real on the CPU: the collectives of the parallel layouts
over gloo, timed and checked, and what the parent makes of them."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import torch

from wanctl.core.launch import SubprocessRunner
from wanctl.core.links import Collective, all_to_all_bytes, cfg_exchange_bytes
from wanctl.core.workload import Workload
from wanctl.doctor.links import collectives, link_counts, link_source, links_check, worker_args
from wanctl.doctor.report import Status
from wanctl.probe.fake import scenario
from wanctl.workers.links import all_to_all_expected, all_to_all_input

WRONG_ALL_TO_ALL = """
import wanctl.workers.links as links
expected = links.all_to_all_expected
links.all_to_all_expected = lambda rank, world, chunk: expected(rank, world, chunk) + 1
links.main()
"""


def worker_env(directory: Path) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join([str(directory), os.environ.get("PYTHONPATH", "")])}


def test_the_counts_measured_are_the_ulysses_degrees_a_rig_holds() -> None:
    assert link_counts(1) == ()
    assert link_counts(2) == (2,)
    assert link_counts(5) == (2, 3, 4)
    assert link_counts(8) == (2, 3, 4, 6, 8)


def test_the_messages_are_the_default_runs() -> None:
    two = Workload(1280, 704, 121, 2)
    assert worker_args(2, "gloo") == ["--backend", "gloo",
        "--all-to-all-bytes", str(all_to_all_bytes(two, 2)),
        "--cfg-bytes", str(cfg_exchange_bytes(two))]  # fmt: skip
    assert all_to_all_bytes(two, 2) == 27280 // 2 * 3072 * 2  # tokens / 2 x dim, bf16
    assert worker_args(3, "nccl")[-1] == "0"  # CFG parallel needs an even count


def test_the_known_values_name_sender_and_addressee() -> None:
    """The all-to-all done by hand: rank r receives chunk r of every rank, in rank order."""
    world, chunk = 3, 4
    sent = [all_to_all_input(rank, world, chunk) for rank in range(world)]
    for rank in range(world):
        received = torch.stack([sent[source][rank] for source in range(world)])
        assert torch.equal(received, all_to_all_expected(rank, world, chunk))
    assert not torch.equal(
        all_to_all_expected(0, world, chunk), all_to_all_expected(1, world, chunk)
    )


def test_gloo_links_over_two_processes_are_timed_and_exact() -> None:
    checks, links = links_check(SubprocessRunner(), 2, 120, source="test rig", backend="gloo")
    assert [c.name for c in checks] == ["links.all_to_all.2", "links.cfg_exchange.2"]
    assert all(c.status is Status.OK and "exact" in c.finding for c in checks), checks
    two = Workload(1280, 704, 121, 2)
    assert [(c.op, c.ranks, c.bytes_per_rank, c.source) for c in links] == [
        ("all_to_all", 2, all_to_all_bytes(two, 2), "test rig"),
        ("cfg_exchange", 2, cfg_exchange_bytes(two), "test rig"),
    ]
    assert all(c.seconds > 0 and c.gb_per_s > 0 for c in links)
    assert "83.8 MB per rank" in checks[0].finding and "GB/s per rank" in checks[0].finding


def test_wrong_values_fail_the_count_and_give_no_figures(tmp_path: Path) -> None:
    (tmp_path / "wrong_all_to_all.py").write_text(WRONG_ALL_TO_ALL)
    checks, links = links_check(
        SubprocessRunner(), 2, 120, source="x", backend="gloo",
        worker="wrong_all_to_all", extra_env=worker_env(tmp_path),
    )  # fmt: skip
    assert [c.name for c in checks] == ["links.2"] and links == ()
    assert checks[0].status is Status.FAIL and "wrong values on rank(s) 0, 1" in checks[0].finding
    assert checks[0].fix


def test_a_hanging_count_is_reported_within_its_timeout(tmp_path: Path) -> None:
    (tmp_path / "hangs_always.py").write_text("import time\ntime.sleep(600)\n")
    start = time.monotonic()
    checks, links = links_check(
        SubprocessRunner(), 2, 6, source="x", backend="gloo",
        worker="hangs_always", extra_env=worker_env(tmp_path),
    )  # fmt: skip
    assert time.monotonic() - start < 6 + 2 * SubprocessRunner.grace_s
    assert checks[0].status is Status.FAIL and "hung: no result within 6 s" in checks[0].finding
    assert links == ()


def test_one_gpu_measures_nothing() -> None:
    checks, links = links_check(SubprocessRunner(), 1, 5, source="x", backend="gloo")
    assert [c.status for c in checks] == [Status.SKIPPED] and links == ()


def test_the_slowest_rank_sets_the_figure() -> None:
    def rank(seconds: float) -> dict[str, object]:
        return {"results": [{"op": "all_to_all", "bytes_per_rank": 8, "seconds": seconds}]}

    assert collectives([rank(0.5), rank(2.0)], "src") == [
        Collective("all_to_all", 2, 8, 2.0, "src")
    ]


def test_the_source_names_the_gpus_nccl_and_the_day() -> None:
    probe = scenario("rtx4090x2_no_p2p")
    software = probe.software()
    assert link_source(probe.gpus(), software, 2, "2026-12-02") == (
        f"doctor --full on 2x NVIDIA GeForce RTX 4090, NCCL {software.nccl}, 2026-12-02"
    )
    no_nccl = dataclasses.replace(software, nccl=None)
    assert (
        link_source(probe.gpus(), no_nccl, 2, "d")
        == "doctor --full on 2x NVIDIA GeForce RTX 4090, d"
    )
