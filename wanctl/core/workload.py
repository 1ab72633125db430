"""What is generated, as every floor of wanctl names it: the model family, the size, the
frames, the GPUs (the Ulysses degree) and whether an image conditions the video; the latent and
token counts they make, and whether a backend's Ulysses can split them. Torch-free."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from wanctl.core.families import TI2V_5B, Family
from wanctl.errors import UsageError

HEADS = TI2V_5B.heads  # TI2V-5B's: the Ulysses degree must divide them
SPATIAL = TI2V_5B.vae.spatial  # the Wan2.2 VAE's spatial compression
TEMPORAL = 4  # VAE temporal compression (both VAEs)
PATCH = 2  # the DiT's spatial patch (1, 2, 2), every model


@dataclass(frozen=True)
class Workload:
    """What is generated: `width*height`, `frames` (4n+1), over `gpus` ranks (the Ulysses
    degree), by the model `family`, from a prompt alone or with an `image`. Whether the ranks
    can split it is `ulysses_problem`'s question, not a construction error: a plan for it can
    still name the runs that would."""

    width: int
    height: int
    frames: int
    gpus: int
    image: bool = False
    family: Family = TI2V_5B

    def __post_init__(self) -> None:
        multiple, spatial = self.family.size_multiple, self.family.vae.spatial
        if self.width <= 0 or self.height <= 0 or self.width % multiple or self.height % multiple:
            raise UsageError(
                f"size {self.width}*{self.height} is not made of multiples of {multiple}",
                why=f"{self.family.name}'s VAE divides each side by {spatial} and the DiT's patch"
                " by 2 more",
                fix=f"use a size such as {' or '.join(self.family.sizes[:2])}",
            )
        if self.frames < 1 or (self.frames - 1) % TEMPORAL:
            raise UsageError(
                f"{self.frames} frames is not 4n+1",
                why="the VAE turns 1 + 4n frames into n + 1 latent frames",
                fix=f"use --frames {nearest_frames(self.frames)}",
            )
        if self.gpus < 1:
            raise UsageError(f"a run on {self.gpus} GPUs", fix="use --gpus 1 or more")

    @property
    def size(self) -> str:
        return f"{self.width}*{self.height}"

    @property
    def latent(self) -> tuple[int, int, int]:
        """(frames, height, width) of the latent."""
        spatial = self.family.vae.spatial
        return (self.frames - 1) // TEMPORAL + 1, self.height // spatial, self.width // spatial

    @property
    def tokens(self) -> int:
        frames, height, width = self.latent
        return frames * (height // PATCH) * (width // PATCH)


def ulysses_problem(
    workload: Workload, backend: str = "diffusers", degree: int | None = None
) -> str | None:
    """Why the backend's Ulysses cannot split `workload` over `degree` ranks (its `gpus` by
    default; half of them under CFG parallel), as a sentence, or None when it can. The degree
    must divide the DiT's attention heads (24, A14B 40); diffusers also gives every rank an
    equal share of the tokens (the official code pads the sequence to a multiple of the
    degree). Pure: the workload alone decides."""
    gpus, heads = degree or workload.gpus, workload.family.heads
    if heads % gpus:
        usable = [str(n) for n in ulysses_degrees(heads) if n <= max(gpus, 8)]
        return (
            f"{workload.family.name}'s {heads} attention heads do not split over {gpus} GPUs: "
            f"the Ulysses degree must divide them ({', '.join(usable)})"
        )
    if backend == "diffusers" and workload.tokens % gpus:
        return (
            f"{workload.tokens} tokens ({workload.size} x {workload.frames} frames) do not split "
            f"over {gpus} GPUs: diffusers' Ulysses gives every rank an equal share of the tokens"
        )
    return None


def ulysses_degrees(heads: int = HEADS) -> tuple[int, ...]:
    return tuple(n for n in range(1, heads + 1) if heads % n == 0)


def nearest_frames(frames: int) -> int:
    return max(1, round((frames - 1) / TEMPORAL) * TEMPORAL + 1)


def parse_size(text: str) -> tuple[int, int]:
    """'1280*704' (or 1280x704) -> (1280, 704)."""
    match = re.fullmatch(r"\s*(\d+)\s*[*x×]\s*(\d+)\s*", text)
    if not match:
        raise UsageError(
            f"cannot read the size {text!r}",
            why="a size is WIDTH*HEIGHT in pixels",
            fix="write it like 1280*704",
        )
    return int(match.group(1)), int(match.group(2))


TOP_UPSCALE = 8  # the decoders' top resolution is the latent's x8 (Wan2.2's then unpatchified x2)


def decode_pixels(width: int, height: int, ranks: int, spatial: int = SPATIAL) -> int:
    """Output pixels one decode rank produces with a VAE of `spatial` compression: each frame
    is split along its longer side (`wanctl.decode.parallel`), the last ranks taking the
    remainder: the worst rank's slab is the longest; a split rank also holds a halo row each
    side at the decoder's top resolution, where the largest activations live."""
    long, short = max(width, height), min(width, height)
    latent_rows = math.ceil(long / spatial / ranks)
    halo = 2 * spatial // TOP_UPSCALE if ranks > 1 else 0
    return (latent_rows * spatial + halo) * short
