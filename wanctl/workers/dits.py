"""The DiTs of a generate rank (`wanctl.workers.generate`): placed as the settings say
(`wanctl.models.placement`), Ulysses- and CFG-parallel over the ranks (`wanctl.models.cfg`),
their forwards recorded per step, and the attention backend every rank runs."""

from __future__ import annotations

import argparse
import dataclasses
import gc
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import torch
import torch.distributed as dist

from wanctl.core.families import Family
from wanctl.errors import UsageError
from wanctl.models.attention import (
    COMPILED_ONLY,
    DEFAULT,
    AttentionChoice,
    combine,
    dit_tokens,
    remembered_choice,
)
from wanctl.models.cfg import cfg_mesh, enable_cfg_parallel
from wanctl.models.compiled import CompiledDit, CompileReport, not_compiled
from wanctl.models.pipelines import WanModel
from wanctl.models.placement import BoundarySwap, prepare_dit
from wanctl.models.precision import fp8_problem, quantize_block


def load_dits(
    model: WanModel, device: torch.device, args: argparse.Namespace, negative: torch.Tensor
) -> tuple[list[Any], BoundarySwap | None, list[CompiledDit]]:
    """The DiT, or both experts (high noise first), placed as the settings say
    (`wanctl.models.placement`; a checkpoint's loaded there from its files), their linear
    layers in fp8 with `--dit-precision fp8` (`wanctl.models.precision`), their blocks compiled
    unless the run is on the CPU or `--no-compile` (`wanctl.models.compiled`), Ulysses-parallel
    over all ranks (with `--cfg-parallel`, over each half, which computes one guidance pass:
    `wanctl.models.cfg`, given the `negative` prompt's embeddings); the swap at the boundary
    when the low-noise expert waits on the CPU; and the compiled wrappers, which report how
    compiling went."""
    if args.dit_precision == "fp8" and (problem := fp8_problem(device)):
        raise UsageError("this run cannot compute its DiT in fp8", why=problem,
                         fix="drop --dit-precision fp8 (--dit-storage fp8 halves the weights "
                         "without fp8 tensor cores)")  # fmt: skip
    staging = torch.device(model.staging)
    compute = torch.bfloat16 if device.type == "cuda" else torch.float32
    # fp8 compute quantizes bf16 weights itself, with scales, each block as it is loaded
    fp8 = args.dit_precision == "fp8"
    placed = dict(storage="bf16" if fp8 else args.dit_storage, shard=args.dit == "fsdp",
                  compute=compute, each_block=quantize_block if fp8 else None)  # fmt: skip
    high = model.transformer(staging)
    dits = [prepare_dit(high, device=device, weights=model.dit_weights(0), **placed)]
    low = model.transformer_2(staging)
    swap = None
    if low is not None:
        waits = torch.device("cpu") if args.offload else device
        weights = model.dit_weights(1)
        dits.append(prepare_dit(low, device=waits, fill_on=device, weights=weights, **placed))
        swap = BoundarySwap(dits[0], dits[1], device) if args.offload else None
    if fp8:
        release(device)  # the last block's bf16 weights
    eager = eager_reason(device, args)
    compiled = [] if eager else [CompiledDit(dit) for dit in dits]
    world, groups = dist.get_world_size(), 2 if args.cfg_parallel else 1
    mesh = cfg_mesh(device.type, world, groups) if groups > 1 else None
    for dit in dits:
        if world // groups > 1:
            enable_ulysses(dit, world // groups, mesh["ring", "ulysses"] if mesh else None)
        if mesh is not None:
            enable_cfg_parallel(dit, negative, mesh)
    return dits, swap, compiled


def eager_reason(device: torch.device, args: argparse.Namespace) -> CompileReport | None:
    """Why this run's DiTs stay eager, or None to compile them."""
    layerwise = args.dit_storage == "fp8" and args.dit_precision != "fp8"
    return not_compiled(device, not args.no_compile, layerwise_cast=layerwise)


def compile_report(
    compiled: list[CompiledDit], device: torch.device, args: argparse.Namespace
) -> Any:
    """How compiling went on this rank, as a dict for the summary: the worst of the DiTs that
    ran (an expert eager before one in pieces before whole blocks), or why the DiT ran eager."""
    ran = [wrapper.report() for wrapper in compiled if wrapper.first_forward_s is not None]
    if not ran:
        report = eager_reason(device, args)
        return asdict(report) if report is not None else None
    return asdict(min(ran, key=lambda r: (r.compiled, r.whole_blocks)))


def set_attention_backend(
    dits: list[Any], backend: str, compiled: Sequence[CompiledDit] = ()
) -> None:
    """`backend` on every DiT; a backend fast only compiled is replaced by the default where
    a DiT's blocks fall back to eager (`CompiledDit.eager_attention`)."""
    for dit in dits:  # ModelMixin's method, untyped in diffusers
        dit.set_attention_backend(backend)
    for wrapper in compiled:
        wrapper.eager_attention = DEFAULT if backend in COMPILED_ONLY else None


def record_forwards(dits: list[Any]) -> list[str]:
    """A list that every forward of the DiTs appends its expert's name to ("dit" for a single
    DiT; "high", then "low" for the two experts): the step callback reads and empties it, so
    that what a step records is what ran, not what the boundary says should have."""
    names = ["dit"] if len(dits) == 1 else ["high", "low"]
    ran: list[str] = []
    for dit, name in zip(dits, names, strict=True):
        dit.register_forward_pre_hook(lambda *_, name=name: ran.append(name))
    return ran


def choose_attention(
    transformer: Any,
    args: argparse.Namespace,
    device: torch.device,
    family: Family,
    *,
    compiled: bool = False,
) -> AttentionChoice:
    """The attention backend every rank runs: each rank times the candidates on its own GPU at
    the shape it attends over (all the tokens, heads / world size), under torch.compile when
    the DiT is `compiled` (`wanctl.models.attention`), and the choice is the
    fastest that holds on every rank (`wanctl.models.attention.combine`). A measurement that fails
    leaves diffusers' default, with the reason in the note."""
    world = dist.get_world_size()
    ulysses = world // (2 if args.cfg_parallel else 1)
    config = transformer.config
    heads, head_dim = config.num_attention_heads, config.attention_head_dim
    tokens = dit_tokens(args.size, args.frames, family)
    try:
        mine = remembered_choice(device, heads, head_dim, tokens, transformer.dtype,
                                 ranks=ulysses, compiled=compiled)  # fmt: skip
    except Exception as error:  # timing is an optimisation: the run goes on without it
        note = f"not measured: {type(error).__name__}: {error}"
        mine = AttentionChoice(DEFAULT, heads // ulysses, tokens, note=note[:300])
    release(device)
    if world == 1:
        return mine
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, asdict(mine))
    choices = [AttentionChoice.from_dict(c) for c in gathered]
    failed = next((c for c in choices if not c.timings), None)  # a rank could not measure
    if failed is not None:
        return dataclasses.replace(failed, backend=DEFAULT)
    return combine(choices)


def enable_ulysses(transformer: Any, degree: int, mesh: Any = None) -> None:
    """Ulysses context parallelism over all ranks, or over `mesh` (a guidance group's ranks):
    `enable_parallelism` with `ContextParallelConfig(ulysses_degree=degree, mesh=mesh)`.

    With no accelerator (gloo on the CPU), diffusers 0.42.1's `ModelMixin.
    _resolve_parallel_config` fails with ZeroDivisionError: it names a device as
    `rank % torch.accelerator.device_count()`, which is 0 there, although context parallelism
    never uses that device (the mesh and the all-to-alls run on the process group). So, on
    such machines only, the count reads 1 for the duration of the call.
    """
    from diffusers import ContextParallelConfig

    config = ContextParallelConfig(ulysses_degree=degree, mesh=mesh)
    if torch.accelerator.device_count() > 0:
        transformer.enable_parallelism(config=config)
        return
    count = torch.accelerator.device_count
    torch.accelerator.device_count = lambda: 1
    try:
        transformer.enable_parallelism(config=config)
    finally:
        torch.accelerator.device_count = count


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
