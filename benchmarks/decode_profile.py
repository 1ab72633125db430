"""Where a wanctl decode chunk spends its GPU time, and what layout choices buy.

    python benchmarks/decode_profile.py --size 1280*704

Prints (1) the top CUDA kernels of one steady-state chunk (one latent frame) of the synthetic
Wan2.2 VAE, grouped by op, and (2) the largest spatial convolutions of the decoder timed in
bf16 with contiguous (NCDHW) against channels-last inputs.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from wanctl.decode.engine import CausalCache, ChunkDecoder
from wanctl.decode.load import load_vae


def timed(work, repeats: int = 5) -> float:
    work()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        work()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats * 1000


def profile_chunk(height: int, width: int) -> None:
    vae = load_vae("synthetic", device="cuda", dtype=torch.bfloat16)
    decoder, cache = ChunkDecoder(vae), CausalCache()
    z = torch.randn(1, 48, 4, height // 16, width // 16, device="cuda", dtype=torch.bfloat16)
    decoder.decode(z[:, :, :1], cache)
    decoder.decode(z[:, :, 1:2], cache)
    torch.cuda.synchronize()
    print(f"steady chunk: {timed(lambda: decoder.decode(z[:, :, 2:3], cache), 3):.1f} ms")
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities, record_shapes=True) as prof:
        decoder.decode(z[:, :, 3:4], cache)
        torch.cuda.synchronize()
    table = prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cuda_time_total",
        row_limit=30,
        max_name_column_width=40,
        max_shapes_column_width=60,
    )
    print(table)


def conv_layouts(height: int, width: int) -> None:
    cases = [  # (channels in, out, frames, h, w) of the decoder's heaviest convs
        (1024, 1024, 1, height // 16, width // 16),
        (1024, 1024, 2, height // 8, width // 8),
        (512, 512, 4, height // 4, width // 4),
        (256, 256, 4, height // 2, width // 2),
    ]
    print("conv3d 3x3x3 bf16, ms: contiguous / channels_last_3d")
    for cin, cout, t, h, w in cases:
        weight = torch.randn(cout, cin, 3, 3, 3, device="cuda", dtype=torch.bfloat16)
        x = torch.randn(1, cin, t + 2, h + 2, w + 2, device="cuda", dtype=torch.bfloat16)
        x_cl, w_cl = (
            x.to(memory_format=torch.channels_last_3d),
            weight.to(memory_format=torch.channels_last_3d),
        )
        flops = 2 * cin * cout * 27 * t * h * w
        plain = timed(lambda x=x, weight=weight: F.conv3d(x, weight))
        last = timed(lambda x_cl=x_cl, w_cl=w_cl: F.conv3d(x_cl, w_cl))
        print(
            f"{cin}->{cout} t{t} {h}x{w}: {plain:.2f} / {last:.2f}  "
            f"({flops / plain / 1e9:.0f} / {flops / last / 1e9:.0f} TFLOP/s)"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="1280*704")
    args = parser.parse_args()
    width, height = map(int, args.size.split("*"))
    torch.backends.cudnn.benchmark = False
    conv_layouts(height, width)
    profile_chunk(height, width)


if __name__ == "__main__":
    main()
