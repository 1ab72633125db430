"""The process groups of the torchrun workers: the group of doctor's collective checks
(`allreduce`, `links`), NCCL on this rank's GPU or gloo on the CPU; and the generate worker's
group for the waits of ranks that have nothing to do while another works (`waiting_group`)."""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

# How long a rank may wait for another to finish its work alone: longer than any phase may
# take. A rank that dies is seen at once (its sockets close); wanctl's --timeout bounds a run.
WAIT_TIMEOUT = timedelta(hours=24)


def init_group(backend: str) -> torch.device:
    """Join the torchrun group over `backend` ("auto": NCCL when a GPU is visible, else
    gloo); returns the device this rank's tensors live on."""
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}" if backend == "nccl" else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    return device


def waiting_group(timeout: timedelta = WAIT_TIMEOUT) -> dist.ProcessGroup:
    """A gloo group of every rank, for the waits of ranks with nothing to do while another
    works alone for minutes (rank 0 loading and running the text encoder, saving the latents;
    the decoding ranks, for the others): over NCCL such a wait is a collective under NCCL's
    watchdog (10 minutes by default), which kills the job. Made once by every rank, at start-up
    (a collective itself)."""
    return dist.new_group(backend="gloo", timeout=timeout)
