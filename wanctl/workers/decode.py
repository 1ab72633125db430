"""torchrun worker of `wanctl decode --gpus N`: one rank of the patch-parallel decode.

    python -m wanctl.workers.torchrun --standalone --nproc-per-node=N -m wanctl.workers.decode \
        --latents L.safetensors --output video.mp4 --vae DIR --device cuda --dtype bf16 \
        --chunk-t 1 --report report.json

NCCL on GPUs (rank r on cuda:LOCAL_RANK), gloo on CPUs; the results are gathered over gloo
(`waiting_group`). Rank 0 writes the video and, at the end, every rank's result into the
report; a rank that fails writes why next to it (see
`wanctl.decode.job.read_report`) and exits non-zero, and torchrun stops the others.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from wanctl.core.status import classify
from wanctl.decode.latents import load_latents
from wanctl.decode.run import (
    DEVICES,
    DTYPES,
    DecodeOptions,
    decode_rank,
    write_failure,
    write_report,
)
from wanctl.decode.stream import StreamResult
from wanctl.errors import WanctlError
from wanctl.workers.failures import expected
from wanctl.workers.group import leave, waiting_group


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m wanctl.workers.decode")
    parser.add_argument("--latents", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--vae", required=True)
    parser.add_argument("--device", choices=DEVICES, required=True)
    parser.add_argument("--dtype", choices=sorted(DTYPES), required=True)
    parser.add_argument("--chunk-t", type=int, required=True)
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.device == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    dist.init_process_group("nccl" if args.device == "cuda" else "gloo")
    rank = dist.get_rank()
    try:
        results = run_rank(args, device)
    except (torch.OutOfMemoryError, WanctlError) as error:
        # Reported, not raised: the parent falls back or shows the message, no traceback. The
        # process group is left as is: the other ranks may be blocked in an exchange with this
        # one, and torchrun stops them when this rank exits.
        write_failure(args.report, rank, error)
        print(f"rank {rank}: {str(error).splitlines()[0]}", file=sys.stderr)
        return 1
    except Exception as error:
        if not expected(error):
            raise  # a bug: the traceback says where
        # This rank lost the others (one that failed first reported why): a line, no report.
        print(f"rank {rank}: {classify(type(error).__name__, str(error))}", file=sys.stderr)
        return 1
    if rank == 0:
        write_report(args.report, results)
    dist.destroy_process_group()
    return 0


def run_rank(args: argparse.Namespace, device: torch.device) -> list[StreamResult]:
    """This rank's share of the decode; every rank's result, gathered on all over gloo
    (`waiting_group`): the others wait there while rank 0 finishes encoding the video, a wait
    NCCL's watchdog would time."""
    world = dist.get_world_size()
    waits = waiting_group()
    options = DecodeOptions(
        args.latents, args.output, args.vae, args.device, args.dtype, args.chunk_t, world,
        progress=not args.no_progress,
    )  # fmt: skip
    result = decode_rank(options, load_latents(args.latents), device, world)
    results: list[object] = [None] * world
    dist.all_gather_object(results, result, group=waits)
    return [r for r in results if isinstance(r, StreamResult)]


if __name__ == "__main__":
    leave(main(sys.argv[1:]))
