"""Seconds per sampling step of each parallel layout, for tune to choose between them.

A step runs the DiT on the prompt and on the negative prompt:
- Ulysses N: every rank runs both passes over 1/N of the work (its tokens through the linear
  layers, 1/N of the heads over every token in attention), with `LAYER_ALL_TO_ALLS`
  all-to-alls per layer and pass;
- CFG 2 x Ulysses N/2: each half runs one pass over 1/(N/2) of the work, with the all-to-alls
  of Ulysses N/2, plus one exchange of the DiT's output between the halves.

Compute: one forward's FLOPs (the linear layers, self-attention over every token, the
cross-attention over 512 text tokens) at the rate one forward reached on an H200
(`ANCHORS`, measured), scaled for other cards by their dense bf16 rate (`BF16_TFLOPS`, vendor
figures: assumed), divided by the ranks that share it (measured on one H200 by
`benchmarks/layouts.py`, 2026-12-02: a rank's share of a TI2V-5B forward at Ulysses 2, 4 and 8
took 0.99, 0.99 and 1.01 x the whole forward's / N). Communication: the rig's measured
collectives (`wanctl.core.links`, from `doctor --full`), scaled to the message size; without
them, a bandwidth assumed from the interconnect the fingerprint names. Every assumed figure is
named in `StepTime.assumed`. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass

from wanctl.core.architectures import TEXT_TOKENS
from wanctl.core.links import (
    LAYER_ALL_TO_ALLS,
    Collective,
    StepTime,
    all_to_all_bytes,
    cfg_exchange_bytes,
    layers,
    nearest,
)
from wanctl.core.settings import Settings
from wanctl.core.workload import Workload
from wanctl.tune.predict import PARAMS

# One forward measured on one NVIDIA H200 (torch 2.11.0+cu130, diffusers 0.42.1): TI2V-5B at
# 1280*704 x 121 (27,280 tokens), shared/notes/facts.md (1.23 s, 2026-12-01); an A14B expert at
# 1280*720 x 81 (75,600 tokens), benchmarks/experts.py (12.16 s, 2026-12-02; now benchmarks/dit.py).
ANCHORS = {"TI2V-5B": (27_280, 1.23), "A14B expert": (75_600, 12.16)}
ANCHOR_CARD = "NVIDIA H200"
# One forward's seconds against eager bf16's, by (compiled, precision), `benchmarks/dit.py` on
# one H200 (torch 2.11.0+cu130, 2026-12-02): TI2V-5B at 1280*704 x 121, eager bf16 1.187 s,
# compiled 0.926 s, fp8 compute eager 1.325 s, compiled 0.791 s; an A14B expert at 832*480 x 81
# (32,760 tokens), eager 3.265 s, compiled 2.823 s, fp8 eager 3.402 s, compiled 2.390 s.
RELATIVE_FORWARD = {
    "TI2V-5B": {(True, "bf16"): 0.926 / 1.187, (False, "fp8"): 1.325 / 1.187,
                (True, "fp8"): 0.791 / 1.187},
    "A14B expert": {(True, "bf16"): 2.823 / 3.265, (False, "fp8"): 3.402 / 3.265,
                    (True, "fp8"): 2.390 / 3.265},
}  # fmt: skip
# Dense bf16 tensor rate with fp32 accumulation, TFLOP/s, from the vendors' datasheets (not
# measured here): the ratio to the H200's scales the anchors to a card. Matched on the NVML
# name, most specific first.
BF16_TFLOPS = (
    ("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("H800", 989.0), ("H20", 148.0),
    ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L40", 181.0), ("L20", 119.5),
    ("L4", 121.0), ("RTX 6000 Ada", 364.0), ("RTX PRO 6000", 503.8), ("RTX A6000", 154.8),
    ("RTX 5090", 209.5), ("RTX 5080", 112.6), ("RTX 4090", 165.2), ("RTX 4080", 97.5),
    ("RTX 3090", 71.0), ("A10", 125.0), ("A40", 149.7), ("B200", 2250.0),
)  # fmt: skip
# Per-rank all-to-all bandwidth assumed by interconnect when none was measured, GB/s: NVLink
# (NCCL reaches about 150 on H100 NVLink 4), PCIe with P2P, PCIe through host memory (every
# GeForce card: NCCL's SHM transport). Rough: `wanctl doctor --full` measures the rig's own.
ASSUMED_GB_PER_S = {"nvlink": 150.0, "pcie-p2p": 12.0, "pcie": 6.0, "mixed": 6.0}


@dataclass(frozen=True)
class RigLinks:
    """What prices a rig's communication: its interconnect (the fingerprint's last word:
    single, nvlink, pcie-p2p, pcie, mixed) and the collectives `doctor --full` measured."""

    interconnect: str
    measured: tuple[Collective, ...] = ()

    @classmethod
    def of(cls, fingerprint: str, measured: tuple[Collective, ...] = ()) -> RigLinks:
        kind = next((k for k in ("pcie-p2p", *ASSUMED_GB_PER_S, "single")
                     if fingerprint.endswith(k)), "pcie")  # fmt: skip
        return cls(kind, measured)


def forward_flops(workload: Workload) -> float:
    """FLOPs of one DiT forward over the whole sequence: 2 per parameter and token in the
    linear layers, 4 x tokens^2 x dim per self-attention, 4 x tokens x 512 x dim per
    cross-attention."""
    dit = workload.family.dit
    dim = dit["num_attention_heads"] * dit["attention_head_dim"]
    tokens, count = workload.tokens, layers(workload)
    linear = 2 * PARAMS[workload.family.name]["dit"] * tokens
    attention = count * 4 * dim * (tokens * tokens + tokens * TEXT_TOKENS)
    return float(linear + attention)


def card_rate(card_name: str) -> float | None:
    return next((rate for key, rate in BF16_TFLOPS if key in card_name), None)


def forward_seconds(workload: Workload, card_name: str) -> tuple[float, tuple[str, ...]]:
    """One forward over the whole sequence on one card, and what that assumed."""
    anchor_tokens, anchor_s = ANCHORS[workload.family.dit_name]
    anchor = Workload(1280, 704, 121, 1) if anchor_tokens == 27_280 else Workload(
        1280, 720, 81, 1, family=workload.family
    )  # fmt: skip
    achieved = forward_flops(anchor) / anchor_s  # FLOP/s one forward reached on the H200
    assumed: list[str] = []
    rate, anchor_rate = card_rate(card_name), card_rate(ANCHOR_CARD)
    if ANCHOR_CARD not in card_name:
        if rate is None or anchor_rate is None:
            assumed.append(f"{card_name}'s bf16 rate unknown: the H200's")
        else:
            achieved *= rate / anchor_rate
            assumed.append(f"{card_name} at {rate:g} / {anchor_rate:g} of the H200's measured "
                           "forward (vendor bf16 rates)")  # fmt: skip
    return forward_flops(workload) / achieved, tuple(assumed)


def step_time(
    workload: Workload,
    settings: Settings,
    card_name: str,
    interconnect: str,
    links: tuple[Collective, ...] = (),
) -> StepTime:
    """Predicted seconds per step of `settings`' layout for `workload` on `gpus` cards."""
    forward, assumed = forward_seconds(workload, card_name)
    relative, note = relative_forward(settings, workload.family.dit_name)
    forward *= relative
    assumed += note
    degree = settings.ulysses(workload.gpus)
    if relative != 1.0 and degree > 1:
        assumed += ("the compiled forward's speed-up measured on one GPU (whole blocks); under "
                    "Ulysses the blocks compile in pieces around the all-to-alls",)  # fmt: skip
    passes = 2 // settings.cfg_groups  # passes a rank runs per step
    compute = passes * forward / degree
    comm, more = _all_to_alls(workload, degree, interconnect, links)
    comm *= passes
    if settings.cfg_parallel:
        exchange, note = _collective("cfg_exchange", 2, cfg_exchange_bytes(workload),
                                     interconnect, links)  # fmt: skip
        comm += exchange
        more += note
    return StepTime(settings.layout(workload.gpus), compute, comm, (*assumed, *dict.fromkeys(more)))


