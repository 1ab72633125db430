"""One DiT forward at a run's shape in each of the ways wanctl can run it, side by side in one
process: eager bf16, compiled bf16 (`wanctl.models.compiled`), fp8 storage (diffusers'
layerwise casting, computed in bf16), fp8 compute (`wanctl.models.precision`), eager and
compiled. For each: seconds per forward, peak memory, the weights' memory, the cold compile
(the first forward into an empty Inductor cache, and again from the cache), and the error of
the output against eager bf16 (relative L2 and max abs) on two inputs: noise, as the first
step sees, and a smooth field (structure at a few latent pixels' scale, as late steps see).

On one GPU (issue 16's figures: TI2V-5B at 1280*704x121, 27,280 tokens; an A14B expert):

    python benchmarks/dit.py --model ti2v-5B --size 1280*704 --frames 121
    python benchmarks/dit.py --model a14b --size 832*480 --frames 81

A smoke test anywhere (a narrow DiT, float32 on the CPU; fp8 compute is refused there, with
the reason, and the compiled path runs through torch.compile's `aot_eager` backend):

    python benchmarks/dit.py --check-only

The weights are random (uniform in +-0.02: real weights have other ranges, so an fp8 error is
this architecture's under fp8 rounding, not a checkpoint's).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from wanctl.core.architectures import DIT_A14B, DIT_TI2V_5B, TEXT_TOKENS
from wanctl.core.families import T2V_A14B, TI2V_5B
from wanctl.core.workload import Workload, parse_size
from wanctl.models.builtin import tiny_transformer
from wanctl.models.compiled import CompiledDit
from wanctl.models.configs import build_dit
from wanctl.models.placement import FP8
from wanctl.models.precision import fp8_problem, quantize_fp8

GIB = 2**30
FAMILIES = {"ti2v-5B": (TI2V_5B, DIT_TI2V_5B), "a14b": (T2V_A14B, DIT_A14B)}
Batch = dict[str, torch.Tensor]
SKIPPABLE = ("fp32", "fused", "storage", "tensorwise")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ti2v-5B", choices=sorted(FAMILIES))
    parser.add_argument("--size", default="1280*704", help="WIDTH*HEIGHT in pixels.")
    parser.add_argument("--frames", type=int, default=121, help="Video frames (4n+1).")
    parser.add_argument("--iters", type=int, default=3, help="Timed forwards on noise.")
    parser.add_argument("--layers", type=int, help="Fewer transformer blocks (a quick trace).")
    parser.add_argument("--json", type=Path, help="Also write the rows here.")
    parser.add_argument("--skip", nargs="*", default=[], choices=SKIPPABLE,
                        help="Rows left out: the float32 reference, compiled with fused fp32 "
                        "intermediates, fp8 storage, fp8 compute per tensor.")  # fmt: skip
    parser.add_argument("--check-only", action="store_true", help="Tiny DiT on the CPU.")
    args = parser.parse_args()
    if args.check_only:
        args.size, args.frames, args.iters = "128*64", 9, 1
    return args


def workload(args: argparse.Namespace) -> Workload:
    family = FAMILIES[args.model][0]
    return Workload(*parse_size(args.size), args.frames, 1, family=family)


def build(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> Any:
    if args.check_only:
        return tiny_transformer().to(device)  # float32
    torch.manual_seed(0)
    config = FAMILIES[args.model][1]
    dit: Any = build_dit(device, dtype, num_layers=args.layers, config=config)
    return dit.requires_grad_(False)


def inputs(work: Workload, dit: Any, device: torch.device, dtype: torch.dtype) -> dict[str, Batch]:
    """Noise and a smooth field (noise at 1/8 of the latent resolution, upsampled), a
    mid-schedule timestep (per token where the family expands timesteps), and a prompt's worth
    of embeddings."""
    frames, h, w = work.latent
    generator = torch.Generator().manual_seed(1)
    shape = (1, dit.config.in_channels, frames, h, w)
    noise = torch.randn(shape, generator=generator)
    coarse = torch.randn((*shape[:3], max(1, h // 8), max(1, w // 8)), generator=generator)
    smooth = F.interpolate(coarse, size=shape[2:], mode="trilinear")
    smooth = smooth / smooth.std()
    text = 0.1 * torch.randn(1, TEXT_TOKENS, dit.config.text_dim, generator=generator)
    steps = (1, work.tokens) if work.family.expands_timesteps else (1,)
    common = {
        "timestep": torch.full(steps, 500.0, device=device),
        "encoder_hidden_states": text.to(device, dtype),
    }
    return {
        name: {"hidden_states": latents.to(device, dtype), **common}
        for name, latents in (("noise", noise), ("smooth", smooth))
    }


def timed(device: torch.device, model: Any, batch: Batch) -> tuple[float, torch.Tensor]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model(**batch, return_dict=False)[0]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, out.float().cpu()


def relative_l2(out: torch.Tensor, reference: torch.Tensor) -> float:
    return ((out - reference).norm() / reference.norm()).item()


def allocated(device: torch.device) -> int:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


def variant(base: Any, make: Callable[[Any], Any], device: torch.device) -> tuple[Any, float]:
    """`make` applied to a copy of `base`, and the copy's weights in GiB as allocated."""
    before = allocated(device)
    model = make(copy.deepcopy(base))
    return model, (allocated(device) - before) / GIB


