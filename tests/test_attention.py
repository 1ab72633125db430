"""The attention backend choice (`wanctl.models.attention`): on the CPU, the default without timing;
the timing and checking of real diffusers backends on the kernels PyTorch has there; the
selection rules on small tables."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from rich.console import Console

from wanctl.commands.generate import attention_line
from wanctl.models.attention import (
    DEFAULT,
    AttentionChoice,
    BackendTiming,
    candidate_backends,
    choice_key,
    choose_backend,
    combine,
    dit_tokens,
    measure,
    pick,
    random_qkv,
    remembered_choice,
    sampled_rows,
    time_backend,
    time_call,
    worth_remembering,
)
from wanctl.render import to_jsonable

SMALL = dict(heads=4, head_dim=16, tokens=256)


def small_qkv(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    return random_qkv("cpu", SMALL["heads"], SMALL["head_dim"], SMALL["tokens"], dtype)


def test_off_cuda_the_default_is_chosen_without_timing() -> None:
    choice = choose_backend(torch.device("cpu"))
    assert choice.backend == DEFAULT == "native"
    assert choice.timings == []
    assert choice.heads == 24 and choice.tokens == 27_280
    assert choose_backend("cpu", ranks=4).heads == 6  # what one Ulysses rank attends with
    assert candidate_backends("cpu") == ["native"]


@pytest.mark.parametrize("name", ["native", "_native_math"])
def test_a_native_backend_is_timed_and_holds_on_cpu(name: str) -> None:
    timing = time_backend(name, *small_qkv(), warmup=1, iters=2)
    assert timing.ok and timing.error is None
    assert timing.ms is not None and timing.ms > 0
    assert timing.max_diff is not None and timing.max_diff < 1e-4  # float32


def test_bf16_holds_within_the_tolerance() -> None:
    timing = time_backend("native", *small_qkv(torch.bfloat16), warmup=0, iters=1)
    assert timing.ok and timing.max_diff is not None and 0 < timing.max_diff < 2e-2


def test_a_backend_that_raises_or_is_unknown_is_recorded_not_raised() -> None:
    def broken(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("no kernel\nfor this")

    timing = time_call("broken", broken, *small_qkv())
    assert not timing.ok and timing.ms is None
    assert timing.error == "RuntimeError: no kernel"
    unknown = time_backend("no_such_backend", *small_qkv())
    assert not unknown.ok and unknown.error is not None and "ValueError" in unknown.error


def test_a_wrong_output_does_not_hold() -> None:
    """Zeros would pass a flat softmax's check (its output averages to ~0); the logits' spread
    makes the true output of order 1, so they fail here."""
    q, k, v = small_qkv()

    def zeros(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(q)

    def unscaled(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=1.0
        ).transpose(1, 2)

    for attend in (zeros, unscaled):
        timing = time_call(attend.__name__, attend, q, k, v)
        assert not timing.ok
        assert timing.error is not None and timing.error.startswith("max abs diff")
        assert timing.ms is not None  # it ran: timed, but not chosen


def test_measure_keeps_every_candidate_and_checks_cross_attention() -> None:
    names = ["native", "_native_cudnn", "_native_math"]  # no cuDNN kernel on the CPU
    table = measure(names, "cpu", **SMALL, cross=(64, 8), dtype=torch.float32, iters=2)
    assert [t.name for t in table] == names
    by_name = {t.name: t for t in table}
    assert by_name["native"].ok and by_name["_native_math"].ok
    assert not by_name["_native_cudnn"].ok
    assert pick(table) in ("native", "_native_math")


def test_the_fastest_that_holds_wins() -> None:
    table = [
        BackendTiming("native", 20.0, 0.004),
        BackendTiming("_native_cudnn", 15.0, 0.004),
        BackendTiming("sage", 9.0, 0.08, "max abs diff 0.08 > 0.02"),  # fast but wrong
        BackendTiming("flash", None, None, "RuntimeError: no kernel"),
        BackendTiming("_native_efficient", 35.0, 0.003),
    ]
    assert pick(table) == "_native_cudnn"
    assert pick([t for t in table if not t.ok]) == DEFAULT
    assert pick([]) == DEFAULT


def test_ranks_agree_on_a_backend_that_holds_on_every_rank() -> None:
    rank0 = AttentionChoice("_native_cudnn", 12, 27_280, [
        BackendTiming("native", 12.0, 0.004), BackendTiming("_native_cudnn", 8.0, 0.004),
        BackendTiming("_native_flash", 11.0, 0.004),
    ])  # fmt: skip
    rank1 = AttentionChoice("_native_flash", 12, 27_280, [
        BackendTiming("native", 12.5, 0.005),
        BackendTiming("_native_cudnn", 8.0, 0.3, "max abs diff 0.3 > 0.02"),
        BackendTiming("_native_flash", 11.5, 0.004),
    ])  # fmt: skip
    merged = combine([rank0, rank1])
    assert merged.backend == "_native_flash"
    assert merged.ms_of("_native_flash") == 11.5  # the slowest rank's
    assert merged.ms_of("_native_cudnn") is None
    assert [t.ok for t in merged.timings] == [True, False, True]


def test_the_choice_survives_the_summary_json_and_renders() -> None:
    choice = AttentionChoice("_native_cudnn", 24, 27_280, [
        BackendTiming("native", 23.4, 0.004), BackendTiming("_native_cudnn", 17.1, 0.004),
        BackendTiming("flash", None, None, "RuntimeError: no kernel"),
    ])  # fmt: skip
    document = json.loads(json.dumps(dataclasses.asdict(choice)))  # as the worker writes it
    back = AttentionChoice.from_dict(document)
    assert back == choice
    assert to_jsonable(back)["timings"][2] == {
        "name": "flash", "ms": None, "max_diff": None, "error": "RuntimeError: no kernel",
        "ok": False,
    }  # fmt: skip
    line = attention_line(back)
    assert line.startswith("_native_cudnn; ms/call (eager) at 24 heads x 27280 tokens per rank")
    assert "native 23.40" in line and "_native_cudnn 17.10" in line
    assert "flash failed (RuntimeError: no kernel)" in line
    console = Console(record=True, width=200)
    console.print(attention_line(choose_backend("cpu")))
    assert "native (not timed off CUDA)" in console.export_text()


def test_tokens_and_sampled_rows() -> None:
    assert dit_tokens("1280*704", 121) == 27_280
    assert dit_tokens("704*1280", 121) == 27_280
    # every spelling `wanctl generate --size` accepts (the worker used to split on '*' only)
    assert dit_tokens("1280x704", 121) == dit_tokens("1280×704", 121) == 27_280
    rows = sampled_rows(27_280)
    assert rows[0] == 0 and rows[-1] == 27_279 and len(rows) == 128
    assert sampled_rows(10) == list(range(10))


def test_a_choice_timed_once_is_read_back_on_the_next_run(tmp_path: Path) -> None:
    cache = tmp_path / "attention.json"
    device = torch.device("cpu")
    first = remembered_choice(device, 4, 8, 64, torch.float32, cache=cache)
    assert not first.cached and not cache.exists()  # untimed off CUDA: nothing to remember
    # what a timed run leaves (on a GPU), read back with its timings
    timed = AttentionChoice("_native_flash", 4, 64, [BackendTiming("_native_flash", 1.5, 0.0)])
    key = choice_key(device, 4, 8, 64, torch.float32, 1)
    cache.write_text(json.dumps({key: dataclasses.asdict(timed)}))
    again = remembered_choice(device, 4, 8, 64, torch.float32, cache=cache)
    assert again.cached and again.backend == "_native_flash" and again.ms_of("_native_flash") == 1.5


def test_a_compiled_candidate_is_timed_through_torch_compile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """For a compiled DiT each backend is timed as one compiled graph (aot_eager here: the CPU
    has no fast Inductor), and holds as the eager call does; Dynamo's caches are emptied after
    each backend."""
    monkeypatch.setattr("wanctl.models.attention.COMPILER", "aot_eager")
    torch.compiler.reset()
    table = measure(["native", "_native_math"], "cpu", **SMALL, cross=(64, 4), compiled=True,
                    dtype=torch.float32,
                    warmup=1, iters=1)  # fmt: skip
    assert [t.name for t in table] == ["native", "_native_math"]
    assert all(t.ok and t.max_diff is not None and t.max_diff < 1e-4 for t in table)
    assert candidate_backends("cpu", compiled=True) == ["native"]


def test_flex_is_a_candidate_for_a_compiled_dit_alone_and_never_context_parallel() -> None:
    """The list is read off diffusers' registry, no GPU needed."""
    assert "flex" not in candidate_backends("cuda")
    assert "flex" in candidate_backends("cuda", compiled=True)
    assert "flex" not in candidate_backends("cuda", compiled=True, context_parallel=True)


