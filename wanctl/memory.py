"""The memory model: per-rank peak GPU memory of each phase of a Wan2.2 TI2V-5B run, and the
search for settings that fit a card.

A run goes through three phases; in each, the worst rank holds the weights of the models on its
GPU and the phase's activations:

- `text_encode` (only with the text encoder on the GPU): UMT5-XXL's bf16 weights and its
  activations at 512 tokens. The encoder is freed once the prompt is encoded (it runs once).
- `sampling`: the DiT's bf16 weights (replicated, or 1/N plus two unsharded blocks under FSDP)
  and the activations of one forward over this rank's tokens. Ulysses splits the sequence: the
  activations are `tokens x (per_local / N + per_global)`, the second part being what every rank
  computes over the whole sequence (rotary tables, the gathered output).
- `decode`: the VAE decoder's weights and the activations of one decoder call of `chunk_t`
  latent frames over this rank's rows (patch-parallel decode: rows split over the decode ranks,
  one halo row each side at the decoder's top resolution). Decoded frames go to the host.

The VAE decoder stays on the GPU throughout. The DiT is loaded once the prompt is encoded and
the text encoder freed, and stays for the decode unless `offload` moves it to the CPU first.
Allocated memory is weights plus activations; the allocator reserves a ratio of the activations
(`Coefficients.ratio`: the caching allocator keeps freed blocks; per phase and allocator
setting, and for the decode per decoder and chunk_t); the CUDA context (and NCCL's buffers with
several GPUs) comes on top. A plan fits when every phase leaves `SAFETY_MARGIN` of the card
free.

Every coefficient is fitted from `MEASUREMENTS`, which records what was measured, where, with
which versions and how ("cuda": torch.cuda peak statistics on a GPU; "trace": live tensor bytes
of the same run on fake tensors, `wanctl.measure.TraceMeter`; "estimate": not measured, named as
such). GPU rows win over traces. Paste the block `benchmarks/memory_model.py` prints and the
fits follow (a later row of the same configuration replaces an earlier one); tests/test_memory.py
checks that the model reproduces every GPU row within 10%. Rows no longer fitted stay in
`SUPERSEDED`, with why.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache

from wanctl.errors import UsageError
from wanctl.models.configs import DIT_TI2V_5B
from wanctl.probe.base import GpuInventory
from wanctl.probe.catalog import parse_rig

GIB = 1024**3
DTYPE_BYTES = {"bf16": 2, "fp32": 4}
HEADS = DIT_TI2V_5B["num_attention_heads"]  # the Ulysses degree must divide them
SPATIAL = 16  # VAE spatial compression
TEMPORAL = 4  # VAE temporal compression
PATCH = 2  # the DiT's spatial patch (1, 2, 2)
TOP_UPSCALE = 8  # the decoder's top resolution is the latent's x8 (then unpatchified x2)
PHASES = ("text_encode", "sampling", "decode")

# A plan fits when its worst phase leaves this share of the card free (policy, not a
# measurement): the fits below match their GPU rows within 6%, and a desktop session or
# another process may hold a few hundred MiB.
SAFETY_MARGIN = 0.05

# Parameters of each network: `wanctl.models.configs.parameter_counts()` on the meta device
# (diffusers 0.42.1, transformers of this venv); tests/test_memory.py checks them against it.
PARAMS = {
    "dit": 4_999_787_712,
    "dit_block": 163_656_704,
    "text_encoder": 5_680_910_336,
    "vae_decoder": 555_051_580,
}
# Of the DiT's parameters, diffusers keeps these in fp32 (`_keep_in_fp32_modules`).
DIT_FP32_PARAMS = 10_973_184


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


# The columns of a run's rows (`measured_run`): phase, width, height, frames, ranks, chunk_t,
# dtype, expandable segments, decoder, allocated GiB, reserved GiB (None for a trace), weights GiB.
Row = tuple[str, int, int, int, int, int, str, bool, str, float, float | None, float]


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
) -> tuple[Measurement, ...]:
    """The rows of one run of `benchmarks/memory_model.py`, as it prints them, with the run's
    device, versions and date on each; the CUDA context measured after initialisation and,
    where the run printed it, after the phases ran (once their kernels are loaded)."""
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
                        decoder)
            for (phase, width, height, frames, ranks, chunk_t, dtype, expandable, decoder,
                 allocated, reserved, weights) in rows
        ),
    )  # fmt: skip


_TRACE = dict(
    versions="torch 2.13.0+cpu, diffusers 0.42.1, transformers 5.23.0",
    date="2026-11-24",
    source="benchmarks/memory_model.py --trace",
)

MEASUREMENTS: tuple[Measurement, ...] = (
    # `python benchmarks/memory_model.py` on one H100: text encoder, DiT forward and VAE decode
    # (wanctl's engine and diffusers' loop, chunk_t 1 and 2) at three sizes, each phase alone,
    # with the default allocator and with expandable segments. Paste a new run's block below
    # this one (a later row of the same configuration replaces an earlier one) or in its place.
    # Its wanctl rows measured the engine before commit 66b69bb: the block after it replaces
    # them.
    *measured_run(
        "NVIDIA H100 80GB HBM3",
        "torch 2.11.0+cu130, diffusers 0.42.1, transformers 5.17.0",
        "2026-11-24",
        context_gib=0.604,
        rows=(
            # phase, width, height, frames, ranks, chunk_t, dtype, expandable, decoder,
            # allocated, reserved, weights (GiB)
            ("text_encode", 0, 0, 0, 1, 0, "bf16", False, "diffusers", 11.878, 11.906, 11.62),
            ("decode", 832, 480, 81, 1, 1, "bf16", False, "wanctl", 5.088, 6.633, 1.069),
            ("decode", 832, 480, 81, 1, 2, "bf16", False, "wanctl", 7.205, 10.4, 1.07),
            ("decode", 832, 480, 81, 1, 1, "bf16", False, "diffusers", 5.468, 7.998, 1.069),
            ("decode", 832, 480, 81, 1, 2, "bf16", False, "diffusers", 7.969, 10.906, 1.07),
            ("decode", 1280, 704, 121, 1, 1, "bf16", False, "wanctl", 10.127, 13.426, 1.07),
            ("decode", 1280, 704, 121, 1, 2, "bf16", False, "wanctl", 14.854, 23.578, 1.072),
            ("decode", 1280, 704, 121, 1, 1, "bf16", False, "diffusers", 10.988, 14.896, 1.07),
            ("decode", 1280, 704, 121, 1, 2, "bf16", False, "diffusers", 16.575, 23.207, 1.072),
            ("decode", 704, 1280, 49, 1, 1, "bf16", False, "wanctl", 10.127, 13.426, 1.07),
            ("decode", 704, 1280, 49, 1, 2, "bf16", False, "wanctl", 14.854, 23.578, 1.072),
            ("decode", 704, 1280, 49, 1, 1, "bf16", False, "diffusers", 10.988, 14.896, 1.07),
            ("decode", 704, 1280, 49, 1, 2, "bf16", False, "diffusers", 16.575, 23.207, 1.072),
            ("sampling", 832, 480, 81, 1, 0, "bf16", False, "diffusers", 11.938, 12.818, 10.411),
            ("sampling", 1280, 704, 121, 1, 0, "bf16", False, "diffusers", 15.498, 16.443, 10.419),
            ("sampling", 704, 1280, 49, 1, 0, "bf16", False, "diffusers", 12.545, 13.887, 10.413),
            ("text_encode", 0, 0, 0, 1, 0, "bf16", True, "diffusers", 11.874, 11.912, 11.648),
            ("decode", 832, 480, 81, 1, 1, "bf16", True, "wanctl", 5.082, 6.053, 1.067),
            ("decode", 832, 480, 81, 1, 2, "bf16", True, "wanctl", 7.2, 8.162, 1.067),
            ("decode", 832, 480, 81, 1, 1, "bf16", True, "diffusers", 5.463, 6.502, 1.067),
            ("decode", 832, 480, 81, 1, 2, "bf16", True, "diffusers", 7.963, 9.863, 1.067),
            ("decode", 1280, 704, 121, 1, 1, "bf16", True, "wanctl", 10.123, 11.873, 1.067),
            ("decode", 1280, 704, 121, 1, 2, "bf16", True, "wanctl", 14.85, 17.031, 1.068),
            ("decode", 1280, 704, 121, 1, 1, "bf16", True, "diffusers", 10.984, 13.299, 1.067),
            ("decode", 1280, 704, 121, 1, 2, "bf16", True, "diffusers", 16.571, 20.838, 1.068),
            ("decode", 704, 1280, 49, 1, 1, "bf16", True, "wanctl", 10.123, 11.873, 1.067),
            ("decode", 704, 1280, 49, 1, 2, "bf16", True, "wanctl", 14.85, 17.031, 1.068),
            ("decode", 704, 1280, 49, 1, 1, "bf16", True, "diffusers", 10.984, 13.299, 1.067),
            ("decode", 704, 1280, 49, 1, 2, "bf16", True, "diffusers", 16.571, 20.838, 1.068),
            ("sampling", 832, 480, 81, 1, 0, "bf16", True, "diffusers", 11.933, 12.385, 10.407),
            ("sampling", 1280, 704, 121, 1, 0, "bf16", True, "diffusers", 15.49, 16.643, 10.414),
            ("sampling", 704, 1280, 49, 1, 0, "bf16", True, "diffusers", 12.539, 13.029, 10.408),
        ),
    ),
    # `python benchmarks/memory_model.py --phases decode` on the same H100, re-measuring
    # wanctl's engine as of 9e78095 (channels-last, fused norm + SiLU, sub-pixel upsample
    # convs). Only its wanctl rows: the diffusers rows of that run ran after the engine had
    # turned the shared VAE's conv weights channels-last in place, so they are in SUPERSEDED
    # and the diffusers rows above stay in effect.
    *measured_run(
        "NVIDIA H100 80GB HBM3",
        "torch 2.11.0+cu130, diffusers 0.42.1, transformers 5.17.0",
        "2026-11-24",
        context_gib=0.604,
        context_after_gib=0.679,
        rows=(
            # phase, width, height, frames, ranks, chunk_t, dtype, expandable, decoder,
            # allocated, reserved, weights (GiB)
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
    # The same H100 under `--simulate`: the context once earlier phases had run in the process
    # (kernels loaded lazily), which is what a run's later phases see. 0.60 GiB in the first
    # case, 0.68 in every later one.
    Measurement("context", 0, 0, 0, 1, 0, "bf16", False, 0.68, None, 0.0, "cuda",
                "NVIDIA H100 80GB HBM3",
                "torch 2.11.0+cu130, diffusers 0.42.1, transformers 5.17.0", "2026-11-24",
                "benchmarks/memory_model.py --simulate: cuda_context_gib() after earlier cases"),
    # wanctl's decode engine (wanctl.vae.engine, decoder only) traced at two sizes, bf16, as
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
)  # fmt: skip

_H100 = dict(
    device="1x NVIDIA H100 80GB",
    versions="driver 580, torch 2.11+cu130, diffusers 0.42.1",
    date="2026-11-24",
)
_FACTS = dict(_H100, source="shared/notes/facts.md")
_FACTS_VAE = dict(_H100, source="shared/notes/facts.md; the full AutoencoderKLWan held (704.7 M)")

# Earlier anchors the fit no longer uses, kept for the record: facts.md's single runs on an H100
# (another harness: the whole AutoencoderKLWan held, the DiT alone), re-measured by
# benchmarks/memory_model.py above, and the lead's estimate of the CUDA context. The diffusers
# decode there is 1.3 GiB below the benchmark's at chunk_t 1 and 2 (the fixed part of the
# activations; the part per latent frame agrees within 1%, as fp32 = 2x bf16 per byte does):
# tests/test_memory.py checks the model's extrapolation in chunk_t and dtype against them. And
# GPU rows set aside unfitted, each with why.
SUPERSEDED: tuple[Measurement, ...] = (
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


@dataclass(frozen=True)
class Coefficients:
    """What the model computes with, fitted from `MEASUREMENTS` by `fit`."""

    # by decoder: bytes per rank pixel per dtype byte, per call and per latent frame in it
    decode: dict[str, tuple[float, float]]
    dit_local: float  # bf16 activation bytes per token of this rank's share
    dit_global: float  # bf16 activation bytes per token of the whole sequence, on every rank
    text_encode_gib: float  # UMT5-XXL activations at 512 tokens
    # reserved / allocated activations by (phase, expandable segments, decoder, chunk_t): for
    # the decode, one per decoder and chunk_t measured, and ("", 0) over every decode row; for
    # the other phases ("", 0). Read them through `ratio`.
    reserved_ratio: dict[tuple[str, bool, str, int], float]
    context_gib: float
    nccl_gib: float
    expandable_measured: bool
    provenance: dict[str, str]

    def ratio(self, phase: str, expandable: bool, decoder: str = "", chunk_t: int = 0) -> float:
        """The reserved ratio of a phase: for the decode, the decoder's at the largest chunk_t
        measured up to `chunk_t` (the smallest measured if all are larger), else every
        decoder's; with the allocator setting asked, else with the default allocator (which
        reserves more); else the largest ratio measured."""
        for mode in (expandable, False):
            measured = sorted(
                k for p, e, d, k in self.reserved_ratio if (p, e, d) == (phase, mode, decoder) and k
            )
            if phase == "decode" and measured:
                k = max((k for k in measured if k <= chunk_t), default=measured[0])
                return self.reserved_ratio[phase, mode, decoder, k]
            if (phase, mode, "", 0) in self.reserved_ratio:
                return self.reserved_ratio[phase, mode, "", 0]
        return max(self.reserved_ratio.values())


def in_effect(rows: tuple[Measurement, ...]) -> tuple[Measurement, ...]:
    """The rows the fit uses: of rows of the same configuration (what, at which size, how,
    where, by which procedure), the last one, so that a re-run pasted below replaces it."""
    latest = {
        (m.phase, m.width, m.height, m.frames, m.ranks, m.chunk_t, m.dtype, m.expandable,
         m.decoder, m.method, m.device, m.source): m
        for m in rows
    }  # fmt: skip
    return tuple(latest.values())


def _rows(
    phase: str, rows: tuple[Measurement, ...], method: str | None = None
) -> list[Measurement]:
    return [m for m in rows if m.phase == phase and (method is None or m.method == method)]


def _least_squares(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Intercept and slope of y = a + b x."""
    xs, ys = [x for x, _ in points], [y for _, y in points]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx if sxx else 0.0
    return mean_y - slope * mean_x, slope


