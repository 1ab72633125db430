"""Checkpoint folders as the checks before launch read them: every file loading needs, laid out
as the downloads are, with real JSON and placeholder weights (a safetensors file of one tiny
tensor, an empty zip archive for torch's `.pth`). Nothing here loads: for that, the tests save
real tiny models (`test_generate_e2e`, `test_generate_moe`)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

from wanctl.core.families import TI2V_5B, Family

SHARDS = 2
TOKENIZER_FILES = {
    "tokenizer_config.json": '{"tokenizer_class": "T5Tokenizer"}',
    "special_tokens_map.json": "{}",
    "tokenizer.json": '{"model": {}}',
    "spiece.model": "sentencepiece",
}


def model_index(family: Family = TI2V_5B) -> dict[str, Any]:
    """model_index.json of the family's diffusers checkpoint, as the Wan-AI ones hold it."""
    image = family.image == "required"
    index: dict[str, Any] = {
        "_class_name": "WanImageToVideoPipeline" if image else "WanPipeline",
        "_diffusers_version": "0.35.0.dev0",
        "scheduler": ["diffusers", "UniPCMultistepScheduler"],
        "text_encoder": ["transformers", "UMT5EncoderModel"],
        "tokenizer": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "WanTransformer3DModel"],
        "transformer_2": ["diffusers", "WanTransformer3DModel"] if family.experts == 2
        else [None, None],
        "vae": ["diffusers", "AutoencoderKLWan"],
    }  # fmt: skip
    if family.experts == 2:
        index["boundary_ratio"] = family.boundary
    else:
        index["expand_timesteps"] = True
    if image:
        index |= {"image_encoder": [None, None], "image_processor": [None, None]}
    return index


def write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))


def write_safetensors(path: Path) -> None:
    """A safetensors file of one 2-element bf16 tensor: its header, then its 4 bytes."""
    header = json.dumps({"w": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(len(header).to_bytes(8, "little") + header + bytes(4))


def write_sharded(folder: Path, name: str) -> None:
    """`name`.index.json and the shards it maps tensors to, named as `save_pretrained` does."""
    stem, suffix = name.split(".")
    shards = [f"{stem}-{i:05d}-of-{SHARDS:05d}.{suffix}" for i in range(1, SHARDS + 1)]
    weight_map = {f"blocks.{i}.weight": shard for i, shard in enumerate(shards)}
    write_json(folder / f"{name}.index.json", {"metadata": {}, "weight_map": weight_map})
    for shard in shards:
        write_safetensors(folder / shard)


def write_torch_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    zipfile.ZipFile(path, "w").close()


def write_tokenizer(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in TOKENIZER_FILES.items():
        (folder / name).write_text(content)


def diffusers_checkpoint(folder: Path, family: Family = TI2V_5B) -> Path:
    """Wan2.2-TI2V-5B-Diffusers (or the A14B ones): sharded DiTs and text encoder, one VAE file."""
    write_json(folder / "model_index.json", model_index(family))
    dit = {"in_channels": family.dit["in_channels"], "num_attention_heads": family.heads}
    for name in ("transformer", "transformer_2")[: family.experts]:
        write_json(folder / name / "config.json", dit)
        write_sharded(folder / name, "diffusion_pytorch_model.safetensors")
    write_json(folder / "vae" / "config.json", {"z_dim": family.vae.channels})
    write_safetensors(folder / "vae" / "diffusion_pytorch_model.safetensors")
    write_json(folder / "text_encoder" / "config.json", {"d_model": 4096})
    write_sharded(folder / "text_encoder", "model.safetensors")
    write_tokenizer(folder / "tokenizer")
    write_json(folder / "scheduler" / "scheduler_config.json",
               {"_class_name": "UniPCMultistepScheduler", "flow_shift": family.shift})  # fmt: skip
    return folder


def official_checkpoint(folder: Path, family: Family = TI2V_5B) -> Path:
    """Wan2.2-TI2V-5B (or the A14B ones) as the official code reads it."""
    model_type = {"ti2v-5B": "ti2v", "t2v-A14B": "t2v", "i2v-A14B": "i2v"}[family.name]
    config = {"_class_name": "WanModel", "model_type": model_type,
              "in_dim": family.dit["in_channels"], "num_heads": family.heads}  # fmt: skip
    for dit in ("high_noise_model", "low_noise_model") if family.experts == 2 else ("",):
        write_json(folder / dit / "config.json", config)
        write_sharded(folder / dit, "diffusion_pytorch_model.safetensors")
    write_torch_file(folder / "models_t5_umt5-xxl-enc-bf16.pth")
    write_torch_file(folder / family.vae.file)
    write_tokenizer(folder / "google" / "umt5-xxl")
    return folder
