"""Decode one rank's slab of the patch-parallel decode alone on one device, for N = 1, 2, 4 and
8 ranks, and print how a rank's work scales: seconds x N / one GPU's seconds at chunk_t 1,
which the decode that scales keeps within 10% of 1 (a rank's time within 10% of 1/N of one
GPU's). Each N runs at the chunk_t wanctl gives it (`busy_chunk_t`: latent frames per
decoder call), or at each of `--chunks`; on a GPU, the share of the wall time its kernels
kept it busy is shown (from a profiled run): a thin slab at chunk_t 1 leaves it waiting on
the launches.

    python benchmarks/decode_slab.py --size 1280*704 --frames 121 --dtype bf16
    python benchmarks/decode_slab.py --size 1280*704 --frames 121 --chunks 1,2,4
    python benchmarks/decode_slab.py --check-only     # tiny VAE, small frames, float32 CPU

Each N decodes the slab of the rank that bounds its time (`LoneSlab.largest`: the longest slab,
a middle rank's where there is one) with the buffers, border rows, convolutions and attention
of a real rank, in this one process: the border rows are zeros instead of the neighbours' rows
and the keys and values are padded to the whole frame's instead of gathered, so what is left
out is the exchange itself (and rank 0's gathering of the frames). N = 1 is the one-process
decode. Every N is decoded once to warm up (cuDNN plans, the allocator), then once timed,
synchronised; the fused kernels are compiled (or loaded) before. Peak memory includes the
VAE's weights (about 1.1 GiB in bf16), which no split divides.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from decode import Run, add_check_only, add_workload_options, latents, measure, smoke_workload
from rich.console import Console
from rich.table import Table
from torch.profiler import ProfilerActivity, profile

from wanctl.core.variables import busy_chunk_t
from wanctl.decode.engine import decode_chunks, warm_up
from wanctl.decode.load import load_vae
from wanctl.decode.modules import WanVaeDecoder
from wanctl.decode.parallel import LoneSlab, split_dim
from wanctl.decode.run import DTYPES

TARGET = 1.10  # seconds x N / one rank's, at most


@dataclass(frozen=True)
class Provenance:
    device: str
    torch: str
    dtype: str
    size: str
    frames: int
    vae: str

    def describe(self) -> str:
        return (
            f"{self.device}, torch {self.torch}, {self.dtype}, {self.size} x {self.frames}, "
            f"{self.vae}"
        )


@dataclass(frozen=True)
class SlabRow:
    """One N at one chunk_t: the rank decoded, its slab of the frame's latent rows, the timed
    decode, the GPU's busy share, and where it was measured."""

    ranks: int
    chunk_t: int
    rank: int
    slab_rows: int
    frame_rows: int
    seconds: float
    peak_allocated_gib: float | None
    peak_reserved_gib: float | None
    gpu_busy: float | None  # kernel time / wall time of a profiled run (None off CUDA)
    scaling: float  # seconds x N / one GPU's at chunk_t 1
    provenance: Provenance


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_workload_options(parser, chunk_t=False)
    parser.add_argument("--ranks", default="1,2,4,8", help="The Ns, comma-separated.")
    parser.add_argument(
        "--chunks",
        help="chunk_t values, comma-separated, each N at each "
        "(default: each N at wanctl's, ranks // 2, and N = 1 at chunk_t 1).",
    )
    parser.add_argument("--json", type=Path, help="Also write the rows to this JSON file.")
    add_check_only(parser, "160*64", 5)
    args = parser.parse_args()
    smoke_workload(args)
    return args


