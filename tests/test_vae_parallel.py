"""Patch-parallel decode on real processes: torchrun, gloo, CPU, uneven slabs, both VAEs.

This file is also the torchrun worker of its tests (`python -m test_vae_parallel ...` with
tests/ on the path): each rank decodes its slab with `RowSplit` and rank 0 saves the gathered
float pixels, which must equal diffusers' own one-process decode (one latent frame per call).
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


def diffusers_decode(vae_spec: str, shape: tuple[int, ...]) -> torch.Tensor:
    with torch.no_grad():
        return load_vae(vae_spec).decode(latents(shape)).sample


def worker(vae_spec: str, shape: tuple[int, ...], chunk_t: int, out: Path) -> None:
    dist.init_process_group("gloo")
    try:
        vae = load_vae(vae_spec)
        z = latents(shape)
        split = RowSplit.for_latents(z.shape)
        chunks = []
        for pixels in decode_chunks(vae, split.shard(z), chunk_t=chunk_t, halo=split):
            chunks.append(split.gather_frames(pixels))
        if split.rank == 0:
            torch.save(torch.cat(chunks, dim=2), out)
    finally:
        dist.destroy_process_group()


def test_split_sizes_are_even_and_give_the_extra_rows_to_the_last_ranks() -> None:
    """Rank 0 also gathers and writes the frames: it never holds a longer slab."""
    assert split_sizes(44, 3) == [14, 15, 15]
    assert split_sizes(80, 8) == [10] * 8
    assert split_sizes(7, 3) == [2, 2, 3]
    assert split_sizes(44, 8) == [5, 5, 5, 5, 6, 6, 6, 6]
    assert split_dim(44, 80) == -1 and split_dim(80, 44) == -2 and split_dim(5, 5) == -2


@pytest.mark.parametrize(
    ("vae_spec", "ranks", "shape", "chunk_t"),
    [
        ("tiny", 2, (1, 48, 4, 5, 7), 2),  # columns split 3 + 4
        ("tiny", 3, (1, 48, 3, 7, 4), 1),  # rows split 2 + 2 + 3
        ("tiny", 3, (1, 48, 2, 4, 7), 1),  # columns split 2 + 2 + 3
        ("tiny-wan2.1", 2, (1, 16, 4, 5, 7), 2),
        ("tiny-wan2.1", 3, (1, 16, 4, 7, 4), 3),
    ],
)
def test_parallel_decode_equals_diffusers(
    tmp_path: Path, vae_spec: str, ranks: int, shape: tuple[int, ...], chunk_t: int
) -> None:
    out = tmp_path / "pixels.pt"
    args = ["--vae", vae_spec, "--shape", ",".join(map(str, shape)), "--chunk-t", str(chunk_t)]
    args += ["--out", str(out)]
    spec = LaunchSpec(
        torchrun_argv("test_vae_parallel", args, ranks),
        env={"PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])},
        timeout_s=240,
    )
    result = SubprocessRunner().run(spec)
    assert result.ok, result.output[-3000:]

    parallel = torch.load(out)
    alone = diffusers_decode(vae_spec, shape)
    space = 16 if shape[1] == 48 else 8
    assert (
        parallel.shape
        == alone.shape
        == (1, 3, 4 * (shape[2] - 1) + 1, space * shape[3], space * shape[4])
    )
    assert (parallel - alone).abs().max().item() <= 1e-5


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--vae", required=True)
    parser.add_argument("--shape", required=True)
    parser.add_argument("--chunk-t", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    options = parser.parse_args()
    shape = tuple(int(s) for s in options.shape.split(","))
    worker(options.vae, shape, options.chunk_t, options.out)
