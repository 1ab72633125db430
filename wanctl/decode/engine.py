"""wanctl's traversal of the Wan VAE decoders (Wan2.2's and Wan2.1's): exact, chunked in time,
split in space.

diffusers' `AutoencoderKLWan._decode` calls the decoder one latent frame at a time with a cache
of the last input frames of every causal conv, kept inside the model. This module computes the
same decode from the same weights (`wanctl.decode.modules`, diffusers' names), but:

- the causal cache is an explicit `CausalCache` object, held by the caller;
- a call decodes a chunk of latent frames (the first latent frame alone, then `chunk_t` at a
  time), and gives the same frames as the one-frame-at-a-time decode;
- every spatial convolution gets its border from a `Halo`: zeros that cuDNN adds for a whole
  frame (`WholeFrame`), or, for a slab of it (`wanctl.decode.parallel`), the neighbouring
  ranks' rows in border rows of the buffer that its input is written into; the mid-block
  attention gets its keys and values through the same object.

A causal conv treats its input as one stream: each chunk sees the stream's last frames before
it, and zeros before the stream's start. That is what the diffusers cache computes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, cast

import torch
import torch.nn.functional as F
from torch import nn

from wanctl.decode import fused
from wanctl.decode.modules import (
    AttentionBlock,
    CausalConv3d,
    DupUp3D,
    Resample,
    ResidualBlock,
    ResidualUpBlock,
    RMSNorm,
    UpBlock,
    WanVaeDecoder,
)


class Halo(Protocol):
    """How a process sees beyond its part of the frame.

    The input of every spatial convolution is made in a buffer from `empty`, with room for the
    border rows this process must fill itself (none for a whole frame: cuDNN pads it for free);
    its producer writes the interior in place (a copy, the fused norm, a sum), then `border`
    fills those rows. Framing an input never copies it whole."""

    def margin(self, space: int) -> int:
        """The border rows `empty` adds at each end of the split for a padding of `space`."""
        ...

    def empty(
        self, shape: Sequence[int], space: int, like: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A channels-last buffer (`like`'s dtype and device) for a tensor of `shape`
        (..., H, W) that a convolution of spatial padding `space` will read, and the view of
        it to write that tensor into: the buffer itself, or all of it but its border rows."""
        ...

    def border(self, buffer: torch.Tensor, space: int) -> tuple[int, int]:
        """Fills the border rows of `buffer` (from `empty`, or a view of it that keeps its last
        two dimensions), its interior written; returns the zero padding (rows, columns) the
        convolution adds itself."""
        ...

    def gather_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (B, 1, n, C) of this process's part of a frame -> those of the whole frame."""
        ...


def channels_last(ndim: int) -> torch.memory_format:
    """The decode keeps every activation channels-last (NDHWC/NHWC in memory): cuDNN's fast
    convolutions want it (contiguous inputs cost a transpose before and after each conv),
    and the RMS norm over channels becomes a reduction over the innermost dimension."""
    return torch.channels_last_3d if ndim == 5 else torch.channels_last


def use_channels_last(module: nn.Module) -> None:
    """Lay out `module`'s conv weights channels-last, in place (values unchanged)."""
    for parameter in module.parameters():
        if parameter.dim() in (4, 5):
            parameter.data = parameter.data.contiguous(memory_format=channels_last(parameter.dim()))


def empty_channels_last(shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """An uninitialised channels-last tensor of `shape`, `like`'s dtype and device."""
    layout = channels_last(len(shape))
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=layout)


