"""The memory model against measurements, phase by phase.

On a GPU (default): measures the text encoder, the DiT forward and the VAE decode at three sizes
with torch's peak statistics (default allocator and expandable segments) and prints predicted
against measured with the error; then prints the rows as a `measured_run(...)` block to paste
into `wanctl.tune.predict.MEASUREMENTS` (below the previous run's: a later row of the same
configuration replaces an earlier one).

    python benchmarks/memory_model.py [--sizes 1280*704x121,...] [--phases sampling,decode]

`--recorded` (no GPU): the model against the GPU rows in `MEASUREMENTS`, as a Markdown table
with the largest error per phase; exits 1 beyond 10%.

`--simulate "1x RTX 4090 24GB" "2x RTX 5090 32GB"`: caps this GPU at each card
(`set_per_process_memory_fraction`) and runs the phases of 1280*704x121 (`--simulate-size`)
with the settings tune chose for it (must run), the rank-0 chunk_t 20 decode (must run out of
memory) and the official fp32 rank-0 decode (shown).

`--trace` (CPU, no GPU): the same runs on fake tensors (live tensor bytes), and the DiT under
Ulysses 1, 2 and 4 over a fake process group: the structure the model takes from traces.

Needs only torch, diffusers, transformers and rich.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import itertools
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import diffusers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from wanctl.core.settings import Settings
from wanctl.core.workload import Workload
from wanctl.models.configs import build_vae_decoder  # noqa: E402
from wanctl.tune import predict as memory  # noqa: E402
from wanctl.tune.measure import (  # noqa: E402
    CudaMeter,
    Meter,
    Models,
    Peak,
    TraceMeter,
    cuda_context_gib,
    decode_peak,
    measure_plan,
    sampling_peak,
    text_encode_peak,
    use_allocator,
)
from wanctl.tune.measurements import Measurement
from wanctl.tune.predict import Card

SIZES = "832*480x81,1280*704x121,704*1280x49"
DECODERS = ("wanctl", "diffusers")
console = Console()


def parse_workload(text: str) -> Workload:
    size, frames = text.split("x")
    width, height = memory.parse_size(size)
    return Workload(width, height, int(frames), 1)


def versions() -> str:
    return (
        f"torch {torch.__version__}, diffusers {diffusers.__version__}, "
        f"transformers {transformers.__version__}"
    )


def error(predicted: float, measured: float) -> str:
    return f"{100 * (predicted - measured) / measured:+.1f}%" if measured else "-"


def run_cases(
    meter: Meter, workloads: list[Workload], phases: list[str], chunk_ts: list[int]
) -> list[tuple[Workload, Settings, Peak]]:
    """Each phase alone, each size: the text encoder with the VAE decoder, the decode with the
    VAE decoder only (wanctl's engine and diffusers' loop, at each chunk_t), the DiT forward
    with both; with the default allocator, then (on a GPU) with expandable segments."""
    results = []
    for expandable in [False, True] if meter.device == "cuda" else [False]:
        if meter.device == "cuda":
            use_allocator(expandable)
        base = Settings(offload=True, expandable_segments=expandable)
        with meter.session():
            models = Models(vae=meter.build(lambda: build_vae_decoder("meta", torch.bfloat16)))
            if "text_encode" in phases:
                results.append((workloads[0], base, text_encode_peak(meter, models)))
            for workload in workloads if "decode" in phases else []:
                for decoder, chunk_t in itertools.product(DECODERS, chunk_ts):
                    settings = dataclasses.replace(base, chunk_t=chunk_t, decoder=decoder)
                    peak = decode_peak(meter, models, workload, settings)
                    results.append((workload, settings, peak))
            for workload in workloads if "sampling" in phases else []:
                results.append((workload, base, sampling_peak(meter, models, workload)))
            del models
            gc.collect()
    return results


def predict_phase(workload: Workload, settings: Settings, name: str) -> memory.Phase | None:
    """The model's figures for the phase; None for a decoder no measurement has fitted yet."""
    if settings.decoder not in memory.coefficients().decode:
        return None
    return next(p for p in memory.phases(workload, settings) if p.name == name)


