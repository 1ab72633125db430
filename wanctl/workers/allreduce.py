"""doctor --full's collective check, one process per GPU under torchrun.

Each rank fills a buffer with known values, all-reduces it (NCCL on GPUs, gloo on CPU),
checks every element against the exact sum and times it; each rank writes its own JSON file
into --result-dir, so the parent can name the rank that was wrong.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.distributed as dist

from wanctl.workers.group import init_group


def expected_sum(base: torch.Tensor, world_size: int) -> torch.Tensor:
    """Rank r contributes (r + 1) * base, so the sum is world_size(world_size + 1)/2 * base;
    small integers keep float32 exact."""
    return base * (world_size * (world_size + 1) // 2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--result-dir", type=Path, required=True)
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--backend", choices=("auto", "nccl", "gloo"), default="auto")
    args = parser.parse_args()
    device = init_group(args.backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    base = (torch.arange(args.size_mib * 1024 * 1024 // 4, device=device) % 1000).float()
    buffer = base * (rank + 1)
    dist.all_reduce(buffer)  # warm-up and the checked result
    wrong = int((buffer != expected_sum(base, world)).sum().item())
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    dist.all_reduce(buffer)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    # bus bandwidth as nccl-tests defines it for all-reduce: 2(n-1)/n * bytes / time
    bus_gbps = 2 * (world - 1) / world * buffer.numel() * 4 / seconds / 1e9 if world > 1 else 0.0
    result = {
        "rank": rank,
        "world_size": world,
        "backend": dist.get_backend(),
        "wrong_elements": wrong,
        "seconds": seconds,
        "bus_gbps": bus_gbps,
    }
    (args.result_dir / f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
