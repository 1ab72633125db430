"""The Wan2.2 models wanctl runs, as data (torch-free): the DiT and VAE each uses, whether it
is a mixture of two experts, and the official sampling defaults (`wan/configs/*.py`).

- TI2V-5B: one DiT (24 heads), the Wan2.2 VAE, an optional image for the first frame;
- T2V-A14B and I2V-A14B: two experts of 14 B parameters (40 heads each), the high-noise one
  for the steps with timestep t >= boundary x 1000, the low-noise one after; the Wan2.1 VAE.
  I2V conditions every step on the image through the VAE encoder (36 input channels).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from wanctl.core.architectures import (
    DIT_A14B,
    DIT_TI2V_5B,
    WAN21_VAE,
    WAN22_VAE,
    VaeFamily,
)


@dataclass(frozen=True)
class Family:
    """One Wan2.2 model. `guidance` is the high-noise expert's scale then the low-noise
    expert's (one value for a single DiT); `image` is "optional", "required" or "none"."""

    name: str  # the official task name (`--task`)
    dit_name: str  # the DiT's architecture: the memory model's activations are fitted per DiT
    dit: dict[str, Any] = field(compare=False, hash=False)
    vae: VaeFamily
    boundary: float | None  # None: one DiT
    shift: float
    guidance: tuple[float, ...]
    steps: int
    frames: int
    fps: float
    sizes: tuple[str, ...]  # the official SUPPORTED_SIZES
    image: str

    @property
    def experts(self) -> int:
        return 1 if self.boundary is None else 2

    @property
    def heads(self) -> int:
        """Attention heads: the Ulysses degree must divide them."""
        heads: int = self.dit["num_attention_heads"]
        return heads

    @property
    def size_multiple(self) -> int:
        """Sizes are multiples of this: the VAE's spatial factor times the DiT's patch (2)."""
        return 2 * self.vae.spatial

    @property
    def expands_timesteps(self) -> bool:
        """TI2V-5B passes a timestep per token (the first frame's tokens at 0 when an image
        conditions them); the A14B models one per sample."""
        return self.vae is WAN22_VAE


TI2V_5B = Family(
    name="ti2v-5B", dit_name="TI2V-5B", dit=DIT_TI2V_5B, vae=WAN22_VAE, boundary=None, shift=5.0,
    guidance=(5.0,), steps=50, frames=121, fps=24.0, sizes=("1280*704", "704*1280"),
    image="optional",
)  # fmt: skip
A14B_SIZES = ("1280*720", "720*1280", "832*480", "480*832")
T2V_A14B = Family(
    name="t2v-A14B", dit_name="A14B expert", dit=DIT_A14B, vae=WAN21_VAE, boundary=0.875,
    shift=12.0, guidance=(4.0, 3.0), steps=40, frames=81, fps=16.0, sizes=A14B_SIZES, image="none",
)  # fmt: skip
I2V_A14B = Family(
    name="i2v-A14B", dit_name="A14B expert", dit={**DIT_A14B, "in_channels": 36},
    vae=WAN21_VAE, boundary=0.9, shift=5.0, guidance=(3.5, 3.5), steps=40, frames=81,
    fps=16.0, sizes=A14B_SIZES, image="required",
)  # fmt: skip


FAMILIES = {family.name: family for family in (TI2V_5B, T2V_A14B, I2V_A14B)}


def default_fps(vae: VaeFamily) -> float:
    """The frame rate of the models whose latents `vae` decodes (TI2V-5B 24, A14B 16)."""
    return next(f.fps for f in FAMILIES.values() if f.vae is vae)


def a14b(image: bool) -> Family:
    """The A14B model of a run with (I2V) or without (T2V) a conditioning image."""
    return I2V_A14B if image else T2V_A14B