class WholeFrame:
    """The `Halo` of a process that holds whole frames: no border rows (the convolution pads
    with zeros all round), nothing to gather."""

    def margin(self, space: int) -> int:
        return 0

    def empty(
        self, shape: Sequence[int], space: int, like: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        buffer = empty_channels_last(shape, like)
        return buffer, buffer

    def border(self, buffer: torch.Tensor, space: int) -> tuple[int, int]:
        return space, space

    def gather_tokens(self, x: torch.Tensor) -> torch.Tensor:
        return x


@dataclass
class CausalCache:
    """The state of one decode between chunks: for every causal conv, the last frames of its
    input stream (as many as its time kernel needs, zeros before the stream's start, so their
    shape never changes), and whether the first chunk, which the temporal upsamplers treat
    apart, is done."""

    tails: dict[nn.Module, torch.Tensor] = field(default_factory=dict)
    started: bool = False


def latent_chunks(latent_frames: int, chunk_t: int) -> list[slice]:
    """The first latent frame alone (it decodes to one frame, the others to four), then runs of
    `chunk_t` latent frames."""
    if chunk_t < 1:
        raise ValueError(f"chunk_t must be at least 1, got {chunk_t}")
    rest = range(1, latent_frames, chunk_t)
    return [slice(0, 1)] + [slice(s, min(s + chunk_t, latent_frames)) for s in rest]


class ChunkDecoder:
    """Decodes chunks of latent frames with the weights of a `WanVaeDecoder`: Wan2.2's
    (residual up blocks with a DupUp3D shortcut, patch size 2) or Wan2.1's (plain up blocks,
    no patchify)."""

    def __init__(self, vae: WanVaeDecoder, halo: Halo | None = None):
        self.vae = vae
        self.halo: Halo = halo or WholeFrame()
        self.subpixel: dict[nn.Module, torch.Tensor] = {}
        use_channels_last(vae.decoder)
        use_channels_last(vae.post_quant_conv)

    @torch.inference_mode()
    def decode(self, z: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        """Latents (B, C, t, h, w) in the decoder's space -> pixels (B, 3, f, sh, sw) in
        [-1, 1], s the VAE's spatial factor: f = 1 for the first chunk (which must be one
        latent frame), else 4t."""
        first = not cache.started
        if first and z.shape[2] != 1:
            raise ValueError("the first chunk of a decode must be the first latent frame alone")
        decoder = self.vae.decoder
        z = z.contiguous(memory_format=torch.channels_last_3d)
        x = self._causal_conv(self.vae.post_quant_conv, z, cache)
        x = self._causal_conv(decoder.conv_in, x, cache)
        mid = decoder.mid_block
        x = self._resnet(cast(ResidualBlock, mid.resnets[0]), x, cache)
        for attention, resnet in zip(mid.attentions, mid.resnets[1:], strict=True):
            x = self._attention(cast(AttentionBlock, attention), x)
            x = self._resnet(cast(ResidualBlock, resnet), x, cache)
        for block in decoder.up_blocks:
            x = self._up_block(block, x, cache, first)
        x = self._norm_silu_conv(decoder.norm_out, decoder.conv_out, x, cache)
        cache.started = True
        patch = self.vae.config["patch_size"]
        return (unpatchify(x, patch) if patch and patch > 1 else x).clamp_(-1.0, 1.0)

    def _causal_conv(self, conv: CausalConv3d, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        """One causal conv step: the frames this conv saw last (zeros at the start of the
        stream) in front of `x`, the new last frames kept, the border from the halo."""
        keep = int(conv._padding[4])  # (w, w, h, h, t, 0)
        if not keep:  # a 1x1x1 conv: no time, no border
            if conv._padding[0]:
                raise ValueError("a conv with a spatial border but no time kernel is not a Wan "
                                 "decoder's: its halo would not be framed")  # fmt: skip
            return self._convolve(conv, x)
        buffer, stream = self._stream(conv, x, cache)
        stream[:, :, keep:].copy_(x)
        cache.tails[conv] = stream[:, :, -keep:].clone(memory_format=torch.channels_last_3d)
        return self._convolve(conv, buffer)

    def _norm_silu_conv(
        self,
        norm: RMSNorm,
        conv: CausalConv3d,
        x: torch.Tensor,
        cache: CausalCache,
        *,
        bias: torch.Tensor | None = None,
        with_bias: bool = True,
    ) -> torch.Tensor:
        """`_causal_conv(conv, silu(norm(x + bias)))`, with the bias of the conv that made `x`,
        norm and SiLU written by one kernel straight into the conv's stream
        (`wanctl.decode.fused`). Without `with_bias`, the result lacks `conv`'s own bias, for the
        next `_norm_silu_conv` to add."""
        buffer, stream = self._stream(conv, x, cache)
        weight, eps = norm_weight(norm, x.dtype)
        keep = int(conv._padding[4])
        fused.rms_norm_silu_into(
            pixels_last(x), weight, eps, pixels_last(stream[:, :, keep:]), bias
        )
        cache.tails[conv] = stream[:, :, -keep:].clone(memory_format=torch.channels_last_3d)
        return self._convolve(conv, buffer, with_bias=with_bias)

    def _stream(
        self, conv: CausalConv3d, x: torch.Tensor, cache: CausalCache
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A buffer from the halo for [the conv's last input frames, x], and its interior with
        the first part filled: the cached frames, or zeros at the start of the stream."""
        keep, space = int(conv._padding[4]), int(conv._padding[0])
        b, c, t, h, w = x.shape
        buffer, stream = self.halo.empty((b, c, keep + t, h, w), space, x)
        past = cache.tails.get(conv)
        if past is None:
            stream[:, :, :keep].zero_()
        else:
            stream[:, :, :keep].copy_(past)
        return buffer, stream

    def _convolve(
        self, conv: CausalConv3d, buffer: torch.Tensor, *, with_bias: bool = True
    ) -> torch.Tensor:
        """The conv over time as given and over space with its border from the halo."""
        rows, columns = self.halo.border(buffer, int(conv._padding[0]))
        out = F.conv3d(buffer, conv.weight, None, conv.stride, (0, rows, columns))
        return add_bias(out, conv.bias) if with_bias else out

    def _resnet(self, block: ResidualBlock, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        """norm, SiLU, conv, norm, SiLU, conv, plus the shortcut (dropout is off at inference)."""
        residual, skip = self._resnet_parts(block, x, cache)
        return residual.add_(skip)

    def _resnet_parts(
        self, block: ResidualBlock, x: torch.Tensor, cache: CausalCache
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A resnet's two terms, not yet added: its convs' result and its shortcut."""
        shortcut = block.conv_shortcut
        skip = x if isinstance(shortcut, nn.Identity) else self._causal_conv(shortcut, x, cache)
        x = self._norm_silu_conv(block.norm1, block.conv1, x, cache, with_bias=False)
        x = self._norm_silu_conv(block.norm2, block.conv2, x, cache, bias=block.conv1.bias)
        return x, skip

    def _attention(self, block: AttentionBlock, x: torch.Tensor) -> torch.Tensor:
        """Single-head self-attention within each frame: this process's queries against the
        keys and values of the whole frame."""
        b, c, t, h, w = x.shape
        frames = frame_norm(block.norm, x.transpose(1, 2).reshape(b * t, c, h, w))
        qkv = block.to_qkv(frames).reshape(b * t, 1, 3 * c, h * w).transpose(2, 3)
        q, kv = qkv[..., :c], self.halo.gather_tokens(qkv[..., c:])
        k, v = kv.chunk(2, dim=-1)
        out = F.scaled_dot_product_attention(q, k, v)
        out = block.proj(out.squeeze(1).transpose(1, 2).reshape(b * t, c, h, w))
        return out.view(b, t, c, h, w).transpose(1, 2).add_(x)

    def _up_block(
        self, block: nn.Module, x: torch.Tensor, cache: CausalCache, first: bool
    ) -> torch.Tensor:
        """Wan2.2's `ResidualUpBlock` (resnets, resample, plus the DupUp3D of its input) or
        Wan2.1's `UpBlock` (resnets, resample)."""
        upsampler: nn.Module | None
        if isinstance(block, ResidualUpBlock):
            shortcut, upsampler = block.avg_shortcut, block.upsampler
        elif isinstance(block, UpBlock):
            shortcut, upsampler = None, block.upsamplers[0] if block.upsamplers else None
        else:
            raise TypeError(f"not a Wan VAE up block: {type(block).__name__}")
        shortcut_input = x
        *leading, last = (cast(ResidualBlock, r) for r in cast(nn.ModuleList, block.resnets))
        for resnet in leading:
            x = self._resnet(resnet, x, cache)
        if upsampler is None:
            x = self._resnet(last, x, cache)
        else:
            parts = self._resnet_parts(last, x, cache)
            x = self._upsample(cast(Resample, upsampler), parts, cache, first)
        if shortcut is not None:
            x = x.add_(dup_up(cast(DupUp3D, shortcut), shortcut_input, first))
        return x

    def _upsample(
        self,
        resample: Resample,
        parts: tuple[torch.Tensor, torch.Tensor],
        cache: CausalCache,
        first: bool,
    ) -> torch.Tensor:
        """Time x2 (after the first chunk: its single frame stays one), then space x2 by
        nearest neighbour and a 3x3 conv, of the sum of the last resnet's `parts`. The sum, or
        the time conv's frames reordered, is written straight into the halo's buffer for the
        2x conv."""
        residual, skip = parts
        if resample.mode == "upsample3d" and not first:
            x = self._causal_conv(resample.time_conv, residual.add_(skip), cache)
            buffer = self._time_doubled(x)
        elif self.halo.margin(1):
            buffer, interior = self.halo.empty(residual.shape, 1, residual)
            torch.add(residual, skip, out=interior)
        else:  # no border rows to make room for: the sum in place
            buffer = residual.add_(skip)
        return self._subpixel(cast(nn.Conv2d, resample.resample[1]), buffer)

    def _time_doubled(self, x: torch.Tensor) -> torch.Tensor:
        """The time conv's (B, 2C, t, h, w) as (B, C, 2t, h, w), in a buffer framed for the 2x
        conv: channel k*C + i of input frame j is channel i of output frame 2j + k."""
        b, c2, t, h, w = x.shape
        buffer, interior = self.halo.empty((b, c2 // 2, 2 * t, h, w), 1, x)
        pairs = pixels_last(x).unflatten(-1, (2, c2 // 2)).permute(0, 1, 4, 2, 3, 5)
        pixels_last(interior).unflatten(1, (t, 2)).copy_(pairs)
        return buffer

    def _subpixel(self, conv: nn.Conv2d, buffer: torch.Tensor) -> torch.Tensor:
        """The nearest 2x upsample and 3x3 `conv` of the frames in `buffer` (B, C, t, H, W,
        from the halo), computed as four 2x2 convs at the low resolution (`subpixel_kernels`):
        4/9 of the multiplications, no upsampled copy, and a halo of one low-resolution row."""
        if conv not in self.subpixel:
            self.subpixel[conv] = subpixel_kernels(conv.weight)
        padding = self.halo.border(buffer, 1)
        b, c, t = buffer.shape[:3]
        frames = buffer.transpose(1, 2).reshape(b * t, c, *buffer.shape[3:])
        parities = F.conv2d(frames, self.subpixel[conv], None, padding=padding)
        out = interleave(parities, conv.bias, parities.shape[-2] - 1, parities.shape[-1] - 1)
        return out.view(b, t, *out.shape[1:]).transpose(1, 2)


def subpixel_kernels(weight: torch.Tensor) -> torch.Tensor:
    """A 3x3 conv (O, I, 3, 3) after a nearest 2x upsample, as 2x2 convs on the input before
    it. Output row 2i + a sees upsampled rows 2i + a - 1 .. 2i + a + 1, which are input rows
    (i - 1, i, i) for a = 0 and (i, i, i + 1) for a = 1: taps on the same input row add up.
    Stacked (4 O, I, 2, 2) in parity order (a, b); convolved with a padding of 1, the output
    at (i + a, j + b) of parity (a, b) is the upsampled conv's (2i + a, 2j + b)."""
    taps = weight.float()

    def fold(kernel: torch.Tensor, dim: int, parity: int) -> torch.Tensor:
        first, middle, last = kernel.unbind(dim)
        pair = (first, middle + last) if parity == 0 else (first + middle, last)
        return torch.stack(pair, dim)

    parities = [fold(fold(taps, 2, a), 3, b) for a in (0, 1) for b in (0, 1)]
    stacked = torch.cat(parities).to(weight.dtype)
    return stacked.contiguous(memory_format=torch.channels_last)


def interleave(parities: torch.Tensor, bias: torch.Tensor | None, h: int, w: int) -> torch.Tensor:
    """The (N, O, 2h, 2w) channels-last image from the four parity images of
    `subpixel_kernels` (N, 4 O, h + 1, w + 1), plus the bias, in one pass."""
    n, channels = parities.shape[0], parities.shape[1] // 4
    source = pixels_last(parities).view(n, h + 1, w + 1, 2, 2, channels)
    out = parities.new_empty(n, h, 2, w, 2, channels)
    for a in (0, 1):
        for b in (0, 1):
            image = source[:, a : a + h, b : b + w, a, b]
            if bias is None:
                out[:, :, a, :, b].copy_(image)
            else:
                torch.add(image, bias, out=out[:, :, a, :, b])
    return out.view(n, 2 * h, 2 * w, channels).permute(0, 3, 1, 2)


def pixels_last(x: torch.Tensor) -> torch.Tensor:
    """The (N, [T,] H, W, C) view of a channels-last (N, C, [T,] H, W) tensor: dense, channels
    innermost, so per-channel operands broadcast along the contiguous dimension."""
    return x.permute(0, *range(2, x.dim()), 1)


def add_bias(x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A convolution's bias, added in place along the innermost dimension: cuDNN leaves it to
    a broadcast over (N, C, T, H, W), which runs a strided kernel on channels-last memory."""
    if bias is not None:
        pixels_last(x).add_(bias)
    return x


def dup_up(shortcut: DupUp3D, x: torch.Tensor, first: bool) -> torch.Tensor:
    """DupUp3D on channels-last `x`: each input channel repeated, the copies spread over time
    (factor_t) and space (factor_s), the first chunk's leading frames dropped. Same values as
    the module, whose contiguous layout would cost two strided copies of the largest tensors."""
    b, _, t, h, w = x.shape
    ft, fs, channels = shortcut.factor_t, shortcut.factor_s, shortcut.out_channels
    pixels = pixels_last(x).repeat_interleave(shortcut.repeats, dim=-1)
    pixels = pixels.view(b, t, h, w, channels, ft, fs, fs).permute(0, 1, 5, 2, 6, 3, 7, 4)
    out = pixels.reshape(b, t * ft, h * fs, w * fs, channels).permute(0, 4, 1, 2, 3)
    return out[:, :, ft - 1 :] if first else out


def norm_weight(norm: RMSNorm, dtype: torch.dtype) -> tuple[torch.Tensor, float]:
    """WanRMS_norm's `normalize(x) * sqrt(C) * gamma` is the RMS norm `x / sqrt(mean(x**2)) *
    gamma`; its clamp of the L2 norm at 1e-12 becomes the epsilon 1e-24 / C on the mean.
    Returns (gamma as a vector, epsilon)."""
    channels = norm.gamma.shape[0]
    return norm.gamma.reshape(channels).to(dtype), 1e-24 / channels


def frame_norm(norm: RMSNorm, frames: torch.Tensor) -> torch.Tensor:
    """The attention block's norm of frames (N, C, H, W), as WanRMS_norm computes it: the L2
    norm over channels in float32 for half-precision inputs, back in their dtype, then the
    scale and gamma."""
    low = frames.dtype in (torch.float16, torch.bfloat16)
    normalized = F.normalize(frames.float() if low else frames, dim=1).to(frames.dtype)
    return normalized * norm.scale * norm.gamma


def unpatchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C p p, f, h, w) -> (B, C, f, h p, w p): channel (c, i, j) is the pixel at row
    offset j and column offset i of its patch (the order of diffusers' `unpatchify`)."""
    b, channels, f, h, w = x.shape
    x = x.view(b, channels // (patch * patch), patch, patch, f, h, w)
    return x.permute(0, 1, 4, 5, 3, 6, 2).reshape(b, -1, f, h * patch, w * patch)


def warm_up(vae: WanVaeDecoder) -> float:
    """Compile (or load from Triton's cache) the fused norm + SiLU kernel if the decoder's
    norms will launch it. Returns the seconds it took."""
    channels = [m.gamma.shape[0] for m in vae.decoder.modules() if isinstance(m, RMSNorm)]
    return fused.warm_up(channels, vae.dtype, vae.device)


def decode_chunks(
    vae: WanVaeDecoder, z: torch.Tensor, *, chunk_t: int = 1, halo: Halo | None = None
) -> Iterator[torch.Tensor]:
    """Pixels (B, 3, f, H, W) in [-1, 1] chunk by chunk: 4(T-1)+1 frames in all, equal to
    `vae.decode(z)`. `z` (B, C, T, h, w) is in the decoder's space (denormalised) and may stay
    on the host: each chunk moves to the VAE's device and dtype when its turn comes."""
    decoder = ChunkDecoder(vae, halo)
    cache = CausalCache()
    for part in latent_chunks(z.shape[2], chunk_t):
        yield decoder.decode(z[:, :, part].to(vae.device, vae.dtype), cache)
