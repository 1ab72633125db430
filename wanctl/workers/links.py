"""doctor --full's link check, one process per GPU under torchrun: the collectives the parallel
layouts make (`wanctl.core.links`), at the message sizes the parent names, timed and checked.

- all-to-all: `dist.all_to_all_single` of `--all-to-all-bytes` per rank over the whole world,
  as Ulysses exchanges q, k, v and the attention output (gloo supports it on the CPU too);
- CFG exchange (with `--cfg-bytes`, even worlds): `dist.all_gather` of one tensor between the
  two ranks i and i + world/2 of a DeviceMesh's cfg dim, as `wanctl.models.cfg` does, every
  pair at once.

Each op runs warm-up calls (the first one's output is checked against known values), then
timed calls, each after a barrier and timed between synchronisations; each rank writes its
median and its wrong elements to its own JSON file in --result-dir. bf16 tensors, as the DiT
sends them; the known values are small integers, exact in bf16.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

from wanctl.workers.group import init_group

DTYPE = torch.bfloat16
ELEMENT_BYTES = 2


def all_to_all_input(rank: int, world: int, chunk: int) -> torch.Tensor:
    """Chunk j (for rank j) of rank r holds r + 1 at even positions and j + 1 at odd ones, so
    that each element received names its sender and its addressee."""
    tensor = torch.full((world, chunk), float(rank + 1), dtype=DTYPE)
    tensor[:, 1::2] = torch.arange(1, world + 1, dtype=DTYPE)[:, None]
    return tensor


def all_to_all_expected(rank: int, world: int, chunk: int) -> torch.Tensor:
    """What rank r receives: chunk i from rank i, addressed to r."""
    tensor = torch.full((world, chunk), float(rank + 1), dtype=DTYPE)
    tensor[:, 0::2] = torch.arange(1, world + 1, dtype=DTYPE)[:, None]
    return tensor


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(call: Callable[[], None], device: torch.device, warmup: int, repeats: int) -> float:
    """The median seconds of `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        dist.barrier()
        synchronize(device)
        start = time.perf_counter()
        call()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_all_to_all(
    n_bytes: int, device: torch.device, warmup: int, repeats: int
) -> dict[str, Any]:
    rank, world = dist.get_rank(), dist.get_world_size()
    chunk = n_bytes // ELEMENT_BYTES // world
    sent = all_to_all_input(rank, world, chunk).to(device)
    received = torch.empty_like(sent)
    dist.all_to_all_single(received, sent)
    expected = all_to_all_expected(rank, world, chunk).to(device)
    wrong = int((received != expected).sum().item())
    seconds = timed(lambda: dist.all_to_all_single(received, sent), device, warmup, repeats)
    return {"op": "all_to_all", "bytes_per_rank": sent.numel() * ELEMENT_BYTES,
            "seconds": seconds, "wrong_elements": wrong}  # fmt: skip


def measure_cfg_exchange(
    n_bytes: int, device: torch.device, warmup: int, repeats: int
) -> dict[str, Any]:
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh(device.type, (2, world // 2), mesh_dim_names=("cfg", "ulysses"))
    group = mesh["cfg"].get_group()
    mine = torch.full((n_bytes // ELEMENT_BYTES,), float(rank + 1), dtype=DTYPE, device=device)
    both = [torch.empty_like(mine) for _ in range(2)]
    dist.all_gather(both, mine, group=group)
    pair = dist.get_process_group_ranks(group)
    wrong = sum(int((got != peer + 1).sum().item()) for got, peer in zip(both, pair, strict=True))
    seconds = timed(lambda: dist.all_gather(both, mine, group=group), device, warmup, repeats)
    return {"op": "cfg_exchange", "bytes_per_rank": mine.numel() * ELEMENT_BYTES,
            "seconds": seconds, "wrong_elements": wrong, "pair": pair}  # fmt: skip


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--result-dir", type=Path, required=True)
    parser.add_argument("--backend", choices=("auto", "nccl", "gloo"), default="auto")
    parser.add_argument("--all-to-all-bytes", type=int, required=True)
    parser.add_argument("--cfg-bytes", type=int, default=0, help="0: no CFG exchange")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    device = init_group(args.backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    results = [measure_all_to_all(args.all_to_all_bytes, device, args.warmup, args.repeats)]
    if args.cfg_bytes and world % 2 == 0:
        results.append(measure_cfg_exchange(args.cfg_bytes, device, args.warmup, args.repeats))
    wrong = sum(int(result["wrong_elements"]) for result in results)
    report = {"rank": rank, "world_size": world, "backend": dist.get_backend(),
              "wrong_elements": wrong, "results": results}  # fmt: skip
    (args.result_dir / f"rank{rank}.json").write_text(json.dumps(report))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
