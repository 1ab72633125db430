"""The networks of the Wan2.2 models as constructor arguments (data, no torch): the DiTs,
UMT5-XXL and the two VAEs, and what a latents file's VAE implies (`VaeFamily`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# diffusers `WanTransformer3DModel` of Wan2.2-TI2V-5B-Diffusers/transformer. The TI2V
# "expand timesteps" is no constructor argument: the pipeline passes a 2-D timestep per token.
DIT_TI2V_5B: dict[str, Any] = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 24,
    "attention_head_dim": 128,
    "in_channels": 48,
    "out_channels": 48,
    "text_dim": 4096,
    "freq_dim": 256,
    "ffn_dim": 14336,
    "num_layers": 30,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "rope_max_seq_len": 1024,
}


# diffusers `WanTransformer3DModel` of Wan2.2-T2V-A14B-Diffusers/transformer (and transformer_2):
# each expert; I2V-A14B's take 36 input channels (the noise, the mask, the image's latents).
DIT_A14B: dict[str, Any] = {
    **DIT_TI2V_5B,
    "num_attention_heads": 40,
    "in_channels": 16,
    "out_channels": 16,
    "ffn_dim": 13824,
    "num_layers": 40,
}


# transformers `UMT5EncoderModel` of google/umt5-xxl, Wan's text encoder (encoder half only).
UMT5_XXL: dict[str, Any] = {
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "vocab_size": 256384,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu",
    "tie_word_embeddings": False,
}


# diffusers `AutoencoderKLWan` of Wan2.2-TI2V-5B-Diffusers/vae (normalisation statistics left
# out: memory does not depend on them).
VAE_TI2V_5B: dict[str, Any] = {
    "base_dim": 160,
    "decoder_base_dim": 256,
    "z_dim": 48,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_scales": [],
    "temperal_downsample": [False, True, True],
    "is_residual": True,
    "in_channels": 12,
    "out_channels": 12,
    "patch_size": 2,
    "scale_factor_spatial": 16,
    "scale_factor_temporal": 4,
}


# diffusers `AutoencoderKLWan`'s defaults: the Wan2.1 VAE (`Wan2.1_VAE.pth`) of T2V-A14B and
# I2V-A14B: 16 latent channels, 8x in space, no patchify, plain up blocks (no DupUp3D).
VAE_WAN21: dict[str, Any] = {
    "base_dim": 96,
    "z_dim": 16,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_scales": [],
    "temperal_downsample": [False, True, True],
    "is_residual": False,
    "in_channels": 3,
    "out_channels": 3,
    "patch_size": None,
    "scale_factor_spatial": 8,
    "scale_factor_temporal": 4,
}


@dataclass(frozen=True)
class VaeFamily:
    """One of the two Wan VAEs, as far as latents and pixels go: `name` is what a latents file
    records, `channels` its latent width, `spatial` and `temporal` the compression, `file` its
    weights in an official checkpoint, `models` the ones that sample its latents."""

    name: str
    channels: int
    spatial: int
    file: str
    models: str
    config: dict[str, Any] = field(compare=False, hash=False)
    temporal: int = 4


WAN22_VAE = VaeFamily("wan2.2", 48, 16, "Wan2.2_VAE.pth", "TI2V-5B", VAE_TI2V_5B)
WAN21_VAE = VaeFamily("wan2.1", 16, 8, "Wan2.1_VAE.pth", "T2V-A14B and I2V-A14B", VAE_WAN21)
VAE_FAMILIES = {family.name: family for family in (WAN22_VAE, WAN21_VAE)}


def vae_family_of(config: dict[str, Any]) -> VaeFamily | None:
    """The family an `AutoencoderKLWan` config belongs to, or None for another VAE."""
    for family in VAE_FAMILIES.values():
        keys = ("z_dim", "is_residual", "patch_size")
        if all(config.get(key) == family.config[key] for key in keys):
            return family
    return None


def vae_family_for_channels(channels: int) -> VaeFamily | None:
    return next((f for f in VAE_FAMILIES.values() if f.channels == channels), None)


TEXT_TOKENS = 512  # Wan pads every prompt to 512 tokens
