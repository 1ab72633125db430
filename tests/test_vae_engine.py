"""The chunked decode equals diffusers' own (one latent frame per call) decode, in float32, on
the tiny configs of the Wan2.2 and the Wan2.1 VAE; and the streaming writers put those frames in
the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from wanctl.core.launch import partial_path
from wanctl.decode.engine import CausalCache, ChunkDecoder, decode_chunks, latent_chunks
from wanctl.decode.load import load_vae
from wanctl.decode.modules import WanVaeDecoder, as_diffusers
from wanctl.decode.stream import decode_tiled_to_file, decode_to_file
from wanctl.decode.writers import NpyWriter, to_uint8

T = 5


@pytest.fixture(scope="module")
def vae() -> WanVaeDecoder:
    return load_vae("tiny")


@pytest.fixture(scope="module")
def z() -> torch.Tensor:
    return torch.randn(1, 48, T, 5, 7, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("chunk_t", [1, 2, 3, T])
def test_wan21_chunked_decode_equals_diffusers(chunk_t: int) -> None:
    """The Wan2.1 VAE (A14B): 16 channels, 8x in space, plain up blocks, no patchify."""
    vae = load_vae("tiny-wan2.1")
    z = torch.randn(1, 16, T, 5, 7, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        reference = as_diffusers(vae).decode(z).sample

    video = torch.cat(list(decode_chunks(vae, z, chunk_t=chunk_t)), dim=2)

    assert video.shape == (1, 3, 4 * (T - 1) + 1, 40, 56) == reference.shape
    assert (video - reference).abs().max().item() <= 1e-5
    assert reference.std().item() > 0.1


@pytest.fixture(scope="module")
def reference(vae: WanVaeDecoder, z: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return as_diffusers(vae).decode(z).sample


def test_latent_chunks_put_the_first_frame_alone() -> None:
    assert latent_chunks(5, 1) == [slice(0, 1), slice(1, 2), slice(2, 3), slice(3, 4), slice(4, 5)]
    assert latent_chunks(5, 3) == [slice(0, 1), slice(1, 4), slice(4, 5)]
    assert latent_chunks(1, 4) == [slice(0, 1)]
    with pytest.raises(ValueError):
        latent_chunks(5, 0)


@pytest.mark.parametrize("chunk_t", [1, 2, 3, T])
def test_chunked_decode_equals_diffusers(
    vae: WanVaeDecoder, z: torch.Tensor, reference: torch.Tensor, chunk_t: int
) -> None:
    chunks = list(decode_chunks(vae, z, chunk_t=chunk_t))

    sizes = [c.shape[2] for c in chunks]
    assert sizes[0] == 1 and all(s == 4 * chunk_t for s in sizes[1:-1])
    video = torch.cat(chunks, dim=2)
    assert video.shape == (1, 3, 4 * (T - 1) + 1, 80, 112) == reference.shape
    assert (video - reference).abs().max().item() <= 1e-5
    assert reference.std().item() > 0.1  # random weights, yet a picture that is not all clamped


def test_the_first_chunk_must_be_one_latent_frame(vae: WanVaeDecoder, z: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="first latent frame alone"):
        ChunkDecoder(vae).decode(z[:, :, :2], CausalCache())


def test_decode_to_npy_streams_the_uint8_video(
    tmp_path: Path, vae: WanVaeDecoder, z: torch.Tensor, reference: torch.Tensor
) -> None:
    done: list[int] = []
    result = decode_to_file(vae, z, tmp_path / "v.npy", fps=24, chunk_t=2, on_frames=done.append)

    video = np.load(tmp_path / "v.npy")
    assert result.frames == 17 and done == [1, 8, 8]
    assert video.dtype == np.uint8 and video.shape == (17, 80, 112, 3)
    assert np.abs(video.astype(int) - to_uint8(reference).astype(int)).max() <= 1
    assert not partial_path(tmp_path / "v.npy").exists()


def test_tiled_fallback_decodes_every_frame(tmp_path: Path) -> None:
    vae = load_vae("tiny")
    z = torch.randn(1, 48, 2, 20, 20, generator=torch.Generator().manual_seed(1))  # 2 tiles a side

    decode_tiled_to_file(vae, z, tmp_path / "v.npy", fps=24)

    assert np.load(tmp_path / "v.npy").shape == (5, 320, 320, 3)


def test_to_uint8_rounds_and_clamps() -> None:
    pixels = torch.tensor([-2.0, -1.0, 0.0, 0.5, 1.0]).view(1, 1, 1, 1, 5).expand(1, 3, 1, 1, 5)

    assert to_uint8(pixels)[0, 0, :, 0].tolist() == [0, 0, 128, 191, 255]


def test_a_writer_that_fails_leaves_no_output(tmp_path: Path) -> None:
    output = tmp_path / "v.npy"
    writer = NpyWriter(output, frames=5, height=16, width=16)
    writer.write(np.zeros((1, 16, 16, 3), np.uint8))

    with pytest.raises(ValueError, match="1 frames written, 5 announced"):
        writer.close()
    assert not output.exists() and not partial_path(output).exists()

    NpyWriter(output, frames=5, height=16, width=16).abort()
    assert not output.exists() and not partial_path(output).exists()
