"""Every peak the memory model is fitted from, with its provenance: what was measured, where,
with which versions, when and how. `benchmarks/memory_model.py` prints new rows in this form."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from wanctl.core.families import FAMILIES, Family
from wanctl.core.settings import Settings
from wanctl.core.workload import Workload


@dataclass(frozen=True)
class Measurement:
    """One measured (or traced) peak. `weights_gib` is what the measured process held in
    weights, subtracted to get the activations. `ranks` is the Ulysses degree for sampling and
    the decode ranks for decode."""

    phase: str  # "text_encode" | "sampling" | "decode" | "context" | "nccl"
    width: int
    height: int
    frames: int
    ranks: int
    chunk_t: int
    dtype: str
    expandable: bool
    allocated_gib: float
    reserved_gib: float | None
    weights_gib: float
    method: str  # "cuda" | "trace" | "estimate"
    device: str
    versions: str
    date: str
    source: str
    decoder: str = "diffusers"  # decode rows: "diffusers" (AutoencoderKLWan) or "wanctl"
    # A row kept to judge the fit on a size it never saw: `fit` leaves it out.
    held_out: bool = False
    model: str = "ti2v-5B"  # the family run (`wanctl.core.families`): its DiT and its VAE
    # Where the DiTs were (`Settings`): replicated or fsdp, bf16 or fp8, the idle expert
    # offloaded; the weights column already counts what they hold.
    placement: str = ""

    @property
    def family(self) -> Family:
        return FAMILIES[self.model]

    def run(self) -> tuple[Workload, Settings]:
        """The run this row measured, as the model prices it: its size and model on its ranks,
        decoding on all of them at its chunk_t, dtype, decoder and allocator setting, the DiTs
        where `placement` says ("replicated bf16", "replicated fp8 offload", "fsdp bf16")."""
        family = self.family
        workload = Workload(self.width, self.height, self.frames, self.ranks,
                            image=family.image == "required", family=family)  # fmt: skip
        dit, storage, *offload = (self.placement or "replicated bf16").split()
        settings = Settings(
            chunk_t=max(1, self.chunk_t), decode_ranks=self.ranks, decode_dtype=self.dtype,
            expandable_segments=self.expandable, decoder=self.decoder, dit=dit,
            dit_storage=storage, offload=offload == ["offload"],
        )  # fmt: skip
        return workload, settings


def placement_of(settings: Settings) -> str:
    """A run's DiT placement as a row records it (`Measurement.placement`)."""
    return f"{settings.dit} {settings.dit_storage}" + (" offload" if settings.offload else "")


# The columns of a run's rows (`measured_run`): phase, width, height, frames, ranks, chunk_t,
# dtype, expandable segments, decoder, allocated GiB, reserved GiB (None for a trace), weights
# GiB; then, where given, `held_out` and the placement.
Row = tuple[Any, ...]


def measured_run(
    device: str,
    versions: str,
    date: str,
    rows: Iterable[Row],
    *,
    method: str = "cuda",
    source: str = "benchmarks/memory_model.py",
    context_gib: float | None = None,
    context_after_gib: float | None = None,
    model: str = "ti2v-5B",
) -> tuple[Measurement, ...]:
    """The rows of one run of `benchmarks/memory_model.py`, as it prints them, with the run's
    device, versions, date and model on each; the CUDA context measured after initialisation
    and, where the run printed it, after the phases ran (once their kernels are loaded)."""
    contexts = [
        Measurement("context", 0, 0, 0, 1, 0, "bf16", False, gib, None, 0.0, method, device,
                    versions, date, f"{source}: torch.cuda.mem_get_info() {when}")
        for gib, when in ((context_gib, "after initialisation"),
                          (context_after_gib, "after the phases ran (their kernels loaded)"))
        if gib is not None
    ]  # fmt: skip
    return (
        *contexts,
        *(
            Measurement(phase, width, height, frames, ranks, chunk_t, dtype, expandable,
                        allocated, reserved, weights, method, device, versions, date, source,
                        decoder, held_out=bool(rest and rest[0]), model=model,
                        placement=rest[1] if len(rest) > 1 else "")
            for (phase, width, height, frames, ranks, chunk_t, dtype, expandable, decoder,
                 allocated, reserved, weights, *rest) in rows
        ),
    )  # fmt: skip