def slab_rows(args: argparse.Namespace) -> list[SlabRow]:
    """Every N's timed slab decode at each of its chunk_t values, in the order of --ranks."""
    device = torch.device(args.device)
    z = latents(args.size, args.frames, args.vae)
    dim = split_dim(z.shape[-2], z.shape[-1])
    vae = load_vae(args.vae, device=device, dtype=DTYPES[args.dtype])
    warm_up(vae)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    provenance = Provenance(name, torch.__version__, args.dtype, args.size, args.frames, args.vae)
    timed: dict[tuple[int, int], tuple[LoneSlab, Run, float | None]] = {}
    wanted = [int(n) for n in args.ranks.split(",")]
    runs = [(1, 1)] + [(n, c) for n in wanted for c in chunks_of(args.chunks, n)]
    for ranks, chunk_t in dict.fromkeys(runs):  # one GPU at chunk_t 1 first: the reference
        if not 1 <= ranks <= z.shape[dim]:
            raise SystemExit(f"--ranks: {ranks} ranks cannot split {z.shape[dim]} latent rows")
        halo = LoneSlab.largest(z.shape[dim], ranks, dim)
        timed[ranks, chunk_t] = halo, *time_slab(vae, halo.shard(z), halo, chunk_t)
    one = timed[1, 1][1].seconds
    return [
        SlabRow(
            ranks=ranks,
            chunk_t=chunk_t,
            rank=halo.rank,
            slab_rows=halo.sizes[halo.rank],
            frame_rows=sum(halo.sizes),
            seconds=run.seconds,
            peak_allocated_gib=run.peak_allocated_gib,
            peak_reserved_gib=run.peak_reserved_gib,
            gpu_busy=busy,
            scaling=run.seconds * ranks / one,
            provenance=provenance,
        )
        for (ranks, chunk_t), (halo, run, busy) in timed.items()
    ]


def chunks_of(chunks: str | None, ranks: int) -> list[int]:
    """The chunk_t values N = `ranks` is decoded at: each of `chunks`, else wanctl's for N
    (`busy_chunk_t`)."""
    return [int(c) for c in chunks.split(",")] if chunks else [busy_chunk_t(ranks)]


def time_slab(
    vae: WanVaeDecoder, local: torch.Tensor, halo: LoneSlab, chunk_t: int
) -> tuple[Run, float | None]:
    """The slab's decode, once to warm up, then timed; on a GPU, once more profiled: its
    kernels' time over the timed run's wall time."""

    def decode() -> None:
        for _ in decode_chunks(vae, local, chunk_t=chunk_t, halo=halo):
            pass

    decode()
    run = measure(vae.device, decode)[0]
    if vae.device.type != "cuda":
        return run, None
    with profile(activities=[ProfilerActivity.CUDA]) as profiled:
        decode()
        torch.cuda.synchronize(vae.device)
    kernels = sum(event.self_device_time_total for event in profiled.key_averages()) / 1e6
    return run, kernels / run.seconds


def render(console: Console, rows: list[SlabRow]) -> None:
    def figure(value: float | None, digits: int = 2) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    table = Table(title="one rank's slab decode, alone on one device")
    columns = ("N", "chunk_t", "rank", "slab rows", "s / slab decode", "GPU busy",
               "peak alloc GiB", "peak rsvd GiB", "s x N / s(1)", "provenance")  # fmt: skip
    for column in columns:
        table.add_column(column)
    for row in rows:
        busy = "n/a" if row.gpu_busy is None else f"{row.gpu_busy:.0%}"
        table.add_row(
            str(row.ranks),
            str(row.chunk_t),
            str(row.rank),
            f"{row.slab_rows} / {row.frame_rows}",
            f"{row.seconds:.3f}",
            busy,
            figure(row.peak_allocated_gib),
            figure(row.peak_reserved_gib),
            figure(row.scaling, 3),
            row.provenance.describe(),
        )
    console.print(table)
    wanctls = [row for row in rows if row.ranks > 1 and row.chunk_t == busy_chunk_t(row.ranks)]
    missed = [row.ranks for row in wanctls if row.scaling > TARGET]
    verdict = f"missed at N = {missed}" if missed else "met" if wanctls else "not checked"
    console.print(f"target seconds x N / s(1) <= {TARGET:.2f} at wanctl's chunk_t: {verdict}")


def main() -> None:
    args = parse_args()
    rows = slab_rows(args)
    render(Console(), rows)
    if args.json is not None:
        args.json.write_text(json.dumps({"rows": [asdict(row) for row in rows]}, indent=2))


if __name__ == "__main__":
    main()
