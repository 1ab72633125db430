"""The built-in models (`wanctl.models.catalog` says what each is for): random weights drawn
from fixed seeds, so that every rank and every run builds the same ones.

- `TinyModel` and `TinyMoE` run anywhere (the CPU included) in seconds: narrow DiTs of the real
  structure (TI2V-5B's 24 heads, the A14B's 40), a small UMT5 encoder over ByT5's byte ids (no
  tokenizer files), narrow VAEs of the real layouts.
- `Synthetic5B` and `SyntheticA14B` are the real architectures built on the GPU in bf16:
  memory and time do not depend on the weights' values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from wanctl.core.architectures import DIT_TI2V_5B, TEXT_TOKENS
from wanctl.core.families import T2V_A14B, TI2V_5B, Family, a14b
from wanctl.models.pipelines import encode_with, wan_scheduler

if TYPE_CHECKING:
    import torch
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    from wanctl.models.weights import Weights

SEED = 0  # the weights of the built-in models; the second expert's are drawn from SEED + 1

# WanTransformer3DModel: TI2V-5B's heads, channels, patch and norms; narrow and two layers.
TINY_DIT: dict[str, Any] = {
    **DIT_TI2V_5B,
    "attention_head_dim": 12,
    "text_dim": 32,
    "freq_dim": 32,
    "ffn_dim": 64,
    "num_layers": 2,
}
# UMT5EncoderModel over ByT5's 384 ids (256 bytes, 3 specials, 125 sentinels).
TINY_TEXT: dict[str, Any] = {
    "vocab_size": 384,
    "d_model": 32,
    "d_kv": 8,
    "d_ff": 64,
    "num_layers": 1,
    "num_heads": 4,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu",
    "tie_word_embeddings": False,
}


def tiny_expert_config(family: Family) -> dict[str, Any]:
    """An A14B expert's structure (40 heads, its channels) made narrow: 40 heads of 4."""
    return {**TINY_DIT, **{k: family.dit[k] for k in ("num_attention_heads", "in_channels",
            "out_channels")}, "attention_head_dim": 4}  # fmt: skip


def _seeded(make: Any, seed: int = SEED) -> Any:
    """`make()` with PyTorch's default initialisation drawn from `seed` on the CPU, leaving
    the global random state as it was."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make().eval().requires_grad_(False)


def tiny_text_encoder() -> Any:
    """The tiny models' UMT5 encoder (its tokenizer is transformers' ByT5Tokenizer)."""
    from transformers import UMT5Config, UMT5EncoderModel

    return _seeded(lambda: UMT5EncoderModel(UMT5Config(**TINY_TEXT)))


def tiny_transformer(config: dict[str, Any] | None = None, seed: int = SEED) -> Any:
    from diffusers import WanTransformer3DModel

    return _seeded(lambda: WanTransformer3DModel(**(config or TINY_DIT)), seed)


def tiny_vae(spec: str = "tiny") -> AutoencoderKLWan:
    """A tiny VAE whole (the encoder too), its decoder exactly `wanctl decode --vae spec`'s
    (`tiny`: the Wan2.2 layout; `tiny-wan2.1`: the Wan2.1 one)."""
    from diffusers import AutoencoderKLWan

    from wanctl.decode.load import BUILT_IN, random_vae

    config = BUILT_IN[spec]
    vae = _seeded(lambda: AutoencoderKLWan(**config), SEED + 1)
    decoder = random_vae(config, seed=SEED).state_dict()
    missing, unexpected = vae.load_state_dict(decoder, strict=False)
    if unexpected or any(not k.startswith(("encoder.", "quant_conv.")) for k in missing):
        raise RuntimeError(f"tiny VAE decoder mismatch: {missing} {unexpected}")
    return vae


@dataclass
class TinyModel:
    name: str = "tiny"
    family: Family = TI2V_5B
    staging: ClassVar[str] = "cpu"  # seeded CPU weights: every rank builds the same

    def encode_prompts(
        self, prompt: str, negative: str, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        from transformers import ByT5Tokenizer

        return encode_with(ByT5Tokenizer(), tiny_text_encoder().to(device), prompt, negative)

    def transformer(self, device: torch.device) -> WanTransformer3DModel:
        model: Any = tiny_transformer()
        return model.to(device)

    def transformer_2(self, device: torch.device) -> WanTransformer3DModel | None:
        return None

    def dit_weights(self, expert: int) -> Weights | None:
        return None  # built with its weights

    def vae(self, device: torch.device, *, encoder: bool) -> AutoencoderKLWan:
        vae: Any = tiny_vae()
        return vae.to(device)

    def scheduler(self) -> Any:
        return wan_scheduler(self.family)


@dataclass
class TinyMoE(TinyModel):
    """Two narrow experts (high noise: seed 0, low noise: seed 1) of T2V-A14B's structure, or
    of I2V-A14B's (36 input channels) when an image conditions the video."""

    name: str = "tiny-moe"
    family: Family = T2V_A14B

    def transformer(self, device: torch.device) -> WanTransformer3DModel:
        model: Any = tiny_transformer(tiny_expert_config(self.family), SEED)
        return model.to(device)

    def transformer_2(self, device: torch.device) -> WanTransformer3DModel | None:
        model: Any = tiny_transformer(tiny_expert_config(self.family), SEED + 1)
        return model.to(device)

    def vae(self, device: torch.device, *, encoder: bool) -> AutoencoderKLWan:
        vae: Any = tiny_vae("tiny-wan2.1")
        return vae.to(device)


