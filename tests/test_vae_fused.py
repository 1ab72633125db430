"""The fused norm + SiLU gives the values of diffusers' WanRMS_norm followed by SiLU, at
any size, and `warm_up` compiles every kernel a decode launches."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.autoencoder_kl_wan import WanRMS_norm

from wanctl.decode import fused as fused_module
from wanctl.decode.engine import norm_weight, pixels_last
from wanctl.decode.fused import pixel_runs, rms_norm_silu_into


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


def test_a_kernel_that_cannot_be_built_leaves_the_norm_to_pytorch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As on a machine without a C compiler (Triton's build fails at the first launch): the
    values come from PyTorch, and the reason is kept for the decode's summary."""

    builds = []

    def no_compiler(*_: object) -> None:
        builds.append(1)
        raise FileNotFoundError("[Errno 2] No such file or directory: 'gcc'")

    monkeypatch.setattr(fused_module, "_build_problem", None)
    monkeypatch.setattr(fused_module, "_usable", lambda *_: fused_module._build_problem is None)
    monkeypatch.setattr(fused_module, "_launch", no_compiler)
    norm = a_norm(64)
    x = torch.randn(1, 64, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    assert (fused(norm, x) - reference(norm, x)).abs().max().item() < 1e-6
    problem = fused_module.build_problem()
    assert problem is not None and "(FileNotFoundError" in problem and "C compiler" in problem
    assert (fused(norm, x) - reference(norm, x)).abs().max().item() < 1e-6
    assert len(builds) == 1  # not tried again at every norm


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (Triton)")


def framed(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A channels-last buffer for `x` (B, C, T, H, W) with a border row at both ends of `dim`,
    as `Halo.empty` makes for a split frame, filled with 7s; and its interior."""
    shape = list(x.shape)
    shape[dim] += 2
    buffer = torch.full(shape, 7.0, device=x.device).contiguous(
        memory_format=torch.channels_last_3d
    )
    return buffer, buffer.narrow(dim, 1, x.shape[dim])


@pytest.mark.parametrize(("dim", "runs"), [(-2, (5 * 7, 7 * 7)), (-1, (7, 9))])
def test_a_framed_interior_is_runs_of_pixels(dim: int, runs: tuple[int, int]) -> None:
    """Split by rows: a frame's rows in one run, frames apart by the framed frame; by columns:
    each row's pixels, rows apart by the framed row. The frames before the stream's new ones
    (`[:, :, 2:]`) do not break the runs."""
    _, interior = framed(torch.empty(1, 64, 5, 5, 7), dim)
    assert pixel_runs(pixels_last(interior[:, :, 2:])) == runs
    assert pixel_runs(torch.empty(6, 64)) == (6, 6)
    assert pixel_runs(torch.empty(4, 6, 64).transpose(0, 1)) is None


@pytest.mark.parametrize("dim", [-2, -1])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=cuda)])
def test_norm_into_a_framed_interior_writes_the_interior_alone(dim: int, device: str) -> None:
    norm = a_norm(64, device)
    x = torch.randn(1, 64, 3, 5, 7, device=device).contiguous(memory_format=torch.channels_last_3d)
    buffer, interior = framed(x, dim)
    weight, eps = norm_weight(norm, x.dtype)
    rms_norm_silu_into(pixels_last(x), weight, eps, pixels_last(interior))
    torch.testing.assert_close(interior, fused(norm, x), atol=1e-5, rtol=1e-5)
    interior.fill_(7.0)
    assert (buffer == 7.0).all()


@cuda
@pytest.mark.parametrize("channels", [192, 256, 512, 1024])
def test_cuda_kernel_matches_in_bf16(channels: int) -> None:
    norm = a_norm(channels, "cuda").to(torch.bfloat16)
    x = torch.randn(1, channels, 2, 33, 40, device="cuda", dtype=torch.bfloat16)
    bias = torch.randn(channels, device="cuda", dtype=torch.bfloat16)
    pixels, (weight, eps) = pixels_last(x), norm_weight(norm, x.dtype)
    eager = F.silu(F.rms_norm(pixels.float() + bias.float(), (channels,), weight.float(), eps=eps))
    got = pixels_last(fused(norm, x, bias)).float()  # Triton: float32 inside, rounded once
    torch.testing.assert_close(got, eager, atol=1e-2, rtol=1e-2)


@cuda
def test_past_two_to_the_31_elements_the_offsets_do_not_wrap() -> None:
    """The size the 1280x704 decode reaches at chunk_t 10: 32-bit offsets wrapped there."""
    channels = 1024
    rows = 2**31 // channels + 4096
    if torch.cuda.mem_get_info()[0] < 3 * rows * channels * 2:
        pytest.skip("needs about 13 GiB of free GPU memory")
    pixels = torch.randn(rows, channels, device="cuda", dtype=torch.bfloat16)
    out = torch.empty_like(pixels)
    weight = torch.rand(channels, device="cuda", dtype=torch.bfloat16) + 0.5
    rms_norm_silu_into(pixels, weight, 1e-6, out)
    tail = slice(rows - 8192, rows)  # rows past element 2**31
    eager = F.silu(F.rms_norm(pixels[tail].float(), (channels,), weight.float(), eps=1e-6))
    torch.testing.assert_close(out[tail].float(), eager, atol=1e-2, rtol=1e-2)


WARM_UP_THEN_DECODE = """
import json, os, torch
from pathlib import Path
from wanctl.decode.engine import decode_chunks, warm_up
from wanctl.decode.load import TI2V_5B_CONFIG, random_vae

def compiled():
    return len(list(Path(os.environ["TRITON_CACHE_DIR"]).iterdir()))

config = {**TI2V_5B_CONFIG, "base_dim": 64, "decoder_base_dim": 128}  # channels 128 to 512
vae = random_vae(config).to("cuda", torch.bfloat16)
seconds = warm_up(vae)
after_warm_up = compiled()
for _ in decode_chunks(vae, torch.randn(1, 48, 4, 4, 6), chunk_t=2):
    pass
torch.cuda.synchronize()
print(json.dumps({"seconds": seconds, "after_warm_up": after_warm_up, "after_decode": compiled()}))
"""


@cuda
def test_warm_up_compiles_what_the_decode_launches(tmp_path: Path) -> None:
    """In a fresh process and an empty Triton cache, nothing is compiled after `warm_up` (one
    kernel per block of channels: 256 for the norms of 256 and 512 channels, 128 for those of
    128, with and without a bias); a second process finds them in the cache."""
    env = {**os.environ, "TRITON_CACHE_DIR": str(tmp_path)}

    def run() -> dict[str, float]:
        command = [sys.executable, "-c", WARM_UP_THEN_DECODE]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        return json.loads(done.stdout.splitlines()[-1])

    cold, warm = run(), run()
    assert cold["seconds"] > 0 and cold["after_warm_up"] > 0
    assert cold["after_decode"] == cold["after_warm_up"]
    assert warm["after_warm_up"] == warm["after_decode"] == cold["after_decode"]


DECODE_WITHOUT_A_BUILD = """
import torch
from wanctl.decode.engine import decode_chunks, warm_up
from wanctl.decode.fused import build_problem
from wanctl.decode.load import TI2V_5B_CONFIG, random_vae

torch.manual_seed(0)
config = {**TI2V_5B_CONFIG, "base_dim": 64, "decoder_base_dim": 128}
vae = random_vae(config).to("cuda", torch.bfloat16)
warm_up(vae)
video = torch.cat(list(decode_chunks(vae, torch.randn(1, 48, 3, 4, 6), chunk_t=2)), dim=2)
print("frames", video.shape[2], "finite", bool(video.isfinite().all()))
print(build_problem())
"""


@cuda
def test_a_kernel_triton_cannot_build_leaves_the_decode_to_pytorch(tmp_path: Path) -> None:
    """No C compiler and no writable cache: Triton cannot build; the decode runs eagerly and
    says why."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = {**os.environ, "CC": str(tmp_path / "no-cc"), "TRITON_CACHE_DIR": str(blocker / "x")}
    command = [sys.executable, "-c", DECODE_WITHOUT_A_BUILD]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    assert "frames 9 finite True" in done.stdout
    assert "could not be built" in done.stdout and "C compiler" in done.stdout