def _describe(rows: list[Measurement]) -> str:
    by = sorted({f"{m.method} on {m.device} ({m.versions}, {m.date}; {m.source})" for m in rows})
    return "; ".join(by)


def fit(rows: tuple[Measurement, ...] = MEASUREMENTS) -> Coefficients:
    """Fit the coefficients: GPU measurements where there are some, traces for the structure
    GPUs have not measured yet (how Ulysses splits the DiT's activations), per decoder.
    """
    rows = in_effect(rows)
    decode_rows = {
        decoder: [m for m in _rows("decode", rows, "cuda") if m.decoder == decoder]
        or [m for m in _rows("decode", rows) if m.decoder == decoder]
        for decoder in sorted({m.decoder for m in _rows("decode", rows)})
    }
    decode = {decoder: _decode_fit(chosen) for decoder, chosen in decode_rows.items()}

    sampling = _rows("sampling", rows)
    gpu = [m for m in sampling if m.method == "cuda"] or sampling
    single = [m for m in gpu if m.ranks == 1] or gpu
    per_token = sum((m.allocated_gib - m.weights_gib) * GIB / tokens(m) for m in single) / len(
        single
    )
    traced = [m for m in sampling if m.method == "trace"]
    degrees = {m.ranks for m in traced}
    global_share = _global_share(traced) if 1 in degrees and len(degrees) > 1 else 0.0

    text = _rows("text_encode", rows, "cuda") or _rows("text_encode", rows)
    with_reserved = [m for m in rows if m.reserved_gib is not None and m.phase in PHASES]
    measured_expandable = any(m.expandable for m in with_reserved)
    context, nccl = _rows("context", rows), _rows("nccl", rows)
    return Coefficients(
        decode=decode,
        dit_local=per_token * (1 - global_share),
        dit_global=per_token * global_share,
        text_encode_gib=max(m.allocated_gib - m.weights_gib for m in text),
        reserved_ratio=_reserved_ratios(with_reserved),
        context_gib=max(m.allocated_gib for m in context),
        nccl_gib=max(m.allocated_gib for m in nccl),
        expandable_measured=measured_expandable,
        provenance={
            **{f"decode ({d})": _describe(chosen) for d, chosen in decode_rows.items()},
            "sampling": _describe(single)
            + (f"; Ulysses split: {_describe(traced)}" if global_share else ""),
            "text_encode": _describe(text),
            "reserved_ratio": _describe(with_reserved)
            + "; per phase and allocator setting (the decode's per decoder and chunk_t), the "
            "ratio whose reserved figure errs least on the worst of its rows; a setting "
            "without a measurement of its own takes the default allocator's",
            "context": _describe(context) + "; the largest",
            "nccl": _describe(nccl),
        },
    )  # fmt: skip


