"""The memory model: each phase's peak GPU memory on the worst rank of a Wan2.2 run (TI2V-5B
with both backends, T2V-A14B and I2V-A14B with diffusers), for what the backend really holds
in it (`wanctl.core.settings.placements`).

- `text_encode` (UMT5 on the GPU): its bf16 weights (and, for the official code, its fp32 VAE
  and, with several ranks, the DiT, loaded at construction) and its activations at 512 tokens.
- `image_encode` (I2V-A14B): the fp32 VAE, the conditioning clip on the GPU and the encoder's
  activations, per pixel of a frame (it encodes the clip a few frames at a time).
- `sampling`: the DiT's weights, or both experts' (bf16, or fp8-stored; whole, or an FSDP 1/N
  shard plus two gathered bf16 blocks; one expert at a time with `offload`), what else the
  backend keeps (the fp32 VAE with an image for diffusers; the fp32 VAE always, and UMT5 unless
  offloaded, for the official code), and the activations of one forward over this rank's
  tokens, per DiT architecture. Ulysses splits the sequence: the
  activations are `tokens x (per_local / N + per_global)`, the second part being what every rank
  computes over the whole sequence (rotary tables, the gathered output).
- `decode`: wanctl's engine in both backends, holding the VAE decoder alone, and the activations
  of one decoder call of `chunk_t` latent frames over this rank's rows (rows split over the
  decode ranks, one halo row each side at the decoder's top resolution).

Weights come from the parameter counts (`PARAMS`, exact); activations from coefficients fitted
on measured runs (`wanctl.tune.fit`, `wanctl.tune.measurements`); the allocator reserves a ratio
of the activations (`Coefficients.ratio`, per phase and allocator setting, and for the decode
per decoder, VAE and chunk_t); the CUDA context (and NCCL's buffers with several GPUs) comes on top.
A plan fits when every phase leaves `SAFETY_MARGIN` of the card free. tests/test_memory.py
checks the model against every measured run, on sizes the fit used and on sizes it left out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from wanctl.core.families import TI2V_5B, Family
from wanctl.core.links import StepTime
from wanctl.core.settings import (
    DTYPE_BYTES,
    EXPERTS,
    FP8_CAPABILITY,
    GIB,
    Placement,
    Resident,
    Settings,
    placements,
    run_problem,
)
from wanctl.core.variables import busy_chunk_t
from wanctl.core.workload import Workload, decode_pixels
from wanctl.errors import UsageError
from wanctl.probe.base import GpuInventory, memory_class_gb
from wanctl.probe.catalog import parse_rig
from wanctl.tune.fit import Coefficients, coefficients

# A plan fits when its worst phase leaves this share of the card free (policy, not a
# measurement): the fits below match their GPU rows within 6%, and a desktop session or
# another process may hold a few hundred MiB.
SAFETY_MARGIN = 0.05


@dataclass(frozen=True)
class Card:
    """The GPU a plan is for: the smallest of the rig, and the lowest compute capability of
    its GPUs (None: unknown)."""

    name: str
    memory_mib: int
    compute_capability: tuple[int, int] | None = None

    @property
    def fp8_tensor_cores(self) -> bool:
        return self.compute_capability is not None and self.compute_capability >= FP8_CAPABILITY

    @property
    def gib(self) -> float:
        return self.memory_mib / 1024

    @classmethod
    def described(cls, description: str) -> tuple[int, Card]:
        """'2x RTX 5090 32GB' -> (2, the card): NVML's size for the model when the memory is
        its own or not given, else the size given."""
        count, model, memory_gb = parse_rig(description)
        own = memory_gb in (None, memory_class_gb(model.memory_total_mib))
        memory_mib = model.memory_total_mib if own else (memory_gb or 0) * 1024
        return count, cls(model.name, memory_mib, model.compute_capability)

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
        capabilities = [g.compute_capability for g in inventory.live_gpus()]
        known = [c for c in capabilities if c is not None]
        lowest = min(known) if known and len(known) == len(capabilities) else None
        return cls(gpu.name or "GPU", gpu.memory_total_mib or 0, lowest)


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
    placement: Placement


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
    host_problem: str | None = None  # why the host's RAM cannot hold its ranks (where known)
    step: StepTime | None = None  # the layout's predicted seconds per step (links known)

    @property
    def runnable(self) -> bool:
        """It fits, on the GPUs and in the host's RAM where known, and the backend can split
        it over its GPUs."""
        return self.fits and self.problem is None and self.host_problem is None


def _gib(n_bytes: float) -> float:
    return n_bytes / GIB


def resident_gib(resident: Resident, family: Family = TI2V_5B) -> float:
    """GiB of one network of `family` (or its FSDP shard) on a rank's GPU."""
    params = PARAMS[family.name]
    if resident.network in DITS and resident.dtype == "bf16":  # diffusers keeps a few in fp32
        n_bytes = (params["dit"] - params["dit_fp32"]) * 2 + params["dit_fp32"] * 4
    elif resident.network in DITS and resident.dtype == "fp8":  # the linear layers only
        rest = params["dit"] - params["dit_fp8"] - params["dit_fp32"]
        n_bytes = params["dit_fp8"] + rest * 2 + params["dit_fp32"] * 4
    else:
        n_bytes = params[_PARAM_KEYS[resident.network]] * DTYPE_BYTES[resident.dtype]
    return _gib(n_bytes / resident.shards)


