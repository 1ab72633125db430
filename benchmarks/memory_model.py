"""The memory model against real runs, judged on sizes its fit never saw.

On a GPU (default): `wanctl generate --model synthetic-5b` (the library `wanctl generate` runs:
`prepare` + `run_generate`, the generate worker under torchrun, one step, decode to .npy) at
each size of `FIT` and `HELD_OUT`, with expandable segments and with the default allocator.
Each run's summary holds every phase's measured peak (per rank) beside the model's prediction.
The script then fits the model on the `FIT` rows alone and prints, per phase, predicted against
measured with the error, in-sample and held-out apart; and the rows as a `measured_run(...)`
block to paste into wanctl/tune/measurements.py (`held_out=True` on the rows the fit must not
see). `--out FILE` also writes the summaries as JSON.

`--model synthetic-a14b`: the same for the A14B models, two steps (both experts run), each case
of `A14B_FIT` and `A14B_HELD_OUT` (T2V, or I2V with an image; each expert placement: both on
the GPU, fp8-stored, the idle one offloaded), expandable segments; the fit's T2V latents also
decoded at chunk_t 2 by `wanctl decode`. `--cases fit|held-out` runs half of them (a device
call's ten minutes hold about half).

    python benchmarks/memory_model.py [--allocators expandable,default] [--out results.json]
    python benchmarks/memory_model.py --model synthetic-a14b [--cases fit] [--out a14b.json]

`--recorded` (no GPU): the same table from the rows in wanctl/tune/measurements.py that came
from such runs; exits 1 when a phase misses by more than 10%.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from wanctl.core.families import FAMILIES  # noqa: E402
from wanctl.core.workload import Workload  # noqa: E402
from wanctl.decode.run import DecodeOptions, run_decode  # noqa: E402
from wanctl.generate.options import GenerateOptions  # noqa: E402
from wanctl.generate.plan import GenerateSummary  # noqa: E402
from wanctl.generate.run import prepare, run_generate  # noqa: E402
from wanctl.probe.local import LocalProbe  # noqa: E402
from wanctl.render import to_jsonable  # noqa: E402
from wanctl.tune.fit import Coefficients, fit, in_effect  # noqa: E402
from wanctl.tune.measurements import MEASUREMENTS, Measurement, placement_of  # noqa: E402
from wanctl.tune.predict import phases  # noqa: E402

FIT = ((1280, 704, 121), (832, 480, 81))
HELD_OUT = ((704, 1280, 49), (1280, 704, 241), (960, 544, 81))
SOURCE = "benchmarks/memory_model.py: wanctl generate --model synthetic-5b --steps 1"
A14B_SOURCE = "benchmarks/memory_model.py: wanctl generate --model synthetic-a14b --steps 2"
ALLOCATORS = {"expandable": "expandable_segments:True", "default": "expandable_segments:False"}
TOLERANCE = 0.10


@dataclass(frozen=True)
class Case:
    """One A14B run: its size, whether the fit may see it, I2V or T2V, the experts' placement,
    and whether its latents are decoded again at chunk_t 2."""

    width: int
    height: int
    frames: int
    held_out: bool
    image: bool = False
    storage: str = "bf16"
    offload: bool = False
    chunk_t2: bool = False


A14B_FIT = (
    Case(832, 480, 81, False, chunk_t2=True),
    Case(1280, 720, 81, False, chunk_t2=True),
    Case(1280, 720, 81, False, image=True, storage="fp8"),
    Case(832, 480, 81, False, image=True, offload=True),
)
A14B_HELD_OUT = (
    Case(720, 1280, 61, True, storage="fp8", offload=True),
    Case(480, 832, 49, True, image=True, storage="fp8"),
    Case(1024, 576, 61, True),
)


def run_once(
    width: int, height: int, frames: int, allocator: str, folder: Path, chunk_t: int = 1,
    **more: Any,
) -> GenerateSummary:  # fmt: skip
    """One `wanctl generate` on one GPU: the worker's own phases, measured. `more`: other
    options (the model, the steps, an image, the placement); `keep_latents` keeps them."""
    keep_latents = more.pop("keep_latents", False)
    options = GenerateOptions(**{
        "prompt": "a red fox running through fresh snow at golden hour",
        "output": folder / f"x{width}x{height}x{frames}-{allocator}.npy",
        "size": f"{width}*{height}", "frames": frames, "steps": 1, "gpus": 1,
        "model": "synthetic-5b", "env": (("PYTORCH_CUDA_ALLOC_CONF", ALLOCATORS[allocator]),),
        "chunk_t": chunk_t, **more,
    })  # fmt: skip
    summary = run_generate(prepare(options, probe=LocalProbe()))
    summary.output.unlink(missing_ok=True)
    if not keep_latents:
        summary.latents.unlink(missing_ok=True)
    return summary


def run_case(case: Case, folder: Path, device: str, versions: str) -> list[Measurement]:
    """One A14B case: its generate run's rows, and with `chunk_t2` its latents' decode at
    chunk_t 2 by the decode library (one process on the GPU, as `wanctl decode`)."""
    image = None
    if case.image:
        from PIL import Image

        image = folder / "image.png"
        ramp = bytes(range(256)) * (case.width * case.height * 3 // 256 + 1)
        Image.frombytes("RGB", (case.width, case.height), ramp).save(image)
    summary = run_once(
        case.width, case.height, case.frames, "expandable", folder, model="synthetic-a14b",
        steps=2, image=image, dit_storage=case.storage, offload=case.offload or None,
        keep_latents=True,
    )  # fmt: skip
    rows = rows_of(summary, case.held_out, device, versions, source=A14B_SOURCE)
    if case.chunk_t2:
        again = DecodeOptions(summary.latents, folder / "again.npy", vae="synthetic-wan2.1",
                              chunk_t=2, progress=False)  # fmt: skip
        decoded = run_decode(again)
        decode = next(m for m in rows if m.phase == "decode")
        rows.append(dataclasses.replace(
            decode, chunk_t=2, allocated_gib=round(decoded.peak_allocated_gib[0] or 0.0, 3),
            reserved_gib=round(decoded.peak_reserved_gib[0] or 0.0, 3),
        ))  # fmt: skip
        decoded.output.unlink(missing_ok=True)
    summary.latents.unlink(missing_ok=True)
    return rows


def rows_of(
    summary: GenerateSummary,
    held_out: bool,
    device: str,
    versions: str,
    only: str | None = None,
    source: str = SOURCE,
) -> list[Measurement]:
    """A run's phases as measurement rows: rank 0's peaks, and the weights its placement holds
    (exact, from the parameter counts: the activations are the rest)."""
    settings = summary.settings
    family = FAMILIES[summary.family]
    workload = Workload(summary.width, summary.height, summary.frames, summary.ranks,
                        image=family.image == "required", family=family)  # fmt: skip
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
            source,
            decoder=settings.decoder,
            held_out=held_out,
            model=family.name,
            placement=placement_of(settings),
        )  # fmt: skip
        for name in weights
        if only in (None, name)
    ]


def judge(rows: list[Measurement], c: Coefficients) -> list[tuple[Measurement, float, float]]:
    """Each row's predicted allocated and reserved errors (predicted / measured - 1)."""
    judged = []
    for m in rows:
        workload, settings = m.run()
        phase = next(p for p in phases(workload, settings, c) if p.name == m.phase)
        judged.append((m, phase.allocated_gib / m.allocated_gib - 1,
                       phase.reserved_gib / (m.reserved_gib or 1.0) - 1))  # fmt: skip
    return judged


