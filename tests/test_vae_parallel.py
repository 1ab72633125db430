"""Patch-parallel decode on real processes: torchrun, gloo, CPU, uneven slabs, both VAEs.

This file is also the torchrun worker of its tests (`python -m test_vae_parallel ...` with
tests/ on the path): each rank decodes its slab with `RowSplit` and rank 0 saves the gathered
float pixels, which must equal diffusers' own one-process decode (one latent frame per call).
Every rank also saves the shapes its halo saw, which a `LoneSlab` of the same rank, decoding
alone in the test's process, must see too.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from conftest import run_test_workers

from wanctl.decode.engine import Halo, WholeFrame, decode_chunks
from wanctl.decode.load import load_vae
from wanctl.decode.modules import as_diffusers
from wanctl.decode.parallel import LoneSlab, RowSplit, split_dim, split_sizes


def latents(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(7))


def diffusers_decode(vae_spec: str, shape: tuple[int, ...]) -> torch.Tensor:
    with torch.no_grad():
        return as_diffusers(load_vae(vae_spec)).decode(latents(shape)).sample


class Recorded:
    """A `Halo` that passes every call on to `halo` and records the shapes it sees: every
    convolution's input with the padding it adds, every gathering of tokens."""

    def __init__(self, halo: Halo):
        self.halo = halo
        self.calls: list[list[object]] = []

    def margin(self, space: int) -> int:
        return self.halo.margin(space)

    def empty(
        self, shape: Sequence[int], space: int, like: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.halo.empty(shape, space, like)

    def border(self, buffer: torch.Tensor, space: int) -> tuple[int, int]:
        padding = self.halo.border(buffer, space)
        self.calls.append(["conv", list(buffer.shape), list(padding)])
        return padding

    def gather_tokens(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.halo.gather_tokens(x)
        self.calls.append(["tokens", list(x.shape), list(tokens.shape)])
        return tokens


def decode_slab(vae_spec: str, z: torch.Tensor, chunk_t: int, halo: Recorded) -> list[torch.Tensor]:
    return list(decode_chunks(load_vae(vae_spec), z, chunk_t=chunk_t, halo=halo))


def worker(vae_spec: str, shape: tuple[int, ...], chunk_t: int, out: Path) -> None:
    dist.init_process_group("gloo")
    try:
        split = RowSplit.for_latents(shape)
        halo = Recorded(split)
        slabs = decode_slab(vae_spec, split.shard(latents(shape)), chunk_t, halo)
        chunks = [split.gather_frames(pixels) for pixels in slabs]
        (out.parent / f"calls{split.rank}.json").write_text(json.dumps(halo.calls))
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


def test_a_lone_slab_is_the_longest_one_of_a_middle_rank() -> None:
    assert (LoneSlab.largest(44, 3, -1).rank, LoneSlab.largest(44, 3, -1).sizes) == (
        1,
        [14, 15, 15],
    )
    assert LoneSlab.largest(44, 8, -2).rank == 4  # of 5, 5, 5, 5, 6, 6, 6, 6
    assert LoneSlab.largest(7, 2, -2).rank == 1 and LoneSlab.largest(7, 1, -2).rank == 0


def test_a_lone_slab_of_the_whole_frame_decodes_as_one_process() -> None:
    z = latents((1, 48, 2, 3, 4))
    alone = torch.cat(decode_slab("tiny", z, 1, Recorded(WholeFrame())), dim=2)
    lone = torch.cat(decode_slab("tiny", z, 1, Recorded(LoneSlab([4], -1, 0))), dim=2)
    assert torch.equal(lone, alone)


Case = tuple[str, int, tuple[int, ...], int]


@pytest.fixture(
    scope="module",
    params=[
        ("tiny", 2, (1, 48, 4, 5, 7), 2),  # columns split 3 + 4
        ("tiny", 3, (1, 48, 3, 7, 4), 1),  # rows split 2 + 2 + 3
        ("tiny", 3, (1, 48, 2, 4, 7), 1),  # columns split 2 + 2 + 3
        ("tiny-wan2.1", 2, (1, 16, 4, 5, 7), 2),
        ("tiny-wan2.1", 3, (1, 16, 4, 7, 4), 3),
    ],
    ids=lambda case: f"{case[0]}-{case[1]}ranks-{'x'.join(map(str, case[2][2:]))}",
)
def parallel_decode(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Case, Path]:
    """One torchrun decode of a case; returns the case and the folder of what the ranks saved."""
    vae_spec, ranks, shape, chunk_t = request.param
    folder = tmp_path_factory.mktemp("parallel")
    args = ["--vae", vae_spec, "--shape", ",".join(map(str, shape)), "--chunk-t", str(chunk_t)]
    args += ["--out", str(folder / "pixels.pt")]
    run_test_workers("test_vae_parallel", args, ranks, timeout_s=240)
    return request.param, folder


def test_parallel_decode_equals_diffusers(parallel_decode: tuple[Case, Path]) -> None:
    (vae_spec, _, shape, _), folder = parallel_decode
    parallel = torch.load(folder / "pixels.pt")
    alone = diffusers_decode(vae_spec, shape)
    space = 16 if shape[1] == 48 else 8
    assert (
        parallel.shape
        == alone.shape
        == (1, 3, 4 * (shape[2] - 1) + 1, space * shape[3], space * shape[4])
    )
    assert (parallel - alone).abs().max().item() <= 1e-5


def test_a_lone_slab_sees_the_shapes_its_rank_saw(parallel_decode: tuple[Case, Path]) -> None:
    """Rank 1 (a middle rank of 3, the last of 2): the same convolution inputs and paddings,
    the same tokens gathered, in the same order."""
    (vae_spec, ranks, shape, chunk_t), folder = parallel_decode
    dim = split_dim(shape[-2], shape[-1])
    lone = LoneSlab(split_sizes(shape[dim], ranks), dim, 1)
    recorded = Recorded(lone)
    decode_slab(vae_spec, lone.shard(latents(shape)), chunk_t, recorded)
    assert recorded.calls == json.loads((folder / "calls1.json").read_text())


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--vae", required=True)
    parser.add_argument("--shape", required=True)
    parser.add_argument("--chunk-t", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    options = parser.parse_args()
    shape = tuple(int(s) for s in options.shape.split(","))
    worker(options.vae, shape, options.chunk_t, options.out)
