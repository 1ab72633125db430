"""The memory model against real runs, judged on sizes its fit never saw.

On a GPU (default): `wanctl generate --model synthetic-5b` (the library `wanctl generate` runs:
`prepare` + `run_generate`, the generate worker under torchrun, one step, decode to .npy) at
each size of `FIT` and `HELD_OUT`, with expandable segments and with the default allocator.
Each run's summary holds every phase's measured peak (per rank) beside the model's prediction.
The script then fits the model on the `FIT` rows alone and prints, per phase, predicted against
measured with the error, in-sample and held-out apart; and the rows as a `measured_run(...)`
block to paste into wanctl/tune/measurements.py (`held_out=True` on the rows the fit must not
see). `--out FILE` also writes the summaries as JSON.

    python benchmarks/memory_model.py [--allocators expandable,default] [--out results.json]

`--recorded` (no GPU): the same table from the rows in wanctl/tune/measurements.py that came
from such runs; exits 1 when a phase misses by more than 10%.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from wanctl.core.settings import Settings  # noqa: E402
from wanctl.core.workload import Workload  # noqa: E402
from wanctl.generate.options import GenerateOptions  # noqa: E402
from wanctl.generate.plan import GenerateSummary  # noqa: E402
from wanctl.generate.run import prepare, run_generate  # noqa: E402
from wanctl.probe.local import LocalProbe  # noqa: E402
from wanctl.render import to_jsonable  # noqa: E402
from wanctl.tune.fit import Coefficients, fit, in_effect  # noqa: E402
from wanctl.tune.measurements import MEASUREMENTS, Measurement  # noqa: E402
from wanctl.tune.predict import phases  # noqa: E402

FIT = ((1280, 704, 121), (832, 480, 81))
HELD_OUT = ((704, 1280, 49), (1280, 704, 241), (960, 544, 81))
SOURCE = "benchmarks/memory_model.py: wanctl generate --model synthetic-5b --steps 1"
ALLOCATORS = {"expandable": "expandable_segments:True", "default": "expandable_segments:False"}
TOLERANCE = 0.10


def run_once(
    width: int, height: int, frames: int, allocator: str, folder: Path, chunk_t: int = 1
) -> GenerateSummary:
    """One `wanctl generate` on one GPU: the worker's own phases, measured."""
    options = GenerateOptions(
        prompt="a red fox running through fresh snow at golden hour",
        output=folder / f"x{width}x{height}x{frames}-{allocator}.npy",
        size=f"{width}*{height}", frames=frames, steps=1, gpus=1, model="synthetic-5b",
        env=(("PYTORCH_CUDA_ALLOC_CONF", ALLOCATORS[allocator]),), chunk_t=chunk_t,
    )  # fmt: skip
    summary = run_generate(prepare(options, probe=LocalProbe()))
    for path in (summary.output, summary.latents):
        path.unlink(missing_ok=True)
    return summary


def rows_of(
    summary: GenerateSummary, held_out: bool, device: str, versions: str, only: str | None = None
) -> list[Measurement]:
    """A run's phases as measurement rows: rank 0's peaks, and the weights its placement holds
    (exact, from the parameter counts: the activations are the rest)."""
    settings = summary.settings
    workload = Workload(summary.width, summary.height, summary.frames, summary.ranks)
    weights = {phase.name: phase.weights_gib for phase in phases(workload, settings)}
    figures = summary.per_rank[0]
    today = datetime.date.today().isoformat()
    return [
        Measurement(
            name,
            summary.width,
            summary.height,
            summary.frames,
            summary.ranks,
            settings.chunk_t,
            settings.decode_dtype,
            settings.expandable_segments,
            round(figures.peak_allocated_gib[name] or 0.0, 3),
            round(figures.peak_reserved_gib[name] or 0.0, 3),
            round(weights[name], 3),
            "cuda",
            device,
            versions,
            today,
            SOURCE,
            decoder=settings.decoder,
            held_out=held_out,
        )  # fmt: skip
        for name in weights
        if only in (None, name)
    ]