def _decode_fit(rows: list[Measurement]) -> tuple[float, float]:
    """Activation bytes per rank pixel per dtype byte = fixed + per_frame x chunk_t."""
    return _least_squares([
        (float(m.chunk_t), (m.allocated_gib - m.weights_gib) * GIB
         / (decode_pixels(m.width, m.height, m.ranks) * DTYPE_BYTES[m.dtype]))
        for m in rows
    ])  # fmt: skip


def _reserved_ratios(rows: list[Measurement]) -> dict[tuple[str, bool, str, int], float]:
    """Reserved over allocated activations for each phase and allocator setting, and for the
    decode each decoder and chunk_t too: the ratio r that minimises the largest relative error
    of `weights + r x activations` against the measured reserved figures of its rows."""
    groups: dict[tuple[str, bool, str, int], list[Measurement]] = {}
    for m in rows:
        groups.setdefault((m.phase, m.expandable, "", 0), []).append(m)
        if m.phase == "decode":
            groups.setdefault((m.phase, m.expandable, m.decoder, m.chunk_t), []).append(m)
    return {key: _minimax_ratio(group) for key, group in groups.items()}


def _minimax_ratio(rows: list[Measurement]) -> float:
    """The r minimising max |(w + r a) / R - 1| over rows of weights w, activations a and
    reserved R. Each error grows with r, so the optimum is where the largest error above
    equals the largest below: the best of the pairwise crossings (or a row's exact ratio)."""
    points = [(m.weights_gib, m.allocated_gib - m.weights_gib, m.reserved_gib or 0.0) for m in rows]

    def worst(r: float) -> float:
        return max(abs((w + r * a) / reserved - 1) for w, a, reserved in points)

    candidates = [(reserved - w) / a for w, a, reserved in points]
    candidates += [
        (2 - w1 / r1 - w2 / r2) / (a1 / r1 + a2 / r2)
        for (w1, a1, r1), (w2, a2, r2) in itertools.combinations(points, 2)
    ]
    return min(candidates, key=worst)


