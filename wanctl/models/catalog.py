"""Which model a run samples with, without torch: the built-in models, a diffusers checkpoint
folder's family (read from its JSON files), the VAE that decodes its latents, and what its
summary says about it. The launcher reads this; the workers build the models
(`wanctl.models.select.model_for`).

Built-in models:
- `tiny`: the TI2V-5B structure made narrow, random weights (runs anywhere, in seconds);
- `synthetic-5b`: the real TI2V-5B DiT and UMT5-XXL, random weights, for GPU timing and memory;
- `tiny-moe`: two tiny experts and a tiny Wan2.1 VAE, T2V-A14B (or I2V-A14B with an image);
- `synthetic-a14b`: the real A14B experts, UMT5-XXL and Wan2.1 VAE, random weights.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from wanctl.core.families import TI2V_5B, Family, a14b

MODELS = ("tiny", "synthetic-5b", "tiny-moe", "synthetic-a14b")
TWO_EXPERTS = ("tiny-moe", "synthetic-a14b")
# What a summary says about the built-in models.
NOTES = {
    "tiny": "tiny model: the TI2V structure made narrow, random weights (seed 0)",
    "synthetic-5b": "synthetic-5b: the TI2V-5B DiT and UMT5-XXL with random weights (the "
    "prompt's bytes as tokens; seeded random embeddings where UMT5 is on the CPU)",
    "tiny-moe": "tiny-moe: two narrow A14B-shaped experts and a narrow Wan2.1 VAE, random "
    "weights (seeds 0 and 1)",
    "synthetic-a14b": "synthetic-a14b: the A14B experts, UMT5-XXL and the Wan2.1 VAE with "
    "random weights (the prompt's bytes as tokens)",
}
# The decoder `wanctl decode --vae` loads for a built-in model's latents.
BUILT_IN_VAES = {
    "tiny": "tiny",
    "synthetic-5b": "synthetic",
    "tiny-moe": "tiny-wan2.1",
    "synthetic-a14b": "synthetic-wan2.1",
}
DOWNLOAD_FIX = (
    "download Wan-AI/Wan2.2-TI2V-5B-Diffusers, Wan-AI/Wan2.2-T2V-A14B-Diffusers or "
    "Wan-AI/Wan2.2-I2V-A14B-Diffusers (`hf download REPO --local-dir DIR`) and pass "
    "--ckpt-dir DIR; the official (non-diffusers) checkpoint runs with --backend wan-repo"
)


def model_family(name: str | None, checkpoint: Path | None, *, image: bool) -> Family:
    """The family a built-in model or a checkpoint (already checked) belongs to."""
    if name in TWO_EXPERTS:
        return a14b(image)
    if name is not None:
        return TI2V_5B
    if checkpoint is None:
        raise ValueError("a built-in model's name or a checkpoint is needed")
    family = checkpoint_family(checkpoint)
    assert family is not None, "the checks before launch have read its model_index.json"
    return family


def checkpoint_family(folder: Path) -> Family | None:
    """The family a diffusers checkpoint's model_index.json names, or None where it cannot be
    read (`wanctl.models.layouts.check_diffusers_checkpoint` says why)."""
    index = _index(folder)
    return None if index is None else index_family(index)


def official_family(folder: Path) -> Family:
    """The model of an official (non-diffusers) checkpoint folder: an A14B one when it holds
    `high_noise_model/` (I2V when that DiT's config says `model_type` i2v, 36 input channels),
    else TI2V-5B. Reads JSON only."""
    config = folder / "high_noise_model" / "config.json"
    if not config.is_file():
        return TI2V_5B
    try:
        values = json.loads(config.read_text())
    except (OSError, ValueError):
        values = {}
    values = values if isinstance(values, dict) else {}
    return a14b(values.get("model_type") == "i2v" or values.get("in_dim") == 36)


def vae_spec(name: str | None, checkpoint: Path | None) -> str:
    """What `wanctl decode --vae` takes for the decoder weights of a model."""
    if name is not None:
        return BUILT_IN_VAES[name]
    return str(Path(checkpoint or ".") / "vae")


def _index(folder: Path) -> dict[str, Any] | None:
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        return None
    return index if isinstance(index, dict) else None


def two_experts(index: dict[str, Any]) -> bool:
    """Whether the index names a second expert: `"transformer_2": [library, class]`."""
    entry = index.get("transformer_2")
    return isinstance(entry, list) and len(entry) == 2 and entry[1] is not None


def index_family(index: dict[str, Any]) -> Family:
    """The family, with the checkpoint's own boundary between its experts."""
    if not two_experts(index):
        return TI2V_5B
    family = a14b(index.get("_class_name") == "WanImageToVideoPipeline")
    boundary = index.get("boundary_ratio")
    return dataclasses.replace(family, boundary=boundary) if isinstance(boundary, float) else family
