"""The model a worker samples with: a built-in one or a diffusers checkpoint (a module of its
own: both kinds import `wanctl.models.pipelines`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from wanctl.models.builtin import built_in
from wanctl.models.checkpoint import DiffusersCheckpoint

if TYPE_CHECKING:
    import torch

    from wanctl.models.pipelines import WanModel


def model_for(
    name: str | None, checkpoint: Path | None, dtype: torch.dtype, *, image: bool = False
) -> WanModel:
    """A built-in model (`wanctl.models.catalog.MODELS`), or the diffusers checkpoint at
    `checkpoint`; `image` picks I2V-A14B over T2V-A14B for the two-expert built-ins."""
    if name is not None:
        model: WanModel = built_in(name, dtype, image=image)
        return model
    if checkpoint is None:
        raise ValueError("a built-in model's name or a checkpoint is needed")
    return DiffusersCheckpoint(checkpoint, dtype)