@pytest.mark.parametrize(
    ("error", "kept"),
    [
        (None, True),
        ("OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB", False),
        ("BackendCompilerFailed: backend='inductor' raised: no C compiler", False),
        ("InductorError: CalledProcessError: gcc failed", False),
        ("RuntimeError: no kernel for this head size", True),  # the GPU's, for good
    ],
)
def test_only_timings_that_hold_beyond_this_run_are_remembered(
    error: str | None, kept: bool
) -> None:
    timings = [BackendTiming("native", 16.1, 0.004), BackendTiming("flex", None, None, error)]
    if error is None:
        timings = timings[:1]
    assert worth_remembering(AttentionChoice("native", 24, 27_280, timings)) is kept
    failed = [BackendTiming("native", None, None, "RuntimeError: no kernel")]
    assert not worth_remembering(AttentionChoice("native", 24, 27_280, failed))  # none held
    assert not worth_remembering(AttentionChoice("native", 24, 27_280, note="not timed"))


def test_a_backend_that_breaks_the_compiled_graph_does_not_hold() -> None:
    def breaks(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        torch._dynamo.graph_break()
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    attend = torch.compile(breaks, fullgraph=True, backend="aot_eager")
    timing = time_call("broken", attend, *small_qkv(), warmup=1, iters=1)
    assert not timing.ok and timing.error is not None and timing.ms is None


def test_compiled_and_eager_timings_are_remembered_apart(tmp_path: Path) -> None:
    device = torch.device("cpu")
    eager = choice_key(device, 4, 8, 64, torch.float32, 1)
    compiled = choice_key(device, 4, 8, 64, torch.float32, 1, compiled=True)
    assert eager != compiled and "| compiled |" in compiled and "| eager |" in eager
    choice = AttentionChoice("flex", 4, 64, [BackendTiming("flex", 1.0, 0.0)], compiled=True)
    back = AttentionChoice.from_dict(json.loads(json.dumps(dataclasses.asdict(choice))))
    assert back.compiled
    assert attention_line(back).startswith("flex; ms/call (compiled) at 4 heads")