def compare(results: list[tuple[Workload, Settings, Peak]], method: str) -> list[memory.Row]:
    """Print predicted against measured; return the rows to record."""
    table = Table(title=f"memory model vs {method} (GiB, one GPU)")
    for column in ("phase", "size", "setting", "alloc pred", "alloc meas", "err"):
        table.add_column(column, justify="right")
    if method == "cuda":
        for column in ("reserved pred", "reserved meas", "err"):
            table.add_column(column, justify="right")
    rows: list[memory.Row] = []
    for workload, settings, peak in results:
        predicted = predict_phase(workload, settings, peak.phase)
        decoding = peak.phase == "decode"
        setting = f"{settings.decoder} chunk_t {settings.chunk_t}" if decoding else ""
        setting += " expandable" if settings.expandable_segments else ""
        cells = [peak.phase, f"{workload.size}x{workload.frames}", setting]
        if peak.out_of_memory:
            table.add_row(*cells, "out of memory")
            continue
        cells += [
            f"{predicted.allocated_gib:.2f}" if predicted else "no fit yet",
            f"{peak.allocated_gib:.2f}",
            error(predicted.allocated_gib, peak.allocated_gib) if predicted else "-",
        ]
        if peak.reserved_gib is not None:
            cells += [
                f"{predicted.reserved_gib:.2f}" if predicted else "-",
                f"{peak.reserved_gib:.2f}",
                error(predicted.reserved_gib, peak.reserved_gib) if predicted else "-",
            ]
        table.add_row(*cells)
        sized = peak.phase != "text_encode"
        rows.append((
            peak.phase,
            workload.width if sized else 0,
            workload.height if sized else 0,
            workload.frames if sized else 0,
            1,
            settings.chunk_t if decoding else 0,
            settings.decode_dtype if decoding else "bf16",
            settings.expandable_segments,
            settings.decoder if decoding else "diffusers",
            round(peak.allocated_gib, 3),
            None if peak.reserved_gib is None else round(peak.reserved_gib, 3),
            round(peak.weights_gib, 3),
        ))  # fmt: skip
    console.print(table)
    return rows


def print_block(
    rows: list[memory.Row],
    device: str,
    method: str,
    context: tuple[float, float] | None = None,
) -> None:
    """The rows as a `measured_run(...)` block for `wanctl.tune.predict.MEASUREMENTS`: paste it
    below the previous run's block (a later row of the same configuration replaces an earlier
    one) or in its place."""
    print("    # rows for wanctl.tune.predict.MEASUREMENTS")
    print("    *measured_run(")
    for value in (device, versions(), datetime.date.today().isoformat()):
        print(f"        {value!r},".replace("'", '"'))
    if method != "cuda":
        print(f'        method="{method}",')
        print('        source="benchmarks/memory_model.py --trace",')
    if context:
        print(f"        context_gib={context[0]:.3f},")
        print(f"        context_after_gib={context[1]:.3f},")
    print("        rows=(")
    print("            # phase, width, height, frames, ranks, chunk_t, dtype, expandable, decoder,")
    print("            # allocated, reserved, weights (GiB)")
    for row in rows:
        print("            (" + ", ".join(repr(v).replace("'", '"') for v in row) + "),")
    print("        ),")
    print("    ),")


