"""The latent file format shared by all of wanctl.

A safetensors file holding one tensor named `latents`, of shape (1, C, T, h, w) or
(C, T, h, w), in a floating dtype, with string metadata:

- `normalized` (required): "true" when the latents are in the model's normalised space (straight
  from the sampler) and need `z * std + mean` before decoding, "false" when already denormalised;
- `vae` (optional): the VAE that made them, "wan2.2" (TI2V-5B: C = 48, 16x in space) or
  "wan2.1" (the A14B models: C = 16, 8x); without it, the channel count says which;
- `fps` (optional; default 24 for the Wan2.2 VAE's latents, 16 for the Wan2.1 VAE's, the
  models' own rates): the frame rate of the decoded video;
- `model`, `prompt`, `seed`, `steps`, `size` (optional): where the latents came from.

T latent frames decode to 4(T-1)+1 frames of (16h x 16w, or 8h x 8w) pixels.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from wanctl.core.architectures import (
    VAE_FAMILIES,
    VaeFamily,
    vae_family_for_channels,
)
from wanctl.core.families import default_fps
from wanctl.core.launch import partial_path
from wanctl.errors import UsageError

TENSOR_NAME = "latents"
DEFAULT_FPS = 24.0  # a `Latents` made without one: TI2V-5B's
SOURCE_KEYS = ("model", "prompt", "seed", "steps", "size")
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class Latents:
    """Latents of one video, (1, C, T, h, w), the VAE that made them, and what the file says
    about them."""

    tensor: torch.Tensor
    normalized: bool
    fps: float = DEFAULT_FPS
    source: Mapping[str, str] = field(default_factory=dict)

    @property
    def vae(self) -> VaeFamily:
        """The VAE of this channel count: the one that made them, the one that decodes them."""
        return _family(self.tensor)

    @property
    def latent_frames(self) -> int:
        return int(self.tensor.shape[2])

    @property
    def frames(self) -> int:
        """Frames of the decoded video: the first latent frame gives one, each other four."""
        return self.vae.temporal * (self.latent_frames - 1) + 1

    @property
    def height(self) -> int:
        return self.vae.spatial * int(self.tensor.shape[3])

    @property
    def width(self) -> int:
        return self.vae.spatial * int(self.tensor.shape[4])

    def for_decoder(self, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
        """The latents in the space the VAE decodes, float32: `z * std + mean` when normalised
        (as the Wan pipelines do before `vae.decode`), unchanged otherwise."""
        z = self.tensor.float()
        if not self.normalized:
            return z
        channels = self.vae.channels
        if len(mean) != channels or len(std) != channels:
            raise UsageError(
                f"the VAE's config does not denormalise latents of {channels} channels",
                why=f"its latents_mean has {len(mean)} values and its latents_std {len(std)}",
                fix="give the --vae of the model that made the latents (its config.json has "
                f"{channels} latents_mean and latents_std values)",
            )
        shape = (1, channels, 1, 1, 1)
        return z * torch.tensor(std).view(shape) + torch.tensor(mean).view(shape)


def save_latents(path: Path, latents: Latents) -> None:
    """Write `latents` in the wanctl format (the metadata as strings), into place only once
    complete: a file already there (an --overwrite run's) is never left half-replaced."""
    metadata = {
        "normalized": "true" if latents.normalized else "false",
        "fps": str(latents.fps),
        "vae": latents.vae.name,
    }
    metadata.update({k: str(v) for k, v in latents.source.items() if k in SOURCE_KEYS})
    partial = partial_path(path)
    # written as bytes, not by safetensors' save_file, which creates its file owner-only
    # (0600): the latents get the umask's mode, as the video beside them does (tens of MB)
    partial.write_bytes(save({TENSOR_NAME: latents.tensor.contiguous()}, metadata=metadata))
    os.replace(partial, path)


def load_latents(path: Path) -> Latents:
    """Read and check a latents file; a bad one raises `UsageError` saying what is wrong."""
    tensor, metadata = _read(path)
    tensor = _checked_tensor(path, tensor)
    _check_vae(path, metadata, int(tensor.shape[1]))
    return Latents(
        tensor=tensor,
        normalized=_normalized(path, metadata),
        fps=_fps(path, metadata, default=default_fps(_family(tensor))),
        source={k: metadata[k] for k in SOURCE_KEYS if k in metadata},
    )


def _read(path: Path) -> tuple[torch.Tensor, dict[str, str]]:
    fix = (
        f"pass a safetensors file with a tensor named '{TENSOR_NAME}' "
        "(the README's 'latent file format')"
    )
    if not path.is_file():
        raise UsageError(f"latents file not found: {path}", fix=fix)
    try:
        with safe_open(str(path), framework="pt") as handle:
            names = list(handle.keys())
            if TENSOR_NAME not in names:
                raise UsageError(
                    f"{path} has no tensor named '{TENSOR_NAME}'",
                    why=f"its tensors are: {', '.join(names) or 'none'}",
                    fix=f"save the latents under the name '{TENSOR_NAME}'",
                )
            return handle.get_tensor(TENSOR_NAME), dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError) as error:
        raise UsageError(f"cannot read {path} as safetensors", why=str(error), fix=fix) from None