def fp8_storage(dtype: torch.dtype) -> Callable[[Any], Any]:
    def make(model: Any) -> Any:
        model.enable_layerwise_casting(storage_dtype=FP8, compute_dtype=dtype)
        return model

    return make


def fp8_compute(per_row: bool) -> Callable[[Any], Any]:
    def make(model: Any) -> Any:
        quantize_fp8(model, per_row=per_row)
        return model

    return make


class Bench:
    """The rows, each measured the same way against the eager reference's outputs."""

    def __init__(self, device: torch.device, batches: dict[str, Batch], iters: int):
        self.device, self.batches, self.iters = device, batches, iters
        self.reference: dict[str, torch.Tensor] = {}
        self.exact: dict[str, torch.Tensor] = {}  # float32 arithmetic on the same weights
        self.rows: list[dict[str, Any]] = []

    def measure(self, label: str, model: Any, weights_gib: float | None = None) -> None:
        """Warm-up (which compiles a compiled model), then `iters` timed forwards on noise and
        one on the smooth field. The peak is counted above what was allocated before (the
        weights of every model alive), plus `weights_gib`, this model's own."""
        warm, _ = timed(self.device, model, self.batches["noise"])
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device) if cuda else 0
        runs = [timed(self.device, model, self.batches["noise"]) for _ in range(self.iters)]
        outputs = {"noise": runs[-1][1], "smooth": timed(self.device, model,
                                                         self.batches["smooth"])[1]}  # fmt: skip
        above = (torch.cuda.max_memory_allocated(self.device) - before) / GIB if cuda else None
        row: dict[str, Any] = {
            "way": label,
            "seconds": statistics.median(s for s, _ in runs),
            "first_forward_s": warm,
            "weights_gib": weights_gib,
            "activations_peak_gib": above,
        }
        for kind, out in outputs.items():
            reference = self.reference.setdefault(kind, out)
            row[f"rel_l2_{kind}"] = relative_l2(out, reference)
            row[f"max_abs_{kind}"] = (out - reference).abs().max().item()
            if kind in self.exact:
                row[f"rel_l2_fp32_{kind}"] = relative_l2(out, self.exact[kind])
        self.rows.append(row)

    def reference_fp32(self, model: Any) -> None:
        """The outputs of `model` (the bf16 weights, upcast) computed in float32: the error of
        bf16 arithmetic itself, against which the other ways' errors are read."""
        for kind, batch in self.batches.items():
            fp32 = {k: v.float() if v.is_floating_point() else v for k, v in batch.items()}
            self.exact[kind] = timed(self.device, model, fp32)[1]

    def refused(self, label: str, why: str) -> None:
        self.rows.append({"way": label, "refused": why})


def compiled(model: Any, backend: str, casts: bool) -> tuple[Any, Callable[[], None]]:
    """`model` with its blocks compiled, and an undo that leaves it eager again."""
    wrapper = CompiledDit(model, backend=backend, eager_casts=casts)

    def undo() -> None:
        wrapper._uncompile()
        model.forward = wrapper._eager

    return model, undo