def judge(rows: list[Measurement], c: Coefficients) -> list[tuple[Measurement, float, float]]:
    """Each row's predicted allocated and reserved errors (predicted / measured - 1)."""
    judged = []
    for m in rows:
        workload = Workload(m.width, m.height, m.frames, m.ranks)
        settings = Settings(
            chunk_t=m.chunk_t, decode_ranks=m.ranks, decode_dtype=m.dtype,
            expandable_segments=m.expandable, decoder=m.decoder,
        )  # fmt: skip
        phase = next(p for p in phases(workload, settings, c) if p.name == m.phase)
        judged.append((m, phase.allocated_gib / m.allocated_gib - 1,
                       phase.reserved_gib / (m.reserved_gib or 1.0) - 1))  # fmt: skip
    return judged


def report(judged: list[tuple[Measurement, float, float]], console: Console) -> float:
    """The table, in-sample and held-out apart; returns the largest error."""
    table = Table(
        title="memory model against wanctl generate (GiB; error = predicted/measured - 1)"
    )
    for column in ("split", "phase", "size", "allocator", "measured alloc", "err", "measured res",
                   "err"):  # fmt: skip
        table.add_column(column, justify="right")
    worst = 0.0
    for m, allocated, reserved in sorted(judged, key=lambda j: (j[0].held_out, j[0].phase)):
        worst = max(worst, abs(allocated), abs(reserved))
        table.add_row(
            "held-out" if m.held_out else "in-sample", m.phase, f"{m.width}*{m.height}x{m.frames}",
            "expandable" if m.expandable else "default", f"{m.allocated_gib:.2f}",
            f"{allocated:+.1%}", f"{m.reserved_gib or 0:.2f}", f"{reserved:+.1%}",
        )  # fmt: skip
    console.print(table)
    for split in (False, True):
        errors = [max(abs(a), abs(r)) for m, a, r in judged if m.held_out == split]
        if errors:
            name = "held-out" if split else "in-sample"
            console.print(f"{name}: largest error {max(errors):.1%} over {len(errors)} rows")
    return worst


def block(rows: list[Measurement], device: str, versions: str) -> str:
    lines = [f"    *measured_run(\n        {device!r},\n        {versions!r},\n"
             f"        {rows[0].date!r},\n        source={SOURCE!r},\n        rows=("]  # fmt: skip
    for m in rows:
        lines.append(
            f"            ({m.phase!r}, {m.width}, {m.height}, {m.frames}, {m.ranks}, {m.chunk_t}, "
            f"{m.dtype!r}, {m.expandable}, {m.decoder!r}, {m.allocated_gib}, {m.reserved_gib}, "
            f"{m.weights_gib}, {m.held_out}),"
        )
    lines.append("        ),\n    ),")
    return "\n".join(lines)


def measure(allocators: list[str], out: Path | None, console: Console) -> int:
    import diffusers
    import torch

    device = torch.cuda.get_device_name(0)
    versions = f"torch {torch.__version__}, diffusers {diffusers.__version__}"
    rows: list[Measurement] = []
    summaries = []
    with tempfile.TemporaryDirectory() as scratch:
        for allocator in allocators:
            for held_out, sizes in ((False, FIT), (True, HELD_OUT)):
                for width, height, frames in sizes:
                    console.print(f"run {width}*{height}x{frames} {allocator}", highlight=False)
                    summary = run_once(width, height, frames, allocator, Path(scratch))
                    summaries.append(summary)
                    rows += rows_of(summary, held_out, device, versions)
            for width, height, frames in FIT:  # what each more latent frame per call costs
                console.print(f"run {width}*{height}x{frames} {allocator} chunk_t 2")
                summary = run_once(width, height, frames, allocator, Path(scratch), chunk_t=2)
                summaries.append(summary)
                rows += rows_of(summary, False, device, versions, only="decode")
    if out:
        out.write_text(json.dumps(to_jsonable(summaries), indent=1))
    console.print(block(rows, device, versions), highlight=False, markup=False)
    refit = fit((*MEASUREMENTS, *rows))
    worst = report(judge(rows, refit), console)
    return 0 if worst <= TOLERANCE else 1


def recorded(console: Console) -> int:
    rows = [m for m in in_effect(MEASUREMENTS) if m.source == SOURCE]
    if not rows:
        console.print("no recorded rows from wanctl generate runs")
        return 1
    worst = report(judge(rows, fit()), console)
    return 0 if worst <= TOLERANCE else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recorded", action="store_true")
    parser.add_argument("--allocators", default="expandable,default")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    console = Console(width=140)
    if args.recorded:
        return recorded(console)
    return measure(args.allocators.split(","), args.out, console)


if __name__ == "__main__":
    sys.exit(main())