def report(judged: list[tuple[Measurement, float, float]], console: Console) -> float:
    """The table, in-sample and held-out apart; returns the largest error."""
    table = Table(
        title="memory model against wanctl generate (GiB; error = predicted/measured - 1)"
    )
    for column in ("split", "model", "placement", "phase", "size", "allocator", "measured alloc",
                   "err", "measured res", "err"):  # fmt: skip
        table.add_column(column, justify="right")
    worst = 0.0
    for m, allocated, reserved in sorted(judged, key=lambda j: (j[0].held_out, j[0].phase)):
        worst = max(worst, abs(allocated), abs(reserved))
        table.add_row(
            "held-out" if m.held_out else "in-sample", m.model, m.placement, m.phase,
            f"{m.width}*{m.height}x{m.frames}", "expandable" if m.expandable else "default",
            f"{m.allocated_gib:.2f}", f"{allocated:+.1%}", f"{m.reserved_gib or 0:.2f}",
            f"{reserved:+.1%}",
        )  # fmt: skip
    console.print(table)
    for split in (False, True):
        errors = [max(abs(a), abs(r)) for m, a, r in judged if m.held_out == split]
        if errors:
            name = "held-out" if split else "in-sample"
            console.print(f"{name}: largest error {max(errors):.1%} over {len(errors)} rows")
    return worst


