"""Which diffusers attention backend the DiT runs: each candidate timed on the shape one rank
really attends over, its output checked, the fastest that holds chosen.

The TI2V-5B DiT spends most of a forward in self-attention over all its tokens (27,280 at
1280x704x121: 24 heads x 128, ~9 TFLOP per layer). Under Ulysses (`enable_parallelism`) each of
N ranks attends over all the tokens with 24/N heads; its cross-attention (to the 512 text
tokens) runs on its own tokens/N with all 24 heads, outside the context-parallel path. So a
candidate is timed at (1, tokens, heads/N, 128), and must also give the right output at the
cross-attention shape.

Candidates (`candidate_backends`): PyTorch's SDPA as diffusers names it ("native": PyTorch's
own choice; "_native_flash", "_native_cudnn", "_native_efficient": one kernel forced) always on
CUDA; "flash", "_flash_3", "sage", "xformers" only when their package imports. Left out: the
"*_hub" kernels (they download from the Hub at first use), the varlen variants (the same
kernels, for masks), "flex" (slow and memory-hungry without torch.compile), "_native_math"
(it materialises the whole score matrix: the reference is computed on a sample of query rows
instead), NPU and XLA. With world size > 1 only backends diffusers runs context-parallel are
candidates (`_AttentionBackendRegistry._supports_context_parallel`).

A compiled DiT (`wanctl.models.compiled`) runs attention inside each block's graph, where
Inductor may fuse the layout copies around the kernel and where a backend may not trace at
all. So for such a run each candidate is timed as `torch.compile(fullgraph=True)` of the same
call (`compiled=True`), "flex" joins them (FlexAttention is a Triton kernel Inductor writes:
slow eager, a candidate compiled), and a backend that breaks the graph does not hold.

A candidate holds when it runs and its output, at sampled query rows, is within `TOLERANCE` of
attention computed there in float32. The random q and k are scaled so that the logits have a
standard deviation of 3: the softmax is peaked, the output of order 1, so a wrong kernel cannot
pass by averaging to ~0 as it could with a flat softmax over 27k keys.

torch and diffusers are imported inside the functions: the CLI reads the dataclasses here.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wanctl.core.architectures import DIT_TI2V_5B, TEXT_TOKENS
from wanctl.core.cache import cache_path, read_cache, write_cache
from wanctl.core.families import TI2V_5B, Family
from wanctl.core.workload import HEADS, Workload, parse_size

if TYPE_CHECKING:
    import torch

DEFAULT = "native"  # diffusers' default: torch's SDPA, PyTorch picking the kernel
HEAD_DIM = DIT_TI2V_5B["attention_head_dim"]
TOKENS = 27_280  # 1280x704x121: 31 latent frames x 22 x 40 patches
TOLERANCE = 2e-2  # max abs difference from float32 attention, outputs of order 1
LOGIT_STD = 3.0
WARMUP = 2
ITERS = 5
SAMPLED_ROWS = 128  # query rows the float32 reference is computed at

# Backends whose package must import (`_check_attention_backend_requirements` checks).
OPTIONAL = (
    "flash",
    "_flash_3",
    "sage",
    "_sage_qk_int8_pv_fp8_cuda_sm90",
    "_sage_qk_int8_pv_fp16_cuda",
    "xformers",
)
NATIVE = (DEFAULT, "_native_flash", "_native_cudnn", "_native_efficient")
COMPILED_ONLY = ("flex",)  # a candidate only for a compiled DiT
COMPILER = "inductor"  # torch.compile's backend for the compiled timings, as the DiT's


@dataclass(frozen=True)
class BackendTiming:
    """One candidate: milliseconds per self-attention call (median), its max abs difference
    from float32 attention, and why it does not hold (None when it does)."""

    name: str
    ms: float | None
    max_diff: float | None
    error: str | None = None
    ok: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ok", self.error is None)


@dataclass(frozen=True)
class AttentionChoice:
    """The backend chosen and the table it was chosen from, at the shape one rank runs."""

    backend: str
    heads: int
    tokens: int
    timings: list[BackendTiming] = field(default_factory=list)
    note: str | None = None
    cached: bool = False  # the timings of an earlier run on this machine (`remembered_choice`)
    compiled: bool = False  # timed under torch.compile, as a compiled DiT runs it

    def ms_of(self, name: str) -> float | None:
        return next((t.ms for t in self.timings if t.name == name and t.ok), None)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AttentionChoice:
        timings = [
            BackendTiming(t["name"], t["ms"], t["max_diff"], t["error"])
            for t in data.get("timings", [])
        ]
        return cls(data["backend"], data["heads"], data["tokens"], timings, data.get("note"),
                   data.get("cached", False), data.get("compiled", False))  # fmt: skip


def dit_tokens(size: str, frames: int, family: Family = TI2V_5B) -> int:
    """Tokens `family`'s DiT attends over, for a size in any spelling `parse_size` reads
    (1280*704, 1280x704): `Workload.tokens`, the memory model's count (one rank's share of the
    heads changes nothing here)."""
    width, height = parse_size(size)
    return Workload(width, height, frames, 1, family=family).tokens


def pick(timings: Sequence[BackendTiming], default: str = DEFAULT) -> str:
    """The fastest candidate that holds; `default` when none does."""
    held = [t for t in timings if t.ok and t.ms is not None]
    return min(held, key=lambda t: t.ms or 0.0).name if held else default


def combine(choices: Sequence[AttentionChoice]) -> AttentionChoice:
    """One choice for all ranks from each rank's table: a backend holds if it holds on every
    rank, and costs what it costs on the slowest. Every rank then runs the same backend."""
    first = choices[0]
    merged = []
    for timing in first.timings:
        mine = [t for c in choices for t in c.timings if t.name == timing.name]
        failed = next((t for t in mine if not t.ok), None)
        if failed is not None or len(mine) < len(choices):
            error = failed.error if failed else "not measured on every rank"
            merged.append(BackendTiming(timing.name, timing.ms, timing.max_diff, error))
            continue
        merged.append(
            BackendTiming(
                timing.name,
                max(t.ms or 0.0 for t in mine),
                max(t.max_diff or 0.0 for t in mine),
            )
        )
    return replace(first, backend=pick(merged), timings=merged)


def candidate_backends(
    device: torch.device | str, *, context_parallel: bool = False, compiled: bool = False
) -> list[str]:
    """The diffusers backend names worth timing on `device` (with `compiled`, for a compiled
    DiT): none but the default off CUDA."""
    import torch
    from diffusers.models.attention_dispatch import (
        AttentionBackendName,
        _AttentionBackendRegistry,
        _check_attention_backend_requirements,
    )

    if torch.device(device).type != "cuda":
        return [DEFAULT]
    names = list(NATIVE)
    for name in OPTIONAL + (COMPILED_ONLY if compiled else ()):
        try:
            _check_attention_backend_requirements(AttentionBackendName(name))
        except (RuntimeError, ValueError):
            continue
        names.append(name)
    if context_parallel:
        names = [n for n in names if n in _AttentionBackendRegistry._supports_context_parallel]
    return names


def random_qkv(
    device: torch.device | str,
    heads: int,
    head_dim: int,
    tokens: int,
    dtype: torch.dtype,
    *,
    kv_tokens: int | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q (1, tokens, heads, head_dim), k and v (1, kv_tokens or tokens, ...), in diffusers'
    layout, q and k scaled so that the logits have a standard deviation of `LOGIT_STD`."""
    import torch

    generator = torch.Generator(device).manual_seed(seed)
    kv = kv_tokens or tokens
    scale = math.sqrt(LOGIT_STD)

    def draw(length: int, factor: float) -> torch.Tensor:
        shape = (1, length, heads, head_dim)
        return (factor * torch.randn(shape, generator=generator, device=device)).to(dtype)

    return draw(tokens, scale), draw(kv, scale), draw(kv, 1.0)