_TRACE: dict[str, Any] = dict(
    versions="torch 2.13.0+cpu, diffusers 0.42.1, transformers 5.23.0",
    date="2026-11-24",
    source="benchmarks/memory_model.py --trace",
)


A14B_SOURCE = "benchmarks/memory_model.py: wanctl generate --model synthetic-a14b --steps 2"
_A14B_RUNS: dict[str, Any] = dict(
    device="NVIDIA H200",
    versions="torch 2.11.0+cu130, diffusers 0.42.1",
    date="2026-12-02",
    source=A14B_SOURCE,
)

MEASUREMENTS: tuple[Measurement, ...] = (
    # `python benchmarks/memory_model.py` on one H100 (a harness of its own: each phase alone):
    # its text encoder rows, and diffusers' decode loop (what the official decode would need),
    # which no run of wanctl's measures.
    *measured_run(
        "NVIDIA H100 80GB HBM3",
        "torch 2.11.0+cu130, diffusers 0.42.1, transformers 5.17.0",
        "2026-11-24",
        context_gib=0.604,
        rows=(
            # phase, width, height, frames, ranks, chunk_t, dtype, expandable, decoder,
            # allocated, reserved, weights (GiB)
            ("text_encode", 0, 0, 0, 1, 0, "bf16", False, "diffusers", 11.878, 11.906, 11.62),
            ("decode", 832, 480, 81, 1, 1, "bf16", False, "diffusers", 5.468, 7.998, 1.069),
            ("decode", 832, 480, 81, 1, 2, "bf16", False, "diffusers", 7.969, 10.906, 1.07),
            ("decode", 1280, 704, 121, 1, 1, "bf16", False, "diffusers", 10.988, 14.896, 1.07),
            ("decode", 1280, 704, 121, 1, 2, "bf16", False, "diffusers", 16.575, 23.207, 1.072),
            ("decode", 704, 1280, 49, 1, 1, "bf16", False, "diffusers", 10.988, 14.896, 1.07),
            ("decode", 704, 1280, 49, 1, 2, "bf16", False, "diffusers", 16.575, 23.207, 1.072),
            ("text_encode", 0, 0, 0, 1, 0, "bf16", True, "diffusers", 11.874, 11.912, 11.648),
            ("decode", 832, 480, 81, 1, 1, "bf16", True, "diffusers", 5.463, 6.502, 1.067),
            ("decode", 832, 480, 81, 1, 2, "bf16", True, "diffusers", 7.963, 9.863, 1.067),
            ("decode", 1280, 704, 121, 1, 1, "bf16", True, "diffusers", 10.984, 13.299, 1.067),
            ("decode", 1280, 704, 121, 1, 2, "bf16", True, "diffusers", 16.571, 20.838, 1.068),
            ("decode", 704, 1280, 49, 1, 1, "bf16", True, "diffusers", 10.984, 13.299, 1.067),
            ("decode", 704, 1280, 49, 1, 2, "bf16", True, "diffusers", 16.571, 20.838, 1.068),
        ),
    ),
    # `python benchmarks/memory_model.py --allocators expandable`, then `--allocators default`,
    # on one H200: `wanctl generate --model synthetic-5b --steps 1` at the fit's sizes and at
    # held-out ones (`held_out` True: the fit leaves them out, to judge it on sizes it never
    # saw), and chunk_t 2 at the fit's sizes; each phase's peak as the worker reached it, the
    # weights the placement's (from the parameter counts). Measured after the synthetic UMT5
    # stopped laying its embedding table out twice.
    *measured_run(
        "NVIDIA H200",
        "torch 2.11.0+cu130, diffusers 0.42.1",
        "2026-12-01",
        source="benchmarks/memory_model.py: wanctl generate --model synthetic-5b --steps 1",
        rows=(
            # phase, width, height, frames, ranks, chunk_t, dtype, expandable, decoder,
            # allocated, reserved, weights (GiB), held out
            ("text_encode", 1280, 704, 121, 1, 1, "bf16", True, "wanctl", 11.098, 11.137, 10.582, False),
            ("sampling", 1280, 704, 121, 1, 1, "bf16", True, "wanctl", 14.509, 15.42, 9.333, False),
            ("decode", 1280, 704, 121, 1, 1, "bf16", True, "wanctl", 7.176, 10.262, 1.034, False),
            ("text_encode", 832, 480, 81, 1, 1, "bf16", True, "wanctl", 11.098, 11.137, 10.582, False),
            ("sampling", 832, 480, 81, 1, 1, "bf16", True, "wanctl", 10.918, 11.182, 9.333, False),
            ("decode", 832, 480, 81, 1, 1, "bf16", True, "wanctl", 3.806, 5.221, 1.034, False),
            ("text_encode", 704, 1280, 49, 1, 1, "bf16", True, "wanctl", 11.098, 11.137, 10.582, True),
            ("sampling", 704, 1280, 49, 1, 1, "bf16", True, "wanctl", 11.529, 12.1, 9.333, True),
            ("decode", 704, 1280, 49, 1, 1, "bf16", True, "wanctl", 7.176, 9.5, 1.034, True),
            ("text_encode", 1280, 704, 241, 1, 1, "bf16", True, "wanctl", 11.098, 11.137, 10.582, True),
            ("sampling", 1280, 704, 241, 1, 1, "bf16", True, "wanctl", 19.475, 20.986, 9.333, True),
            ("decode", 1280, 704, 241, 1, 1, "bf16", True, "wanctl", 7.176, 10.711, 1.034, True),
            ("text_encode", 960, 544, 81, 1, 1, "bf16", True, "wanctl", 11.098, 11.137, 10.582, True),
            ("sampling", 960, 544, 81, 1, 1, "bf16", True, "wanctl", 11.392, 11.904, 9.333, True),
            ("decode", 960, 544, 81, 1, 1, "bf16", True, "wanctl", 4.627, 6.236, 1.034, True),
            ("decode", 1280, 704, 121, 1, 2, "bf16", True, "wanctl", 10.189, 13.602, 1.034, False),
            ("decode", 832, 480, 81, 1, 2, "bf16", True, "wanctl", 5.148, 6.744, 1.034, False),
            ("text_encode", 1280, 704, 121, 1, 1, "bf16", False, "wanctl", 11.099, 11.152, 10.582, False),
            ("sampling", 1280, 704, 121, 1, 1, "bf16", False, "wanctl", 14.512, 16.98, 9.333, False),
            ("decode", 1280, 704, 121, 1, 1, "bf16", False, "wanctl", 7.187, 10.895, 1.034, False),
            ("text_encode", 832, 480, 81, 1, 1, "bf16", False, "wanctl", 11.099, 11.152, 10.582, False),
            ("sampling", 832, 480, 81, 1, 1, "bf16", False, "wanctl", 10.919, 11.314, 9.333, False),
            ("decode", 832, 480, 81, 1, 1, "bf16", False, "wanctl", 3.817, 5.625, 1.034, False),
            ("text_encode", 704, 1280, 49, 1, 1, "bf16", False, "wanctl", 11.099, 11.152, 10.582, True),
            ("sampling", 704, 1280, 49, 1, 1, "bf16", False, "wanctl", 11.531, 12.582, 9.333, True),
            ("decode", 704, 1280, 49, 1, 1, "bf16", False, "wanctl", 7.185, 10.889, 1.034, True),
            ("text_encode", 1280, 704, 241, 1, 1, "bf16", False, "wanctl", 11.099, 11.152, 10.582, True),
            ("sampling", 1280, 704, 241, 1, 1, "bf16", False, "wanctl", 19.48, 24.309, 9.333, True),
            ("decode", 1280, 704, 241, 1, 1, "bf16", False, "wanctl", 7.186, 10.885, 1.034, True),
            ("text_encode", 960, 544, 81, 1, 1, "bf16", False, "wanctl", 11.099, 11.152, 10.582, True),
            ("sampling", 960, 544, 81, 1, 1, "bf16", False, "wanctl", 11.394, 12.375, 9.333, True),
            ("decode", 960, 544, 81, 1, 1, "bf16", False, "wanctl", 4.638, 6.881, 1.034, True),
            ("decode", 1280, 704, 121, 1, 2, "bf16", False, "wanctl", 10.199, 16.281, 1.034, False),
            ("decode", 832, 480, 81, 1, 2, "bf16", False, "wanctl", 5.155, 8.014, 1.034, False),
        ),
    ),
    # The same H100 under `--simulate`: the context once earlier phases had run in the process
    # (kernels loaded lazily), which is what a run's later phases see. 0.60 GiB in the first
    # case, 0.68 in every later one.
    Measurement("context", 0, 0, 0, 1, 0, "bf16", False, 0.68, None, 0.0, "cuda",
                "NVIDIA H100 80GB HBM3",
                "torch 2.11.0+cu130, diffusers 0.42.1, transformers 5.17.0", "2026-11-24",
                "benchmarks/memory_model.py --simulate: cuda_context_gib() after earlier cases"),
    # wanctl's decode engine (wanctl.decode.engine, decoder only) traced at two sizes, bf16, as
    # of commit 3e9894f (66b69bb traces the same): fitted only while no GPU row measures the
    # engine.
    *(
        Measurement("decode", w, h, f, 1, k, "bf16", False, alloc, None, 1.034, "trace",
                    device="CPU, fake tensors", **_TRACE, decoder="wanctl")
        for w, h, f, k, alloc in (
            (1280, 704, 121, 1, 8.338), (1280, 704, 121, 2, 11.784), (1280, 704, 121, 4, 18.676),
            (832, 480, 81, 1, 4.274), (832, 480, 81, 2, 5.802), (832, 480, 81, 4, 8.86),
        )
    ),
    # The DiT forward at 1280x704x121 traced under diffusers' Ulysses 1, 2 and 4 (fake process
    # group): how the activations split between the rank's share of tokens and the whole
    # sequence, which no single GPU measures.
    *(
        Measurement("sampling", 1280, 704, 121, n, 0, "bf16", False, alloc, None, 9.334, "trace",
                    device="CPU, fake tensors, fake process group", **_TRACE)
        for n, alloc in ((1, 14.414), (2, 11.969), (4, 10.746))
    ),
    # UMT5-XXL encode of 512 tokens, bf16 (the VAE decoder held too).
    Measurement("text_encode", 0, 0, 0, 1, 0, "bf16", False, 11.733, None, 11.615, "trace",
                device="CPU, fake tensors", **_TRACE),
    # NCCL communicators (Ulysses all-to-all): NCCL_BUFFSIZE 4 MiB x protocols x channels x
    # peers, from NCCL's documentation; not measured here.
    Measurement("nccl", 0, 0, 0, 2, 0, "bf16", False, 0.5, None, 0.0, "estimate",
                device="-", versions="NCCL 2.2x", date="2026-11-24",
                source="estimate from NCCL's buffer sizes; to measure under torchrun"),
    # `python benchmarks/memory_model.py --model synthetic-a14b` (`--cases fit`, then
    # `--cases held-out`) on one H200: the A14B models' phases as `wanctl generate` runs them,
    # one GPU, two steps (both experts ran), each expert placement; the T2V fit's latents also
    # decoded at chunk_t 2 by `wanctl decode`. The placement closes each row.
    *measured_run(
        **_A14B_RUNS,
        model="t2v-A14B",
        rows=(
            ("text_encode", 832, 480, 81, 1, 1, "bf16", True, "wanctl",
             11.098, 11.137, 10.582, False, "replicated bf16"),
            ("sampling", 832, 480, 81, 1, 1, "bf16", True, "wanctl",
             56.903, 57.668, 53.337, False, "replicated bf16"),
            ("decode", 832, 480, 81, 1, 1, "bf16", True, "wanctl",
             3.513, 4.426, 0.137, False, "replicated bf16"),
            ("decode", 832, 480, 81, 1, 2, "bf16", True, "wanctl",
             4.962, 7.268, 0.137, False, "replicated bf16"),
            ("text_encode", 1280, 720, 81, 1, 1, "bf16", True, "wanctl",
             11.098, 11.137, 10.582, False, "replicated bf16"),
            ("sampling", 1280, 720, 81, 1, 1, "bf16", True, "wanctl",
             61.505, 63.254, 53.337, False, "replicated bf16"),
            ("decode", 1280, 720, 81, 1, 1, "bf16", True, "wanctl",
             7.88, 9.836, 0.137, False, "replicated bf16"),
            ("decode", 1280, 720, 81, 1, 2, "bf16", True, "wanctl",
             11.198, 18.557, 0.137, False, "replicated bf16"),
            ("text_encode", 720, 1280, 61, 1, 1, "bf16", True, "wanctl",
             11.098, 11.137, 10.582, True, "replicated fp8 offload"),
            ("sampling", 720, 1280, 61, 1, 1, "bf16", True, "wanctl",
             19.813, 21.148, 13.581, True, "replicated fp8 offload"),
            ("decode", 720, 1280, 61, 1, 1, "bf16", True, "wanctl",
             7.88, 9.621, 0.137, True, "replicated fp8 offload"),
            ("text_encode", 1024, 576, 61, 1, 1, "bf16", True, "wanctl",
             11.098, 11.137, 10.582, True, "replicated bf16"),
            ("sampling", 1024, 576, 61, 1, 1, "bf16", True, "wanctl",
             57.344, 58.215, 53.337, True, "replicated bf16"),
            ("decode", 1024, 576, 61, 1, 1, "bf16", True, "wanctl",
             5.105, 6.184, 0.137, True, "replicated bf16"),
        ),
    ),
    *measured_run(
        **_A14B_RUNS,
        model="i2v-A14B",
        rows=(
            ("text_encode", 1280, 720, 81, 1, 1, "bf16", True, "wanctl",
             11.098, 11.137, 10.582, False, "replicated fp8"),
            ("image_encode", 1280, 720, 81, 1, 1, "bf16", True, "wanctl",
             16.136, 20.172, 0.473, False, "replicated fp8"),
            ("sampling", 1280, 720, 81, 1, 1, "bf16", True, "wanctl",
             35.93, 37.637, 27.635, False, "replicated fp8"),
            ("decode", 1280, 720, 81, 1, 1, "bf16", True, "wanctl",
             7.88, 9.836, 0.137, False, "replicated fp8"),
            ("text_encode", 832, 480, 81, 1, 1, "bf16", True, "wanctl",
             11.098, 11.137, 10.582, False, "replicated bf16 offload"),
            ("image_encode", 832, 480, 81, 1, 1, "bf16", True, "wanctl",
             7.287, 9.059, 0.473, False, "replicated bf16 offload"),
            ("sampling", 832, 480, 81, 1, 1, "bf16", True, "wanctl",
             30.762, 31.494, 27.142, False, "replicated bf16 offload"),
            ("decode", 832, 480, 81, 1, 1, "bf16", True, "wanctl",
             3.513, 4.426, 0.137, False, "replicated bf16 offload"),
            ("text_encode", 480, 832, 49, 1, 1, "bf16", True, "wanctl",
             11.098, 11.137, 10.582, True, "replicated fp8"),
            ("image_encode", 480, 832, 49, 1, 1, "bf16", True, "wanctl",
             7.135, 8.941, 0.473, True, "replicated fp8"),
            ("sampling", 480, 832, 49, 1, 1, "bf16", True, "wanctl",
             29.897, 30.469, 27.635, True, "replicated fp8"),
            ("decode", 480, 832, 49, 1, 1, "bf16", True, "wanctl",
             3.513, 4.426, 0.137, True, "replicated fp8"),
        ),
    ),
)  # fmt: skip


