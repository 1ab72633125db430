"""`wanctl generate`: options in, a launch plan (`--dry-run`) or a `GenerateSummary` out,
rendered as tables or JSON. torch is imported by the workers, never here."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from wanctl.commands.options import (
    Backend,
    BackendOption,
    CfgParallel,
    ChunkT,
    Compile,
    DecodeDtypeOption,
    DecodeRanks,
    DitOption,
    DitPrecisionOption,
    DitStorageOption,
    Json,
    Offload,
    Overwrite,
    TextEncoder,
    option_value,
)
from wanctl.errors import UsageError
from wanctl.generate.options import GenerateOptions
from wanctl.generate.plan import GeneratePlan, GenerateSummary
from wanctl.generate.run import prepare, run_generate
from wanctl.models.attention import AttentionChoice
from wanctl.probe.local import LocalProbe
from wanctl.render import err_console, out_console, print_json, warmup_worth_showing


class Model(str, Enum):
    tiny = "tiny"
    synthetic_5b = "synthetic-5b"
    tiny_moe = "tiny-moe"
    synthetic_a14b = "synthetic-a14b"


class Device(str, Enum):
    cuda = "cuda"
    cpu = "cpu"


def generate(
    prompt: Annotated[str, typer.Option(help="What the video shows.")],
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Video to write: .mp4 (H.264) or .npy.")
    ],
    size: Annotated[
        str | None,
        typer.Option(
            help="WIDTH*HEIGHT: multiples of 32 (TI2V-5B) or 16 (A14B); default: the model's "
            "(1280*704; A14B 1280*720)."
        ),
    ] = None,
    frames: Annotated[
        int | None,
        typer.Option(min=1, help="Frames, 4n+1; default: the model's (121; A14B 81)."),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option(min=1, help="Denoising steps; default: the model's (50; A14B 40)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="The same seed gives the same video.")] = 42,
    gpus: Annotated[
        int | None,
        typer.Option(min=1, help="Ranks on this node (the Ulysses degree); default: all GPUs."),
    ] = None,
    model: Annotated[
        Model | None,
        typer.Option(
            help="A built-in model, random weights: tiny or tiny-moe (two experts) run "
            "anywhere; synthetic-5b and synthetic-a14b time the real architectures on GPUs. "
            "The two-expert ones are T2V-A14B, or I2V-A14B with --image."
        ),
    ] = None,
    ckpt_dir: Annotated[
        Path | None,
        typer.Option(
            help="Checkpoint: Wan2.2-TI2V-5B-Diffusers, Wan2.2-T2V-A14B-Diffusers or "
            "Wan2.2-I2V-A14B-Diffusers (diffusers); Wan2.2-TI2V-5B (wan-repo)."
        ),  # fmt: skip
    ] = None,
    backend: BackendOption = Backend.diffusers,
    wan_repo: Annotated[
        Path | None, typer.Option(help="A clone of Wan-Video/Wan2.2 (--backend wan-repo).")
    ] = None,
    image: Annotated[
        Path | None,
        typer.Option(help="An image to start from (TI2V-5B: the first frame; I2V-A14B)."),
    ] = None,
    negative_prompt: Annotated[
        str | None, typer.Option(help="What to avoid; default: Wan's own negative prompt.")
    ] = None,
    guidance: Annotated[
        float | None,
        typer.Option(
            help="Classifier-free guidance scale (A14B: the high-noise expert's; wan-repo: "
            "both experts'); default: the model's (5; T2V-A14B 4, I2V-A14B 3.5)."
        ),
    ] = None,
    guidance_2: Annotated[
        float | None,
        typer.Option(
            "--guidance-2",
            help="The low-noise expert's scale (A14B); default: the model's (T2V 3, I2V 3.5).",
        ),
    ] = None,
    device: Annotated[
        Device | None, typer.Option(help="cuda or cpu; default: cuda when a GPU is visible.")
    ] = None,
    nnodes: Annotated[int | None, typer.Option(min=1, help="Nodes (torchrun --nnodes).")] = None,
    rdzv_endpoint: Annotated[
        str | None, typer.Option(help="HOST:PORT of the rendezvous (torchrun).")
    ] = None,
    chunk_t: ChunkT = None,
    decode_ranks: DecodeRanks = None,
    decode_dtype: DecodeDtypeOption = None,
    text_encoder: TextEncoder = None,
    offload: Offload = None,
    dit: DitOption = None,
    dit_storage: DitStorageOption = None,
    cfg_parallel: CfgParallel = None,
    dit_precision: DitPrecisionOption = None,
    compiled: Compile = None,
    env: Annotated[
        list[str] | None,
        typer.Option(help="KEY=VALUE for the workers, over the preset's (repeatable)."),
    ] = None,
    skip_preflight: Annotated[
        bool, typer.Option("--skip-preflight", help="Launch even when doctor's checks fail.")
    ] = False,
    timeout: Annotated[
        float | None, typer.Option(min=1, help="Stop the run after this many seconds.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the command and environment; run nothing.")
    ] = False,
    overwrite: Overwrite = False,
    json: Json = False,
) -> None:
    """Generate a video from a prompt on N GPUs: the rig's preset (or tune's plan), a doctor
    preflight, torchrun with Ulysses sampling, the latents saved before the decode, the decode
    split over every GPU. If the decode fails, the latents stay and the error gives the
    `wanctl decode` command that finishes the job."""
    options = GenerateOptions(
        prompt=prompt, output=output, size=size or "", frames=frames or 0, steps=steps or 0,
        seed=seed, guidance_2=guidance_2,
        gpus=gpus, backend=backend.value, model=model.value if model else None,
        ckpt_dir=ckpt_dir, wan_repo=wan_repo, image=image, negative_prompt=negative_prompt,
        guidance=guidance, device=device.value if device else None, nnodes=nnodes,
        rdzv_endpoint=rdzv_endpoint, chunk_t=chunk_t, decode_ranks=decode_ranks,
        decode_dtype=option_value(decode_dtype), text_encoder=option_value(text_encoder),
        offload=offload, dit=option_value(dit), dit_storage=option_value(dit_storage),
        cfg_parallel=cfg_parallel, dit_precision=option_value(dit_precision), compile=compiled,
        env=parse_env(env or []),
        preflight=not skip_preflight, timeout_s=timeout, json_stdout=json, overwrite=overwrite,
    )  # fmt: skip
    plan = prepare(options, probe=LocalProbe())
    if dry_run:
        if json:
            print_json(dry_run_document(plan))
        else:
            render_plan(plan, out_console())
        return
    render_plan(plan, err_console())
    summary = run_generate(plan, notify=lambda line: err_console().print(f"[yellow]{line}[/]"))
    if json:
        print_json(summary)
    else:
        render_summary(summary, out_console())


def parse_env(pairs: list[str]) -> tuple[tuple[str, str], ...]:
    """`KEY=VALUE` strings -> pairs."""
    parsed = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(
                f"--env {pair!r} is not KEY=VALUE", fix="e.g. --env NCCL_P2P_DISABLE=1"
            )
        parsed.append((key.strip(), value))
    return tuple(parsed)


def dry_run_document(plan: GeneratePlan) -> dict[str, object]:
    predicted = plan.predicted
    return {
        "command": plan.spec.command_line(),
        "argv": list(plan.spec.argv),
        "env": plan.env,
        "kept_env": plan.kept_env,
        "device": plan.device,
        "ranks": plan.world,
        "settings": plan.settings,
        "source": plan.source,
        "overridden": list(plan.overridden),
        "output": plan.paths.output,
        "latents": plan.paths.latents,
        "decode_command": plan.decode_command,
        "predicted_peak_gib": {p.name: round(p.total_gib, 2) for p in predicted.phases}
        if predicted
        else None,
        "host_ram_gib": {"per_rank": round(plan.host.per_rank_gib, 2),
                         "total": round(plan.host.total_gib, 2),
                         "parts": dict(plan.host.parts)} if plan.host else None,
        "notes": list(plan.notes),
    }  # fmt: skip


def render_plan(plan: GeneratePlan, console: Console) -> None:
    settings = plan.settings
    table = Table(title="generate", title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    overridden = f" (set here: {', '.join(plan.overridden)})" if plan.overridden else ""
    table.add_row("run", f"{plan.world} rank(s) on {plan.device}, {plan.options.backend}, "
                  f"{plan.options.family.name}")  # fmt: skip
    table.add_row("settings", f"{plan.source}{overridden}")
    table.add_row(
        "decode",
        f"{settings.decode_ranks} rank(s), chunk_t {settings.chunk_t}, {settings.decode_dtype}",
    )
    table.add_row("text encoder / DiT", f"{settings.text_encoder} / {settings.dit}")
    table.add_row("layout", settings.layout(plan.world))
    if plan.predicted:
        peaks = ", ".join(f"{p.name} {p.total_gib:.1f}" for p in plan.predicted.phases)
        table.add_row("predicted peak GiB", peaks)
    if plan.host:
        table.add_row("host RAM GiB", plan.host.describe())
    table.add_row("latents", str(plan.paths.latents))
    for note in plan.notes:
        table.add_row("note", note)
    console.print(table)
    console.print(plan.spec.command_line(), markup=False, highlight=False, soft_wrap=True)


def render_summary(summary: GenerateSummary, console: Console) -> None:
    table = Table(title=f"generated {summary.output}", title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("video", f"{summary.frames} frames, {summary.width}x{summary.height}, "
                  f"{summary.fps:g} fps; latents {summary.latents}")  # fmt: skip
    table.add_row("run", f"{summary.ranks} rank(s) on {summary.device}, {summary.backend}, "
                  f"{summary.model} ({summary.family}); settings: {summary.source}")  # fmt: skip
    layout = summary.layout
    if summary.guidance_passes:
        layout += f" ({', '.join(map(str, summary.guidance_passes))} DiT passes per rank)"
    table.add_row("layout", layout)
    if summary.encoded_on and summary.ranks > 1:
        encoders = ", ".join(map(str, summary.encoded_on))
        table.add_row("prompt", f"encoded on rank {encoders}, broadcast to the others")
    if summary.expert_steps:
        table.add_row("experts", f"steps {summary.expert_steps}")
    if summary.seconds_per_step is not None:
        predicted = summary.predicted_step_s
        table.add_row(
            "s/step",
            f"{summary.seconds_per_step:.2f} measured (first {summary.first_step_s:.2f})"
            + (f", {predicted:.2f} predicted" if predicted is not None else ""),
        )
    warmup = summary.decode_warmup_s if warmup_worth_showing(summary.decode_warmup_s) else None
    phases = (("text encode", summary.text_encode_s), ("load", summary.load_s),
              ("sampling", summary.sampling_s), ("of it expert swap", summary.expert_swap_s),
              ("decode warm-up", warmup),
              ("decode", summary.decode_s))  # fmt: skip
    shown = ", ".join(f"{name} {s:.1f}" for name, s in phases if s is not None)
    table.add_row("seconds", f"{shown}; total {summary.total_s:.1f}")
    if summary.timeline is not None:
        table.add_row("where the time went", summary.timeline.describe())
    if summary.compile is not None:
        table.add_row("DiT", dit_line(summary))
    for figures in summary.per_rank:
        peaks = [
            f"{phase} {allocated:.2f}/{figures.peak_reserved_gib.get(phase) or 0:.2f}"
            for phase, allocated in figures.peak_allocated_gib.items()
            if allocated is not None
        ]
        if figures.host_rss_gib is not None:
            peaks.append(f"host RSS {figures.host_rss_gib:.2f}")
        if peaks:
            table.add_row(f"rank {figures.rank} peak GiB (alloc/res)", ", ".join(peaks))
    if summary.attention is not None:
        table.add_row("attention", attention_line(summary.attention))
    for note in summary.notes:
        table.add_row("note", note)
    console.print(table)
    if summary.memory:
        console.print(memory_table(summary))


def dit_line(summary: GenerateSummary) -> str:
    """How the DiT ran: compiled (its first forward, which compiled or read Inductor's cache)
    or eager and why, and in which precision."""
    report = summary.compile or {}
    precision = "bf16" if summary.device == "cuda" else "float32"
    if summary.settings.dit_precision == "fp8":
        precision = "linear layers in fp8"
    if report.get("compiled"):
        first = report.get("first_forward_s")
        when = f" (first forward {first:.1f} s, compiling or reading the cache)" if first else ""
        pieces = "" if report.get("whole_blocks") else f"; in pieces ({report.get('reason')})"
        return f"compiled{when}, {precision}{pieces}"
    return f"eager ({report.get('reason')}), {precision}"


def memory_table(summary: GenerateSummary) -> Table:
    """Each phase on each rank: the memory model's peak against the measured one."""
    table = Table(title="memory model: predicted / measured peak GiB (error)", title_justify="left")
    for column in ("phase", "rank", "allocated", "error", "reserved", "error"):
        table.add_column(column, justify="right")
    for check in summary.memory:
        table.add_row(
            check.phase, str(check.rank),
            f"{check.predicted_allocated_gib:.2f} / {check.measured_allocated_gib:.2f}",
            f"{check.allocated_error:+.1%}",
            f"{check.predicted_reserved_gib:.2f} / {check.measured_reserved_gib:.2f}",
            f"{check.reserved_error:+.1%}",
        )  # fmt: skip
    return table


def attention_line(choice: AttentionChoice) -> str:
    """The backend chosen, then each candidate's ms per self-attention call at the shape one
    rank runs (or why it did not hold)."""
    shape = f"{choice.heads} heads x {choice.tokens} tokens per rank"
    if choice.note:
        return f"{choice.backend} ({choice.note})"
    cells = [
        f"{t.name} {t.ms:.2f}" if t.ok and t.ms is not None
        else f"{t.name} failed ({t.error})"
        for t in choice.timings
    ]  # fmt: skip
    way = "compiled" if choice.compiled else "eager"
    timed = ", timed on an earlier run here" if choice.cached else ""
    return f"{choice.backend}; ms/call ({way}{timed}) at {shape}: {', '.join(cells)}"
