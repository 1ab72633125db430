"""One rank's compute in each Ulysses layout, on one GPU: the inputs of tune's seconds-per-step
prediction (`wanctl.tune.speed`), measured side by side in one run.

Under Ulysses N a rank runs the linear layers (and the cross-attention) over 1/N of the tokens
and self-attention over every token with 1/N of the heads. On one GPU that is measured as one
DiT forward at 1/N of the tokens (TI2V-5B, random weights, bf16) with its own self-attention
(all heads over 1/N of the tokens) traded for the rank's (1/N of the heads over every token),
both attention calls timed alone (`wanctl.models.attention.measure`, the backend it would pick).
tune assumes a rank's compute is the whole forward's / N: the last column is that ratio.

    PYTHONPATH=. python benchmarks/layouts.py [--ranks 1 2 4 8] [--out layouts.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from wanctl.core.architectures import DIT_TI2V_5B, TEXT_TOKENS
from wanctl.core.workload import Workload
from wanctl.models.attention import HEAD_DIM, candidate_backends, measure, pick

# Sizes whose tokens are 1/N of 1280*704 x 121's 27,280 (the frames kept: 31 latent frames).
SIZES = {1: (1280, 704), 2: (640, 704), 4: (640, 352), 8: (320, 352)}
FRAMES = 121
HEADS = DIT_TI2V_5B["num_attention_heads"]
LAYERS = DIT_TI2V_5B["num_layers"]


def forward_seconds(dit: Any, workload: Workload, device: torch.device, iters: int) -> float:
    """Median seconds of one DiT forward at `workload`'s size (after a warm-up)."""
    dtype = torch.bfloat16
    generator = torch.Generator(device).manual_seed(0)
    hidden = torch.randn((1, 48, *workload.latent), generator=generator, device=device).to(dtype)
    text = (0.1 * torch.randn((1, TEXT_TOKENS, DIT_TI2V_5B["text_dim"]), generator=generator,
                              device=device)).to(dtype)  # fmt: skip
    timestep = torch.full((1, workload.tokens), 500.0, device=device)

    def forward() -> None:
        with torch.no_grad():
            dit(hidden_states=hidden, timestep=timestep, encoder_hidden_states=text,
                return_dict=False)  # fmt: skip

    forward()
    seconds = []
    for _ in range(iters):
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        forward()
        torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def attention_ms(device: torch.device, heads: int, tokens: int, backend: str) -> float:
    """One self-attention call (1, tokens, heads, 128) with `backend`, ms."""
    rows = measure([backend], device, heads=heads, head_dim=HEAD_DIM, tokens=tokens,
                   cross=(tokens, heads), dtype=torch.bfloat16)  # fmt: skip
    ms = rows[0].ms
    assert ms is not None, rows[0].error
    return ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from diffusers.utils import logging as diffusers_logging

    from wanctl.models.configs import build_dit

    diffusers_logging.set_verbosity_error()
    device = torch.device("cuda")
    console = Console(width=150)
    console.print(f"{torch.cuda.get_device_name(device)}; torch {torch.__version__}")
    backend = pick(measure(candidate_backends(device), device, heads=HEADS, head_dim=HEAD_DIM,
                           tokens=Workload(1280, 704, FRAMES, 1).tokens,
                           cross=(27_280, HEADS), dtype=torch.bfloat16))  # fmt: skip
    dit: Any = build_dit(device, torch.bfloat16)
    dit.set_attention_backend(backend)
    whole = Workload(*SIZES[1], FRAMES, 1)
    rows = []
    for n in args.ranks:
        share = Workload(*SIZES[n], FRAMES, 1)
        forward = forward_seconds(dit, share, device, args.iters)
        own = attention_ms(device, HEADS, share.tokens, backend)
        rank = attention_ms(device, HEADS // n, whole.tokens, backend)
        rows.append({"ranks": n, "heads": HEADS // n, "tokens": share.tokens,
                     "forward_share_s": forward, "attention_own_ms": own,
                     "attention_rank_ms": rank,
                     "rank_s": forward + LAYERS * (rank - own) / 1e3})  # fmt: skip
    one = rows[0]["rank_s"] if rows[0]["ranks"] == 1 else None
    table = Table(title=f"one rank's compute per forward, TI2V-5B 1280*704x{FRAMES} ({backend})",
                  title_justify="left")  # fmt: skip
    for column in ("Ulysses N", "heads/rank", "tokens/rank (linear)", "forward at tokens/N s",
                   "self-attn own ms", "self-attn rank ms", "rank compute s",
                   "vs 1 rank / N"):  # fmt: skip
        table.add_column(column, justify="right")
    for row in rows:
        ratio = f"{row['rank_s'] / (one / row['ranks']):.2f}" if one else "-"
        table.add_row(str(row["ranks"]), str(row["heads"]), str(row["tokens"]),
                      f"{row['forward_share_s']:.3f}", f"{row['attention_own_ms']:.2f}",
                      f"{row['attention_rank_ms']:.2f}", f"{row['rank_s']:.3f}", ratio)  # fmt: skip
    console.print(table)
    if args.out:
        args.out.write_text(json.dumps({"device": torch.cuda.get_device_name(device),
                                        "backend": backend, "rows": rows}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
