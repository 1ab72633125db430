"""The benchmark scripts run (their CPU smoke modes): a broken one is found here, not on the
GPU machine where its figures are taken."""

import json
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


def test_decode_writers_check_only_times_the_npy_and_the_mp4_decode() -> None:
    output = run("decode_writers.py", "--check-only")
    assert "x264 threads:" in output and "ratio mp4 / npy (medians):" in output


def test_decode_slab_check_only_times_the_slab_of_each_rank_count(tmp_path: Path) -> None:
    rows_file = tmp_path / "slab.json"
    output = run("decode_slab.py", "--check-only", "--json", str(rows_file))
    assert "one rank's slab decode" in output
    assert "target seconds x N / s(1) <= 1.10 at wanctl's chunk_t" in output
    rows = json.loads(rows_file.read_text())["rows"]
    # each N at wanctl's chunk_t (ranks // 2), N = 1 at chunk_t 1, the reference
    assert [(r["ranks"], r["chunk_t"], r["rank"], r["slab_rows"]) for r in rows] == [
        (1, 1, 0, 10), (2, 1, 0, 5), (4, 2, 2, 3), (8, 4, 6, 2)
    ]  # fmt: skip
    assert rows[0]["scaling"] == 1.0 and rows[0]["provenance"]["device"] == "CPU"
    assert rows[0]["gpu_busy"] is None  # measured on a GPU only


def test_decode_slab_sweeps_the_chunks_asked(tmp_path: Path) -> None:
    rows_file = tmp_path / "slab.json"
    output = run("decode_slab.py", "--check-only", "--ranks", "4", "--chunks", "1,3",
                 "--json", str(rows_file))  # fmt: skip
    rows = json.loads(rows_file.read_text())["rows"]
    # the reference first (one GPU, chunk_t 1), then each chunk asked
    assert [(r["ranks"], r["chunk_t"]) for r in rows] == [(1, 1), (4, 1), (4, 3)]
    # no N > 1 at wanctl's chunk_t (4 ranks decode 2 latent frames a call): nothing to judge
    assert "at wanctl's chunk_t: not checked" in output


def test_attention_smoke_times_every_backend_then_the_dit() -> None:
    smoke = ("--device", "cpu", "--tokens", "256", "--size", "128*128", "--frames", "5")
    output = run("attention.py", *smoke, "--layers", "1")
    assert "DiT forward, 128*128 x 5 frames" in output and "chosen at 1 rank(s)" in output


def test_memory_model_against_its_recorded_measurements() -> None:
    output = run("memory_model.py", "--recorded")
    assert "in-sample: largest error" in output and "held-out: largest error" in output


def test_dit_check_only_measures_every_way_against_eager(tmp_path: Path) -> None:
    run("dit.py", "--check-only", "--skip", "fused", "--json", str(tmp_path / "rows.json"))
    rows = {row["way"]: row for row in json.loads((tmp_path / "rows.json").read_text())["rows"]}
    assert list(rows) == ["eager float32", "compiled float32 (wanctl's)",
                          "fp8 storage (layerwise casting)", "fp8 compute"]  # fmt: skip
    assert rows["compiled float32 (wanctl's)"]["rel_l2_noise"] <= 1e-6  # the same arithmetic
    assert 0 < rows["fp8 storage (layerwise casting)"]["rel_l2_noise"] < 0.1
    assert "NVIDIA GPU" in rows["fp8 compute"]["refused"]


def test_host_memory_check_only_loads_one_checkpoint_three_ways() -> None:
    output = run("host_memory.py", "--check-only")
    for way in ("from_pretrained", "device_map", "streamed"):
        assert f"{way} " in output
    assert output.count(" yes ") == 3  # the same weights every way


def test_fixed_costs_check_only_times_a_decode_and_a_generate_beside_another_checkout(
    tmp_path: Path,
) -> None:
    rows_file = tmp_path / "fixed.json"
    output = run("fixed_costs.py", "--check-only", "--generate", "--before", str(ROOT),
                 "--json", str(rows_file))  # fmt: skip
    assert "wanctl decode: seconds, each run a fresh process" in output
    assert "after: wall - work" in output and "before: wall - work" in output
    runs = json.loads(rows_file.read_text())["runs"]
    assert [(r["checkout"], r["command"]) for r in runs] == [
        ("after", "decode"), ("before", "decode"), ("after", "generate"), ("before", "generate")
    ]  # fmt: skip
    for r in runs:
        assert 0 < r["work_s"] < r["wall_s"] and "decode" in r["parts"]