DITS = ("DiT", *EXPERTS)
_PARAM_KEYS = {"DiT": "dit", "text encoder": "text_encoder", "VAE": "vae",
               "VAE decoder": "vae_decoder"}  # fmt: skip


def activations_gib(
    placement: Placement, workload: Workload, settings: Settings, c: Coefficients | None = None
) -> float:
    """GiB of a phase's activations on the worst rank: UMT5 at 512 tokens; the conditioning
    clip (on the GPU in fp32) and the VAE encoder's work on its frames; one DiT forward over
    this rank's share of the tokens (plus the two bf16 blocks FSDP gathers at a time); one
    decoder call of `chunk_t` latent frames over this rank's rows. `c`: other coefficients than
    the fitted ones (a benchmark judging a fit on rows it left out)."""
    c = c or coefficients()
    family = workload.family
    if placement.phase == "text_encode":
        return c.text_encode_gib
    if placement.phase == "image_encode":
        area = workload.width * workload.height
        return _gib(clip_bytes(workload) + area * c.image_encode[family.vae.name])
    if placement.phase == "sampling":
        n_bytes = workload.tokens * (
            c.dit_local[family.dit_name] / settings.ulysses(workload.gpus)
            + c.dit_global[family.dit_name]
        )
        if any(r.network in DITS and r.shards > 1 for r in placement.resident):
            n_bytes += 2 * PARAMS[family.name]["dit_block"] * 2
        return _gib(n_bytes)
    fixed, per_frame = c.decode[settings.decoder, family.vae.name]
    pixels = decode_pixels(workload.width, workload.height, settings.decode_ranks,
                           family.vae.spatial)  # fmt: skip
    return _gib(
        pixels * DTYPE_BYTES[settings.decode_dtype] * (fixed + per_frame * settings.chunk_t)
    )


def clip_bytes(workload: Workload) -> int:
    """The I2V conditioning clip (the image and F-1 zero frames, RGB float32) on the GPU."""
    return 3 * workload.frames * workload.width * workload.height * 4


