"""doctor --full's transfer check, in a child process with every GPU visible.

For each GPU: host<->device copies timed against its PCIe link. For each GPU pair: a
device-to-device copy verified bit-exact against the same data sent through host memory, and
its bandwidth. Writes one JSON document to --result.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

MIB = 1024 * 1024


def _timed_copy(source: torch.Tensor, target: torch.Tensor, repeats: int) -> float:
    """GB/s of `target.copy_(source)` into a preallocated (pinned, for host) buffer, after
    one warm-up copy."""
    target.copy_(source, non_blocking=True)
    _wait(source, target)
    start = time.perf_counter()
    for _ in range(repeats):
        target.copy_(source, non_blocking=True)
    _wait(source, target)
    return source.numel() * source.element_size() * repeats / (time.perf_counter() - start) / 1e9


def _wait(*tensors: torch.Tensor) -> None:
    """Until the copies queued on the tensors' GPUs are done: a bare synchronize waits for the
    current device (GPU 0) only, and would time GPU 1's copies as they are queued."""
    for device in {t.device for t in tensors if t.is_cuda}:
        torch.cuda.synchronize(device)


def host_links(size_mib: int, repeats: int) -> list[dict[str, object]]:
    results: list[dict[str, object]] = []
    for index in range(torch.cuda.device_count()):
        host = torch.empty(size_mib * MIB, dtype=torch.uint8).pin_memory()
        device = torch.empty(size_mib * MIB, dtype=torch.uint8, device=f"cuda:{index}")
        results.append(
            {
                "gpu": index,
                "h2d_gbps": _timed_copy(host, device, repeats),
                "d2h_gbps": _timed_copy(device, host, repeats),
            }
        )
    return results


def pair_copy(src: int, dst: int, size_mib: int, repeats: int) -> dict[str, object]:
    """Bit-exactness and bandwidth of a GPU src -> GPU dst copy (P2P when the pair allows)."""
    generator = torch.Generator(device=f"cuda:{src}").manual_seed(1234 + 31 * src + dst)
    data = torch.randint(
        0, 256, (size_mib * MIB,), dtype=torch.uint8, device=f"cuda:{src}", generator=generator
    )
    direct = data.to(f"cuda:{dst}")
    through_host = data.cpu().to(f"cuda:{dst}")
    mismatched = int((direct != through_host).sum().item())
    return {
        "src": src,
        "dst": dst,
        "peer_access": torch.cuda.can_device_access_peer(src, dst),
        "bit_exact": mismatched == 0,
        "mismatched_bytes": mismatched,
        "gbps": _timed_copy(data, direct, repeats),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    count = torch.cuda.device_count()
    pairs = [(i, j) for i in range(count) for j in range(count) if i != j]
    report = {
        "host": host_links(args.size_mib, args.repeats),
        "pairs": [pair_copy(i, j, args.size_mib, args.repeats) for i, j in pairs],
    }
    args.result.write_text(json.dumps(report))


if __name__ == "__main__":
    main()
