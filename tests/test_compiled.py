"""The compiled DiT (`wanctl.models.compiled`) and fp8 compute (`wanctl.models.precision`) on
the CPU: the compiled blocks give the eager output, alone and under Ulysses over two real
processes (torchrun, gloo; torch.compile's `eager` backend traces with Dynamo, as Inductor
would, without generating kernels); a compiler that fails leaves the eager DiT with the
reason; fp8 is refused where it cannot run; the settings reach the worker.

This file is also the torchrun worker of its Ulysses test (`python -m test_compiled ...`).
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from conftest import run_test_workers
from typer.testing import CliRunner

from wanctl.cli import app
from wanctl.core.settings import Settings
from wanctl.core.worker import WorkerRequest
from wanctl.errors import UsageError
from wanctl.generate.checks import check_fp8_compute
from wanctl.models.builtin import tiny_transformer
from wanctl.models.compiled import CompiledDit, not_compiled, release_compile_workers
from wanctl.models.precision import fp8_problem
from wanctl.probe.base import GpuInfo, GpuInventory
from wanctl.workers.dits import compile_report, enable_ulysses, set_attention_backend
from wanctl.workers.generate import parse_args


@pytest.fixture(autouse=True)
def inductor_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Compiling here writes its cache in the test's folder, and the variable torch.compile
    exports into the process (Inductor sets TORCHINDUCTOR_CACHE_DIR when it finds none) goes
    with the test: later tests would read it as the user's."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))


def batch(dit: Any) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    shape = (1, dit.config.in_channels, 3, 8, 8)
    return {
        "hidden_states": torch.randn(shape, generator=generator),
        "timestep": torch.tensor([500.0]),
        "encoder_hidden_states": torch.randn(1, 512, dit.config.text_dim, generator=generator),
    }


def forward(dit: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        out: torch.Tensor = dit(**inputs, return_dict=False)[0]
    return out


def test_compiled_blocks_give_the_eager_output() -> None:
    dit = tiny_transformer()
    inputs = batch(dit)
    eager = forward(dit, inputs)
    wrapper = CompiledDit(dit, backend="eager")
    assert forward(dit, inputs).equal(eager)
    assert forward(dit, inputs).equal(eager)  # the second call runs the compiled blocks too
    report = wrapper.report()
    assert report.compiled and report.whole_blocks and report.reason is None
    assert report.first_forward_s is not None
    assert all(block._compiled_call_impl is not None for block in wrapper.blocks)
    assert len(wrapper.blocks) == dit.config.num_layers


def failing_compiler(graph: Any, example_inputs: Any) -> Any:
    raise RuntimeError("no C compiler on this machine")


def test_a_compiler_that_fails_leaves_the_eager_dit_and_says_why() -> None:
    dit = tiny_transformer()
    inputs = batch(dit)
    eager = forward(dit, inputs)
    wrapper = CompiledDit(dit, backend=failing_compiler)
    assert forward(dit, inputs).equal(eager)
    report = wrapper.report()
    assert not report.compiled and not report.whole_blocks
    assert report.reason is not None and "no C compiler on this machine" in report.reason
    assert all(block._compiled_call_impl is None for block in wrapper.blocks)
    assert forward(dit, inputs).equal(eager)  # and it stays eager


def test_a_compiled_only_attention_backend_is_dropped_where_the_blocks_fall_back() -> None:
    """FlexAttention is chosen only for compiled blocks (eager, it builds the whole score
    matrix): blocks that end up eager run diffusers' default attention instead."""
    dit = tiny_transformer()
    inputs = batch(dit)
    eager = forward(dit, inputs)
    wrapper = CompiledDit(dit, backend=failing_compiler)
    set_attention_backend([dit], "native", [wrapper])
    assert wrapper.eager_attention is None  # a backend that runs eager as fast stays
    set_attention_backend([dit], "flex", [wrapper])
    assert wrapper.eager_attention == "native"
    assert forward(dit, inputs).equal(eager)  # the eager blocks, on native attention
    reason = wrapper.report().reason
    assert reason is not None and reason.endswith("attention back to native, which runs eager")


def test_the_summary_reports_the_worst_of_two_experts() -> None:
    """An A14B run's two experts: one compiled whole, one fallen back to eager; the summary
    says eager, with the reason (an expert that never ran says nothing)."""
    high, low, idle = tiny_transformer(), tiny_transformer(), tiny_transformer()
    inputs = batch(high)
    wrappers = [CompiledDit(high, backend="eager"), CompiledDit(low, backend=failing_compiler),
                CompiledDit(idle, backend="eager")]  # fmt: skip
    forward(high, inputs)
    forward(low, inputs)
    args = argparse.Namespace(dit_storage="bf16", dit_precision="bf16", no_compile=False)
    report = compile_report(wrappers, torch.device("cpu"), args)
    assert report["compiled"] is False and "no C compiler" in report["reason"]
    assert compile_report(wrappers[:1], torch.device("cpu"), args)["whole_blocks"] is True