def phases(
    workload: Workload, settings: Settings, c: Coefficients | None = None
) -> tuple[Phase, ...]:
    """Each phase's peak on the worst rank, from what the backend holds in it
    (`wanctl.core.settings.placements`): the weights, the activations, the allocator's reserve
    and the context."""
    c = c or coefficients()
    overhead = c.context_gib + (c.nccl_gib if workload.gpus > 1 else 0.0)
    result = []
    family = workload.family
    for placement in placements(settings, workload.gpus, image=workload.image, family=family):
        on_gpu = {r.describe(): resident_gib(r, family) for r in placement.resident}
        weights_gib = sum(on_gpu.values())
        activation = activations_gib(placement, workload, settings, c)
        ratio = c.ratio(
            placement.phase, settings.expandable_segments, settings.decoder, settings.chunk_t,
            family.vae.name,
        )  # fmt: skip
        reserved = weights_gib + ratio * activation
        result.append(
            Phase(
                name=placement.phase,
                weights_gib=weights_gib,
                activations_gib=activation,
                allocated_gib=weights_gib + activation,
                reserved_gib=reserved,
                total_gib=reserved + overhead,
                parts={**on_gpu, "activations": activation, "context": overhead},
                placement=placement,
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
    """The variables to export for a run with `settings`: the allocator configuration only
    for the expandable segments these settings were priced with."""
    env = {"WAN_VAE_DECODE_CHUNK_T": str(settings.chunk_t)}
    conf = allocator_conf(platform) if settings.expandable_segments else None
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
    reason = unplanned(workload, settings.backend)
    if reason:
        raise UsageError(
            f"no memory plan for {workload.family.name} with the {settings.backend} backend",
            why=reason,
            fix="plan it with --backend diffusers",
        )
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
        problem=run_problem(workload, settings),
    )


def unplanned(workload: Workload, backend: str) -> str | None:
    """Why the memory model cannot price this backend's run of `workload`, or None."""
    if backend == "wan-repo" and workload.family.experts == 2:
        return (
            "the memory model prices the official code's TI2V-5B runs only: where its "
            f"generate.py keeps the {workload.family.name} experts has not been measured"
        )
    return None


def chunk_note(settings: Settings) -> str | None:
    """Why the decode runs at its chunk_t, when wanctl chose it (`busy_chunk_t`)."""
    busy, ranks = busy_chunk_t(settings.decode_ranks), settings.decode_ranks
    if settings.chunk_t == busy > 1:
        return (
            f"chunk_t {busy}: each of {ranks} ranks decodes a thin slab of the frame, too "
            f"little per decoder call to keep its GPU busy; {busy} latent frames a call do "
            "(activations of a slab, not of a frame)"
        )
    if settings.chunk_t == busy == 1:
        return (
            f"chunk_t 1: with {ranks} decoding rank(s) more latent frames per decoder call buy "
            "little speed and each costs a frame of activations"
        )
    if settings.chunk_t == 1:
        return (
            f"chunk_t 1: chunk_t {busy} would keep the {ranks} decoding GPUs busier, where it fits"
        )
    return None


def _max_chunk_t(workload: Workload, settings: Settings, budget: float) -> int:
    """The largest chunk_t whose plan still fits (decoding everything at once at most)."""
    best = 0
    for chunk_t in range(1, max(1, workload.latent[0] - 1) + 1):
        trial = dataclasses.replace(settings, chunk_t=chunk_t)
        if max(phase.total_gib for phase in phases(workload, trial)) > budget:
            break
        best = chunk_t
    return best


# The fp8-stored A14B expert's cost to quality: relative L2 error of one forward against bf16,
# `benchmarks/experts.py` (now rows of `benchmarks/dit.py`) on one H200 (torch 2.11.0+cu130,
# diffusers 0.42.1, 2026-12-02; random weights, 1280*720 x 81): on noise, and on a smooth field.
FP8_ERROR = (5.75e-2, 5.87e-2)
# fp8 compute's (`--dit-precision fp8`, compiled): on noise, TI2V-5B at 1280*704 x 121 and an A14B
# expert at 832*480 x 81, `benchmarks/dit.py` on one H200 (torchao 0.18.0, 2026-12-02).
FP8_COMPUTE_ERROR = (2.63e-2, 3.22e-2)
# The offload swap at the boundary: the low-noise expert (26.6 GiB) from pageable host memory
# to the GPU, `wanctl generate --model synthetic-a14b --offload` on one H200 (2026-12-02).
SWAP_SECONDS = 6.83


def _notes(settings: Settings) -> tuple[str, ...]:
    notes = []
    if settings.dit_precision == "fp8":
        notes.append(
            "the DiT's linear layers computed in fp8 (torchao, a scale per row): half their "
            "memory, a forward 0.67x (TI2V-5B) to 0.73x (A14B) of eager bf16's once compiled, "
            f"for a relative L2 error per forward of {FP8_COMPUTE_ERROR[0]:.1e} (TI2V-5B) to "
            f"{FP8_COMPUTE_ERROR[1]:.1e} (A14B) against bf16, measured on an H200 with random "
            "weights (benchmarks/dit.py); loaded a block at a time, each quantized before the "
            "next is allocated"
        )
    elif settings.dit_storage == "fp8":
        notes.append(
            "the DiT's linear layers stored in fp8 and computed in bf16: half their memory, for "
            f"a relative L2 error per forward of {FP8_ERROR[0]:.1e} (noise) to {FP8_ERROR[1]:.1e}"
            " (a smooth field) against bf16, measured on an H200 with random A14B weights "
            "(benchmarks/dit.py)"
        )
    if settings.offload and settings.backend == "diffusers":
        notes.append(
            "the low-noise expert waits in host RAM and replaces the high-noise one at the "
            f"boundary: one swap a run ({SWAP_SECONDS:.1f} s on an H200)"
        )
    if settings.dit == "fsdp" and settings.backend == "diffusers":
        notes.append(
            "each DiT sharded with FSDP2: every forward all-gathers each block from the other "
            "ranks (traffic on every step, over the links doctor measures)"
        )
    if (chunk := chunk_note(settings)) is not None:
        notes.append(chunk)
    if settings.text_encoder == "gpu" and settings.backend == "diffusers":
        notes.append(
            "the text encoder is freed from the GPU once the prompt is encoded, before the DiT "
            "is loaded"
        )
    if settings.backend == "wan-repo":
        notes.append(
            "the official code keeps its fp32 VAE on the GPU throughout"
            + (", and UMT5 too unless --offload_model" if settings.text_encoder == "gpu" else "")
            + "; wanctl decodes in a process of its own once it has exited"
        )
    return tuple(notes)


# Parameters of each network of each model (a DiT: one expert; `dit_fp8`: the linear layers
# layerwise casting stores in fp8; `dit_fp32`: what diffusers keeps in fp32,
# `_keep_in_fp32_modules`; `vae`: encoder and decoder, what the pipelines hold to encode an
# image): `wanctl.models.configs.parameter_counts(family)` on the meta device (diffusers
# 0.42.1, transformers of this venv); tests/test_memory.py checks them against it.
_UMT5_XXL = 5_680_910_336
_A14B_EXPERT = {
    "dit_fp32": 29_184_000,
    "dit_fp8": 14_053_314_560,
    "dit_block": 351_394_304,
    "text_encoder": _UMT5_XXL,
    "vae_decoder": 73_295_603,
    "vae": 126_892_531,
}
PARAMS: dict[str, dict[str, int]] = {
    "ti2v-5B": {"dit": 4_999_787_712, "dit_fp32": 10_973_184, "dit_fp8": 4_908_595_200,
                "dit_block": 163_656_704, "text_encoder": _UMT5_XXL,
                "vae_decoder": 555_051_580, "vae": 704_688_668},
    "t2v-A14B": {"dit": 14_288_491_584, **_A14B_EXPERT},
    "i2v-A14B": {"dit": 14_288_901_184, **_A14B_EXPERT},  # 36 input channels
}  # fmt: skip