def _global_share(traced: list[Measurement]) -> float:
    """The share of the DiT's activations every rank computes over the whole sequence, from
    traces at several Ulysses degrees: act(N) / act(1) = (1 - share) / N + share, with the
    activations per token of the whole sequence averaged over the traces of each degree."""
    per_token: dict[int, list[float]] = {}
    for m in traced:
        per_token.setdefault(m.ranks, []).append((m.allocated_gib - m.weights_gib) / tokens(m))
    mean = {n: sum(values) / len(values) for n, values in per_token.items()}
    # act(N)/act(1) - 1/N = share * (1 - 1/N): least squares through the origin.
    points = [(1 - 1 / n, act / mean[1] - 1 / n) for n, act in mean.items() if n > 1]
    return sum(x * y for x, y in points) / sum(x * x for x, _ in points)


@cache
def coefficients() -> Coefficients:
    return fit()


@dataclass(frozen=True)
class Workload:
    """What is generated: `width*height`, `frames` (4n+1), over `gpus` ranks (Ulysses degree)."""

    width: int
    height: int
    frames: int
    gpus: int

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0 or self.width % 32 or self.height % 32:
            raise UsageError(
                f"size {self.width}*{self.height} is not made of multiples of 32",
                why="the VAE divides each side by 16 and the DiT's patch by 2 more",
                fix="use a size such as 1280*704 or 704*1280",
            )
        if self.frames < 1 or (self.frames - 1) % TEMPORAL:
            raise UsageError(
                f"{self.frames} frames is not 4n+1",
                why="the VAE turns 1 + 4n frames into n + 1 latent frames",
                fix=f"use --frames {nearest_frames(self.frames)}",
            )
        if self.gpus < 1 or HEADS % self.gpus:
            raise UsageError(
                f"Ulysses over {self.gpus} GPUs is not possible",
                why=f"the Ulysses degree must divide the DiT's {HEADS} attention heads",
                fix=f"use one of {', '.join(map(str, ulysses_degrees()))} GPUs",
            )

    @property
    def size(self) -> str:
        return f"{self.width}*{self.height}"

    @property
    def latent(self) -> tuple[int, int, int]:
        """(frames, height, width) of the latent."""
        return (self.frames - 1) // TEMPORAL + 1, self.height // SPATIAL, self.width // SPATIAL

    @property
    def tokens(self) -> int:
        frames, height, width = self.latent
        return frames * (height // PATCH) * (width // PATCH)


def ulysses_problem(workload: Workload) -> str | None:
    """Why diffusers' Ulysses cannot split `workload` over its `gpus` ranks, as a sentence, or
    None when it can: the degree must divide the DiT's attention heads (`HEADS`) and the tokens
    (every rank gets an equal share of the sequence). Pure: the workload alone decides."""
    gpus = workload.gpus
    if gpus < 1 or HEADS % gpus:
        return (
            f"the DiT's {HEADS} attention heads do not split over {gpus} GPUs: the Ulysses "
            f"degree must divide them ({', '.join(map(str, ulysses_degrees()))})"
        )
    if workload.tokens % gpus:
        return (
            f"{workload.tokens} tokens ({workload.size} x {workload.frames} frames) do not split "
            f"over {gpus} GPUs: diffusers' Ulysses gives every rank an equal share of the tokens"
        )
    return None


def ulysses_degrees() -> tuple[int, ...]:
    return tuple(n for n in range(1, HEADS + 1) if HEADS % n == 0)


def nearest_frames(frames: int) -> int:
    return max(1, round((frames - 1) / TEMPORAL) * TEMPORAL + 1)


def parse_size(text: str) -> tuple[int, int]:
    """'1280*704' (or 1280x704) -> (1280, 704)."""
    match = re.fullmatch(r"\s*(\d+)\s*[*x×]\s*(\d+)\s*", text)
    if not match:
        raise UsageError(
            f"cannot read the size {text!r}",
            why="a size is WIDTH*HEIGHT in pixels",
            fix="write it like 1280*704",
        )
    return int(match.group(1)), int(match.group(2))


def tokens(m: Measurement) -> int:
    return Workload(m.width, m.height, m.frames, 1).tokens


def setup_of(m: Measurement) -> tuple[Workload, Settings]:
    """The workload and settings `benchmarks/memory_model.py` measured a row with: one GPU,
    each phase alone (the decode holding the VAE decoder only: the DiT offloaded), at the row's
    chunk_t, dtype, decoder and allocator setting. The text encoder's row has no size (any
    workload gives the same prediction)."""
    workload = Workload(m.width or 1280, m.height or 704, m.frames or 121, m.ranks)
    settings = Settings(
        chunk_t=max(1, m.chunk_t),
        decode_ranks=m.ranks if m.phase == "decode" else 1,
        decode_dtype=m.dtype,
        offload=True,
        expandable_segments=m.expandable,
        decoder=m.decoder,
    )
    return workload, settings


def decode_pixels(width: int, height: int, ranks: int) -> int:
    """Output pixels one decode rank produces: each frame is split along its longer side
    (`wanctl.vae.parallel`), the first ranks taking the remainder; a split rank also holds a
    halo row each side at the decoder's top resolution, where the largest activations live."""
    long, short = max(width, height), min(width, height)
    latent_rows = math.ceil(long / SPATIAL / ranks)
    halo = 2 * SPATIAL // TOP_UPSCALE if ranks > 1 else 0
    return (latent_rows * SPATIAL + halo) * short


@dataclass(frozen=True)
class Card:
    """The GPU a plan is for: the smallest of the rig."""

    name: str
    memory_mib: int

    @property
    def gib(self) -> float:
        return self.memory_mib / 1024

    @classmethod
    def described(cls, description: str) -> tuple[int, Card]:
        """'2x RTX 5090 32GB' -> (2, the card): NVML's size for the model when the memory is
        its own or not given, else the size given."""
        count, model, memory_gb = parse_rig(description)
        own = memory_gb in (None, round(model.memory_total_mib / 1024))
        return count, cls(model.name, model.memory_total_mib if own else (memory_gb or 0) * 1024)

    @classmethod
    def smallest(cls, inventory: GpuInventory) -> Card:
        sized = [gpu for gpu in inventory.live_gpus() if gpu.memory_total_mib]
        if not sized:
            raise UsageError(
                "no GPU with a known memory size on this rig",
                why=inventory.error or "NVML reported no usable GPU",
                fix='plan for a described rig: --rig "2x RTX 5090 32GB"',
            )
        gpu = min(sized, key=lambda g: g.memory_total_mib or 0)
        return cls(gpu.name or "GPU", gpu.memory_total_mib or 0)


@dataclass(frozen=True)
class Settings:
    """What `tune` chooses. `chunk_t` latent frames per decoder call (`WAN_VAE_DECODE_CHUNK_T`),
    `decode_ranks` ranks decoding in parallel, `dit` "replicated" or "fsdp", `offload` the DiT
    to the CPU before the decode, the text encoder on "gpu" (freed after encoding) or "cpu".
    `decoder` is wanctl's engine (`wanctl.vae`), or diffusers' `AutoencoderKLWan` frame loop
    (the official code's, to predict what it does)."""

    chunk_t: int = 1
    decode_ranks: int = 1
    decode_dtype: str = "bf16"
    dit: str = "replicated"
    offload: bool = False
    text_encoder: str = "gpu"
    expandable_segments: bool = True
    decoder: str = "wanctl"

    def __post_init__(self) -> None:
        if self.chunk_t < 1 or self.decode_ranks < 1:
            raise ValueError("chunk_t and decode_ranks start at 1")
        if self.decode_dtype not in DTYPE_BYTES:
            raise ValueError(f"decode_dtype {self.decode_dtype!r} is not bf16 or fp32")
        if self.dit not in ("replicated", "fsdp") or self.text_encoder not in ("gpu", "cpu"):
            raise ValueError("dit is replicated or fsdp, text_encoder gpu or cpu")
        if self.decoder not in ("wanctl", "diffusers"):
            raise ValueError("decoder is wanctl or diffusers")


@dataclass(frozen=True)
class Constraints:
    """What the user pinned; None leaves it to the search."""

    text_encoder: str | None = None
    offload: bool | None = None
    dit: str | None = None
    decode_dtype: str = "bf16"
    decode_ranks: int | None = None
    chunk_t: int | None = None


@dataclass(frozen=True)
class Phase:
    """One phase's peak on the worst rank, GiB. `parts` names what the weights and the
    activations are."""

    name: str
    weights_gib: float
    activations_gib: float
    allocated_gib: float
    reserved_gib: float
    total_gib: float  # reserved + CUDA context (+ NCCL buffers)
    parts: dict[str, float]


@dataclass(frozen=True)
class MemoryPlan:
    workload: Workload
    card: Card
    settings: Settings
    phases: tuple[Phase, ...]
    peak_phase: str  # the phase with the largest total
    peak_gib: float
    budget_gib: float  # the card less the safety margin
    headroom_gib: float  # the card less the peak
    fits: bool
    max_chunk_t: int  # the largest chunk_t that would still fit (0: none)
    env: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    source: str = "model"
    problem: str | None = None  # why the run cannot go whatever the memory (`ulysses_problem`)

    @property
    def runnable(self) -> bool:
        """It fits, and diffusers' Ulysses can split it over its GPUs."""
        return self.fits and self.problem is None


@dataclass(frozen=True)
class Alternative:
    change: str  # "81 frames instead of 121"
    plan: MemoryPlan


def _gib(n_bytes: float) -> float:
    return n_bytes / GIB


def weights(settings: Settings, gpus: int) -> dict[str, float]:
    """GiB of each model's weights on one rank's GPU when it is loaded."""
    dit = _gib((PARAMS["dit"] - DIT_FP32_PARAMS) * 2 + DIT_FP32_PARAMS * 4)
    return {
        "text encoder": _gib(PARAMS["text_encoder"] * 2),
        "DiT": dit / gpus if settings.dit == "fsdp" else dit,
        "VAE decoder": _gib(PARAMS["vae_decoder"] * DTYPE_BYTES[settings.decode_dtype]),
    }


def activations(workload: Workload, settings: Settings) -> dict[str, float]:
    """GiB of each phase's activations on the worst rank."""
    c = coefficients()
    sampling = workload.tokens * (c.dit_local / workload.gpus + c.dit_global)
    fixed, per_frame = c.decode[settings.decoder]
    if settings.dit == "fsdp":  # two blocks unsharded at a time (the forward prefetches one)
        sampling += 2 * PARAMS["dit_block"] * 2
    decode = (
        decode_pixels(workload.width, workload.height, settings.decode_ranks)
        * DTYPE_BYTES[settings.decode_dtype]
        * (fixed + per_frame * settings.chunk_t)
    )
    return {
        "text_encode": c.text_encode_gib,
        "sampling": _gib(sampling),
        "decode": _gib(decode),
    }


def phases(workload: Workload, settings: Settings) -> tuple[Phase, ...]:
    """Each phase's peak on the worst rank: the weights held, the activations, the allocator's
    reserve and the context."""
    c = coefficients()
    held = weights(settings, workload.gpus)
    acts = activations(workload, settings)
    residents = {
        "text_encode": {"text encoder": held["text encoder"]},
        "sampling": {"DiT": held["DiT"]},
        "decode": {} if settings.offload else {"DiT": held["DiT"]},
    }
    overhead = c.context_gib + (c.nccl_gib if workload.gpus > 1 else 0.0)
    result = []
    for name in PHASES:
        if name == "text_encode" and settings.text_encoder == "cpu":
            continue
        on_gpu = {**residents[name], "VAE decoder": held["VAE decoder"]}
        weights_gib = sum(on_gpu.values())
        activation = acts[name]
        ratio = c.ratio(name, settings.expandable_segments, settings.decoder, settings.chunk_t)
        reserved = weights_gib + ratio * activation
        result.append(
            Phase(
                name=name,
                weights_gib=weights_gib,
                activations_gib=activation,
                allocated_gib=weights_gib + activation,
                reserved_gib=reserved,
                total_gib=reserved + overhead,
                parts={**on_gpu, "activations": activation, "context": overhead},
            )
        )
    return tuple(result)


def allocator_conf(platform: str) -> str | None:
    """`PYTORCH_CUDA_ALLOC_CONF`: expandable segments (the fix for fragmentation OOMs) except
    where they are known to misbehave: on Windows a failed mapping leaves the allocator broken
    (pytorch#188008). Never with max_split_size_mb: the two together trip an internal assert
    (pytorch#119452), and max_split_size_mb is a last resort that no measurement here needs."""
    return None if platform.startswith("win") else "expandable_segments:True"


def environment(
    settings: Settings, platform: str, nccl_env: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The variables to export for a run with `settings`."""
    env = {"WAN_VAE_DECODE_CHUNK_T": str(settings.chunk_t)}
    conf = allocator_conf(platform)
    if conf:
        env["PYTORCH_CUDA_ALLOC_CONF"] = conf
    return {**env, **(nccl_env or {})}


def predict(
    workload: Workload,
    card: Card,
    settings: Settings,
    *,
    platform: str = "linux",
    nccl_env: Mapping[str, str] | None = None,
) -> MemoryPlan:
    """The plan of `settings` on `card`, fitting or not."""
    if not 1 <= settings.decode_ranks <= workload.gpus:
        raise UsageError(
            f"{settings.decode_ranks} decode ranks for a run on {workload.gpus} GPUs",
            fix=f"decode on 1 to {workload.gpus} ranks",
        )
    budget = card.gib * (1 - SAFETY_MARGIN)
    result = phases(workload, settings)
    peak = max(result, key=lambda phase: phase.total_gib)
    return MemoryPlan(
        workload=workload,
        card=card,
        settings=settings,
        phases=result,
        peak_phase=peak.name,
        peak_gib=peak.total_gib,
        budget_gib=budget,
        headroom_gib=card.gib - peak.total_gib,
        fits=peak.total_gib <= budget,
        max_chunk_t=_max_chunk_t(workload, settings, budget),
        env=environment(settings, platform, nccl_env),
        notes=_notes(settings),
        problem=ulysses_problem(workload),
    )


def _max_chunk_t(workload: Workload, settings: Settings, budget: float) -> int:
    """The largest chunk_t whose plan still fits (decoding everything at once at most)."""
    best = 0
    for chunk_t in range(1, max(1, workload.latent[0] - 1) + 1):
        trial = dataclasses.replace(settings, chunk_t=chunk_t)
        if max(phase.total_gib for phase in phases(workload, trial)) > budget:
            break
        best = chunk_t
    return best


def _notes(settings: Settings) -> tuple[str, ...]:
    notes = []
    if settings.chunk_t == 1:
        notes.append(
            "chunk_t 1: more latent frames per decoder call buy no speed and each costs a "
            "frame of activations"
        )
    if settings.text_encoder == "gpu":
        notes.append(
            "the text encoder is freed from the GPU once the prompt is encoded, before the DiT "
            "is loaded"
        )
    return tuple(notes)


def candidates(workload: Workload, constraints: Constraints, platform: str) -> Iterator[Settings]:
    """Settings to try, cheapest compromise first: the DiT replicated before FSDP (FSDP
    all-gathers every layer at every step), the text encoder on the GPU before the CPU (a CPU
    encode of 5.7 B parameters takes tens of seconds), no offload before offload (moving the DiT
    costs a few seconds a run). Decode on every rank and chunk_t 1 unless pinned: fewer ranks or
    larger chunks only add memory."""
    dits = [constraints.dit] if constraints.dit else ["replicated", "fsdp"]
    if workload.gpus == 1:
        dits = [d for d in dits if d == "replicated"] or dits
    encoders = [constraints.text_encoder] if constraints.text_encoder else ["gpu", "cpu"]
    offloads = [constraints.offload] if constraints.offload is not None else [False, True]
    for dit, encoder, offload in itertools.product(dits, encoders, offloads):
        yield Settings(
            chunk_t=constraints.chunk_t or 1,
            decode_ranks=constraints.decode_ranks or workload.gpus,
            decode_dtype=constraints.decode_dtype,
            dit=dit,
            offload=offload,
            text_encoder=encoder,
            expandable_segments=allocator_conf(platform) is not None,
        )


def plan(
    workload: Workload,
    card: Card,
    constraints: Constraints = Constraints(),
    *,
    platform: str = "linux",
    nccl_env: Mapping[str, str] | None = None,
) -> MemoryPlan:
    """The first settings that fit, in `candidates` order; when none does, the plan with the
    lowest peak (`fits` False: see `alternatives`). A run diffusers' Ulysses cannot split over
    its GPUs is planned all the same but carries the `problem` (`ulysses_problem`), so that it
    is not `runnable` whatever the memory: `fits` stays the memory's verdict."""
    tried = [
        predict(workload, card, settings, platform=platform, nccl_env=nccl_env)
        for settings in candidates(workload, constraints, platform)
    ]
    return next((p for p in tried if p.fits), min(tried, key=lambda p: p.peak_gib))


def alternatives(
    workload: Workload,
    card: Card,
    constraints: Constraints = Constraints(),
    *,
    platform: str = "linux",
) -> tuple[Alternative, ...]:
    """The nearest runs that would fit and that Ulysses can split: each pin released, fewer
    frames, a smaller size of the same shape, more GPUs (fewer first, when the tokens or heads
    do not split over these)."""

    def fitting(w: Workload, c: Constraints = constraints) -> MemoryPlan | None:
        if ulysses_problem(w):
            return None
        found = plan(w, card, c, platform=platform)
        return found if found.runnable else None

    found: list[Alternative] = []
    released = {
        "text_encoder": dataclasses.replace(constraints, text_encoder=None),
        "offload": dataclasses.replace(constraints, offload=None),
        "dit": dataclasses.replace(constraints, dit=None),
        "decode_ranks": dataclasses.replace(constraints, decode_ranks=None),
        "chunk_t": dataclasses.replace(constraints, chunk_t=None),
    }
    for name, unpinned in released.items():
        pinned = getattr(constraints, name)
        if pinned is not None and (p := fitting(workload, unpinned)):
            found.append(Alternative(f"{_label(name, p.settings)} (instead of {pinned})", p))
    if constraints.decode_dtype == "fp32" and (
        p := fitting(workload, dataclasses.replace(constraints, decode_dtype="bf16"))
    ):
        found.append(Alternative("decode in bf16 (instead of fp32)", p))
    for frames in range(workload.frames - TEMPORAL, 0, -TEMPORAL):
        if p := fitting(dataclasses.replace(workload, frames=frames)):
            found.append(Alternative(f"{frames} frames (instead of {workload.frames})", p))
            break
    for width, height in _smaller_sizes(workload.width, workload.height):
        if p := fitting(dataclasses.replace(workload, width=width, height=height)):
            found.append(Alternative(f"{width}*{height} (instead of {workload.size})", p))
            break
    pins = dataclasses.replace(constraints, decode_ranks=None)
    if ulysses_problem(workload):
        for gpus in (n for n in reversed(ulysses_degrees()) if n < workload.gpus):
            if p := fitting(dataclasses.replace(workload, gpus=gpus), pins):
                found.append(Alternative(f"{gpus} GPUs (instead of {workload.gpus})", p))
                break
    for gpus in (n for n in ulysses_degrees() if n > workload.gpus):
        if p := fitting(dataclasses.replace(workload, gpus=gpus), pins):
            found.append(Alternative(f"{gpus} GPUs (instead of {workload.gpus})", p))
            break
    return tuple(found)  # fmt: skip


def _label(name: str, settings: Settings) -> str:
    value = getattr(settings, name)
    if name == "text_encoder":
        return f"text encoder on {value.upper()}"
    if name == "offload":
        return "offload the DiT" if value else "no offload"
    if name == "decode_ranks":
        return f"decode on {value} ranks"
    return f"DiT {value}" if name == "dit" else f"chunk_t {value}"


def _smaller_sizes(width: int, height: int) -> Iterator[tuple[int, int]]:
    """Sizes of about the same shape, multiples of 32, largest first."""
    for new_width in range(width - 32, 31, -32):
        new_height = max(32, round(new_width * height / width / 32) * 32)
        if new_height <= height:
            yield new_width, new_height
