"""The latent file format: round trip, denormalisation, and every refusal says what is wrong."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from wanctl.core.architectures import WAN21_VAE
from wanctl.decode.latents import Latents, load_latents, save_latents
from wanctl.errors import UsageError


def write(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    save_file(tensors, str(path), metadata=metadata)
    return path


def test_round_trip_keeps_tensor_and_metadata(tmp_path: Path) -> None:
    z = torch.randn(1, 48, 3, 4, 5)
    source = {"model": "Wan2.2-TI2V-5B", "prompt": "a cat", "seed": "42", "steps": "50"}
    save_latents(tmp_path / "z.safetensors", Latents(z, normalized=True, fps=16, source=source))

    loaded = load_latents(tmp_path / "z.safetensors")

    assert torch.equal(loaded.tensor, z)
    assert loaded.normalized and loaded.fps == 16.0 and dict(loaded.source) == source
    assert (loaded.latent_frames, loaded.frames, loaded.height, loaded.width) == (3, 9, 64, 80)


def test_saved_latents_have_a_files_usual_mode_not_owner_only(tmp_path: Path) -> None:
    """As the video beside them (0666 less the umask): others on the machine can decode them."""
    old = os.umask(0o027)
    try:
        save_latents(tmp_path / "z.safetensors", Latents(torch.zeros(1, 48, 1, 2, 2), True))
    finally:
        os.umask(old)
    assert (tmp_path / "z.safetensors").stat().st_mode & 0o777 == 0o640


def test_unbatched_latents_and_default_fps(tmp_path: Path) -> None:
    path = write(tmp_path / "z.safetensors", {"latents": torch.zeros(48, 31, 44, 80)},
                 {"normalized": "false"})  # fmt: skip

    loaded = load_latents(path)

    assert loaded.tensor.shape == (1, 48, 31, 44, 80)
    assert loaded.fps == 24.0 and not loaded.normalized
    assert (loaded.frames, loaded.height, loaded.width) == (121, 704, 1280)


def test_wan21_latents_say_their_vae_and_geometry(tmp_path: Path) -> None:
    """16-channel latents are the Wan2.1 VAE's (A14B): 8x in space; the file records it."""
    z = torch.randn(1, 16, 21, 90, 160)
    save_latents(tmp_path / "z.safetensors", Latents(z, normalized=True))
    raw = write(tmp_path / "raw.safetensors", {"latents": z}, {"normalized": "true"})

    for path in (tmp_path / "z.safetensors", raw):
        loaded = load_latents(path)
        assert loaded.vae is WAN21_VAE
        assert (loaded.frames, loaded.height, loaded.width) == (81, 720, 1280)


def test_for_decoder_denormalises_only_normalised_latents() -> None:
    z = torch.ones(1, 48, 1, 2, 2)
    mean, std = [float(c) for c in range(48)], [2.0] * 48

    assert torch.equal(Latents(z, normalized=False).for_decoder(mean, std), z)
    out = Latents(z, normalized=True).for_decoder(mean, std)
    assert torch.equal(out[0, :, 0, 0, 0], torch.tensor(mean) + 2.0)


@pytest.mark.parametrize(
    ("tensors", "metadata", "message"),
    [
        ({"x": torch.zeros(1, 48, 2, 2, 2)}, {"normalized": "true"}, "no tensor named 'latents'"),
        ({"latents": torch.zeros(1, 12, 2, 2, 2)}, {"normalized": "true"}, "C in [16, 48]"),
        ({"latents": torch.zeros(2, 48, 2, 2, 2)}, {"normalized": "true"}, "expected (1, C"),
        ({"latents": torch.zeros(48, 2, 2)}, {"normalized": "true"}, "expected (1, C"),
        (
            {"latents": torch.zeros(1, 16, 2, 2, 2)},
            {"normalized": "true", "vae": "wan2.2"},
            "metadata 'vae' is 'wan2.2' but the latents have 16 channels",
        ),
        (
            {"latents": torch.zeros(1, 48, 2, 2, 2)},
            {"normalized": "true", "vae": "sdxl"},
            "metadata 'vae' is 'sdxl'",
        ),
        (
            {"latents": torch.zeros(48, 2, 2, 2, dtype=torch.int32)},
            {"normalized": "true"},
            "dtype torch.int32",
        ),
        ({"latents": torch.full((48, 2, 2, 2), float("nan"))}, {"normalized": "true"}, "NaN"),
        ({"latents": torch.zeros(48, 2, 2, 2)}, {}, "metadata 'normalized' is None"),
        ({"latents": torch.zeros(48, 2, 2, 2)}, {"normalized": "yes"}, "'yes'"),
        (
            {"latents": torch.zeros(48, 2, 2, 2)},
            {"normalized": "true", "fps": "-3"},
            "metadata 'fps'",
        ),
    ],  # fmt: skip
)
def test_bad_files_are_refused_with_the_reason(
    tmp_path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str], message: str
) -> None:
    path = write(tmp_path / "z.safetensors", tensors, metadata)

    with pytest.raises(UsageError) as raised:
        load_latents(path)

    assert message in str(raised.value)


def test_missing_and_unreadable_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not found"):
        load_latents(tmp_path / "absent.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    with pytest.raises(UsageError, match="cannot read"):
        load_latents(garbage)


def test_a_vae_config_of_another_width_is_refused_with_the_fix() -> None:
    z = torch.zeros(1, 48, 2, 3, 4)
    latents = Latents(z, normalized=True, fps=24, source={})
    with pytest.raises(UsageError, match="does not denormalise latents of 48 channels") as error:
        latents.for_decoder([0.0] * 16, [1.0] * 16)
    assert "16 values" in error.value.why and "--vae" in error.value.fix
