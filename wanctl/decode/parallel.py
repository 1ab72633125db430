"""Exact patch parallelism for the VAE decode.

Every rank decodes one slab of each frame: a run of rows along the frame's longer latent side
(uneven runs are fine: 44 rows over 3 ranks are 14, 15 and 15; rank 0, which also gathers the
frames and writes the video, never takes a longer one). The decoder's only operations that look
across pixels are the 3x3 spatial convolutions and the mid-block attention, so:

- each spatial convolution's input is made in a buffer with border rows at both ends of the
  slab (`Halo.empty`); before the convolution a rank trades its edge rows with its neighbours
  into them (a "halo"), zeros only at the frame's real border. Nothing copies the whole input;
- the attention keeps its own queries and gathers the keys and values of all ranks;
- RMS norm, SiLU, 1x1 and time-only convolutions, DupUp3D and unpatchify work pixel by pixel.

The result equals the one-process decode (up to float summation order), and each rank holds
about 1/N of the activations. `RowSplit` is the `Halo` that does this over torch.distributed
(NCCL on GPUs, gloo on CPUs); `LoneSlab` decodes one rank's slab alone, its borders zeros, to
measure a rank's work on one device (benchmarks/decode_slab.py).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from wanctl.decode.engine import empty_channels_last
from wanctl.errors import UsageError


def split_sizes(length: int, parts: int) -> list[int]:
    """`length` rows over `parts` ranks, as even as can be, the last ranks one row longer: rank 0
    also gathers and writes the frames."""
    base, extra = divmod(length, parts)
    return [base + (1 if r >= parts - extra else 0) for r in range(parts)]


def split_dim(height: int, width: int) -> int:
    """The dimension to split (-2 rows, -1 columns): the longer side, rows on a tie."""
    return -1 if width > height else -2


class Slab(ABC):
    """Rank `rank`'s slab of every frame, of the slabs `sizes` along dimension `dim` (-2 or -1
    of the tensors) at latent resolution; at any other resolution they scale by the same
    factor. The framing half of a `Halo`: buffers with `space` border rows at both ends of the
    slab whenever the frame is split, whatever fills them."""

    def __init__(self, sizes: Sequence[int], dim: int, rank: int):
        self.sizes = list(sizes)
        self.dim = dim
        self.rank = rank
        self.world = len(self.sizes)
        if min(self.sizes) < 1 or not 0 <= rank < self.world:
            raise ValueError(f"slab sizes {self.sizes} have no slab {rank}")

    @property
    def start(self) -> int:
        return sum(self.sizes[: self.rank])

    def shard(self, z: torch.Tensor) -> torch.Tensor:
        """This rank's slab of latents (..., h, w)."""
        return z.narrow(self.dim, self.start, self.sizes[self.rank])

    def margin(self, space: int) -> int:
        """`Halo.margin`: `space` rows at each end of a slab; none for a frame not split."""
        return space if self.world > 1 else 0

    def empty(
        self, shape: Sequence[int], space: int, like: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`Halo.empty`: `margin(space)` more rows at each end along the split."""
        rows = self.margin(space)
        axis = len(shape) + self.dim
        framed = list(shape)
        framed[axis] += 2 * rows
        buffer = empty_channels_last(framed, like)
        return buffer, buffer.narrow(axis, rows, shape[axis])

    def border(self, buffer: torch.Tensor, space: int) -> tuple[int, int]:
        """`Halo.border`: the border rows along the split filled (`_fill`); the convolution
        pads the other dimension."""
        rows = self.margin(space)
        if not rows:
            return space, space
        self._fill(buffer, rows)
        return (0, space) if self.dim == -2 else (space, 0)

    @abstractmethod
    def _fill(self, buffer: torch.Tensor, rows: int) -> None:
        """Write the `rows` border rows at each end of `buffer` along the split."""

    def _lengths(self, local: int) -> list[int]:
        """Every rank's slab length at the resolution where this rank's is `local`."""
        scale, remainder = divmod(local, self.sizes[self.rank])
        if remainder:
            raise ValueError(f"slab of {local} is not a multiple of {self.sizes[self.rank]}")
        return [size * scale for size in self.sizes]


class RowSplit(Slab):
    """This rank's slab of every frame, and the exchanges that make the slab decode exact. All
    ranks of `group` must make the same calls in the same order."""

    def __init__(self, sizes: Sequence[int], dim: int, group: dist.ProcessGroup | None = None):
        super().__init__(sizes, dim, dist.get_rank(group))
        self.group = group
        if self.world != dist.get_world_size(group):
            raise ValueError(f"slab sizes {self.sizes} do not fit {self.world} ranks")
        # dense send and receive buffers of each border shape, kept for the next call
        self._scratch: dict[tuple[object, ...], tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def for_latents(cls, shape: Sequence[int], group: dist.ProcessGroup | None = None) -> RowSplit:
        """The split of latents of `shape` (..., h, w) over the ranks of `group`, after checking
        that every rank holds latents of that shape."""
        world = dist.get_world_size(group)
        dim = split_dim(shape[-2], shape[-1])
        length = shape[dim]
        if world > length:
            raise UsageError(
                f"{world} ranks cannot split a frame of {length} latent rows",
                fix=f"decode with at most {length} GPUs",
            )
        shapes: list[object] = [None] * world
        dist.all_gather_object(shapes, tuple(shape), group=group)
        if len(set(shapes)) != 1:
            raise ValueError(f"ranks hold latents of different shapes: {shapes}")
        return cls(split_sizes(length, world), dim, group)

    def gather_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """`Halo.gather_tokens`: all ranks' tokens (B, 1, n_r, C), concatenated in rank order."""
        counts = self._lengths(x.shape[2])
        padded = F.pad(x, (0, 0, 0, max(counts) - x.shape[2])).contiguous()
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded, group=self.group)
        return torch.cat([part[:, :, :n] for part, n in zip(parts, counts, strict=True)], dim=2)

    def gather_frames(self, x: torch.Tensor) -> torch.Tensor | None:
        """All slabs (..., H_r, W) or (..., H, W_r) of a chunk joined into whole frames on rank
        0; None on the other ranks."""
        axis = x.dim() + self.dim
        counts = self._lengths(x.shape[axis])
        pads = [0, 0, 0, 0]
        pads[1 if self.dim == -1 else 3] = max(counts) - x.shape[axis]  # after the slab
        padded = F.pad(x, pads).contiguous()
        root = self._global(0)
        if self.rank != 0:
            dist.gather(padded, None, dst=root, group=self.group)
            return None
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.gather(padded, parts, dst=root, group=self.group)
        slabs = [p.narrow(axis, 0, n) for p, n in zip(parts, counts, strict=True)]
        return torch.cat(slabs, dim=axis)

    def _fill(self, buffer: torch.Tensor, rows: int) -> None:
        """The border rows beyond each end of the slab: the neighbours' edge rows, sent and
        received through dense buffers (what send and receive take), or zeros at the frame's
        edge."""
        axis = buffer.dim() + self.dim
        inner = buffer.shape[axis] - 2 * rows
        ops, received = [], []
        for side, peer in enumerate((self.rank - 1, self.rank + 1)):
            border = buffer.narrow(axis, (0, rows + inner)[side], rows)
            if not 0 <= peer < self.world:
                border.zero_()
                continue
            sent, into = self._dense(border, side)
            channels_last_view(sent, border.shape).copy_(
                buffer.narrow(axis, (rows, inner)[side], rows)
            )
            ops += [dist.P2POp(dist.isend, sent, self._global(peer), self.group)]
            ops += [dist.P2POp(dist.irecv, into, self._global(peer), self.group)]
            received.append((border, into))
        if ops:
            for work in dist.batch_isend_irecv(ops):
                work.wait()
        for border, into in received:
            border.copy_(channels_last_view(into, border.shape))

    def _dense(self, border: torch.Tensor, side: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The send and receive buffers of `side` for borders like `border`: flat, allocated
        at the first border of this shape and reused after."""
        key = (tuple(border.shape), border.dtype, border.device, side)
        if key not in self._scratch:
            count = math.prod(border.shape)
            self._scratch[key] = (border.new_empty(count), border.new_empty(count))
        return self._scratch[key]

    def _global(self, rank: int) -> int:
        return rank if self.group is None else dist.get_global_rank(self.group, rank)


class LoneSlab(Slab):
    """The `Halo` of rank `rank` of a split, decoding its slab alone on one device: the same
    buffers, convolutions and attention as that rank's, its border rows zeros instead of the
    neighbours' rows (a benchmark's rank: the pixels near its borders are not the video's)."""

    @classmethod
    def largest(cls, length: int, ranks: int, dim: int) -> LoneSlab:
        """The slab of `length` rows over `ranks` that bounds a split's time: the longest,
        with neighbours on both sides where there is such a rank (a middle rank)."""
        sizes = split_sizes(length, ranks)
        rank = max(range(ranks), key=lambda r: (sizes[r], 0 < r < ranks - 1))
        return cls(sizes, dim, rank)

    def gather_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """This slab's tokens, zero-padded to as many as the whole frame has."""
        return F.pad(x, (0, 0, 0, sum(self._lengths(x.shape[2])) - x.shape[2]))

    def _fill(self, buffer: torch.Tensor, rows: int) -> None:
        axis = buffer.dim() + self.dim
        buffer.narrow(axis, 0, rows).zero_()
        buffer.narrow(axis, buffer.shape[axis] - rows, rows).zero_()


def channels_last_view(flat: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Dense 1-D `flat` as a channels-last tensor of `shape` (N, C, [T,] H, W): its elements in
    the order of a channels-last tensor's memory, so copies to and from one walk both alike."""
    pixels = flat.view(shape[0], *shape[2:], shape[1])
    return pixels.permute(0, -1, *range(1, len(shape) - 1))