_H100: dict[str, Any] = dict(
    device="1x NVIDIA H100 80GB",
    versions="driver 580, torch 2.11+cu130, diffusers 0.42.1",
    date="2026-11-24",
)


_FACTS: dict[str, Any] = dict(_H100, source="shared/notes/facts.md")


_FACTS_VAE: dict[str, Any] = dict(
    _H100, source="shared/notes/facts.md; the full AutoencoderKLWan held (704.7 M)"
)


# Earlier anchors the fit no longer uses, kept for the record: facts.md's single runs on an H100
# (another harness: the whole AutoencoderKLWan held, the DiT alone), re-measured by
# benchmarks/memory_model.py above, and the lead's estimate of the CUDA context. The diffusers
# decode there is 1.3 GiB below the benchmark's at chunk_t 1 and 2 (the fixed part of the
# activations; the part per latent frame agrees within 1%, as fp32 = 2x bf16 per byte does):
# tests/test_memory.py checks the model's extrapolation in chunk_t and dtype against them. And
# GPU rows set aside unfitted, each with why.
SUPERSEDED: tuple[Measurement, ...] = (
    # The sampling and wanctl decode rows of `benchmarks/memory_model.py`'s earlier harness
    # (each phase alone, the VAE decoder held through sampling; the decode engine before and
    # after 9e78095): replaced by runs of `wanctl generate` itself, which is what a plan
    # describes. Their 704*1280x49 rows are now a held-out size of the fit.
    *measured_run(
        "NVIDIA H100 80GB HBM3",
        "torch 2.11.0+cu130, diffusers 0.42.1, transformers 5.17.0",
        "2026-11-24",
        rows=(
            # phase, width, height, frames, ranks, chunk_t, dtype, expandable, decoder,
            # allocated, reserved, weights (GiB)
            ("decode", 832, 480, 81, 1, 1, "bf16", False, "wanctl", 5.088, 6.633, 1.069),
            ("decode", 832, 480, 81, 1, 2, "bf16", False, "wanctl", 7.205, 10.4, 1.07),
            ("decode", 1280, 704, 121, 1, 1, "bf16", False, "wanctl", 10.127, 13.426, 1.07),
            ("decode", 1280, 704, 121, 1, 2, "bf16", False, "wanctl", 14.854, 23.578, 1.072),
            ("decode", 704, 1280, 49, 1, 1, "bf16", False, "wanctl", 10.127, 13.426, 1.07),
            ("decode", 704, 1280, 49, 1, 2, "bf16", False, "wanctl", 14.854, 23.578, 1.072),
            ("sampling", 832, 480, 81, 1, 0, "bf16", False, "diffusers", 11.938, 12.818, 10.411),
            ("sampling", 1280, 704, 121, 1, 0, "bf16", False, "diffusers", 15.498, 16.443, 10.419),
            ("sampling", 704, 1280, 49, 1, 0, "bf16", False, "diffusers", 12.545, 13.887, 10.413),
            ("decode", 832, 480, 81, 1, 1, "bf16", True, "wanctl", 5.082, 6.053, 1.067),
            ("decode", 832, 480, 81, 1, 2, "bf16", True, "wanctl", 7.2, 8.162, 1.067),
            ("decode", 1280, 704, 121, 1, 1, "bf16", True, "wanctl", 10.123, 11.873, 1.067),
            ("decode", 1280, 704, 121, 1, 2, "bf16", True, "wanctl", 14.85, 17.031, 1.068),
            ("decode", 704, 1280, 49, 1, 1, "bf16", True, "wanctl", 10.123, 11.873, 1.067),
            ("decode", 704, 1280, 49, 1, 2, "bf16", True, "wanctl", 14.85, 17.031, 1.068),
            ("sampling", 832, 480, 81, 1, 0, "bf16", True, "diffusers", 11.933, 12.385, 10.407),
            ("sampling", 1280, 704, 121, 1, 0, "bf16", True, "diffusers", 15.49, 16.643, 10.414),
            ("sampling", 704, 1280, 49, 1, 0, "bf16", True, "diffusers", 12.539, 13.029, 10.408),
            ("decode", 832, 480, 81, 1, 1, "bf16", False, "wanctl", 3.997, 5.834, 1.038),
            ("decode", 832, 480, 81, 1, 2, "bf16", False, "wanctl", 5.329, 8.223, 1.069),
            ("decode", 1280, 704, 121, 1, 1, "bf16", False, "wanctl", 7.594, 11.014, 1.07),
            ("decode", 1280, 704, 121, 1, 2, "bf16", False, "wanctl", 10.587, 16.615, 1.07),
            ("decode", 704, 1280, 49, 1, 1, "bf16", False, "wanctl", 7.594, 11.014, 1.07),
            ("decode", 704, 1280, 49, 1, 2, "bf16", False, "wanctl", 10.587, 16.615, 1.07),
            ("decode", 832, 480, 81, 1, 1, "bf16", True, "wanctl", 3.987, 4.803, 1.066),
            ("decode", 832, 480, 81, 1, 2, "bf16", True, "wanctl", 5.32, 6.621, 1.066),
            ("decode", 1280, 704, 121, 1, 1, "bf16", True, "wanctl", 7.586, 9.219, 1.066),
            ("decode", 1280, 704, 121, 1, 2, "bf16", True, "wanctl", 10.579, 12.91, 1.067),
            ("decode", 704, 1280, 49, 1, 1, "bf16", True, "wanctl", 7.586, 9.219, 1.066),
            ("decode", 704, 1280, 49, 1, 2, "bf16", True, "wanctl", 10.579, 12.91, 1.067),
        ),
    ),
    # VAE decode of 1280x704x121, chunk_t latent frames per call, frames moved to the host.
    *(
        Measurement("decode", 1280, 704, 121, 1, k, "bf16", False, alloc, res, 1.313, "cuda",
                    **_FACTS_VAE)
        for k, alloc, res in ((1, 9.95, 16.9), (2, 15.6, 23.5), (4, 26.8, 42.9), (8, 49.3, 77.1))
    ),
    *(
        Measurement("decode", 1280, 704, 121, 1, k, "fp32", False, alloc, res, 2.625, "cuda",
                    **_FACTS_VAE)
        for k, alloc, res in ((1, 19.9, 33.3), (4, 53.6, 78.4))
    ),
    # The diffusers rows of the `--phases decode` run above, not fitted: in each session the
    # benchmark decodes with wanctl's engine before diffusers' loop on the same VAE, and the
    # engine's ChunkDecoder lays the conv weights out channels-last in place
    # (`use_channels_last`, since 66b69bb), so diffusers' loop ran on channels-last weights
    # (a CUDA conv with channels-last weights runs channels-last), not the official layout:
    # allocated 7% to 8% below the rows measured before 66b69bb, same diffusers and torch. To
    # re-measure with a fresh VAE for diffusers' loop.
    *measured_run(
        "NVIDIA H100 80GB HBM3",
        "torch 2.11.0+cu130, diffusers 0.42.1, transformers 5.17.0",
        "2026-11-24",
        source="benchmarks/memory_model.py --phases decode, after wanctl's engine (9e78095)",
        rows=(
            ("decode", 832, 480, 81, 1, 1, "bf16", False, "diffusers", 5.073, 6.875, 1.068),
            ("decode", 832, 480, 81, 1, 2, "bf16", False, "diffusers", 7.354, 10.682, 1.069),
            ("decode", 1280, 704, 121, 1, 1, "bf16", False, "diffusers", 10.097, 14.506, 1.07),
            ("decode", 1280, 704, 121, 1, 2, "bf16", False, "diffusers", 15.251, 23.096, 1.07),
            ("decode", 704, 1280, 49, 1, 1, "bf16", False, "diffusers", 10.097, 14.506, 1.07),
            ("decode", 704, 1280, 49, 1, 2, "bf16", False, "diffusers", 15.251, 23.096, 1.07),
            ("decode", 832, 480, 81, 1, 1, "bf16", True, "diffusers", 5.067, 5.781, 1.066),
            ("decode", 832, 480, 81, 1, 2, "bf16", True, "diffusers", 7.349, 8.654, 1.066),
            ("decode", 1280, 704, 121, 1, 1, "bf16", True, "diffusers", 10.09, 11.68, 1.066),
            ("decode", 1280, 704, 121, 1, 2, "bf16", True, "diffusers", 15.243, 18.104, 1.067),
            ("decode", 704, 1280, 49, 1, 1, "bf16", True, "diffusers", 10.09, 11.68, 1.066),
            ("decode", 704, 1280, 49, 1, 2, "bf16", True, "diffusers", 15.243, 18.104, 1.067),
        ),
    ),
    # One DiT forward at 1280x704x121 (27,280 tokens), bf16, SDPA, the DiT alone.
    Measurement("sampling", 1280, 704, 121, 1, 0, "bf16", False, 14.4, None, 9.313, "cuda",
                **_FACTS),
    Measurement("context", 0, 0, 0, 1, 0, "bf16", False, 0.49, None, 0.0, "cuda", **dict(
        _H100, source="the lead's measurement notes: ~500 MiB on an H100")),
)  # fmt: skip
