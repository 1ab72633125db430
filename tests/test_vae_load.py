"""Loading the VAE: diffusers folders, the original Wan2.2_VAE.pth and Wan2.1_VAE.pth key
layouts, random weights, and clear refusals."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers.models.autoencoders.autoencoder_kl_wan import AutoencoderKLWan

from wanctl.decode.engine import decode_chunks
from wanctl.decode.load import (
    TINY_CONFIG,
    TINY_WAN21_CONFIG,
    load_vae,
    original_to_diffusers,
    random_vae,
    spec_family,
)
from wanctl.decode.modules import WanVaeDecoder
from wanctl.errors import UsageError

# diffusers -> original (the official wan/modules/vae2_2.py), written out independently of the
# mapping under test: Decoder3d has conv1, middle (resnet, attention, resnet), upsamples.{b}
# (Up_ResidualBlock, whose `upsamples` are 3 ResidualBlocks then the Resample) and head
# (RMS_norm, SiLU, CausalConv3d); a ResidualBlock is `residual` (norm, SiLU, conv, norm, SiLU,
# dropout, conv) plus `shortcut`; the VAE's conv2 is diffusers' post_quant_conv.
TO_ORIGINAL = [
    (r"(resnets\.\d\.)norm1\.", r"\1residual.0."),
    (r"(resnets\.\d\.)conv1\.", r"\1residual.2."),
    (r"(resnets\.\d\.)norm2\.", r"\1residual.3."),
    (r"(resnets\.\d\.)conv2\.", r"\1residual.6."),
    (r"(resnets\.\d\.)conv_shortcut\.", r"\1shortcut."),
    (r"^post_quant_conv\.", "conv2."),
    (r"^decoder\.conv_in\.", "decoder.conv1."),
    (r"^decoder\.mid_block\.resnets\.0\.", "decoder.middle.0."),
    (r"^decoder\.mid_block\.attentions\.0\.", "decoder.middle.1."),
    (r"^decoder\.mid_block\.resnets\.1\.", "decoder.middle.2."),
    (r"^decoder\.up_blocks\.(\d)\.resnets\.(\d)\.", r"decoder.upsamples.\1.upsamples.\2."),
    (r"^decoder\.up_blocks\.(\d)\.upsampler\.", r"decoder.upsamples.\1.upsamples.3."),
    (r"^decoder\.norm_out\.", "decoder.head.0."),
    (r"^decoder\.conv_out\.", "decoder.head.2."),
]


# The same for the official wan/modules/vae2_1.py: its Decoder3d's `upsamples` is one flat
# Sequential, per level 3 ResidualBlocks then (but for the last level) the Resample: indices
# 0-2, 3 | 4-6, 7 | 8-10, 11 | 12-14.
def flat(index: str) -> Any:
    """A replacement giving the flat index 4 b + j (`index` is j, or "3" for the resample)."""
    return lambda m: f"decoder.upsamples.{4 * int(m[1]) + int(m[2] if index == 'j' else 3)}."


TO_ORIGINAL_21 = [
    *TO_ORIGINAL[:10],
    (r"^decoder\.up_blocks\.(\d)\.resnets\.(\d)\.", flat("j")),
    (r"^decoder\.up_blocks\.(\d)\.upsamplers\.0\.", flat("resample")),
    *TO_ORIGINAL[12:],
]


def to_original(
    state: dict[str, torch.Tensor], rules: list[tuple[str, Any]] = TO_ORIGINAL
) -> dict[str, torch.Tensor]:
    out = {}
    for key, tensor in state.items():
        for pattern, replacement in rules:
            key = re.sub(pattern, replacement, key)
        out[key] = tensor
    return out


@pytest.fixture(scope="module")
def tiny() -> WanVaeDecoder:
    return load_vae("tiny")


def decoder_of(full: AutoencoderKLWan) -> WanVaeDecoder:
    """The decoder half of a whole diffusers VAE, its tensors shared."""
    vae = WanVaeDecoder(dict(full.config))
    state = {k: v for k, v in full.state_dict().items() if k.startswith(("decoder.", "post_"))}
    vae.load_state_dict(state, strict=True, assign=True)
    return vae.eval()


def decode(vae: WanVaeDecoder) -> torch.Tensor:
    channels = vae.config["z_dim"]
    z = torch.randn(1, channels, 2, 3, 4, generator=torch.Generator().manual_seed(0))
    return torch.cat(list(decode_chunks(vae, z)), dim=2)


def test_original_layout_maps_back_to_diffusers(tiny: WanVaeDecoder) -> None:
    state = tiny.state_dict()
    original = to_original(state)

    for key in [
        "conv2.weight",
        "decoder.conv1.weight",
        "decoder.middle.0.residual.0.gamma",
        "decoder.middle.1.to_qkv.weight",
        "decoder.middle.2.residual.6.bias",
        "decoder.upsamples.0.upsamples.3.time_conv.weight",
        "decoder.upsamples.2.upsamples.3.resample.1.weight",
        "decoder.upsamples.2.upsamples.0.shortcut.weight",
        "decoder.head.0.gamma",
        "decoder.head.2.weight",
    ]:
        assert key in original
    mapped = original_to_diffusers({**original, "encoder.conv1.weight": torch.zeros(1)})
    assert mapped.keys() == state.keys()
    assert all(mapped[k] is state[k] for k in state)


def test_original_pth_file_decodes_like_the_model_it_came_from(
    tmp_path: Path, tiny: WanVaeDecoder
) -> None:
    torch.save(to_original(tiny.state_dict()), tmp_path / "Wan2.2_VAE.pth")

    loaded = load_vae(str(tmp_path / "Wan2.2_VAE.pth"))

    assert torch.equal(decode(loaded), decode(tiny))


def test_diffusers_folder_or_model_root(tmp_path: Path) -> None:
    torch.manual_seed(3)
    full = AutoencoderKLWan(**TINY_CONFIG)
    full.save_pretrained(tmp_path / "model" / "vae")

    for spec in (tmp_path / "model" / "vae", tmp_path / "model"):
        loaded = load_vae(str(spec))
        assert isinstance(loaded, WanVaeDecoder)
        assert torch.equal(decode(loaded), decode(decoder_of(full)))


def test_a_folder_is_read_onto_the_device_as_from_pretrained_then_cast(tmp_path: Path) -> None:
    """The decoder's tensors straight from the safetensors file, cast on arrival: the values
    of `from_pretrained` followed by `.to(dtype)`, bit for bit; `.bin` weights go through
    `from_pretrained`, to the same model."""
    torch.manual_seed(4)
    full = AutoencoderKLWan(**TINY_CONFIG).eval()
    full.save_pretrained(tmp_path / "st")
    full.save_pretrained(tmp_path / "bin", safe_serialization=False)
    expected = AutoencoderKLWan.from_pretrained(str(tmp_path / "st")).to(torch.bfloat16)

    for folder in ("st", "bin"):
        loaded = load_vae(str(tmp_path / folder), dtype=torch.bfloat16)
        state = loaded.state_dict()
        assert isinstance(loaded, WanVaeDecoder) and not loaded.training
        assert {t.dtype for t in state.values()} == {torch.bfloat16}
        assert all(torch.equal(t, expected.state_dict()[k]) for k, t in state.items())


def test_a_folder_whose_weights_do_not_fit_its_config_is_refused(tmp_path: Path) -> None:
    AutoencoderKLWan(**TINY_CONFIG).save_pretrained(tmp_path / "vae")
    config = tmp_path / "vae" / "config.json"
    config.write_text(config.read_text().replace('"decoder_base_dim": 8', '"decoder_base_dim": 16'))

    with pytest.raises(UsageError, match="not the .* of the model its config.json describes"):
        load_vae(str(tmp_path / "vae"))


def test_a_folder_is_allocated_in_the_decode_dtype_not_float32_first(tmp_path: Path) -> None:
    from wanctl.decode.load import _from_diffusers_dir

    AutoencoderKLWan(**TINY_CONFIG).save_pretrained(tmp_path / "vae")
    loaded = _from_diffusers_dir(tmp_path / "vae", torch.device("cpu"), torch.bfloat16)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize("damage", ["cut", "header"])
def test_a_damaged_folder_is_refused_with_the_fix(tmp_path: Path, damage: str) -> None:
    AutoencoderKLWan(**TINY_CONFIG).save_pretrained(tmp_path / "vae")
    weights = tmp_path / "vae" / "diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(
        data[: len(data) // 2] if damage == "cut" else b"\x10" + b"\x00" * 7 + b"{}"
    )

    with pytest.raises(UsageError, match="cannot load the diffusers VAE") as refused:
        load_vae(str(tmp_path / "vae"))
    assert refused.value.why and "Wan2.2-TI2V-5B-Diffusers/vae" in refused.value.fix


def test_random_weights_follow_the_seed() -> None:
    first, again, other = (random_vae(TINY_CONFIG, seed=s) for s in (0, 0, 1))
    weight = "decoder.conv_in.weight"

    assert torch.equal(first.state_dict()[weight], again.state_dict()[weight])
    assert not torch.equal(first.state_dict()[weight], other.state_dict()[weight])
    assert all(torch.isfinite(p).all() for p in first.parameters())


def test_bad_vae_specs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="VAE not found"):
        load_vae(str(tmp_path / "absent"))
    with pytest.raises(UsageError, match="no config.json"):
        load_vae(str(tmp_path))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UsageError, match="unknown VAE file type"):
        load_vae(str(tmp_path / "notes.txt"))
    torch.save({"something.else": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(UsageError, match="holds no Wan VAE decoder weights"):
        load_vae(str(tmp_path / "other.pth"))


def test_original_wan21_layout_decodes_like_diffusers(tmp_path: Path) -> None:
    """A Wan2.1_VAE.pth (encoder keys too, as the official file has them) loads through
    diffusers' single-file converter into the decoder it came from."""
    torch.manual_seed(5)
    full = AutoencoderKLWan(**TINY_WAN21_CONFIG).eval()
    original = to_original(full.state_dict(), TO_ORIGINAL_21)
    for key in [
        "conv2.weight",
        "decoder.conv1.weight",
        "decoder.middle.1.to_qkv.weight",
        "decoder.upsamples.3.time_conv.weight",
        "decoder.upsamples.4.shortcut.weight",
        "decoder.upsamples.11.resample.1.weight",
        "decoder.upsamples.14.residual.6.bias",
        "decoder.head.2.weight",
    ]:
        assert key in original
    torch.save(original, tmp_path / "Wan2.1_VAE.pth")

    loaded = load_vae(str(tmp_path / "Wan2.1_VAE.pth"))

    assert loaded.config["z_dim"] == 16 and not loaded.config["is_residual"]
    assert torch.equal(decode(loaded), decode(decoder_of(full)))
    assert spec_family(str(tmp_path / "Wan2.1_VAE.pth")).name == "wan2.1"  # type: ignore[union-attr]


