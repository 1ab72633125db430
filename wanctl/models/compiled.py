"""The DiT's repeated transformer block compiled with torch.compile (regional compilation,
as diffusers' `compile_repeated_blocks` does), and the eager DiT where compilation fails.

One block is compiled and its graph serves all of them (TI2V-5B's 30, an A14B expert's 40:
they share one class and, within a run, one shape), so the cold compile costs tens of seconds,
not minutes; Inductor's cache (`TORCHINDUCTOR_CACHE_DIR`, which wanctl points at its own cache
folder) makes the next run of the same size start warm. Shapes are static: a run has one
(tokens, text length), and each size compiles once.

CFG parallel's exchange and the context-parallel gather sit at the DiT's border, outside the
compiled blocks; diffusers 0.42.1 splits the sequence at the first block's input, inside it.

Compilation happens at the first forward: one graph per block first; where Dynamo cannot
trace the block whole (diffusers 0.42.1's context-parallel attention dispatch under Ulysses),
in pieces with graph breaks. If that fails too (no C compiler, a backend error), the blocks go
back to eager, the forward runs again, and the reason is kept (`CompileReport.reason`): a run
never dies of its optimisation.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch._dynamo.exc import TorchDynamoException


@dataclass(frozen=True)
class CompileReport:
    """What became of the compiled path on a rank: on or not (and why not), and the seconds
    of the first forward, which compiles (or loads from Inductor's cache)."""

    compiled: bool
    reason: str | None = None  # why not compiled, or why in pieces (graph breaks)
    first_forward_s: float | None = None
    whole_blocks: bool = False  # each block one graph (no graph break)


def not_compiled(
    device: torch.device, wanted: bool, *, layerwise_cast: bool = False
) -> CompileReport | None:
    """Why this run's DiT stays eager before trying, or None to compile. `layerwise_cast`: its
    weights are stored in fp8 by diffusers' layerwise casting, whose hooks rebuild each
    linear layer's weight inside the block: Dynamo then cuts a 2-block tiny DiT into 25 pieces
    ("Attempted to use `torch.nn.Parameter()` constructor", seen on the CPU), no faster than
    eager for a longer cold start."""
    if not wanted:
        return CompileReport(False, "turned off (--no-compile)")
    if device.type != "cuda":
        return CompileReport(False, "the CPU: compiling takes longer than it saves there")
    if layerwise_cast:
        return CompileReport(False, "fp8 storage (layerwise casting) does not compile whole; "
                             "--dit-precision fp8 compiles")  # fmt: skip
    return None


class CompiledDit:
    """`dit`'s transformer blocks compiled (`backend`: torch.compile's, Inductor by default),
    with the eager fallback of the module docstring. Wraps `dit.forward`; apply it before
    context and CFG parallelism wrap the forward in turn, so that a failed first forward is
    re-run with the same (already split) inputs."""

    def __init__(
        self, dit: Any, *, backend: str | Callable[..., Any] = "inductor", eager_casts: bool = True
    ):
        if eager_casts:
            emulate_eager_casts()
        self.blocks = repeated_blocks(dit)
        self.backend = backend
        self.fullgraph = True
        self.problem: str | None = None  # why the blocks run eager
        self.graph_breaks: str | None = None  # why a block is compiled in pieces
        self.first_forward_s: float | None = None
        # the attention backend to switch to if the blocks end up eager: set where the chosen
        # one is fast compiled only (FlexAttention eager materialises the whole score matrix)
        self.eager_attention: str | None = None
        self._dit = dit
        self._eager = dit.forward
        self._compile(fullgraph=True)
        dit.forward = self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.first_forward_s is not None:
            return self._eager(*args, **kwargs)
        start = time.perf_counter()
        out = self._first(*args, **kwargs)
        self.first_forward_s = time.perf_counter() - start
        return out

    def report(self) -> CompileReport:
        compiled = self.problem is None
        note = self.problem if not compiled else self.graph_breaks
        return CompileReport(compiled, note, self.first_forward_s, self.fullgraph and compiled)

    def _first(self, *args: Any, **kwargs: Any) -> Any:
        """The first forward, which compiles: one graph per block; else a block in pieces
        around what Dynamo cannot trace (diffusers' context-parallel attention dispatch, in
        0.42.1: its all-to-alls then run between the pieces); else eager."""
        try:
            return self._eager(*args, **kwargs)
        except TorchDynamoException as error:
            self.graph_breaks = f"graph breaks: {why_not(error)}"
        self._uncompile()
        self.fullgraph = False
        self._compile(fullgraph=False)
        try:
            return self._eager(*args, **kwargs)
        except TorchDynamoException as error:
            self.problem = why_not(error)
        self._uncompile()
        if self.eager_attention is not None:
            self._dit.set_attention_backend(self.eager_attention)
            self.problem += f"; attention back to {self.eager_attention}, which runs eager"
        return self._eager(*args, **kwargs)

    def _compile(self, *, fullgraph: bool) -> None:
        torch._dynamo.reset()  # a failed attempt's cached frames and guards
        for block in self.blocks:
            block.compile(fullgraph=fullgraph, dynamic=False, backend=self.backend)

    def _uncompile(self) -> None:
        # `nn.Module.compile` keeps the compiled callable here; None is the module's eager call
        for block in self.blocks:
            block._compiled_call_impl = None


def emulate_eager_casts() -> None:
    """Inductor rounds each intermediate to bf16 where eager PyTorch does, instead of keeping
    fused intermediates in fp32: the compiled TI2V-5B forward then differs from the eager one
    by a relative 7.1e-3 instead of 1.6e-2, at the same speed (0.926 against 0.930 s, one H200,
    `benchmarks/dit.py`, 2026-12-02), so that compiling changes a run's video no more than
    bf16 rounding does. A process-wide Inductor setting."""
    import torch._inductor.config as inductor

    inductor.emulate_precision_casts = True


def release_compile_workers() -> threading.Thread:
    """Inductor's compile workers, shut down in a thread of their own once the DiTs have
    compiled: Inductor keeps a pool of worker processes (one per core) for later compiles and
    shuts it down at the interpreter's exit: a bare torchrun worker that had compiled one
    function took 7.35 s from its exit handlers to torchrun's end, one that had compiled
    nothing 1.27 s (16 cores, one H200, 2026-12-03). Started as sampling ends, the shutdown
    overlaps the decode and frees the workers' host memory. Nothing may compile once it has
    started (Inductor's shutdown is not safe against a concurrent compile): both A14B experts
    compile within the sampling, the decode uses no Inductor. A worker that leaves before the
    thread is done (`wanctl.workers.group.leave`) cuts it short harmlessly: the pool's process
    exits when its pipe closes. Returns the thread."""
    from torch._inductor.async_compile import shutdown_compile_workers

    thread = threading.Thread(target=shutdown_compile_workers, name="inductor-workers-shutdown")
    thread.start()
    return thread


def repeated_blocks(dit: Any) -> list[torch.nn.Module]:
    """The modules of the classes `dit` names in `_repeated_blocks` (diffusers' list for
    regional compilation), found by their class's ancestry: FSDP2 turns a block into a
    subclass of its own (`FSDPWanTransformerBlock`), which `compile_repeated_blocks`, matching
    the name alone, would miss."""
    names = set(dit._repeated_blocks)
    return [m for m in dit.modules() if any(c.__name__ in names for c in type(m).__mro__)]


def why_not(error: BaseException) -> str:
    """A compile failure in a line: Dynamo's error, and what its backend raised (a compiler
    missing, an operation it cannot lower)."""
    cause = getattr(error, "inner_exception", None) or error.__cause__
    why = f"{type(error).__name__}: {first_line(error)}"
    if cause is not None:
        why += f" ({type(cause).__name__}: {first_line(cause)})"
    return why[:400]


def first_line(error: BaseException) -> str:
    """The first non-empty line of an error's message (Dynamo's run to dozens of lines)."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