def test_the_compile_workers_shut_down_in_the_background(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inductor's pool of compile workers (real processes) is gone once the thread ends, so
    that the exit does not wait for it."""
    import torch._inductor.config as inductor
    from torch._inductor.async_compile import AsyncCompile

    monkeypatch.setattr(inductor, "compile_threads", 2)
    pool: Any = AsyncCompile.process_pool()
    shutdown = release_compile_workers()
    assert shutdown.name == "inductor-workers-shutdown"  # not the caller's thread
    shutdown.join(timeout=120)
    assert not shutdown.is_alive()
    assert not pool.running and pool.process.poll() is not None


def test_the_cpu_and_no_compile_stay_eager_with_the_reason() -> None:
    on_cpu = not_compiled(torch.device("cpu"), wanted=True)
    assert on_cpu is not None and not on_cpu.compiled and "CPU" in (on_cpu.reason or "")
    off = not_compiled(torch.device("cpu"), wanted=False)
    assert off is not None and "--no-compile" in (off.reason or "")


def test_fp8_storage_stays_eager_with_the_reason() -> None:
    """diffusers' layerwise casting rebuilds the weights inside each block: Dynamo cuts it into
    pieces, so wanctl does not compile it (and tune predicts no speed-up for it)."""
    cast = not_compiled(torch.device("cuda"), wanted=True, layerwise_cast=True)
    assert cast is not None and "layerwise casting" in (cast.reason or "")
    assert not_compiled(torch.device("cuda"), wanted=True) is None


def ulysses_worker(out: Path) -> None:
    """Rank r's share of a Ulysses 2 forward of the compiled tiny DiT; rank 0 saves it."""
    dist.init_process_group("gloo")
    try:
        dit = tiny_transformer()
        inputs = batch(dit)
        wrapper = CompiledDit(dit, backend="eager")  # before Ulysses, as the worker does
        enable_ulysses(dit, dist.get_world_size())
        output = forward(dit, inputs)
        if dist.get_rank() == 0:
            torch.save({"output": output, "compiled": wrapper.report().compiled}, out)
    finally:
        dist.destroy_process_group()


def test_compiled_blocks_under_ulysses_give_the_one_process_output(tmp_path: Path) -> None:
    out = tmp_path / "output.pt"
    run_test_workers("test_compiled", ["--out", str(out)], 2, timeout_s=240)
    saved = torch.load(out)
    dit = tiny_transformer()
    assert saved["compiled"]
    assert (saved["output"] - forward(dit, batch(dit))).abs().max() <= 1e-5


def test_fp8_compute_is_refused_on_the_cpu() -> None:
    problem = fp8_problem(torch.device("cpu"))
    assert problem is not None and "CPU" in problem


def test_fp8_compute_settings_store_fp8_and_refuse_what_they_cannot_run() -> None:
    with pytest.raises(ValueError, match="dit_storage must be fp8"):
        Settings(dit_precision="fp8")
    assert Settings(dit_precision="fp8", dit_storage="fp8").unsupported() is None
    sharded = Settings(dit_precision="fp8", dit_storage="fp8", dit="fsdp")
    assert "--dit-storage fp8" in (sharded.unsupported() or "")
    official = Settings(backend="wan-repo", dit_precision="fp8", dit_storage="fp8")
    assert official.unsupported() is not None


def test_the_settings_reach_the_worker(tmp_path: Path) -> None:
    settings = Settings(dit_precision="fp8", dit_storage="fp8", compile=False)
    request = WorkerRequest(
        prompt="a fox", size="64*64", frames=9, steps=2, seed=1, device="cuda",
        settings=settings, latents=tmp_path / "a.safetensors", output=tmp_path / "a.mp4",
        vae="tiny", run_dir=tmp_path, model="tiny",
    )  # fmt: skip
    args = parse_args(request.argv())
    assert args.dit_precision == "fp8" and args.dit_storage == "fp8" and args.no_compile
    default = parse_args(WorkerRequest(**{**request.__dict__, "settings": Settings()}).argv())
    assert default.dit_precision == "bf16" and not default.no_compile


def test_generate_pins_fp8_compute_and_compile_in_its_plan(tmp_path: Path) -> None:
    common = ["generate", "--model", "tiny", "--device", "cpu", "--prompt", "a fox", "--size",
              "64*64", "--frames", "9", "--steps", "2", "-o", str(tmp_path / "a.mp4"),
              "--dry-run"]  # fmt: skip
    shown = CliRunner().invoke(app, [*common, "--no-compile"])
    assert shown.exit_code == 0, shown.output
    assert "--no-compile" in shown.output
    refused = CliRunner().invoke(app, [*common, "--dit-precision", "fp8", "--dit-storage", "bf16"])
    assert refused.exit_code == 2 and "stored in fp8" in refused.output


@pytest.mark.parametrize(
    ("capability", "device", "refused"),
    [((8, 6), "cuda", "no fp8 tensor cores"), ((9, 0), "cuda", None), ((9, 0), "cpu", "CPU")],
)
def test_fp8_compute_is_refused_before_launch_on_gpus_without_fp8(
    capability: tuple[int, int], device: str, refused: str | None
) -> None:
    gpus = (GpuInfo(0, "NVIDIA GeForce RTX 3090" if capability < (8, 9) else "NVIDIA H100",
                    compute_capability=capability),)  # fmt: skip
    settings = Settings(dit_precision="fp8", dit_storage="fp8")
    if refused is None:
        if importlib.util.find_spec("torchao") is None:  # the test extras leave it out
            with pytest.raises(UsageError, match="torchao"):
                check_fp8_compute(settings, GpuInventory(gpus=gpus), device)
            return
        check_fp8_compute(settings, GpuInventory(gpus=gpus), device)
        return
    with pytest.raises(UsageError) as error:
        check_fp8_compute(settings, GpuInventory(gpus=gpus), device)
    assert refused in str(error.value) + error.value.why and "--dit-storage fp8" in error.value.fix


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    ulysses_worker(parser.parse_args().out)
