"""Planning a decode and falling back when out of memory: pure functions, and the report files
through which torchrun workers say how they ended."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from wanctl.core.launch import chunk_t
from wanctl.decode.fallback import DecodeOutOfMemory, DecodePlan, fallback_plans, run_ladder
from wanctl.decode.latents import Latents
from wanctl.decode.run import (
    DecodeOptions,
    first_plan,
    read_report,
    worker_args,
    write_failure,
    write_report,
)
from wanctl.decode.stream import StreamResult
from wanctl.errors import UsageError, WanctlError

GPU = DecodePlan(ranks=1, chunk_t=4, device="cuda", dtype="bf16")
LATENTS = Latents(torch.zeros(1, 48, 31, 44, 80), normalized=True)


def options(**overrides: object) -> DecodeOptions:
    base: dict = {"latents": Path("z.safetensors"), "output": Path("v.mp4"), "vae": "synthetic"}
    return DecodeOptions(**{**base, **overrides})


def test_the_ladder_goes_more_ranks_chunk_1_tiling_cpu() -> None:
    plans = fallback_plans(GPU, max_ranks=4)

    assert [p.step for p in plans] == [
        "as asked",
        "more ranks",
        "chunk_t=1",
        "diffusers tiling",
        "cpu",
    ]
    assert [(p.ranks, p.chunk_t, p.tiled) for p in plans[1:4]] == [
        (4, 4, False),
        (4, 1, False),
        (1, 1, True),
    ]
    assert (plans[-1].device, plans[-1].dtype, plans[-1].exact) == ("cpu", "fp32", True)
    assert not plans[3].exact


def test_rungs_that_do_not_apply_are_skipped() -> None:
    plans = fallback_plans(DecodePlan(2, 1, "cuda", "bf16"), max_ranks=2)
    assert [p.step for p in plans] == ["as asked", "diffusers tiling", "cpu"]
    assert fallback_plans(DecodePlan(1, 2, "cpu", "fp32"), max_ranks=0) == [
        DecodePlan(1, 2, "cpu", "fp32")
    ]


def test_run_ladder_stops_at_the_first_plan_that_fits() -> None:
    plans = fallback_plans(GPU, max_ranks=1)
    notes: list[str] = []

    def attempt(plan: DecodePlan) -> str:
        if plan.chunk_t > 1:
            raise DecodeOutOfMemory("CUDA out of memory. Tried to allocate 5.6 GiB")
        return "video"

    plan, value, attempts = run_ladder(plans, attempt, notes.append)

    assert (plan.step, value) == ("chunk_t=1", "video")
    assert attempts == [
        "1 process, chunk_t=4, cuda bf16: out of memory",
        "1 process, chunk_t=1, cuda bf16: ok",
    ]
    assert notes == [
        "out of GPU memory (1 process, chunk_t=4, cuda bf16);"
        " trying 1 process, chunk_t=1, cuda bf16"
    ]


def test_run_ladder_raises_when_every_plan_runs_out_and_stops_on_other_errors() -> None:
    def no_memory(plan: DecodePlan) -> None:
        raise DecodeOutOfMemory(f"no memory for {plan.step}")

    with pytest.raises(DecodeOutOfMemory, match="no memory for cpu"):
        run_ladder(fallback_plans(GPU, 1), no_memory)

    tried: list[DecodePlan] = []

    def broken(plan: DecodePlan) -> None:
        tried.append(plan)
        raise UsageError("bad input")

    with pytest.raises(UsageError):
        run_ladder(fallback_plans(GPU, 1), broken)
    assert len(tried) == 1


def test_first_plan_defaults() -> None:
    assert first_plan(options(), LATENTS, {}, gpus=0) == DecodePlan(1, 1, "cpu", "fp32")
    assert first_plan(options(), LATENTS, {}, gpus=8) == DecodePlan(8, 4, "cuda", "bf16")
    assert first_plan(options(gpus=2), LATENTS, {}, gpus=8) == DecodePlan(2, 1, "cuda", "bf16")
    cpu = options(device="cpu", gpus=4)  # the busy rule is the GPUs': CPU ranks decode one a call
    assert first_plan(cpu, LATENTS, {}, gpus=0) == DecodePlan(4, 1, "cpu", "fp32")
    env = {"WAN_VAE_DECODE_CHUNK_T": "2"}
    assert first_plan(options(gpus=2, dtype="fp32"), LATENTS, env, 8) == DecodePlan(
        2, 2, "cuda", "fp32"
    )


@pytest.mark.parametrize(
    ("overrides", "gpus", "message"),
    [
        ({"device": "cuda"}, 0, "no CUDA GPU is visible"),
        ({"device": "tpu"}, 0, "unknown device"),
        ({"dtype": "int8"}, 0, "unknown dtype"),
        ({"gpus": 4}, 2, "--gpus 4 asked, 2 visible"),
        ({"gpus": 81, "device": "cpu"}, 0, "more than the frame's 80 latent rows"),
    ],
)
def test_impossible_plans_are_usage_errors(overrides: dict, gpus: int, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        first_plan(options(**overrides), LATENTS, {}, gpus)


def test_chunk_t_comes_from_the_option_then_the_environment() -> None:
    assert chunk_t(3, {"WAN_VAE_DECODE_CHUNK_T": "8"}) == 3
    assert chunk_t(None, {"WAN_VAE_DECODE_CHUNK_T": "8"}) == 8
    assert chunk_t(None, {}) == 1
    # unset: what keeps each rank's GPU busy, ranks // 2 (pinned values win at any count)
    assert [chunk_t(None, {}, ranks) for ranks in (1, 2, 3, 4, 8)] == [1, 1, 1, 2, 4]
    assert chunk_t(None, {"WAN_VAE_DECODE_CHUNK_T": "1"}, 8) == 1 and chunk_t(1, {}, 8) == 1
    with pytest.raises(UsageError, match="WAN_VAE_DECODE_CHUNK_T=big is not a number") as bad:
        chunk_t(None, {"WAN_VAE_DECODE_CHUNK_T": "big"})
    assert bad.value.why and bad.value.fix.startswith("set WAN_VAE_DECODE_CHUNK_T=1")


def test_worker_args_carry_the_plan() -> None:
    args = worker_args(options(progress=False), DecodePlan(2, 3, "cuda", "bf16"), Path("r.json"))

    assert args == [
        "--latents", "z.safetensors", "--output", "v.mp4", "--vae", "synthetic",
        "--device", "cuda", "--dtype", "bf16", "--chunk-t", "3", "--report", "r.json",
        "--no-progress",
    ]  # fmt: skip


def test_reports_of_workers(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    results = [StreamResult(121, 3.0, 5.5, 8.0), StreamResult(0, 3.0, 5.4, 7.9)]
    write_report(report, results)
    assert read_report(report, 2, 0) == results

    report.unlink()
    write_failure(report, 1, torch.OutOfMemoryError("CUDA out of memory. Tried 2 GiB\nmore"))
    with pytest.raises(DecodeOutOfMemory, match="Tried 2 GiB"):
        read_report(report, 2, 1)

    failed = tmp_path / "failed.json"
    write_failure(failed, 0, UsageError("bad latents", why="w", fix="f"))
    with pytest.raises(WanctlError) as raised:
        read_report(failed, 2, 1)
    assert (raised.value.message, raised.value.fix, raised.value.exit_code) == (
        "bad latents",
        "f",
        2,
    )

    with pytest.raises(WanctlError, match="torchrun exit code 1"):
        read_report(tmp_path / "silent.json", 2, 1)
