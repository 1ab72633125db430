"""The networks of a Wan2.2 TI2V-5B run as constructor arguments (data, no torch): the DiT,
UMT5-XXL and the VAE."""

from __future__ import annotations

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


TEXT_TOKENS = 512  # Wan pads every prompt to 512 tokens
