"""The benchmark scripts run (their CPU smoke modes): a broken one is found here, not on the
GPU machine where its figures are taken."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(script: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    command = [sys.executable, str(ROOT / "benchmarks" / script), *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.parametrize("vae", ["synthetic", "synthetic-wan2.1"])
def test_decode_check_only_compares_both_decoders(vae: str) -> None:
    output = run("decode.py", "--check-only", "--vae", vae)
    assert "time ratio diffusers / wanctl" in output
    assert "max abs diff, uint8 levels: 0" in output or "max abs diff, uint8 levels: 1" in output


def test_attention_smoke_times_every_backend_then_the_dit() -> None:
    smoke = ("--device", "cpu", "--tokens", "256", "--size", "128*128", "--frames", "5")
    output = run("attention.py", *smoke, "--layers", "1")
    assert "DiT forward, 128*128 x 5 frames" in output and "chosen at 1 rank(s)" in output


def test_memory_model_against_its_recorded_measurements() -> None:
    output = run("memory_model.py", "--recorded")
    assert "in-sample: largest error" in output and "held-out: largest error" in output


def test_experts_check_only_measures_fp8_storage_against_the_weights_as_built() -> None:
    output = run("experts.py", "--check-only")
    assert "fp8 storage, relative L2 error of one forward against float32" in output


def test_host_memory_check_only_loads_one_checkpoint_three_ways() -> None:
    output = run("host_memory.py", "--check-only")
    for way in ("from_pretrained", "device_map", "streamed"):
        assert f"{way} " in output
    assert output.count(" yes ") == 3  # the same weights every way
