"""The Wan VAE decoders (Wan2.2's and Wan2.1's) as parameters: the modules of diffusers'
`AutoencoderKLWan` that decoding uses, with the same names, shapes and order, so that its
state dict (`post_quant_conv.*`, `decoder.*`) loads into `WanVaeDecoder` as it is.

They hold weights and the few attributes the traversal reads; they have no `forward`:
`wanctl.decode.engine` computes the decode from them. Why not diffusers' classes: importing
`diffusers.models.autoencoders` takes 14 s of a 26 s `wanctl decode` on an H200 host whose
image has peft, transformers and scikit-learn (it imports every autoencoder and, through
them, those), for 4 s of decoding. diffusers is imported only for what it alone does here:
spatial tiling (`as_diffusers`), the Wan2.1 checkpoint's key converter, and generate.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

# The latents' normalisation of the Wan2.1 VAE (diffusers' `AutoencoderKLWan` defaults, the
# `mean`/`std` of the official Wan2.1 `vae.py`).
WAN21_LATENTS_MEAN = [
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
]  # fmt: skip
WAN21_LATENTS_STD = [
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
]  # fmt: skip
# `AutoencoderKLWan`'s constructor defaults (the Wan2.1 VAE), which a config.json overrides.
DEFAULTS: dict[str, Any] = {
    "base_dim": 96,
    "decoder_base_dim": None,
    "z_dim": 16,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_scales": [],
    "temperal_downsample": [False, True, True],
    "dropout": 0.0,
    "latents_mean": WAN21_LATENTS_MEAN,
    "latents_std": WAN21_LATENTS_STD,
    "is_residual": False,
    "in_channels": 3,
    "out_channels": 3,
    "patch_size": None,
    "scale_factor_temporal": 4,
    "scale_factor_spatial": 8,
}


class CausalConv3d(nn.Conv3d):
    """A conv padded in time by the frames before it only: `_padding` is diffusers' (w, w, h,
    h, 2t, 0); the conv itself pads nothing."""

    def __init__(self, channels: int, out: int, kernel: int | tuple[int, int, int],
                 padding: int | tuple[int, int, int] = 0) -> None:  # fmt: skip
        super().__init__(channels, out, kernel, padding=padding)
        t, h, w = (int(p) for p in self.padding)
        self._padding = (w, w, h, h, 2 * t, 0)
        self.padding = (0, 0, 0)


class RMSNorm(nn.Module):
    """diffusers' `WanRMS_norm` without bias: `normalize(x) * sqrt(C) * gamma` over channels."""

    def __init__(self, channels: int, images: bool = False) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones((channels, 1, 1) if images else (channels, 1, 1, 1)))
        self.scale = channels**0.5
        self.bias = 0.0


class ResidualBlock(nn.Module):
    def __init__(self, channels: int, out: int) -> None:
        super().__init__()
        self.norm1 = RMSNorm(channels)
        self.conv1 = CausalConv3d(channels, out, 3, padding=1)
        self.norm2 = RMSNorm(out)
        self.conv2 = CausalConv3d(out, out, 3, padding=1)
        self.conv_shortcut: CausalConv3d | nn.Identity = (
            CausalConv3d(channels, out, 1) if channels != out else nn.Identity()
        )


class AttentionBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = RMSNorm(channels, images=True)
        self.to_qkv = nn.Conv2d(channels, channels * 3, 1)
        self.proj = nn.Conv2d(channels, channels, 1)


class MidBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.attentions = nn.ModuleList([AttentionBlock(channels)])
        self.resnets = nn.ModuleList([ResidualBlock(channels, channels) for _ in range(2)])


class Resample(nn.Module):
    """A nearest 2x upsample in space and a 3x3 conv (`resample`), after, for `upsample3d`, a
    time conv that doubles the channels into two frames each (`time_conv`)."""

    def __init__(self, channels: int, mode: str, out: int) -> None:
        super().__init__()
        self.mode = mode
        upsample = nn.Upsample(scale_factor=(2.0, 2.0), mode="nearest-exact")
        self.resample = nn.Sequential(upsample, nn.Conv2d(channels, out, 3, padding=1))
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(channels, channels * 2, (3, 1, 1), padding=(1, 0, 0))