@dataclass
class Synthetic5B:
    dtype: torch.dtype
    name: str = "synthetic-5b"
    family: Family = TI2V_5B
    staging: ClassVar[str] = "meta"  # allocated and filled where the placement puts it

    def encode_prompts(
        self, prompt: str, negative: str, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """On a GPU, UMT5-XXL's real architecture with random weights (the same on every rank)
        encodes the prompt's bytes as token ids, so that the text_encode phase holds and
        computes what a checkpoint's does; elsewhere seeded random embeddings (a 5.7 B encoder
        on the CPU is not what a timing run is for)."""
        import torch

        if device.type != "cuda":
            generator = torch.Generator("cpu").manual_seed(SEED)
            shape = (2, TEXT_TOKENS, DIT_TI2V_5B["text_dim"])
            both = (0.1 * torch.randn(shape, generator=generator)).to(device, self.dtype)
            return both[:1], both[1:]
        from wanctl.models.configs import build_text_encoder

        with torch.random.fork_rng(devices=[device]):
            torch.manual_seed(SEED)  # the same weights on every rank
            encoder = build_text_encoder(device, self.dtype)
        ids = torch.zeros(2, TEXT_TOKENS, dtype=torch.long)
        for row, text in enumerate((prompt, negative)):
            tokens = list(text.encode())[: TEXT_TOKENS - 1]
            ids[row, : len(tokens) + 1] = torch.tensor([*tokens, 1]) + 2  # bytes, then </s>
        mask = (ids > 0).to(device)
        with torch.no_grad():
            hidden = encoder(input_ids=ids.to(device), attention_mask=mask).last_hidden_state
        both = (hidden * mask[..., None]).to(self.dtype)  # zeros past the prompt, as diffusers
        del encoder, hidden
        return both[:1], both[1:]

    def transformer(self, device: torch.device) -> WanTransformer3DModel:
        return self._dit(device, SEED)

    def transformer_2(self, device: torch.device) -> WanTransformer3DModel | None:
        return None

    def dit_weights(self, expert: int) -> Weights | None:
        return None  # random, drawn where they live

    def vae(self, device: torch.device, *, encoder: bool) -> AutoencoderKLWan:
        """On the meta device (the pipeline reads only its config) unless an image is to be
        encoded; then the whole VAE, random, in float32 as Wan runs it."""
        import torch
        from diffusers import AutoencoderKLWan

        from wanctl.models.configs import place

        with torch.device("meta"):
            vae = AutoencoderKLWan(**self._vae_config())
        return place(vae, device) if encoder else vae

    def scheduler(self) -> Any:
        return wan_scheduler(self.family)

    def _dit(self, device: torch.device, seed: int) -> WanTransformer3DModel:
        import torch

        from wanctl.models.configs import build_dit

        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)  # the same weights on every rank
            return build_dit(device, self.dtype, config=self.family.dit)

    def _vae_config(self) -> dict[str, Any]:
        from wanctl.decode.load import TI2V_5B_CONFIG

        return TI2V_5B_CONFIG


@dataclass
class SyntheticA14B(Synthetic5B):
    """The two real experts (T2V-A14B's, or I2V-A14B's with an image), UMT5-XXL and the Wan2.1
    VAE, random weights on the GPU."""

    name: str = "synthetic-a14b"
    family: Family = T2V_A14B

    def transformer_2(self, device: torch.device) -> WanTransformer3DModel | None:
        return self._dit(device, SEED + 1)

    def _vae_config(self) -> dict[str, Any]:
        from wanctl.decode.load import WAN21_CONFIG

        return WAN21_CONFIG


def built_in(name: str, dtype: torch.dtype, *, image: bool) -> Any:
    """The built-in model `name` (a `WanModel`)."""
    moe_family = a14b(image)
    if name == "tiny":
        return TinyModel()
    if name == "tiny-moe":
        return TinyMoE(family=moe_family)
    if name == "synthetic-5b":
        return Synthetic5B(dtype)
    if name == "synthetic-a14b":
        return SyntheticA14B(dtype, family=moe_family)
    raise ValueError(f"no built-in model {name!r}")
