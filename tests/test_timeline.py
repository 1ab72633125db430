"""Where a run's wall time went (`wanctl.core.timeline`): the parts of a generate run add up to
its wall time, the time to the first step is counted from wanctl's start, and a real decode and
a real generate run on the CPU report theirs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from typer.testing import CliRunner

from wanctl.cli import app
from wanctl.core.timeline import process_started, run_timeline
from wanctl.decode.latents import Latents, save_latents


def test_the_parts_add_up_to_the_wall_time() -> None:
    started = 1000.0
    marks = {"process": 1002.0, "main": 1005.0, "group": 1005.5, "first_step": 1010.0,
             "decode_start": 1020.0, "written": 1027.0}  # fmt: skip
    seconds = {"text_encode": 1.0, "sampling": 10.0, "load": 1.5, "attention": 0.5, "save": 0.2,
               "decode": 6.0, "vae_decode": 4.0, "vae_warmup": 0.5}  # fmt: skip
    timeline = run_timeline(marks, seconds, [2.0, 1.0, 1.0], started=started, launched=1001.0,
                            ended=1030.0)  # fmt: skip
    parts = dict(timeline.parts)
    assert timeline.total_s == 30.0 and abs(sum(parts.values()) - 30.0) < 1e-9
    assert parts["wanctl start and preflight"] == 1.0 and parts["imports"] == 3.0
    assert parts["first step"] == 2.0 and parts["2 more steps"] == 2.0
    assert parts["VAE load"] == 1.5 and parts["results gathered and summary written"] == 1.0
    assert parts["process group and process exit"] == 3.0
    assert timeline.first_step_after_s == 10.0
    assert "first step done 10.0 s after start" in timeline.describe()


def test_this_process_started_before_now() -> None:
    started = process_started()
    assert started is not None and started <= time.time() < started + 3600


def test_a_decode_says_where_its_time_went(tmp_path: Path) -> None:
    latents = tmp_path / "latents.safetensors"
    z = torch.randn(1, 48, 3, 3, 5, generator=torch.Generator().manual_seed(5))
    save_latents(latents, Latents(z, normalized=True, fps=16, source={}))
    result = CliRunner().invoke(app, ["decode", str(latents), "--vae", "tiny", "--device", "cpu",
                                      "-o", str(tmp_path / "v.npy"), "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    timeline = json.loads(result.stdout)["timeline"]
    parts = dict(timeline["parts"])
    assert {"python start and imports", "VAE load", "decode"} <= parts.keys()
    assert abs(sum(parts.values()) - timeline["total_s"]) < 1e-6