def compile_row(
    bench: Bench, label: str, model: Any, backend: str, weights: float, casts: bool = True
) -> None:
    """`model` compiled into the empty cache (cold), then once more from the cache (warm);
    `casts`: as wanctl compiles, rounding to bf16 where eager does (`emulate_eager_casts`)."""
    import torch._inductor.config as inductor

    inductor.emulate_precision_casts = casts
    model, undo = compiled(model, backend, casts)
    cold, _ = timed(bench.device, model, bench.batches["noise"])
    undo()
    torch._dynamo.reset()  # forget the in-memory graphs: the next compile reads the disk cache
    model, undo = compiled(model, backend, casts)
    bench.measure(label, model, weights)
    bench.rows[-1].update(cold_first_forward_s=cold)
    undo()
    torch._dynamo.reset()


def run(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> Bench:
    base = build(args, device, dtype)
    weights = allocated(device) / GIB
    bench = Bench(device, inputs(workload(args), base, device, dtype), args.iters)
    backend = "aot_eager" if device.type == "cpu" else "inductor"
    built = str(dtype).removeprefix("torch.").replace("bfloat16", "bf16")
    if dtype != torch.float32 and "fp32" not in args.skip:
        exact, _ = variant(base, lambda model: model.float(), device)
        bench.reference_fp32(exact)
        del exact
    bench.measure(f"eager {built}", base, weights)
    if "fused" not in args.skip:
        compile_row(bench, f"compiled {built}, fused in fp32", base, backend, weights,
                    casts=False)  # fmt: skip
    compile_row(bench, f"compiled {built} (wanctl's)", base, backend, weights)
    if "storage" not in args.skip:
        bench.measure("fp8 storage (layerwise casting)", *variant(base, fp8_storage(dtype), device))
    if (why := fp8_problem(device)) is not None:
        bench.refused("fp8 compute", why)
        return bench
    if "tensorwise" not in args.skip:
        tensorwise, tensorwise_weights = variant(base, fp8_compute(per_row=False), device)
        compile_row(bench, "fp8 compute per tensor, compiled", tensorwise, backend,
                    tensorwise_weights)  # fmt: skip
        del tensorwise
    fp8, fp8_weights = variant(base, fp8_compute(per_row=True), device)
    del base
    bench.measure("fp8 compute, eager", fp8, fp8_weights)
    compile_row(bench, "fp8 compute, compiled (wanctl's)", fp8, backend, fp8_weights)
    return bench


def render(bench: Bench, title: str, console: Console) -> None:
    table = Table(title=title, title_justify="left")
    columns = (
        "way",
        "s/forward",
        "vs eager",
        "first fwd s (cache)",
        "first fwd s (cold)",
        "weights GiB",
        "activations GiB",
        "rel L2 noise",
        "rel L2 smooth",
        "max abs noise",
        "vs fp32 noise",
        "vs fp32 smooth",
    )
    for column in columns:  # fmt: skip
        table.add_column(column, justify="right")
    eager = bench.rows[0]["seconds"]
    for row in bench.rows:
        if "refused" in row:
            table.add_row(row["way"], f"refused: {row['refused']}", *[""] * (len(columns) - 2))
            continue
        table.add_row(
            row["way"], f"{row['seconds']:.3f}", f"{row['seconds'] / eager:.2f}",
            f"{row['first_forward_s']:.1f}", figure(row.get("cold_first_forward_s"), ".1f"),
            figure(row["weights_gib"], ".2f"), figure(row["activations_peak_gib"], ".2f"),
            f"{row['rel_l2_noise']:.2e}", f"{row['rel_l2_smooth']:.2e}",
            f"{row['max_abs_noise']:.2e}", figure(row.get("rel_l2_fp32_noise"), ".2e"),
            figure(row.get("rel_l2_fp32_smooth"), ".2e"),
        )  # fmt: skip
    console.print(table)


def figure(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main() -> None:
    args = parse_args()
    # An empty Inductor cache, so that the first compile is a machine's first.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="wanctl-inductor-")
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    cuda = torch.cuda.is_available() and not args.check_only
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    work = workload(args)
    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    provenance = (
        f"{name}, torch {torch.__version__}, {args.model} DiT at {args.size} x "
        f"{args.frames} frames = {work.tokens} tokens, {time.strftime('%Y-%m-%d')}"
    )
    bench = run(args, device, dtype)
    console = Console(width=200)
    render(bench, f"one DiT forward: {provenance}", console)
    if args.json:
        args.json.write_text(json.dumps({"provenance": provenance, "rows": bench.rows}, indent=1))


if __name__ == "__main__":
    main()