class DupUp3D(nn.Module):
    """The Wan2.2 up block's shortcut: each channel repeated, the copies spread over time
    (`factor_t`) and space (`factor_s`). No weights."""

    def __init__(self, channels: int, out: int, factor_t: int, factor_s: int) -> None:
        super().__init__()
        self.out_channels, self.factor_t, self.factor_s = out, factor_t, factor_s
        self.repeats = out * factor_t * factor_s * factor_s // channels


class ResidualUpBlock(nn.Module):
    """Wan2.2's up block: resnets, an upsampler, plus the DupUp3D of its input."""

    def __init__(self, channels: int, out: int, resnets: int, mode: str | None) -> None:
        super().__init__()
        self.avg_shortcut = (
            DupUp3D(channels, out, 2 if mode == "upsample3d" else 1, 2) if mode else None
        )
        widths = [channels] + [out] * resnets
        self.resnets = nn.ModuleList([ResidualBlock(c, out) for c in widths])
        self.upsampler = Resample(out, mode, out) if mode else None


class UpBlock(nn.Module):
    """Wan2.1's up block: resnets, then an upsampler that halves the channels."""

    def __init__(self, channels: int, out: int, resnets: int, mode: str | None) -> None:
        super().__init__()
        widths = [channels] + [out] * resnets
        self.resnets = nn.ModuleList([ResidualBlock(c, out) for c in widths])
        self.upsamplers = nn.ModuleList([Resample(out, mode, out // 2)]) if mode else None


class Decoder3d(nn.Module):
    """diffusers' `WanDecoder3d`: conv_in, the mid block, the up blocks, norm_out, conv_out."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        base = config["decoder_base_dim"] or config["base_dim"]
        mult, residual = config["dim_mult"], config["is_residual"]
        widths = [base * m for m in [mult[-1], *mult[::-1]]]
        upsample_time = config["temperal_downsample"][::-1]
        self.conv_in = CausalConv3d(config["z_dim"], widths[0], 3, padding=1)
        self.mid_block = MidBlock(widths[0])
        self.up_blocks = nn.ModuleList()
        block = ResidualUpBlock if residual else UpBlock
        for i, (channels, out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            mode = None if i == len(mult) - 1 else "upsample2d"
            if mode and upsample_time[i]:
                mode = "upsample3d"
            if i > 0 and not residual:  # Wan2.1's upsamplers halve the channels
                channels //= 2
            self.up_blocks.append(block(channels, out, config["num_res_blocks"], mode))
        self.norm_out = RMSNorm(widths[-1])
        self.conv_out = CausalConv3d(widths[-1], config["out_channels"], 3, padding=1)


class WanVaeDecoder(nn.Module):
    """The decoder half of an `AutoencoderKLWan` of `config` (a config.json's contents or the
    constructor's arguments; diffusers' defaults fill the rest): `post_quant_conv` and
    `decoder`, with the whole config kept for the latents' normalisation and geometry."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        self.config = {**DEFAULTS, **{k: v for k, v in config.items() if not k.startswith("_")}}
        z_dim = self.config["z_dim"]
        self.post_quant_conv = CausalConv3d(z_dim, z_dim, 1)
        self.decoder = Decoder3d(self.config)

    @property
    def device(self) -> torch.device:
        return self.post_quant_conv.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.post_quant_conv.weight.dtype


def as_diffusers(vae: WanVaeDecoder) -> Any:
    """diffusers' `AutoencoderKLWan` with no encoder, its decoder's tensors `vae`'s own (shared,
    not copied), for what only diffusers does: its spatially tiled decode."""
    from diffusers import AutoencoderKLWan

    with torch.device("meta"):
        model: Any = AutoencoderKLWan.from_config(vae.config)
    model.encoder = model.quant_conv = None
    model.load_state_dict(vae.state_dict(keep_vars=True), strict=True, assign=True)
    return model.eval()