def relative_forward(settings: Settings, dit_name: str) -> tuple[float, tuple[str, ...]]:
    """One forward's time with `settings`' compile and precision against eager bf16's, and
    what that assumed (the ratio of another DiT); measured on one H200 with whole compiled
    blocks, the ratio is taken for other cards and for Ulysses (whose blocks compile in pieces)
    as `forward_seconds` takes the H200's forward."""
    key = (settings.compile, settings.dit_precision)
    layerwise = settings.dit_storage == "fp8" and settings.dit_precision == "bf16"
    if key == (False, "bf16") or settings.backend == "wan-repo" or layerwise:
        return 1.0, ()  # eager: the official code, or fp8 storage (`models.compiled`)
    measured = RELATIVE_FORWARD.get(dit_name)
    note: tuple[str, ...]
    if measured is None or key not in measured:
        measured, note = RELATIVE_FORWARD["TI2V-5B"], (f"{dit_name}: TI2V-5B's speed-up from "
                                                        "compiling and fp8 compute",)  # fmt: skip
    else:
        note = ()
    return measured[key], note


def _all_to_alls(
    workload: Workload, degree: int, interconnect: str, links: tuple[Collective, ...]
) -> tuple[float, tuple[str, ...]]:
    """Seconds of one pass's all-to-alls at `degree` (none on one rank)."""
    if degree == 1:
        return 0.0, ()
    one, note = _collective("all_to_all", degree, all_to_all_bytes(workload, degree),
                            interconnect, links)  # fmt: skip
    return one * LAYER_ALL_TO_ALLS * layers(workload), note


def _collective(
    op: str, ranks: int, n_bytes: int, interconnect: str, links: tuple[Collective, ...]
) -> tuple[float, tuple[str, ...]]:
    """Seconds of one `op` of `n_bytes` per rank: the measured one nearest in size, scaled;
    else at the interconnect's assumed bandwidth."""
    measured = nearest(links, op, ranks, n_bytes)
    if measured is not None:
        return measured.seconds * n_bytes / measured.bytes_per_rank, ()
    gb_per_s = ASSUMED_GB_PER_S.get(interconnect, ASSUMED_GB_PER_S["pcie"])
    note = (f"{op.replace('_', '-')} over {ranks} GPUs not measured: {gb_per_s:g} GB/s per "
            f"rank assumed for {interconnect} (run `wanctl doctor --full --save`)")  # fmt: skip
    return n_bytes / (gb_per_s * 1e9), (note,)
