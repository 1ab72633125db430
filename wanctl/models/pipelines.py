"""The models `wanctl generate` samples with, behind one interface (`WanModel`), and the
diffusers pipeline they are put in.

- `tiny`: the TI2V-5B structure made narrow (24 heads, 48 latent channels, the same VAE
  layout), random weights drawn from a fixed seed on the CPU, a small UMT5 encoder and the
  byte-level ByT5 tokenizer (UTF-8 bytes -> ids, no files): it runs anywhere, the CPU included,
  in seconds, and every process builds the same weights.
- `synthetic-5b`: the real TI2V-5B DiT with random weights built on the GPU in bf16 (memory and
  time do not depend on the values); the prompt embeddings are random too (seeded), since
  UMT5-XXL's weights are not what the timing is about.
- a local diffusers checkpoint (`Wan2.2-TI2V-5B-Diffusers`), read from its subfolders.

A worker uses a model phase by phase, so that no two big networks are on the GPU at once:
`encode_prompts` (then the text encoder is dropped), `transformer`, `vae` and `scheduler` for
sampling; the decode loads the decoder alone from `vae_spec`, the name `wanctl decode --vae`
takes for the same weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from wanctl.core.architectures import DIT_TI2V_5B, TEXT_TOKENS

if TYPE_CHECKING:
    import torch
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

SEED = 0  # the weights of the built-in models
MODELS = ("tiny", "synthetic-5b")  # the built-in models
FPS = 24.0  # Wan2.2 TI2V-5B's frame rate (`sample_fps` of wan_ti2v_5B.py)
# Wan's negative prompt when none is given (`sample_neg_prompt` of the official shared_config.py).
NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，"
    "低质量，JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，"
    "毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)

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
# Wan2.2 TI2V-5B's sampler: UniPC on flow sigmas, shift 5 (`sample_shift` of wan_ti2v_5B.py).
SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "prediction_type": "flow_prediction",
    "use_flow_sigmas": True,
    "flow_shift": 5.0,
    "solver_order": 2,
}
# What a summary says about the built-in models.
NOTES = {
    "tiny": "tiny model: the TI2V structure made narrow, random weights (seed 0)",
    "synthetic-5b": "synthetic-5b: the TI2V-5B DiT and UMT5-XXL with random weights (the "
    "prompt's bytes as tokens; seeded random embeddings where UMT5 is on the CPU)",
}
# Files a diffusers-format Wan2.2 checkpoint must hold.
CHECKPOINT_FILES = (
    "model_index.json",
    "transformer/config.json",
    "vae/config.json",
    "text_encoder/config.json",
    "tokenizer",
    "scheduler/scheduler_config.json",
)


class WanModel(Protocol):
    """One model's parts, built when asked, on the device asked."""

    name: str

    def encode_prompts(
        self, prompt: str, negative: str, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings (1, 512, text_dim) of the prompt and the negative prompt, computed on
        `device` (where the text encoder runs)."""
        ...

    def transformer(self, device: torch.device) -> WanTransformer3DModel: ...

    def vae(self, device: torch.device, *, encoder: bool) -> AutoencoderKLWan:
        """The VAE the pipeline holds: its config always, its encoder weights when an image
        conditions the first frame (`encoder`)."""
        ...

    def scheduler(self) -> Any:
        """A diffusers scheduler."""
        ...


def model_for(name: str | None, checkpoint: Path | None, dtype: torch.dtype) -> WanModel:
    """`tiny`, `synthetic-5b`, or the diffusers checkpoint at `checkpoint`."""
    if name == "tiny":
        return TinyModel()
    if name == "synthetic-5b":
        return Synthetic5B(dtype)
    if checkpoint is None:
        raise ValueError("a built-in model's name or a checkpoint is needed")
    return DiffusersCheckpoint(checkpoint, dtype)


def vae_spec(name: str | None, checkpoint: Path | None) -> str:
    """What `wanctl decode --vae` takes for the decoder weights of a model."""
    if name == "tiny":
        return "tiny"
    if name == "synthetic-5b":
        return "synthetic"
    return str(Path(checkpoint or ".") / "vae")


def checkpoint_problem(folder: Path) -> str | None:
    """Why `folder` is not a diffusers Wan2.2 TI2V checkpoint, or None. Reads JSON only."""
    if not folder.is_dir():
        return f"{folder} is not a folder"
    missing = [name for name in CHECKPOINT_FILES if not (folder / name).exists()]
    if missing:
        return f"{folder} lacks {', '.join(missing)}"
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError) as error:
        return f"{folder}/model_index.json cannot be read ({error}): a partial download?"
    if not isinstance(index, dict):
        return f"{folder}/model_index.json is not a diffusers model index"
    if (index.get("transformer_2") or [None])[0] is not None:
        return f"{folder} is a two-expert (A14B) model; wanctl runs the TI2V-5B"
    return None


def build_pipeline(
    transformer: WanTransformer3DModel,
    vae: AutoencoderKLWan,
    scheduler: Any,
    *,
    image: bool,
) -> Any:
    """The TI2V pipeline over prompt embeddings (no text encoder): `WanPipeline` for text to
    video, `WanImageToVideoPipeline` when an image conditions the first frame; both with the
    Wan2.2 TI2V per-token timesteps (`expand_timesteps`)."""
    from diffusers import WanImageToVideoPipeline, WanPipeline

    parts = dict(tokenizer=None, text_encoder=None, vae=vae, scheduler=scheduler)
    if image:
        return WanImageToVideoPipeline(
            **parts, image_processor=None, image_encoder=None, transformer=transformer,
            expand_timesteps=True,
        )  # fmt: skip
    return WanPipeline(**parts, transformer=transformer, expand_timesteps=True)


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


def _seeded(make: Any, seed: int = SEED) -> Any:
    """`make()` with PyTorch's default initialisation drawn from `seed` on the CPU, leaving
    the global random state as it was."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make().eval().requires_grad_(False)


def tiny_text_encoder() -> Any:
    """The tiny model's UMT5 encoder (its tokenizer is transformers' ByT5Tokenizer)."""
    from transformers import UMT5Config, UMT5EncoderModel

    return _seeded(lambda: UMT5EncoderModel(UMT5Config(**TINY_TEXT)))


def tiny_transformer() -> WanTransformer3DModel:
    from diffusers import WanTransformer3DModel

    return _seeded(lambda: WanTransformer3DModel(**TINY_DIT))


def tiny_vae() -> AutoencoderKLWan:
    """The tiny VAE whole (the encoder too), its decoder exactly `wanctl decode --vae tiny`'s."""
    from diffusers import AutoencoderKLWan

    from wanctl.decode.load import TINY_CONFIG, random_vae

    vae = _seeded(lambda: AutoencoderKLWan(**TINY_CONFIG), SEED + 1)
    decoder = random_vae(TINY_CONFIG, seed=SEED).state_dict()
    missing, unexpected = vae.load_state_dict(decoder, strict=False)
    if unexpected or any(not k.startswith(("encoder.", "quant_conv.")) for k in missing):
        raise RuntimeError(f"tiny VAE decoder mismatch: {missing} {unexpected}")
    return vae


def wan_scheduler() -> Any:
    """Wan2.2 TI2V-5B's sampler, for the built-in models."""
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(**SCHEDULER)


@dataclass
class TinyModel:
    name: str = "tiny"

    def encode_prompts(
        self, prompt: str, negative: str, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        from transformers import ByT5Tokenizer

        return encode_with(ByT5Tokenizer(), tiny_text_encoder().to(device), prompt, negative)

    def transformer(self, device: torch.device) -> WanTransformer3DModel:
        model: Any = tiny_transformer()
        return model.to(device)

    def vae(self, device: torch.device, *, encoder: bool) -> AutoencoderKLWan:
        vae: Any = tiny_vae()
        return vae.to(device)

    def scheduler(self) -> Any:
        return wan_scheduler()


@dataclass
class Synthetic5B:
    dtype: torch.dtype
    name: str = "synthetic-5b"

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
        import torch

        from wanctl.models.configs import build_dit

        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(SEED)  # the same weights on every rank
            return build_dit(device, self.dtype)

    def vae(self, device: torch.device, *, encoder: bool) -> AutoencoderKLWan:
        """On the meta device (the pipeline reads only its config) unless an image is to be
        encoded; then the whole VAE, random, in float32 as Wan runs it."""
        import torch
        from diffusers import AutoencoderKLWan

        from wanctl.decode.load import TI2V_5B_CONFIG
        from wanctl.models.configs import place

        with torch.device("meta"):
            vae = AutoencoderKLWan(**TI2V_5B_CONFIG)
        return place(vae, device) if encoder else vae

    def scheduler(self) -> Any:
        return wan_scheduler()


@dataclass
class DiffusersCheckpoint:
    folder: Path
    dtype: torch.dtype
    name: str = ""

    def __post_init__(self) -> None:
        self.name = self.folder.name

    def encode_prompts(
        self, prompt: str, negative: str, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        from transformers import AutoTokenizer, UMT5EncoderModel

        tokenizer = AutoTokenizer.from_pretrained(self.folder / "tokenizer")
        encoder: Any = UMT5EncoderModel.from_pretrained(
            self.folder / "text_encoder", torch_dtype=self.dtype
        )
        return encode_with(tokenizer, encoder.to(device).eval(), prompt, negative)

    def transformer(self, device: torch.device) -> WanTransformer3DModel:
        from diffusers import WanTransformer3DModel

        model = WanTransformer3DModel.from_pretrained(
            self.folder, subfolder="transformer", torch_dtype=self.dtype
        )
        return model.to(device).eval()

    def vae(self, device: torch.device, *, encoder: bool) -> AutoencoderKLWan:
        """float32, as the Wan pipelines run it, when an image is to be encoded; else on the
        meta device from its config alone (the decode reloads the decoder by itself)."""
        import torch
        from diffusers import AutoencoderKLWan

        if encoder:
            vae = AutoencoderKLWan.from_pretrained(
                self.folder, subfolder="vae", torch_dtype=torch.float32
            )
            return vae.to(device)
        with torch.device("meta"):
            return AutoencoderKLWan.from_config(
                AutoencoderKLWan.load_config(self.folder, subfolder="vae")
            )

    def scheduler(self) -> Any:
        import diffusers

        config = json.loads((self.folder / "scheduler" / "scheduler_config.json").read_text())
        scheduler_class = getattr(diffusers, config["_class_name"])
        return scheduler_class.from_pretrained(self.folder, subfolder="scheduler")
