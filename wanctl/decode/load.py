"""Loading a Wan VAE's decoder (Wan2.2's or Wan2.1's) as a `WanVaeDecoder`.

`--vae` takes a diffusers directory (`config.json` + weights, as `Wan2.2-TI2V-5B-Diffusers/vae`
or `Wan2.2-T2V-A14B-Diffusers/vae`, or the model root holding `vae/`), an original
`Wan2.2_VAE.pth` (keys mapped here: diffusers 0.42's single-file converter only knows the Wan2.1
layout) or `Wan2.1_VAE.pth` (mapped by that converter), or a built-in: `synthetic` and
`synthetic-wan2.1` (the real architectures with seeded random weights, for benchmarks), `tiny`
and `tiny-wan2.1` (the same structures, narrow, for tests). The encoder is dropped: decoding
never uses it.

A diffusers folder's safetensors weights are read straight onto the decode's device, decoder
tensors only, each cast there (`wanctl.models.weights.Weights`): the same values as
`from_pretrained` then `.to(device, dtype)`, without the encoder's half of the file, a float32
copy of the whole VAE in host memory first, or diffusers' import. Its `.bin` weights go through
`from_pretrained`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from wanctl.core.architectures import (
    VAE_TI2V_5B,
    VAE_WAN21,
    WAN21_VAE,
    VaeFamily,
    vae_family_for_channels,
    vae_family_of,
)
from wanctl.decode.modules import WAN21_LATENTS_MEAN, WAN21_LATENTS_STD, RMSNorm, WanVaeDecoder
from wanctl.errors import UsageError
from wanctl.models.configs import allocate, cast_as_loaded
from wanctl.models.files import STREAMED_WEIGHTS, Broken, check_weights, weight_map
from wanctl.models.weights import Weights

# Wan2.2 VAE normalisation (Wan2_2_VAE in the official vae2_2.py; `latents_mean`/`latents_std`
# in the diffusers config of Wan2.2-TI2V-5B-Diffusers/vae).
LATENTS_MEAN = [
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
    -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825,
    -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
    -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
    0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
]  # fmt: skip
LATENTS_STD = [
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
    0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
    0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
    0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
    0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
]  # fmt: skip

TI2V_5B_CONFIG: dict[str, Any] = {
    **VAE_TI2V_5B,
    "latents_mean": LATENTS_MEAN,
    "latents_std": LATENTS_STD,
}
# The same structure (residual up blocks, DupUp3D, patch size 2, 48 latent channels), narrow.
TINY_CONFIG: dict[str, Any] = {**TI2V_5B_CONFIG, "base_dim": 8, "decoder_base_dim": 8}
WAN21_CONFIG: dict[str, Any] = {
    **VAE_WAN21,
    "latents_mean": WAN21_LATENTS_MEAN,
    "latents_std": WAN21_LATENTS_STD,
}
TINY_WAN21_CONFIG: dict[str, Any] = {**WAN21_CONFIG, "base_dim": 8}

BUILT_IN = {
    "synthetic": TI2V_5B_CONFIG,
    "tiny": TINY_CONFIG,
    "synthetic-wan2.1": WAN21_CONFIG,
    "tiny-wan2.1": TINY_WAN21_CONFIG,
}
WEIGHT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".safetensors")
_FIX = (
    "pass --vae with the checkpoint's vae/ folder (Wan2.2-TI2V-5B-Diffusers/vae,"
    " Wan2.2-T2V-A14B-Diffusers/vae, or the model folder holding it), the official"
    " Wan2.2_VAE.pth or Wan2.1_VAE.pth, or 'synthetic' / 'synthetic-wan2.1' for random weights"
)


def load_vae(
    spec: str,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> WanVaeDecoder:
    """The VAE decoder named by `spec`, in eval mode, on `device` in `dtype`."""
    if spec in BUILT_IN:
        vae = random_vae(BUILT_IN[spec], seed=seed)
    else:
        path = vae_path(spec)
        if path.is_dir():
            vae = _from_diffusers_dir(path, torch.device(device), dtype)
        else:
            vae = _from_weights_file(path)
    family_of(vae, spec)
    return vae.to(device=device, dtype=dtype).eval().requires_grad_(False)


def vae_path(spec: str) -> Path:
    """The file or diffusers directory `spec` names; a missing or unusable one is a
    `UsageError`. Cheap: reads no weights, so a launcher can check before starting workers."""
    path = Path(spec).expanduser()
    if path.is_dir():
        for candidate in (path, path / "vae"):
            if (candidate / "config.json").is_file():
                return candidate
        raise UsageError(f"{path} is not a diffusers VAE directory (no config.json)", fix=_FIX)
    if path.is_file():
        if path.suffix not in WEIGHT_SUFFIXES:
            raise UsageError(
                f"{path}: unknown VAE file type '{path.suffix}'",
                fix=f"pass one of {', '.join(WEIGHT_SUFFIXES)} or a diffusers directory",
            )
        return path
    raise UsageError(f"VAE not found: {spec}", fix=_FIX)


def random_vae(config: Mapping[str, Any], *, seed: int = 0) -> WanVaeDecoder:
    """The VAE decoder of `config` with PyTorch's default init drawn from
    `seed` on the CPU, so every process and device gets the same weights."""
    vae = _decoder_only(config)
    allocate(vae, "cpu")
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for module in vae.modules():
            if isinstance(module, RMSNorm):
                torch.nn.init.ones_(module.gamma)
            elif callable(reset := getattr(module, "reset_parameters", None)):
                reset()
    finally:
        torch.random.set_rng_state(generator_state)
    return vae


def family_of(vae: WanVaeDecoder, spec: str) -> VaeFamily:
    """Which Wan VAE `vae` is; any other (other latent widths, layouts) is refused."""
    family = vae_family_of(vae.config)
    if family is None:
        z_dim, residual, patch = (vae.config[k] for k in ("z_dim", "is_residual", "patch_size"))
        raise UsageError(
            f"{spec} is neither the Wan2.2 nor the Wan2.1 VAE",
            why=f"z_dim={z_dim}, is_residual={residual}, patch_size={patch}; wanctl decodes the"
            " 48-channel Wan2.2 VAE (residual, patch 2) and the 16-channel Wan2.1 VAE",
            fix=_FIX,
        )
    return family


def spec_family(spec: str) -> VaeFamily | None:
    """The family of the VAE `spec` names, read cheaply (a config file, or one weight's shape
    through the file's header), for a launcher to check latents against before starting
    workers; None where that cannot tell (`load_vae` checks again)."""
    if spec in BUILT_IN:
        return vae_family_of(BUILT_IN[spec])
    path = vae_path(spec)
    try:
        if path.is_dir():
            config = json.loads((path / "config.json").read_text())
            z_dim = config.get("z_dim") if isinstance(config, dict) else None
        else:
            z_dim = _conv_in_channels(path)
    except Exception:  # any unreadable file: `load_vae` says what is wrong with it
        return None
    return vae_family_for_channels(z_dim) if isinstance(z_dim, int) else None


def check_latents_fit(latents_vae: VaeFamily, vae: VaeFamily, spec: str) -> None:
    """Latents decode only with the VAE family that made them."""
    if latents_vae is not vae:
        made = latents_vae
        raise UsageError(
            f"these latents were made by the {made.name} VAE ({made.channels} channels) and "
            f"{spec} is the {vae.name} VAE ({vae.channels} channels)",
            why=f"the {made.name} VAE ({made.models}) alone decodes them",
            fix=f"pass --vae with the {made.name} VAE of the model that sampled them "
            f"({made.file}, or the {made.models} diffusers folder's vae/)",
        )


def _conv_in_channels(path: Path) -> int | None:
    """The decoder's input channels (z_dim), from one tensor's shape, without reading the
    weights (safetensors' header, or torch's memory map)."""
    names = ("decoder.conv1.weight", "decoder.conv_in.weight")
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as handle:
            keys = set(handle.keys())
            name = next((n for n in names if n in keys), None)
            shape = handle.get_slice(name).get_shape() if name else []
            return int(shape[1]) if len(shape) > 1 else None
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    tensor = next((state[n] for n in names if isinstance(state, dict) and n in state), None)
    return int(tensor.shape[1]) if tensor is not None and tensor.dim() > 1 else None


def original_to_diffusers(
    state: Mapping[str, torch.Tensor], resnets_per_block: int = 3
) -> dict[str, torch.Tensor]:
    """Rename the decoder keys of an original `Wan2.2_VAE.pth` to diffusers'; encoder
    keys are dropped. `resnets_per_block` is num_res_blocks + 1: the next index of an up
    block's `upsamples` is its resample."""
    mapped = {}
    for key, tensor in state.items():
        new = _diffusers_key(key, resnets_per_block)
        if new is not None:
            mapped[new] = tensor
    return mapped


_RESNET_PARTS = {
    "residual.0.": "norm1.",
    "residual.2.": "conv1.",
    "residual.3.": "norm2.",
    "residual.6.": "conv2.",
    "shortcut.": "conv_shortcut.",
}
_PREFIXES = {
    "conv2.": "post_quant_conv.",
    "decoder.conv1.": "decoder.conv_in.",
    "decoder.middle.1.": "decoder.mid_block.attentions.0.",
    "decoder.head.0.": "decoder.norm_out.",
    "decoder.head.2.": "decoder.conv_out.",
}
_MIDDLE = re.compile(r"decoder\.middle\.([02])\.(.+)")
_UP = re.compile(r"decoder\.upsamples\.(\d+)\.upsamples\.(\d+)\.(.+)")


def _diffusers_key(key: str, resnets_per_block: int) -> str | None:
    for old, new in _PREFIXES.items():
        if key.startswith(old):
            return new + key[len(old) :]
    if match := _MIDDLE.fullmatch(key):
        return f"decoder.mid_block.resnets.{int(match[1]) // 2}.{_resnet_part(key, match[2])}"
    if match := _UP.fullmatch(key):
        block, index, rest = int(match[1]), int(match[2]), match[3]
        if index < resnets_per_block:
            return f"decoder.up_blocks.{block}.resnets.{index}.{_resnet_part(key, rest)}"
        return f"decoder.up_blocks.{block}.upsampler.{rest}"
    if key.startswith("decoder."):
        raise UsageError(f"unknown decoder key in the VAE checkpoint: {key}", fix=_FIX)
    return None


def _resnet_part(key: str, rest: str) -> str:
    for old, new in _RESNET_PARTS.items():
        if rest.startswith(old):
            return new + rest[len(old) :]
    raise UsageError(f"unknown residual-block key in the VAE checkpoint: {key}", fix=_FIX)


def _decoder_only(config: Mapping[str, Any]) -> WanVaeDecoder:
    """The VAE decoder of `config` (its arguments, or a config.json's contents) on the meta
    device."""
    with torch.device("meta"):
        return WanVaeDecoder(config)


def _from_diffusers_dir(path: Path, device: torch.device, dtype: torch.dtype) -> WanVaeDecoder:
    """The decoder of the folder's VAE: streamed onto `device` in `dtype` from safetensors
    weights (checked whole first: a cut or damaged file is refused, not a traceback), else
    (`.bin`) loaded by diffusers' `from_pretrained` into host memory."""
    name = STREAMED_WEIGHTS[0]
    streamed = (path / name).is_file() or (path / f"{name}.index.json").is_file()
    try:
        if not streamed:
            return _from_pretrained(path)
        check_weights(path, STREAMED_WEIGHTS, "the VAE's load")
        vae = _decoder_only(_read_config(path))
        files = weight_map(path, name)
    except Broken as broken:
        raise UsageError(f"cannot load the diffusers VAE in {path}: {broken}",
                         why=broken.why, fix=_FIX) from None  # fmt: skip
    except UsageError:
        raise
    except Exception as error:  # a broken folder is the user's to fix, whatever diffusers raises
        raise UsageError(
            f"cannot load the diffusers VAE in {path}", why=str(error), fix=_FIX
        ) from None
    cast_as_loaded(vae.named_parameters(), dtype, ())  # allocated in `dtype`
    loaded: WanVaeDecoder = Weights(path, files, dtype, _FIX).load(vae, device)
    return loaded


def _read_config(path: Path) -> dict[str, Any]:
    config = json.loads((path / "config.json").read_text())
    if not isinstance(config, dict):
        raise UsageError(f"{path / 'config.json'} is not a VAE config: not a JSON object", fix=_FIX)
    return config


def _from_pretrained(path: Path) -> WanVaeDecoder:
    from diffusers import AutoencoderKLWan

    full = AutoencoderKLWan.from_pretrained(str(path))
    vae = _decoder_only(dict(full.config))
    vae.load_state_dict(_decoder_keys(full.state_dict()), strict=True, assign=True)
    return vae


def _from_weights_file(path: Path) -> WanVaeDecoder:
    state = _read_state(path)
    if "decoder.upsamples.0.upsamples.0.residual.0.gamma" in state:  # Wan2.2's nested blocks
        state = original_to_diffusers(state, TI2V_5B_CONFIG["num_res_blocks"] + 1)
    elif "decoder.conv1.weight" in state:  # Wan2.1's flat list of up blocks
        # imported here: the single-file loaders pull in most of diffusers (0.7 s of every
        # worker's start-up, measured on 2 CPU cores), and only this file layout needs them
        from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

        state = _decoder_keys(convert_wan_vae_to_diffusers(state))
    elif "decoder.conv_in.weight" in state:
        state = _decoder_keys(state)
    else:
        raise UsageError(f"{path} holds no Wan VAE decoder weights", fix=_FIX)
    try:
        vae = _decoder_only(_config_of(state))
        vae.load_state_dict(state, strict=True, assign=True)
    except (KeyError, RuntimeError, IndexError) as error:  # missing, misshapen or 1-D weights
        raise UsageError(
            f"{path} does not fit the Wan2.2 or the Wan2.1 VAE",
            why=str(error).splitlines()[0],
            fix=_FIX,
        ) from None
    return vae


def _decoder_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith(("decoder.", "post_quant_conv."))}


def _config_of(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The family's config with the widths read off the weights: conv_in's input channels
    are z_dim (48: Wan2.2, 16: Wan2.1), conv_out's input channels the decoder's base width."""
    z_dim = int(state["decoder.conv_in.weight"].shape[1])
    base = int(state["decoder.conv_out.weight"].shape[1])
    if vae_family_for_channels(z_dim) is WAN21_VAE:
        return {**WAN21_CONFIG, "base_dim": base}
    return {**TI2V_5B_CONFIG, "z_dim": z_dim, "decoder_base_dim": base}


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any unreadable file is the user's to fix, not a crash
        raise UsageError(f"cannot read VAE weights from {path}", why=str(error), fix=_FIX) from None
    if not isinstance(state, dict):
        raise UsageError(f"{path} holds no state dict", fix=_FIX)
    return state
