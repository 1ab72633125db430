"""The latent file format shared by all of wanctl.

A safetensors file holding one tensor named `latents`, of shape (1, 48, T, h, w) or
(48, T, h, w), in a floating dtype, with string metadata:

- `normalized` (required): "true" when the latents are in the model's normalised space (straight
  from the sampler) and need `z * std + mean` before decoding, "false" when already denormalised;
- `fps` (optional, default 24): the frame rate of the decoded video;
- `model`, `prompt`, `seed`, `steps`, `size` (optional): where the latents came from.

T latent frames decode to 4(T-1)+1 frames of 16h x 16w pixels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from wanctl.errors import UsageError

TENSOR_NAME = "latents"
CHANNELS = 48
DEFAULT_FPS = 24.0
SOURCE_KEYS = ("model", "prompt", "seed", "steps", "size")
TIME_FACTOR = 4
SPACE_FACTOR = 16
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class Latents:
    """Latents of one video, (1, 48, T, h, w), and what the file says about them."""

    tensor: torch.Tensor
    normalized: bool
    fps: float = DEFAULT_FPS
    source: Mapping[str, str] = field(default_factory=dict)

    @property
    def latent_frames(self) -> int:
        return int(self.tensor.shape[2])

    @property
    def frames(self) -> int:
        """Frames of the decoded video: the first latent frame gives one, each other four."""
        return TIME_FACTOR * (self.latent_frames - 1) + 1

    @property
    def height(self) -> int:
        return SPACE_FACTOR * int(self.tensor.shape[3])

    @property
    def width(self) -> int:
        return SPACE_FACTOR * int(self.tensor.shape[4])

    def for_decoder(self, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
        """The latents in the space the VAE decodes, float32: `z * std + mean` when normalised
        (as the Wan pipelines do before `vae.decode`), unchanged otherwise."""
        z = self.tensor.float()
        if not self.normalized:
            return z
        shape = (1, CHANNELS, 1, 1, 1)
        return z * torch.tensor(std).view(shape) + torch.tensor(mean).view(shape)


def save_latents(path: Path, latents: Latents) -> None:
    """Write `latents` in the wanctl format (the metadata as strings)."""
    metadata = {"normalized": "true" if latents.normalized else "false", "fps": str(latents.fps)}
    metadata.update({k: str(v) for k, v in latents.source.items() if k in SOURCE_KEYS})
    save_file({TENSOR_NAME: latents.tensor.contiguous()}, str(path), metadata=metadata)


def load_latents(path: Path) -> Latents:
    """Read and check a latents file; a bad one raises `UsageError` saying what is wrong."""
    tensor, metadata = _read(path)
    tensor = _checked_tensor(path, tensor)
    return Latents(
        tensor=tensor,
        normalized=_normalized(path, metadata),
        fps=_fps(path, metadata),
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
    if tensor.dim() != 5 or tensor.shape[0] != 1 or tensor.shape[1] != CHANNELS:
        raise UsageError(
            f"{path}: latents of shape {shape}, expected (1, {CHANNELS}, T, h, w)",
            why=f"the Wan2.2 VAE decodes {CHANNELS}-channel latents, one video per file",
            fix="save one video's latents, as the TI2V-5B sampler returns them",
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


def _fps(path: Path, metadata: Mapping[str, str]) -> float:
    value = metadata.get("fps", str(DEFAULT_FPS))
    try:
        fps = float(value)
    except ValueError:
        fps = 0.0
    if not 0 < fps <= 1000:
        raise UsageError(f"{path}: metadata 'fps' is {value!r}, expected a positive number")
    return fps
