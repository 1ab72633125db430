"""Time diffusers' attention backends on the shapes one rank of a Ulysses run attends over
(all the tokens, 24 / N heads), then one forward of the TI2V-5B DiT (random weights, bf16, as
`wanctl.models` builds it) with the default backend and with each backend that holds; the
ratios to the default side by side, in one run.

On one GPU (the figures of issue 6):

    PYTHONPATH=. python benchmarks/attention.py

A smoke test anywhere (small shapes, a one-layer DiT, float32 on the CPU; the kernels PyTorch
has there):

    PYTHONPATH=. python benchmarks/attention.py --device cpu --tokens 1024 --size 256*256 \
        --frames 5 --layers 1

Needs torch, diffusers, transformers, rich and wanctl only. Each attention call is timed with
CUDA events (median of 5 after 2 warm-up calls) and checked against float32 attention at 128
sampled query rows (`wanctl.models.attention`); each forward is the median of 3 after one warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from wanctl.core.architectures import DIT_TI2V_5B, TEXT_TOKENS
from wanctl.core.workload import HEADS, Workload, parse_size
from wanctl.models.attention import (
    DEFAULT,
    HEAD_DIM,
    NATIVE,
    TOKENS,
    BackendTiming,
    candidate_backends,
    dit_tokens,
    measure,
    pick,
)

GIB = 2**30


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tokens", type=int, default=TOKENS, help="Tokens per attention call.")
    parser.add_argument("--heads", type=int, default=HEADS)
    parser.add_argument("--head-dim", type=int, default=HEAD_DIM)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--size", default="1280*704", help="DiT forward: WIDTH*HEIGHT.")
    parser.add_argument("--frames", type=int, default=121, help="DiT forward: frames (4n+1).")
    parser.add_argument("--layers", type=int, help="DiT layers (default: TI2V-5B's 30).")
    parser.add_argument("--forward-iters", type=int, default=3)
    parser.add_argument("--no-forward", action="store_true", help="Attention calls only.")
    return parser.parse_args()


def candidates(device: torch.device, ranks: int) -> list[str]:
    if device.type == "cuda":
        return candidate_backends(device, context_parallel=ranks > 1)
    return [*NATIVE, "_native_math"]  # the smoke test: whatever PyTorch runs on the CPU


def attention_table(
    rows: list[BackendTiming], ranks: int, heads: int, tokens: int, chosen: str
) -> Table:
    table = Table(
        title=f"{ranks} rank(s): self-attention (1, {tokens}, {heads}, head_dim) per rank",
        title_justify="left",
    )
    for column in ("backend", "ms/call", "vs default", "max abs diff", "holds"):
        table.add_column(column, justify="left" if column in ("backend", "holds") else "right")
    base = next((r.ms for r in rows if r.name == DEFAULT and r.ok), None)
    for row in rows:
        ms = f"{row.ms:.2f}" if row.ms is not None else "-"
        ratio = f"{base / row.ms:.2f}x" if base and row.ms and row.ok else "-"
        diff = f"{row.max_diff:.2e}" if row.max_diff is not None else "-"
        holds = "yes" if row.ok else f"no: {(row.error or '')[:60]}"
        name = f"{row.name} (chosen)" if row.name == chosen else row.name
        table.add_row(name, ms, ratio, diff, holds)
    return table


def forward_table(
    args: argparse.Namespace, device: torch.device, dtype: torch.dtype, names: list[str]
) -> Table:
    """One DiT forward per backend in `names` (the default first): seconds, ratio, peak
    memory, and the output's max abs difference from the default's."""
    from wanctl.models.configs import build_dit

    workload = Workload(*parse_size(args.size), args.frames, 1)
    latent = (1, 48, *workload.latent)
    tokens = dit_tokens(args.size, args.frames)
    generator = torch.Generator(device).manual_seed(0)
    hidden = torch.randn(latent, generator=generator, device=device).to(dtype)
    text_shape = (1, TEXT_TOKENS, DIT_TI2V_5B["text_dim"])
    text = (0.1 * torch.randn(text_shape, generator=generator, device=device)).to(dtype)
    timestep = torch.full((1, tokens), 500.0, device=device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        dit: Any = build_dit(device, dtype, num_layers=args.layers)

    def forward() -> torch.Tensor:
        with torch.no_grad():
            out: torch.Tensor = dit(
                hidden_states=hidden, timestep=timestep, encoder_hidden_states=text,
                return_dict=False,
            )[0]  # fmt: skip
        return out

    table = Table(
        title=f"DiT forward, {args.size} x {args.frames} frames ({tokens} tokens), "
        f"{args.layers or 30} layers, {str(dtype).removeprefix('torch.')}",
        title_justify="left",
    )
    for column in ("backend", "s/forward", "vs default", "peak GiB", "max abs diff vs default"):
        table.add_column(column, justify="left" if column == "backend" else "right")
    base_s, base_out = None, None
    for name in names:
        dit.set_attention_backend(name)
        try:
            out = forward()  # warm-up
            seconds = [_seconds(forward, device) for _ in range(args.forward_iters)]
        except Exception as error:
            table.add_row(name, "-", "-", "-", f"failed: {type(error).__name__}: {error}"[:80])
            continue
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            forward()
            peak = f"{torch.cuda.max_memory_allocated(device) / GIB:.1f}"
        else:
            peak = "-"
        s = statistics.median(seconds)
        if base_s is None:
            base_s, base_out = s, out.float()
        diff = (out.float() - base_out).abs().max().item() if base_out is not None else 0.0
        table.add_row(name, f"{s:.3f}", f"{base_s / s:.2f}x", peak, f"{diff:.2e}")
        del out
    return table


def _seconds(work: Any, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    console = Console()
    import diffusers
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # "attention backends are experimental", per call

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    cudnn = torch.backends.cudnn.version() if device.type == "cuda" else None
    console.print(f"{gpu}; torch {torch.__version__}, cuDNN {cudnn}, "
                  f"diffusers {diffusers.__version__}")  # fmt: skip
    held: list[str] = []
    chosen_one = DEFAULT
    start = time.perf_counter()
    for ranks in args.ranks:
        heads = args.heads // ranks
        rows = measure(candidates(device, ranks), device, heads=heads, head_dim=args.head_dim,
                       tokens=args.tokens, cross=(args.tokens // ranks, args.heads),
                       dtype=dtype)  # fmt: skip
        chosen = pick(rows)
        if ranks == args.ranks[0]:
            held = [r.name for r in sorted(rows, key=lambda r: r.ms or 0.0) if r.ok]
            chosen_one = chosen
        console.print(attention_table(rows, ranks, heads, args.tokens, chosen))
    console.print(f"attention tables: {time.perf_counter() - start:.1f} s")
    if args.no_forward:
        return
    names = [DEFAULT, *(n for n in held if n != DEFAULT)]
    console.print(forward_table(args, device, dtype, names))
    console.print(f"chosen at {args.ranks[0]} rank(s): {chosen_one}")


if __name__ == "__main__":
    main()
