"""Two torchrun nodes on one machine (c10d rendezvous on 127.0.0.1, gloo, one process each),
as two `wanctl generate` commands: each node's wanctl learns the run's outcome (its own
summary), node 0 holds the video and the latents, the other says where they are."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

ARGS = ["--model", "tiny", "--device", "cpu", "--prompt", "a fox", "--size", "64*64",
        "--frames", "5", "--steps", "2", "--gpus", "1", "--nnodes", "2", "--json"]  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_every_node_reports_the_run_and_node_0_holds_the_video(tmp_path: Path) -> None:
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        argv = [sys.executable, "-m", "wanctl", "generate", *ARGS, "--rdzv-endpoint", endpoint,
                "-o", str(tmp_path / name / "fox.mp4")]  # fmt: skip
        nodes.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))  # fmt: skip
    outcomes = [node.communicate(timeout=300) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], [err for _, err in outcomes]
    summaries = [json.loads(out) for out, _ in outcomes]
    assert all(summary["ranks"] == 2 for summary in summaries)
    holders = [name for name in ("a", "b") if (tmp_path / name / "fox.mp4").is_file()]
    assert len(holders) == 1  # rank 0's node
    holder = sorted(p.name for p in (tmp_path / holders[0]).iterdir())
    assert holder == ["fox.latents.safetensors", "fox.mp4"]
    other = summaries[1 if holders == ["a"] else 0]
    assert any("this is node 1 of 2" in note for note in other["notes"])


def test_the_recovery_command_runs_on_the_node_that_holds_the_latents(tmp_path: Path) -> None:
    """A run over two nodes of one GPU each decodes on both; the kept latents are on node 0,
    whose `wanctl decode` can use its own GPU only."""
    from wanctl.generate.options import GenerateOptions
    from wanctl.generate.run import prepare
    from wanctl.probe.local import LocalProbe

    options = GenerateOptions(prompt="a fox", output=tmp_path / "fox.mp4", size="64*64",
                              frames=5, steps=2, gpus=1, model="tiny", device="cpu", nnodes=2,
                              rdzv_endpoint="127.0.0.1:29400")  # fmt: skip
    launched = prepare(options, probe=LocalProbe())
    assert launched.world == 2 and launched.settings.decode_ranks == 2
    assert "--gpus 1 " in launched.decode_command
