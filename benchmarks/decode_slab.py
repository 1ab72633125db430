"""Decode one rank's slab of the patch-parallel decode alone on one device, for N = 1, 2, 4 and
8 ranks, and print how a rank's work scales: seconds x N / the one-rank seconds, which the
decode that scales keeps within 10% of 1 (a rank's time within 10% of 1/N of one GPU's).

    python benchmarks/decode_slab.py --size 1280*704 --frames 121 --dtype bf16
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
from diffusers.models.autoencoders.autoencoder_kl_wan import AutoencoderKLWan
from rich.console import Console
from rich.table import Table

from wanctl.decode.engine import decode_chunks, warm_up
from wanctl.decode.load import load_vae
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
    chunk_t: int

    def describe(self) -> str:
        return (
            f"{self.device}, torch {self.torch}, {self.dtype}, {self.size} x {self.frames}, "
            f"{self.vae}, chunk_t {self.chunk_t}"
        )


@dataclass(frozen=True)
class SlabRow:
    """One N: the rank decoded, its slab of the frame's latent rows, the timed decode, and
    where it was measured."""

    ranks: int
    rank: int
    slab_rows: int
    frame_rows: int
    seconds: float
    peak_allocated_gib: float | None
    peak_reserved_gib: float | None
    scaling: float | None  # seconds x N / the one-rank seconds (None without N = 1)
    provenance: Provenance


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_workload_options(parser)
    parser.add_argument("--ranks", default="1,2,4,8", help="The Ns, comma-separated.")
    parser.add_argument("--json", type=Path, help="Also write the rows to this JSON file.")
    add_check_only(parser, "160*64", 5)
    args = parser.parse_args()
    smoke_workload(args)
    return args


def slab_rows(args: argparse.Namespace) -> list[SlabRow]:
    """Every N's timed slab decode, in the order of --ranks."""
    device = torch.device(args.device)
    z = latents(args.size, args.frames, args.vae)
    dim = split_dim(z.shape[-2], z.shape[-1])
    vae = load_vae(args.vae, device=device, dtype=DTYPES[args.dtype])
    warm_up(vae)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    provenance = Provenance(
        name, torch.__version__, args.dtype, args.size, args.frames, args.vae, args.chunk_t
    )
    timed = {}
    for ranks in (int(n) for n in args.ranks.split(",")):
        if not 1 <= ranks <= z.shape[dim]:
            raise SystemExit(f"--ranks: {ranks} ranks cannot split {z.shape[dim]} latent rows")
        halo = LoneSlab.largest(z.shape[dim], ranks, dim)
        timed[ranks] = halo, time_slab(vae, halo.shard(z), halo, args.chunk_t)
    one = timed[1][1].seconds if 1 in timed else None
    return [
        SlabRow(
            ranks=ranks,
            rank=halo.rank,
            slab_rows=halo.sizes[halo.rank],
            frame_rows=sum(halo.sizes),
            seconds=run.seconds,
            peak_allocated_gib=run.peak_allocated_gib,
            peak_reserved_gib=run.peak_reserved_gib,
            scaling=None if one is None else run.seconds * ranks / one,
            provenance=provenance,
        )
        for ranks, (halo, run) in timed.items()
    ]


def time_slab(vae: AutoencoderKLWan, local: torch.Tensor, halo: LoneSlab, chunk_t: int) -> Run:
    """The slab's decode, once to warm up, then timed."""

    def decode() -> None:
        for _ in decode_chunks(vae, local, chunk_t=chunk_t, halo=halo):
            pass

    decode()
    return measure(vae.device, decode)[0]


def render(console: Console, rows: list[SlabRow]) -> None:
    def figure(value: float | None, digits: int = 2) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    table = Table(title="one rank's slab decode, alone on one device")
    columns = ("N", "rank", "slab rows", "s / slab decode", "peak alloc GiB", "peak rsvd GiB")
    for column in (*columns, "s x N / s(1)", "provenance"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            str(row.ranks),
            str(row.rank),
            f"{row.slab_rows} / {row.frame_rows}",
            f"{row.seconds:.3f}",
            figure(row.peak_allocated_gib),
            figure(row.peak_reserved_gib),
            figure(row.scaling, 3),
            row.provenance.describe(),
        )
    console.print(table)
    missed = [row.ranks for row in rows if row.scaling is not None and row.scaling > TARGET]
    verdict = f"missed at N = {missed}" if missed else "met"
    console.print(f"target seconds x N / s(1) <= {TARGET:.2f}: {verdict}")


def main() -> None:
    args = parse_args()
    rows = slab_rows(args)
    render(Console(), rows)
    if args.json is not None:
        args.json.write_text(json.dumps({"rows": [asdict(row) for row in rows]}, indent=2))


if __name__ == "__main__":
    main()
