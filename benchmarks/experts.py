"""One A14B expert's forward at a run's shape with its weights in bf16, and stored in fp8
(e4m3, computed in bf16: `--dit-storage fp8`, diffusers' layerwise casting), side by side in
one process: seconds per forward, the weights' memory, the peak, and the fp8 output's error
against bf16 (relative L2 and max abs) on two kinds of input: noise, as the first step sees,
and a smooth field (structure at a few latent pixels' scale, as late steps see).

On one GPU (the figures of the A14B issue; the weights are random, uniform in +-0.02: real
weights have other ranges, so the error is this architecture's under fp8 rounding, not the
checkpoint's):

    python benchmarks/experts.py --size 1280*720 --frames 81

A smoke test anywhere (a narrow expert, float32 compute on the CPU):

    python benchmarks/experts.py --check-only
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from wanctl.core.architectures import DIT_A14B, TEXT_TOKENS
from wanctl.core.families import T2V_A14B
from wanctl.core.workload import Workload, parse_size
from wanctl.models.builtin import tiny_expert_config, tiny_transformer
from wanctl.models.configs import build_dit
from wanctl.models.placement import FP8

GIB = 2**30


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1280*720", help="WIDTH*HEIGHT in pixels.")
    parser.add_argument("--frames", type=int, default=81, help="Video frames (4n+1).")
    parser.add_argument("--layers", type=int, help="Fewer transformer blocks (a quick trace).")
    parser.add_argument("--check-only", action="store_true", help="Tiny expert on the CPU.")
    args = parser.parse_args()
    if args.check_only:
        args.size, args.frames = "128*64", 9
    return args


def expert(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> Any:
    if args.check_only:
        return tiny_transformer(tiny_expert_config(T2V_A14B)).to(device)  # float32
    torch.manual_seed(0)
    return build_dit(device, dtype, num_layers=args.layers, config=DIT_A14B)


def inputs(
    args: argparse.Namespace, dit: Any, device: torch.device, dtype: torch.dtype
) -> dict[str, dict[str, torch.Tensor]]:
    """Noise and a smooth field (noise at 1/8 of the latent resolution, upsampled), the
    high-noise timestep, and a prompt's worth of embeddings."""
    width, height = parse_size(args.size)
    frames, h, w = Workload(width, height, args.frames, 1, family=T2V_A14B).latent
    generator = torch.Generator().manual_seed(1)
    shape = (1, dit.config.in_channels, frames, h, w)
    noise = torch.randn(shape, generator=generator)
    coarse = torch.randn((*shape[:3], max(1, h // 8), max(1, w // 8)), generator=generator)
    smooth = F.interpolate(coarse, size=shape[2:], mode="trilinear")
    smooth = smooth / smooth.std()
    text = 0.1 * torch.randn(1, TEXT_TOKENS, dit.config.text_dim, generator=generator)
    common = {
        "timestep": torch.tensor([999.0], device=device),
        "encoder_hidden_states": text.to(device, dtype),
    }
    return {
        name: {"hidden_states": latents.to(device, dtype), **common}
        for name, latents in (("noise", noise), ("smooth", smooth))
    }


def timed(device: torch.device, work: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, out.float().cpu()


def forward(model: Any, batch: dict[str, torch.Tensor]) -> Callable[[], torch.Tensor]:
    def run() -> torch.Tensor:
        out: torch.Tensor = model(**batch, return_dict=False)[0]
        return out

    return run


def weights_gib(module: Any) -> float:
    return sum(p.numel() * p.element_size() for p in module.parameters()) / GIB


def main() -> None:
    args = parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.check_only else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    bf16 = expert(args, device, dtype).requires_grad_(False)
    fp8 = copy.deepcopy(bf16)
    fp8.enable_layerwise_casting(storage_dtype=FP8, compute_dtype=dtype)
    batches = inputs(args, bf16, device, dtype)
    console = Console()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    tokens = Workload(*parse_size(args.size), args.frames, 1, family=T2V_A14B).tokens
    layers = bf16.config.num_layers
    console.print(f"A14B expert ({layers} blocks), {args.size} x {args.frames} frames = "
                  f"{tokens} tokens, on {name}")  # fmt: skip
    table = Table(title="one forward, bf16 weights against fp8 storage", title_justify="left")
    for column in ("weights", "input", "seconds", "weights GiB", "peak GiB", "rel. L2", "max abs"):
        table.add_column(column, justify="right")
    outputs: dict[tuple[str, str], torch.Tensor] = {}
    errors: dict[str, float] = {}
    built = str(dtype).removeprefix("torch.").replace("bfloat16", "bf16")
    for label, model in ((built, bf16), ("fp8", fp8)):
        timed(device, forward(model, batches["noise"]))  # warm-up
        for kind, batch in batches.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            seconds, out = timed(device, forward(model, batch))
            peak = torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None
            outputs[label, kind] = out
            reference = outputs[built, kind]
            error = errors[f"{label} {kind}"] = ((out - reference).norm() / reference.norm()).item()
            table.add_row(
                label, kind, f"{seconds:.3f}", f"{weights_gib(model):.2f}",
                f"{peak:.2f}" if peak is not None else "n/a", f"{error:.2e}",
                f"{(out - reference).abs().max().item():.2e}",
            )  # fmt: skip
    console.print(table)
    console.print(
        f"fp8 storage, relative L2 error of one forward against {built}: "
        f"{errors['fp8 noise']:.2e} on noise, {errors['fp8 smooth']:.2e} on a smooth field"
    )


if __name__ == "__main__":
    main()