def sampled_rows(tokens: int, count: int = SAMPLED_ROWS) -> list[int]:
    """Query rows spread over the sequence, both ends included."""
    if tokens <= count:
        return list(range(tokens))
    return sorted({round(i * (tokens - 1) / (count - 1)) for i in range(count)})


def reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: Sequence[int]
) -> torch.Tensor:
    """Attention at query `rows`, in float32: (1, len(rows), heads, head_dim)."""
    import torch

    index = torch.tensor(list(rows), device=q.device)
    query = q.index_select(1, index).float()
    scores = torch.einsum("bqhd,bkhd->bhqk", query, k.float()) / math.sqrt(q.shape[-1])
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(dim=-1), v.float())


def dispatcher(
    name: str, *, compiled: bool = False
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """Attention through diffusers' dispatcher with backend `name`, as the Wan processor calls
    it (no mask, no context parallelism); with `compiled`, through `torch.compile` (Inductor,
    one whole graph, each shape its own: a backend that does not trace fails at its first
    call)."""
    import torch
    from diffusers.models.attention_dispatch import AttentionBackendName, dispatch_attention_fn

    backend = AttentionBackendName(name)

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = dispatch_attention_fn(q, k, v, backend=backend)
        return out

    if compiled:
        return torch.compile(attend, fullgraph=True, dynamic=False, backend=COMPILER)
    return attend


def time_call(
    name: str,
    attend: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    expected: torch.Tensor | None = None,
    rows: Sequence[int] | None = None,
    warmup: int = WARMUP,
    iters: int = ITERS,
    tolerance: float = TOLERANCE,
) -> BackendTiming:
    """Time `attend(q, k, v)` (median of `iters` calls after `warmup`; CUDA events on a GPU)
    and check its output at `rows` against `expected` (float32 attention there). An exception,
    a wrong shape, a non-finite value or a difference over `tolerance` makes it not hold."""
    import torch

    rows = list(rows) if rows is not None else sampled_rows(q.shape[1])
    try:
        with torch.no_grad():
            if expected is None:
                expected = reference(q, k, v, rows)
            out = attend(q, k, v)
            for _ in range(max(warmup - 1, 0)):
                attend(q, k, v)
            times = [_timed(attend, q, k, v) for _ in range(iters)]
    except Exception as error:  # a backend that cannot run here: recorded, skipped
        return BackendTiming(name, None, None, f"{type(error).__name__}: {_first_line(error)}")
    ms = statistics.median(times)
    if tuple(out.shape) != tuple(q.shape[:3]) + (v.shape[-1],):
        return BackendTiming(name, ms, None, f"output shape {tuple(out.shape)}")
    got = out.index_select(1, torch.tensor(rows, device=out.device)).float()
    diff = (got - expected).abs().max().item()
    if not math.isfinite(diff):
        return BackendTiming(name, ms, None, "non-finite output")
    if diff > tolerance:
        return BackendTiming(name, ms, diff, f"max abs diff {diff:.3g} > {tolerance:g}")
    return BackendTiming(name, ms, diff)


def time_backend(
    name: str,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    compiled: bool = False,
    **options: Any,
) -> BackendTiming:
    """`time_call` of diffusers' backend `name` (with `compiled`, under torch.compile)."""
    try:
        attend = dispatcher(name, compiled=compiled)
    except ValueError as error:
        return BackendTiming(name, None, None, f"ValueError: {_first_line(error)}")
    return time_call(name, attend, q, k, v, **options)


def measure(
    names: Sequence[str],
    device: torch.device | str,
    *,
    heads: int = HEADS,
    head_dim: int = HEAD_DIM,
    tokens: int = TOKENS,
    cross: tuple[int, int] | None = None,
    dtype: torch.dtype | None = None,
    tolerance: float = TOLERANCE,
    warmup: int = WARMUP,
    iters: int = ITERS,
    compiled: bool = False,
) -> list[BackendTiming]:
    """Each backend timed on self-attention at (1, tokens, heads, head_dim). With `cross` =
    (query tokens, heads), one that holds there must also hold, untimed, on cross-attention:
    those query tokens against `TEXT_TOKENS` keys. With `compiled`, each through torch.compile,
    Dynamo's caches emptied after each (its closures share one code object, whose graphs for
    every backend and shape would pass Dynamo's recompile limit): so this runs before a
    compiled DiT's first forward, not between its steps."""
    import torch

    dtype = dtype or torch.bfloat16
    q, k, v = random_qkv(device, heads, head_dim, tokens, dtype)
    rows = sampled_rows(tokens)
    expected = reference(q, k, v, rows)
    text = None
    if cross is not None:
        cross_tokens, cross_heads = cross
        cq, ck, cv = random_qkv(device, cross_heads, head_dim, cross_tokens, dtype,
                                kv_tokens=TEXT_TOKENS, seed=1)  # fmt: skip
        cross_rows = sampled_rows(cross_tokens)
        text = (cq, ck, cv, cross_rows, reference(cq, ck, cv, cross_rows))
    table = []
    for name in names:
        timing = time_backend(name, q, k, v, expected=expected, rows=rows, warmup=warmup,
                              iters=iters, tolerance=tolerance, compiled=compiled)  # fmt: skip
        if timing.ok and text is not None:
            cq, ck, cv, cross_rows, cross_expected = text
            check = time_backend(name, cq, ck, cv, expected=cross_expected, rows=cross_rows,
                                 warmup=0, iters=1, tolerance=tolerance,
                                 compiled=compiled)  # fmt: skip
            if not check.ok:
                timing = BackendTiming(name, timing.ms, timing.max_diff,
                                       f"cross-attention: {check.error}")  # fmt: skip
        table.append(timing)
        if compiled:
            torch.compiler.reset()
        _release(device)
    return table


def choose_backend(
    device: torch.device | str,
    heads: int = HEADS,
    head_dim: int = HEAD_DIM,
    tokens: int = TOKENS,
    dtype: torch.dtype | None = None,
    *,
    ranks: int = 1,
    candidates: Sequence[str] | None = None,
    tolerance: float = TOLERANCE,
    compiled: bool = False,
) -> AttentionChoice:
    """The fastest backend that holds for one rank of a `ranks`-way Ulysses run of a DiT with
    `heads` heads over `tokens` tokens: timed at (1, tokens, heads // ranks, head_dim), under
    torch.compile for a `compiled` DiT. Off CUDA, the default, untimed."""
    import torch

    local_heads = heads // ranks
    if torch.device(device).type != "cuda":
        return AttentionChoice(DEFAULT, local_heads, tokens, note="not timed off CUDA")
    names = candidates or candidate_backends(device, context_parallel=ranks > 1,
                                             compiled=compiled)  # fmt: skip
    table = measure(names, device, heads=local_heads, head_dim=head_dim, tokens=tokens,
                    cross=(tokens // ranks, heads), dtype=dtype, tolerance=tolerance,
                    compiled=compiled)  # fmt: skip
    return AttentionChoice(pick(table), local_heads, tokens, table, compiled=compiled)


def remembered_choice(
    device: torch.device,
    heads: int,
    head_dim: int,
    tokens: int,
    dtype: torch.dtype,
    *,
    ranks: int = 1,
    compiled: bool = False,
    cache: Path | None = None,
) -> AttentionChoice:
    """`choose_backend`'s choice, timed once per GPU model, software and shape, then read back
    from `cache` (wanctl's user cache by default): the timing costs 1 to 2 s before a run's
    first step eager, 10.9 s compiled (each candidate compiled; one H200, 2026-12-02), and
    its answer does not change between runs."""
    path = cache or cache_path("attention.json")
    key = choice_key(device, heads, head_dim, tokens, dtype, ranks, compiled)
    known = read_cache(path)
    if key in known:
        return replace(AttentionChoice.from_dict(known[key]), cached=True)
    choice = choose_backend(device, heads, head_dim, tokens, dtype, ranks=ranks,
                            compiled=compiled)  # fmt: skip
    if worth_remembering(choice):
        known[key] = asdict(choice)
        write_cache(path, known)
    return choice


# What a timing failed of that says this run's state, not the GPU's: its memory, or a compiler
# that is missing or broken here (a C compiler or Triton installed later would change it).
TRANSIENT = ("out of memory", "backendcompilerfailed", "inductorerror")


def worth_remembering(choice: AttentionChoice) -> bool:
    """Whether a choice holds for the next run too: timed, a candidate held, and none failed
    for a reason of this run's (`TRANSIENT`)."""
    errors = [(t.error or "").lower() for t in choice.timings]
    transient = any(word in error for error in errors for word in TRANSIENT)
    held = any(t.ok for t in choice.timings)
    return bool(choice.timings) and not choice.note and held and not transient


def choice_key(
    device: torch.device,
    heads: int,
    head_dim: int,
    tokens: int,
    dtype: torch.dtype,
    ranks: int,
    compiled: bool = False,
) -> str:
    """What a timing depends on: the GPU model, torch, diffusers, the backends installed (one
    added or removed times again), compiled or eager, the dtype and one rank's shape."""
    import diffusers
    import torch

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    backends = ",".join(candidate_backends(device, context_parallel=ranks > 1, compiled=compiled))
    software = f"torch {torch.__version__} | diffusers {diffusers.__version__}"
    shape = f"{heads // ranks} of {heads} heads x {head_dim} | {tokens} tokens"
    way = "compiled" if compiled else "eager"
    return f"{name} | {software} | {way} | {dtype} | {shape} | {backends}"


def _timed(
    attend: Callable[[Any, Any, Any], Any], q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> float:
    """Milliseconds of one call."""
    import torch

    if q.device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        attend(q, k, v)
        end.record()
        end.synchronize()
        elapsed: float = start.elapsed_time(end)
        return elapsed
    begin = time.perf_counter()
    attend(q, k, v)
    return (time.perf_counter() - begin) * 1e3


def _release(device: torch.device | str) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [""])[0][:200]