def recorded() -> int:
    """No GPU: the model against the GPU rows recorded in `MEASUREMENTS` (the rows in effect),
    as a Markdown table (allocated is the same under both allocators: the default one's is
    shown), and the largest error per phase and decode setting. Exit 1 beyond 10%."""
    rows = [
        m
        for m in memory.in_effect(memory.MEASUREMENTS)
        if m.method == "cuda" and m.phase in memory.PHASES
    ]
    setups: dict[tuple[object, ...], dict[bool, Measurement]] = {}
    for m in rows:
        setups.setdefault((m.phase, m.width, m.height, m.frames, m.decoder, m.chunk_t), {})[
            m.expandable
        ] = m
    print(
        "| phase | size | decoder, chunk_t | allocated | reserved, default allocator "
        "| reserved, expandable segments |"
    )
    print("|---|---|---|---|---|---|")
    worst: dict[str, float] = {}
    for (phase, width, height, frames, decoder, chunk_t), modes in setups.items():
        name = f"{phase} ({decoder}, chunk_t {chunk_t})" if phase == "decode" else str(phase)
        cells: dict[tuple[str, bool], str] = {}
        for expandable, m in modes.items():
            workload, settings = memory.setup_of(m)
            predicted = next(p for p in memory.phases(workload, settings) if p.name == phase)
            for figure, value, measured in (
                ("allocated", predicted.allocated_gib, m.allocated_gib),
                ("reserved", predicted.reserved_gib, m.reserved_gib),
            ):
                if measured is None:
                    continue
                worst[name] = max(worst.get(name, 0.0), abs(value / measured - 1))
                cell = f"{value:.2f} / {measured:.2f} ({error(value, measured)})"
                cells.setdefault((figure, expandable), cell)
        size = f"{width}*{height}x{frames}" if phase != "text_encode" else "512 tokens"
        setting = f"{decoder}, {chunk_t}" if phase == "decode" else ""
        allocated = cells.get(("allocated", False)) or cells.get(("allocated", True), "-")
        reserved = [cells.get(("reserved", mode), "-") for mode in (False, True)]
        print(f"| {phase} | {size} | {setting} | {allocated} | " + " | ".join(reserved) + " |")
    print()
    print("GPU rows: " + "; ".join(sorted({f"{m.device} ({m.versions}, {m.date})" for m in rows})))
    for name, err in worst.items():
        print(f"largest error, {name}: {100 * err:.1f}%")
    return 0 if max(worst.values()) <= 0.10 else 1


def trace_ulysses(degrees: tuple[int, ...] = (1, 2, 4)) -> list[memory.Row]:
    """The DiT forward at 1280*704x121 (27,280 tokens, which every degree divides: diffusers
    shards the sequence only in equal parts) traced under diffusers' Ulysses over a fake
    process group, one rank's view. diffusers 0.42.1 divides by
    `torch.accelerator.device_count()`, which is 0 on a CPU machine (facts.md): the count is
    made 1 for this trace only."""
    import torch.distributed as dist
    from diffusers import ContextParallelConfig
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from wanctl.models.configs import build_dit, place
    from wanctl.tune.measure import dit_run

    torch.accelerator.device_count = lambda: 1
    workload = Workload(1280, 704, 121, 1)
    meter = TraceMeter()
    rows: list[memory.Row] = []
    for degree in degrees:
        dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=degree)
        dit: Any = build_dit("meta", torch.bfloat16)
        if degree > 1:
            dit.set_attention_backend("native")
            mesh = init_device_mesh("cpu", (1, degree), mesh_dim_names=("ring", "ulysses"))
            dit.enable_parallelism(config=ContextParallelConfig(ulysses_degree=degree, mesh=mesh))
        with meter.session():
            placed = place(dit, "cpu")
            run = dit_run(placed, workload, "cpu")  # the whole latent: diffusers splits it
            weights, allocated, _ = meter.peak([placed], run)
        dist.destroy_process_group()
        rows.append((
            "sampling", workload.width, workload.height, workload.frames, degree, 0, "bf16",
            False, "diffusers", round(allocated, 3), None, round(weights, 3),
        ))  # fmt: skip
        console.print(f"Ulysses {degree}: activations {allocated - weights:.3f} GiB per rank")
    return rows


