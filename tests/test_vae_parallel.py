"""Patch-parallel decode on real processes: torchrun, gloo, CPU, uneven slabs.

This file is also the torchrun worker of its tests (`python -m test_vae_parallel ...` with
tests/ on the path): each rank decodes its slab with `RowSplit` and rank 0 saves the gathered
float pixels, which must equal the one-process decode.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from wanctl.core.launch import LaunchSpec, SubprocessRunner, torchrun_argv
from wanctl.decode.engine import decode_chunks
from wanctl.decode.load import load_vae
from wanctl.decode.parallel import RowSplit, split_dim, split_sizes

TESTS = Path(__file__).parent


def latents(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(7))


def decode_alone(shape: tuple[int, ...], chunk_t: int) -> torch.Tensor:
    vae = load_vae("tiny")
    return torch.cat(list(decode_chunks(vae, latents(shape), chunk_t=chunk_t)), dim=2)


def worker(shape: tuple[int, ...], chunk_t: int, out: Path) -> None:
    dist.init_process_group("gloo")
    try:
        vae = load_vae("tiny")
        z = latents(shape)
        split = RowSplit.for_latents(z.shape)
        chunks = []
        for pixels in decode_chunks(vae, split.shard(z), chunk_t=chunk_t, halo=split):
            chunks.append(split.gather_frames(pixels))
        if split.rank == 0:
            torch.save(torch.cat(chunks, dim=2), out)
    finally:
        dist.destroy_process_group()


def test_split_sizes_are_even_and_cover_the_side() -> None:
    assert split_sizes(44, 3) == [15, 15, 14]
    assert split_sizes(80, 8) == [10] * 8
    assert split_sizes(7, 3) == [3, 2, 2]
    assert split_dim(44, 80) == -1 and split_dim(80, 44) == -2 and split_dim(5, 5) == -2


@pytest.mark.parametrize(
    ("ranks", "shape", "chunk_t"),
    [
        (2, (1, 48, 4, 5, 7), 2),  # columns split 4 + 3
        (3, (1, 48, 3, 7, 4), 1),  # rows split 3 + 2 + 2
    ],
)
def test_parallel_decode_equals_one_process(
    tmp_path: Path, ranks: int, shape: tuple[int, ...], chunk_t: int
) -> None:
    out = tmp_path / "pixels.pt"
    args = ["--shape", ",".join(map(str, shape)), "--chunk-t", str(chunk_t), "--out", str(out)]
    spec = LaunchSpec(
        torchrun_argv("test_vae_parallel", args, ranks),
        env={"PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])},
        timeout_s=240,
    )
    result = SubprocessRunner().run(spec)
    assert result.ok, result.output[-3000:]

    parallel = torch.load(out)
    alone = decode_alone(shape, chunk_t)
    assert (
        parallel.shape
        == alone.shape
        == (1, 3, 4 * (shape[2] - 1) + 1, 16 * shape[3], 16 * shape[4])
    )
    assert (parallel - alone).abs().max().item() < 1e-4


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", required=True)
    parser.add_argument("--chunk-t", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    options = parser.parse_args()
    worker(tuple(int(s) for s in options.shape.split(",")), options.chunk_t, options.out)