def test_wan21_diffusers_folder_loads(tmp_path: Path) -> None:
    torch.manual_seed(6)
    full = AutoencoderKLWan(**TINY_WAN21_CONFIG).eval()
    full.save_pretrained(tmp_path / "A14B" / "vae")

    loaded = load_vae(str(tmp_path / "A14B"))

    assert torch.equal(decode(loaded), decode(decoder_of(full)))
    assert spec_family(str(tmp_path / "A14B")).name == "wan2.1"  # type: ignore[union-attr]
    assert spec_family("tiny").name == "wan2.2"  # type: ignore[union-attr]


def test_another_vae_is_refused(tmp_path: Path) -> None:
    AutoencoderKLWan(base_dim=8, z_dim=24).save_pretrained(tmp_path / "other")

    with pytest.raises(UsageError, match="neither the Wan2.2 nor the Wan2.1 VAE"):
        load_vae(str(tmp_path / "other"))


def test_odd_vae_files_are_refused_with_a_message(tmp_path: Path) -> None:
    """Files the cheap family check cannot read leave the refusal to `load_vae`."""
    from safetensors.torch import save_file

    (tmp_path / "corrupt.safetensors").write_bytes(b"\x00" * 64)
    save_file({"decoder.conv_in.weight": torch.zeros(4)}, str(tmp_path / "flat.safetensors"))
    (tmp_path / "listed").mkdir()
    (tmp_path / "listed" / "config.json").write_text("[1, 2]")
    for name in ("corrupt.safetensors", "flat.safetensors", "listed"):
        assert spec_family(str(tmp_path / name)) is None
        with pytest.raises(UsageError):
            load_vae(str(tmp_path / name))
