"""The models `wanctl generate` samples with, behind one interface (`WanModel`), and the
diffusers pipeline they are put in.

A worker uses a model phase by phase, so that no two big networks are on the GPU at once:
`encode_prompts` (then the text encoder is dropped), `transformer` (and `transformer_2`, the
low-noise expert of the A14B models), `vae` and `scheduler` for sampling; the decode loads the
decoder alone from `wanctl.models.catalog.vae_spec`, the name `wanctl decode --vae` takes for
the same weights. The models: `wanctl.models.builtin` and `wanctl.models.checkpoint`, chosen by
`wanctl.models.select.model_for`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from wanctl.core.architectures import TEXT_TOKENS
from wanctl.core.families import Family

if TYPE_CHECKING:
    import torch
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    from wanctl.models.weights import Weights

# Wan's negative prompt when none is given (`sample_neg_prompt` of the official shared_config.py).
NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，"
    "低质量，JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，"
    "毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)


class WanModel(Protocol):
    """One model's parts, built when asked, on the device asked."""

    name: str
    family: Family
    staging: ClassVar[str]  # where a DiT is built before it is placed: "meta" or "cpu"

    def encode_prompts(
        self, prompt: str, negative: str, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings (1, 512, text_dim) of the prompt and the negative prompt, computed on
        `device` (where the text encoder runs)."""
        ...

    def transformer(self, device: torch.device) -> WanTransformer3DModel:
        """The DiT, or the high-noise expert of a two-expert model."""
        ...

    def transformer_2(self, device: torch.device) -> WanTransformer3DModel | None:
        """The low-noise expert; None for a single DiT."""
        ...

    def dit_weights(self, expert: int) -> Weights | None:
        """Where the weights of a DiT staged on the meta device are read from once it is
        placed (0: `transformer`'s, 1: `transformer_2`'s); None: random, drawn where they
        live."""
        ...

    def vae(self, device: torch.device, *, encoder: bool) -> AutoencoderKLWan:
        """The VAE the pipeline holds: its config always, its encoder weights when an image
        conditions the video (`encoder`)."""
        ...

    def scheduler(self) -> Any:
        """A diffusers scheduler."""
        ...


def build_pipeline(
    transformer: WanTransformer3DModel,
    vae: AutoencoderKLWan,
    scheduler: Any,
    *,
    family: Family,
    image: bool,
    transformer_2: WanTransformer3DModel | None = None,
) -> Any:
    """The pipeline over prompt embeddings (no text encoder): `WanPipeline` for text to video,
    `WanImageToVideoPipeline` when an image conditions the video (the first frame of TI2V-5B,
    every step of I2V-A14B through the VAE encoder); with the low-noise expert and the
    boundary of a two-expert model, and TI2V-5B's per-token timesteps."""
    from diffusers import WanImageToVideoPipeline, WanPipeline

    parts: dict[str, Any] = dict(
        tokenizer=None, text_encoder=None, vae=vae, scheduler=scheduler, transformer=transformer,
        expand_timesteps=family.expands_timesteps,
    )  # fmt: skip
    if transformer_2 is not None:
        parts.update(transformer_2=transformer_2, boundary_ratio=family.boundary)
    if image:
        return WanImageToVideoPipeline(**parts, image_processor=None, image_encoder=None)
    return WanPipeline(**parts)


def encode_with(
    tokenizer: Any, encoder: Any, prompt: str, negative: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """diffusers' own Wan prompt encoding (cleaning, 512 tokens, zeros past the prompt), on
    the encoder's device."""
    import torch
    from diffusers import WanPipeline

    text_only: Any = WanPipeline(
        tokenizer=tokenizer, text_encoder=encoder, vae=None, scheduler=None
    )
    with torch.no_grad():
        embeds: tuple[torch.Tensor, torch.Tensor] = text_only.encode_prompt(
            prompt, negative, do_classifier_free_guidance=True,
            max_sequence_length=TEXT_TOKENS, device=encoder.device,
        )  # fmt: skip
    return embeds


# Wan2.2's sampler: UniPC on flow sigmas; the shift is the family's (`sample_shift`).
SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "prediction_type": "flow_prediction",
    "use_flow_sigmas": True,
    "solver_order": 2,
}


def wan_scheduler(family: Family) -> Any:
    """The official sampler of `family`, for the built-in models."""
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(**SCHEDULER, flow_shift=family.shift)
