"""The fused norm + SiLU gives the values of diffusers' WanRMS_norm followed by SiLU."""

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.autoencoder_kl_wan import WanRMS_norm

from wanctl.vae.engine import norm_weight, pixels_last
from wanctl.vae.fused import rms_norm_silu_into


def reference(norm: WanRMS_norm, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return F.silu(norm(x))


def fused(norm: WanRMS_norm, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    x = x.contiguous(memory_format=torch.channels_last_3d)
    out = torch.empty_like(x)
    weight, eps = norm_weight(norm, x.dtype)
    rms_norm_silu_into(pixels_last(x), weight, eps, pixels_last(out), bias)
    return out


def a_norm(channels: int, device: str = "cpu") -> WanRMS_norm:
    norm = WanRMS_norm(channels, images=False).to(device)
    with torch.no_grad():
        norm.gamma.uniform_(0.5, 1.5, generator=torch.Generator(device).manual_seed(1))
    return norm


def test_float32_matches_wan_rms_norm_then_silu() -> None:
    norm = a_norm(64)
    x = torch.randn(1, 64, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    assert (fused(norm, x) - reference(norm, x)).abs().max().item() < 1e-6


def test_the_producers_bias_is_added_before_the_norm() -> None:
    norm = a_norm(64)
    x = torch.randn(1, 64, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    bias = torch.randn(64, generator=torch.Generator().manual_seed(2))
    expected = reference(norm, x + bias.view(64, 1, 1, 1))
    x = x.contiguous(memory_format=torch.channels_last_3d)
    out = torch.empty_like(x)
    weight, eps = norm_weight(norm, x.dtype)
    rms_norm_silu_into(pixels_last(x), weight, eps, pixels_last(out), bias)
    assert (out - expected).abs().max().item() < 1e-6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (Triton kernel)")
@pytest.mark.parametrize("channels", [256, 512, 1024])
def test_cuda_kernel_matches_in_bf16(channels: int) -> None:
    norm = a_norm(channels, "cuda").to(torch.bfloat16)
    x = torch.randn(1, channels, 2, 33, 40, device="cuda", dtype=torch.bfloat16)
    bias = torch.randn(channels, device="cuda", dtype=torch.bfloat16)
    pixels, (weight, eps) = pixels_last(x), norm_weight(norm, x.dtype)
    eager = F.silu(F.rms_norm(pixels.float() + bias.float(), (channels,), weight.float(), eps=eps))
    got = pixels_last(fused(norm, x, bias)).float()  # Triton: float32 inside, rounded once
    torch.testing.assert_close(got, eager, atol=1e-2, rtol=1e-2)