def simulate(rig: str, workload: Workload) -> bool:
    """Under the card's memory cap: the settings tune chose (must run), the seed's rank-0
    decode with chunk_t 20 (must run out of memory: the cap works), and the official code's
    fp32 rank-0 decode (shown, no expectation: how conservative the model's refusal is)."""
    count, card = Card.described(rig)
    target = dataclasses.replace(workload, gpus=count)
    cases = (
        ("tune", memory.plan(target, card), True),
        ("rank 0, chunk_t 20", memory.predict(target, card, Settings(chunk_t=20)), False),
        ("official: rank 0, fp32, diffusers loop", memory.predict(target, card, Settings(
            decode_dtype="fp32", decoder="diffusers", text_encoder="cpu")), None),
    )  # fmt: skip
    ok = True
    for label, plan, expected in cases:
        measured = measure_plan(plan)
        table = Table(title=f"{rig}, {target.size}x{target.frames}, {label}: {plan.settings}")
        for column in ("phase", "predicted total", "measured total", "result"):
            table.add_column(column, justify="right")
        for peak in measured.peaks:
            predicted = next(p for p in plan.phases if p.name == peak.phase)
            total = f"{peak.reserved_gib + measured.context_gib:.2f}" if peak.reserved_gib else "-"
            result = "OUT OF MEMORY" if peak.out_of_memory else "ran"
            table.add_row(peak.phase, f"{predicted.total_gib:.2f}", total, result)
        console.print(table)
        verdict = "" if expected is None else f"; as expected: {measured.ok == expected}"
        console.print(
            f"card {card.gib:.1f} GiB ({'simulated' if measured.simulated else 'real'}), "
            f"context {measured.context_gib:.2f} GiB, predicted to fit: {plan.fits}, ran: "
            f"{measured.ok}; largest chunk_t that ran {measured.max_chunk_t} (predicted "
            f"{plan.max_chunk_t}){verdict}"
        )
        ok &= expected is None or measured.ok == expected
        del measured
        gc.collect()
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=SIZES, help="WIDTH*HEIGHTxFRAMES, comma-separated")
    parser.add_argument("--phases", default="text_encode,sampling,decode")
    parser.add_argument("--chunk-t", default="1,2", help="decode chunk_t values")
    parser.add_argument("--trace", action="store_true", help="fake tensors on the CPU")
    parser.add_argument("--simulate", nargs="*", metavar="RIG", help='e.g. "2x RTX 5090 32GB"')
    parser.add_argument("--simulate-size", default="1280*704x121", help="the run to simulate")
    parser.add_argument(
        "--recorded", action="store_true", help="no GPU: the model against MEASUREMENTS' GPU rows"
    )
    args = parser.parse_args()
    workloads = [parse_workload(text) for text in args.sizes.split(",")]
    phases = args.phases.split(",")
    chunk_ts = [int(k) for k in args.chunk_t.split(",")]
    console.print(versions())
    if args.simulate:
        target = parse_workload(args.simulate_size)
        return 0 if all([simulate(rig, target) for rig in args.simulate]) else 1
    if args.recorded:
        return recorded()
    if args.trace:
        print_block(compare(run_cases(TraceMeter(), workloads, phases, chunk_ts), "trace"),
                    "CPU, fake tensors", "trace")  # fmt: skip
        if "sampling" in phases:
            print_block(trace_ulysses(), "CPU, fake tensors, fake process group", "trace")
        return 0
    context = cuda_context_gib()
    console.print(f"{torch.cuda.get_device_name()}: CUDA context {context:.2f} GiB")
    rows = compare(run_cases(CudaMeter(), workloads, phases, chunk_ts), "cuda")
    after = cuda_context_gib()  # once the phases' kernels are loaded
    console.print(f"CUDA context after the phases {after:.2f} GiB")
    print_block(rows, torch.cuda.get_device_name(), "cuda", (context, after))
    return 0


if __name__ == "__main__":
    sys.exit(main())
