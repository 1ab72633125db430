"""wanctl's own VAE decoder modules are diffusers' decoder, name for name and shape for shape,
for both Wan VAEs at full size and tiny; and a decode from a diffusers folder never imports
diffusers (its import is most of a cold `wanctl decode`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKLWan

from wanctl.decode.latents import Latents, save_latents
from wanctl.decode.load import BUILT_IN, TINY_CONFIG
from wanctl.decode.modules import WanVaeDecoder, as_diffusers


def shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(tensor.shape) for name, tensor in state.items()}


@pytest.mark.parametrize("spec", sorted(BUILT_IN))
def test_the_state_dict_is_diffusers_decoder(spec: str) -> None:
    with torch.device("meta"):
        ours = WanVaeDecoder(BUILT_IN[spec])
        theirs = AutoencoderKLWan(**BUILT_IN[spec])
    decoder_half = {
        name: tensor
        for name, tensor in theirs.state_dict().items()
        if not name.startswith(("encoder.", "quant_conv."))
    }
    assert list(shapes(ours.state_dict()).items()) == list(shapes(decoder_half).items())
    assert ours.config.items() >= {k: v for k, v in theirs.config.items() if k[0] != "_"}.items()


def test_a_config_json_is_completed_with_diffusers_defaults() -> None:
    vae = WanVaeDecoder({"_class_name": "AutoencoderKLWan", "base_dim": 8})
    assert vae.config["z_dim"] == 16 and vae.config["scale_factor_spatial"] == 8
    assert "_class_name" not in vae.config
    assert vae.decoder.conv_out.weight.shape[1] == 8


def test_as_diffusers_shares_the_tensors() -> None:
    vae = WanVaeDecoder(TINY_CONFIG)
    model = as_diffusers(vae)
    assert model.decoder.conv_in.weight.data_ptr() == vae.decoder.conv_in.weight.data_ptr()
    assert model.encoder is None


def test_a_folder_decode_imports_neither_diffusers_nor_sympy(tmp_path: Path) -> None:
    AutoencoderKLWan(**TINY_CONFIG).save_pretrained(tmp_path / "vae")
    z = torch.randn(1, 48, 2, 3, 4, generator=torch.Generator().manual_seed(0))
    save_latents(tmp_path / "z.safetensors", Latents(z, normalized=True, fps=16, source={}))
    argv = ["wanctl", "decode", str(tmp_path / "z.safetensors"), "-o", str(tmp_path / "v.npy"),
            "--vae", str(tmp_path / "vae"), "--device", "cpu"]  # fmt: skip
    script = (
        "import atexit, runpy, sys\n"
        "atexit.register(lambda: print('imported:', sorted({m.split('.')[0] for m in "
        "sys.modules} & {'diffusers', 'transformers', 'accelerate', 'sympy'})))\n"
        f"sys.argv = {argv!r}\n"
        "runpy.run_module('wanctl', run_name='__main__')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "v.npy").is_file()
    assert "imported: []" in done.stdout  # sympy: torch._refs, seconds of a cold start