def _checked_tensor(path: Path, tensor: torch.Tensor) -> torch.Tensor:
    shape = tuple(tensor.shape)
    if tensor.dim() == 4:
        tensor = tensor.unsqueeze(0)
    widths = sorted(family.channels for family in VAE_FAMILIES.values())
    if (
        tensor.dim() != 5
        or tensor.shape[0] != 1
        or vae_family_for_channels(tensor.shape[1]) is None
    ):
        raise UsageError(
            f"{path}: latents of shape {shape}, expected (1, C, T, h, w) with C in {widths}",
            why="the Wan2.2 VAE (TI2V-5B) decodes 48-channel latents, the Wan2.1 VAE (the A14B"
            " models) 16-channel ones; one video per file",
            fix="save one video's latents, as the sampler returns them",
        )
    if min(tensor.shape[2:]) < 1:
        raise UsageError(f"{path}: latents of shape {shape} are empty")
    if tensor.dtype not in _FLOAT_DTYPES:
        raise UsageError(
            f"{path}: latents of dtype {tensor.dtype}, expected float32, float16 or bfloat16"
        )
    if not bool(torch.isfinite(tensor).all()):
        raise UsageError(
            f"{path}: the latents hold NaN or infinite values",
            why="the sampling that produced them diverged; no decode can fix that",
            fix="sample again (another seed, or float32/bfloat16 instead of float16)",
        )
    return tensor


def _normalized(path: Path, metadata: Mapping[str, str]) -> bool:
    value = metadata.get("normalized")
    if value not in ("true", "false"):
        raise UsageError(
            f"{path}: metadata 'normalized' is {value!r}, expected 'true' or 'false'",
            why="decoding latents in the wrong space gives a wrong video without any error",
            fix="save with metadata={'normalized': 'true'} for latents straight from the sampler,"
            " 'false' if already multiplied by the VAE's std and shifted by its mean",
        )
    return value == "true"


def _family(tensor: torch.Tensor) -> VaeFamily:
    family = vae_family_for_channels(int(tensor.shape[1]))
    if family is None:
        raise ValueError(f"no Wan VAE makes latents of shape {tuple(tensor.shape)}")
    return family


def _check_vae(path: Path, metadata: Mapping[str, str], channels: int) -> None:
    """The VAE the file names must be the one of its channel count."""
    by_channels = vae_family_for_channels(channels)
    assert by_channels is not None, "the tensor's channels were checked"
    name = metadata.get("vae", by_channels.name)
    family = VAE_FAMILIES.get(name)
    if family is None or family is not by_channels:
        raise UsageError(
            f"{path}: metadata 'vae' is {name!r} but the latents have {channels} channels",
            why=f"the {by_channels.name} VAE makes {channels}-channel latents"
            + (f", the {family.name} VAE {family.channels}-channel ones" if family else ""),
            fix=f"set metadata 'vae' to {by_channels.name!r}, or drop it",
        )


def _fps(path: Path, metadata: Mapping[str, str], default: float) -> float:
    value = metadata.get("fps", str(default))
    try:
        fps = float(value)
    except ValueError:
        fps = 0.0
    if not 0 < fps <= 1000:
        raise UsageError(f"{path}: metadata 'fps' is {value!r}, expected a positive number")
    return fps
