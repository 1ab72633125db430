"""CFG parallel: the two passes of classifier-free guidance on two groups of ranks.

Each sampling step runs the DiT twice, on the prompt and on the negative prompt (diffusers' Wan
pipelines call it in that order, then mix the two outputs). With CFG parallel the world is
split in two groups of N/2 ranks, each Ulysses-parallel within itself (`ulysses_mesh`): group 0
computes the prompt's pass, group 1 the negative prompt's, both on the first call of a step;
the two outputs are exchanged between the groups (one latent-sized tensor per rank and step,
`CfgBranch`), and the step's second call is answered from that exchange without computing.
The pipeline, the scheduler and the noise are untouched, so the latents are the sequential
run's.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

MESH_DIMS = ("cfg", "ring", "ulysses")  # diffusers' context parallelism reads "ring", "ulysses"


def cfg_mesh(device_type: str, world: int, cfg: int) -> DeviceMesh:
    """The ranks as (cfg, ring 1, ulysses world / cfg): rank r is in guidance group
    r // (world / cfg)."""
    return init_device_mesh(device_type, (cfg, 1, world // cfg), mesh_dim_names=MESH_DIMS)


class CfgBranch:
    """A DiT's forward under CFG parallel, for this rank's group (`branch` 0: the prompt, 1:
    the negative prompt, whose embeddings replace the ones the first call passes).

    The first call of a step computes this group's pass and exchanges its output over
    `group` (one rank of each guidance group); it returns the prompt's output and keeps the
    negative prompt's for the second call, which computes nothing."""

    def __init__(self, forward: Any, negative: torch.Tensor, branch: int, group: Any):
        self.forward, self.negative, self.branch, self.group = forward, negative, branch, group
        self.kept: torch.Tensor | None = None
        self.computed = 0  # passes this rank ran: one a step

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.kept is not None:  # the step's negative-prompt call
            passed = kwargs.get("encoder_hidden_states")
            if passed is None or not torch.equal(passed, self.negative):
                raise RuntimeError(
                    "CFG parallel expected the step's negative-prompt pass: the pipeline ran "
                    "one pass a step (guidance off?)"
                )
            kept, self.kept = self.kept, None
            return (kept,)
        if kwargs.get("return_dict", True):
            raise ValueError("CFG parallel expects the pipelines' return_dict=False calls")
        if self.branch == 1:
            kwargs["encoder_hidden_states"] = self.negative
        mine = self.forward(*args, **kwargs)[0]
        self.computed += 1
        both = [torch.empty_like(mine) for _ in range(2)]
        dist.all_gather(both, mine.contiguous(), group=self.group)
        self.kept = both[1]
        return (both[0],)


def enable_cfg_parallel(dit: Any, negative: torch.Tensor, mesh: DeviceMesh) -> None:
    """Answer `dit`'s guidance passes through `CfgBranch` for this rank's group of `mesh`."""
    branch = mesh["cfg"].get_local_rank()
    dit.forward = CfgBranch(dit.forward, negative, branch, mesh["cfg"].get_group())
