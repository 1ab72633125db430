"""`wanctl decode`: options in, a `DecodeSummary` out, rendered as a table or JSON.

The decode library (torch, diffusers) is imported when the command runs, not when the CLI
starts: `wanctl --help` and `wanctl doctor` must not pay for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from wanctl.commands.options import Json, Overwrite
from wanctl.render import err_console, out_console, print_json, warmup_worth_showing

if TYPE_CHECKING:
    from wanctl.decode.run import DecodeSummary


def decode(
    latents: Annotated[
        Path, typer.Argument(help="Latents file: safetensors with a 'latents' tensor.")
    ],
    output: Annotated[
        Path,
        typer.Option(
            "-o", "--output", help="Video to write: .mp4 (H.264) or .npy (uint8, lossless)."
        ),
    ],
    vae: Annotated[
        str,
        typer.Option(
            help="The VAE of the model that made the latents: a diffusers folder "
            "(…/Wan2.2-TI2V-5B-Diffusers/vae, …/Wan2.2-T2V-A14B-Diffusers/vae), "
            "Wan2.2_VAE.pth or Wan2.1_VAE.pth; or random weights: 'synthetic', "
            "'synthetic-wan2.1' (benchmarks), 'tiny', 'tiny-wan2.1' (run anywhere)."
        ),
    ],
    device: Annotated[
        str | None, typer.Option(help="cuda or cpu. Default: cuda when present.")
    ] = None,
    dtype: Annotated[
        str | None, typer.Option(help="bf16, fp16 or fp32. Default: bf16 on GPU, fp32 on CPU.")
    ] = None,
    chunk_t: Annotated[
        int | None,
        typer.Option(
            "--chunk-t",
            min=1,
            help="Latent frames per decoder call. Default: $WAN_VAE_DECODE_CHUNK_T, else 1 "
            "on the CPU or one or two GPUs and ranks // 2 beyond (a thin slab per call leaves "
            "the GPU waiting on kernel launches).",
        ),
    ] = None,
    gpus: Annotated[
        int | None,
        typer.Option(
            min=1, help="Ranks to split each frame over (torchrun). Default: all visible GPUs."
        ),
    ] = None,
    overwrite: Overwrite = False,
    json: Json = False,
) -> None:
    """Decode latents to a video: exact (frame for frame what diffusers' decode gives), streamed
    to the file as it decodes, each frame split over every GPU. Out of GPU memory, it tries more
    GPUs, chunk_t=1, diffusers tiling (approximate), then the CPU."""
    from wanctl.decode.run import DecodeOptions, run_decode

    options = DecodeOptions(latents, output, vae, device, dtype, chunk_t, gpus,
                            overwrite=overwrite)  # fmt: skip
    summary = run_decode(options, notify=lambda line: err_console().print(f"[yellow]{line}[/]"))
    if json:
        print_json(summary)
    else:
        render(summary, out_console())


def render(summary: DecodeSummary, console: Console) -> None:
    plan = summary.plan
    table = Table(title=f"decoded {summary.output}", title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("video", f"{summary.frames} frames, {summary.width}x{summary.height}, "
                  f"{summary.fps:g} fps")  # fmt: skip
    table.add_row("decode", f"{summary.seconds:.1f} s ({summary.total_seconds:.1f} s in all)")
    if summary.timeline is not None:
        table.add_row("where the time went", summary.timeline.describe())
    if warmup_worth_showing(summary.warmup_seconds):
        warmup = f"{summary.warmup_seconds:.1f} s before the decode"
        how = "Triton kernel compiled on a machine's first decode, then loaded from its cache"
        table.add_row("kernel warm-up", f"{warmup} ({how})")
    table.add_row("how", plan.describe())
    if summary.kernel_problem:
        table.add_row("note", Text(summary.kernel_problem, "yellow"))
    if not summary.exact:
        table.add_row("exact", "[yellow]no: diffusers tiling blends tiles at their seams[/]")
    if plan.step != "as asked":
        table.add_row("fallback", f"[yellow]succeeded at '{plan.step}' after out of memory[/]")
    peaks = [
        f"{a:.2f} / {r:.2f}"
        for a, r in zip(summary.peak_allocated_gib, summary.peak_reserved_gib, strict=True)
        if a is not None and r is not None
    ]
    if peaks:
        table.add_row("peak GiB per rank (alloc / reserved)", ", ".join(peaks))
    console.print(table)