def block(rows: list[Measurement], device: str, versions: str) -> str:
    """The rows as `measured_run(...)` blocks to paste, one per model."""
    blocks = []
    for model in sorted({m.model for m in rows}):
        mine = [m for m in rows if m.model == model]
        lines = [f"    *measured_run(\n        {device!r},\n        {versions!r},\n"
                 f"        {mine[0].date!r},\n        source={mine[0].source!r},\n"
                 f"        model={model!r},\n        rows=("]  # fmt: skip
        for m in mine:
            lines.append(
                f"            ({m.phase!r}, {m.width}, {m.height}, {m.frames}, {m.ranks}, "
                f"{m.chunk_t}, {m.dtype!r}, {m.expandable}, {m.decoder!r}, {m.allocated_gib}, "
                f"{m.reserved_gib}, {m.weights_gib}, {m.held_out}, {m.placement!r}),"
            )
        lines.append("        ),\n    ),")
        blocks.append("\n".join(lines))
    return "\n".join(blocks)


def versions_here() -> tuple[str, str]:
    import diffusers
    import torch

    device = torch.cuda.get_device_name(0)
    return device, f"torch {torch.__version__}, diffusers {diffusers.__version__}"


def measure(allocators: list[str], out: Path | None, console: Console) -> int:
    device, versions = versions_here()
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
    return conclude(rows, device, versions, console)


def conclude(rows: list[Measurement], device: str, versions: str, console: Console) -> int:
    """The block to paste, and the table of the model refitted with the new rows."""
    console.print(block(rows, device, versions), highlight=False, markup=False)
    refit = fit((*MEASUREMENTS, *rows))
    worst = report(judge(rows, refit), console)
    return 0 if worst <= TOLERANCE else 1


def measure_a14b(cases: tuple[Case, ...], out: Path | None, console: Console) -> int:
    device, versions = versions_here()
    rows: list[Measurement] = []
    with tempfile.TemporaryDirectory() as scratch:
        for case in cases:
            console.print(f"run {case}", highlight=False)
            rows += run_case(case, Path(scratch), device, versions)
            if out:  # after each case: a run cut short keeps what it measured
                out.write_text(json.dumps(to_jsonable(rows), indent=1))
    return conclude(rows, device, versions, console)


def recorded(console: Console) -> int:
    rows = [m for m in in_effect(MEASUREMENTS) if m.source in (SOURCE, A14B_SOURCE)]
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
    parser.add_argument("--model", choices=("synthetic-5b", "synthetic-a14b"),
                        default="synthetic-5b")  # fmt: skip
    parser.add_argument("--cases", choices=("fit", "held-out", "all"), default="all")
    args = parser.parse_args()
    console = Console(width=160)
    if args.recorded:
        return recorded(console)
    if args.model == "synthetic-a14b":
        chosen = {"fit": A14B_FIT, "held-out": A14B_HELD_OUT, "all": A14B_FIT + A14B_HELD_OUT}
        return measure_a14b(chosen[args.cases], args.out, console)
    return measure(args.allocators.split(","), args.out, console)


if __name__ == "__main__":
    sys.exit(main())
