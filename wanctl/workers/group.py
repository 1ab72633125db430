"""The process group of doctor's collective checks (`allreduce`, `links`): NCCL on this
rank's GPU, or gloo on the CPU."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


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
