"""Exact patch parallelism for the VAE decode.

Every rank decodes one slab of each frame: a run of rows along the frame's longer latent side
(uneven runs are fine: 44 rows over 3 ranks are 15, 15 and 14). The decoder's only operations
that look across pixels are the 3x3 spatial convolutions and the mid-block attention, so:

- before each spatial convolution, a rank trades its edge rows with its neighbours (a "halo");
  zeros pad only the frame's real border;
- the attention keeps its own queries and gathers the keys and values of all ranks;
- RMS norm, SiLU, 1x1 and time-only convolutions, DupUp3D and unpatchify work pixel by pixel.

The result equals the one-process decode (up to float summation order), and each rank holds
about 1/N of the activations. `RowSplit` is the `Halo` that does this over torch.distributed
(NCCL on GPUs, gloo on CPUs).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from wanctl.decode.engine import channels_last
from wanctl.errors import UsageError


def split_sizes(length: int, parts: int) -> list[int]:
    """`length` rows over `parts` ranks, as even as can be, the first ranks one row longer."""
    base, extra = divmod(length, parts)
    return [base + (1 if r < extra else 0) for r in range(parts)]


def split_dim(height: int, width: int) -> int:
    """The dimension to split (-2 rows, -1 columns): the longer side, rows on a tie."""
    return -1 if width > height else -2


class RowSplit:
    """This rank's slab of every frame, and the exchanges that make the slab decode exact.

    `sizes` are the slab lengths of all ranks at latent resolution, along dimension `dim` (-2 or
    -1 of the tensors); at any other resolution they scale by the same factor. All ranks of
    `group` must make the same calls in the same order.
    """

    def __init__(self, sizes: Sequence[int], dim: int, group: dist.ProcessGroup | None = None):
        self.sizes = list(sizes)
        self.dim = dim
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        if len(self.sizes) != self.world or min(self.sizes) < 1:
            raise ValueError(f"slab sizes {self.sizes} do not fit {self.world} ranks")

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

    @property
    def start(self) -> int:
        return sum(self.sizes[: self.rank])

    def shard(self, z: torch.Tensor) -> torch.Tensor:
        """This rank's slab of latents (..., h, w)."""
        return z.narrow(self.dim, self.start, self.sizes[self.rank])

    def frame(self, x: torch.Tensor, space: int) -> tuple[torch.Tensor, tuple[int, int]]:
        """`Halo.frame`: the neighbours' `space` edge rows joined on both sides of the slab
        along the split (zeros at the frame's real edge); the convolution pads the other side."""
        if not space:
            return x, (0, 0)
        axis = x.dim() + self.dim
        before, after = self._exchange(x, space)
        slab = torch.cat([before, x, after], dim=axis)
        return slab, ((0, space) if self.dim == -2 else (space, 0))

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

    def _exchange(self, x: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The `rows` rows beyond each end of this slab along the split: the neighbours' edge
        rows, or zeros at the frame's edge."""
        axis = x.dim() + self.dim
        ops = []
        halves = []
        for peer, edge in ((self.rank - 1, 0), (self.rank + 1, x.shape[axis] - rows)):
            sent = x.narrow(axis, edge, rows).contiguous()  # send and receive need dense rows
            into = torch.zeros_like(sent)
            if 0 <= peer < self.world:
                ops += [dist.P2POp(dist.isend, sent, self._global(peer), self.group)]
                ops += [dist.P2POp(dist.irecv, into, self._global(peer), self.group)]
            halves.append(into)
        if ops:
            for work in dist.batch_isend_irecv(ops):
                work.wait()
        layout = channels_last(x.dim())
        return halves[0].contiguous(memory_format=layout), halves[1].contiguous(
            memory_format=layout
        )

    def _lengths(self, local: int) -> list[int]:
        """Every rank's slab length at the resolution where this rank's is `local`."""
        scale, remainder = divmod(local, self.sizes[self.rank])
        if remainder:
            raise ValueError(f"slab of {local} is not a multiple of {self.sizes[self.rank]}")
        return [size * scale for size in self.sizes]

    def _global(self, rank: int) -> int:
        return rank if self.group is None else dist.get_global_rank(self.group, rank)
