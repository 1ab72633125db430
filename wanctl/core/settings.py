"""What a run does with GPU memory, as `tune` chooses it and `generate` executes it: the backend,
and where each network is in each phase (`placements`). The memory model prices exactly these
placements, so that a plan describes the run that will happen. Torch-free.

The two backends place the networks differently (read from their code):

- `diffusers` (`wanctl.workers.generate`): UMT5 encodes the prompt (on the GPU, or on the CPU)
  and is freed; the DiT is then loaded in bf16 (or stored in fp8, computed in bf16), replicated
  on every rank (Ulysses splits the tokens, not the weights) or with `dit="fsdp"` a 1/N FSDP2
  shard (two blocks gathered at a time); the whole VAE in fp32 beside it only when an image
  conditions the video; the DiT and that VAE are freed after sampling, and the decode loads the
  VAE decoder alone, in the decode dtype. The A14B models hold both experts so, or with
  `offload` the low-noise one on the CPU until the boundary, when the two trade places.
- `wan-repo` (the official `generate.py`, with `--convert_model_dtype`): the whole VAE in fp32
  is on every rank's GPU from construction to exit; the DiT is on the GPU from construction
  when several ranks run it (bf16, or with `--dit_fsdp` a 1/N shard of fp32 weights, two bf16
  blocks gathered at a time; `--convert_model_dtype` is ignored under FSDP), else from the start
  of sampling; UMT5 (bf16) moves to the GPU to encode and stays there unless `--offload_model`
  sends it back (`--t5_cpu`: it never leaves the CPU). wanctl's hook takes the decode over: the
  official process exits after saving the latents, and wanctl's engine decodes them in a process
  of its own holding the VAE decoder alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from wanctl.core.families import TI2V_5B, Family
from wanctl.core.workload import Workload, ulysses_problem
from wanctl.errors import UsageError

GIB = 1024**3
DTYPE_BYTES = {"fp8": 1, "bf16": 2, "fp32": 4}
BACKENDS = ("diffusers", "wan-repo")
PHASES = ("text_encode", "image_encode", "sampling", "decode")
# fp8 compute (`Settings.dit_precision`): the tensor cores it needs (Ada, Hopper, Blackwell) and
# the library it runs on.
FP8_CAPABILITY = (8, 9)
FP8_INSTALL = "pip install 'wanctl[fp8]' (torchao)"


def torchao_installed() -> bool:
    """torchao can be imported here (without importing it: it imports torch)."""
    import importlib.util

    return importlib.util.find_spec("torchao") is not None


def check_fp8_pins(dit_precision: str | None, dit_storage: str | None) -> None:
    """The flags a user pinned (generate's, tune's) agree: fp8 compute has fp8 weights."""
    if dit_precision == "fp8" and dit_storage == "bf16":
        raise UsageError(
            "--dit-precision fp8 with --dit-storage bf16",
            why="fp8 compute multiplies fp8 weights: they are stored in fp8",
            fix="drop --dit-storage bf16",
        )


@dataclass(frozen=True)
class Settings:
    """A run's memory settings. `backend` runs the sampler; `text_encoder` "gpu" or "cpu" is
    where UMT5 encodes the prompt; `dit` "replicated" or "fsdp" (the official `--dit_fsdp`);
    `offload` the official `--offload_model` (UMT5 back to the CPU after encoding, the DiT
    after sampling); `chunk_t` latent frames per decoder call, `decode_ranks` ranks decoding in
    parallel, in `decode_dtype`; `expandable_segments` the allocator setting exported.
    `decoder` is wanctl's engine, which both backends decode with, or diffusers'
    `AutoencoderKLWan` frame loop: the official decode that wanctl replaces, kept so that the
    benchmarks can predict what it would have needed. `dit_storage` "fp8" stores the DiT's
    linear layers in float8 (e4m3) and computes in bf16 (diffusers' layerwise casting).
    With the diffusers backend, `offload` is the A14B's idle expert on the CPU.
    `cfg_parallel` runs the two guidance passes on two halves of the ranks, each
    Ulysses-parallel over its half (`wanctl.models.cfg`). `dit_precision` "fp8" computes the
    blocks' linear layers in fp8 (`wanctl.models.precision`; its weights are fp8, so it goes
    with `dit_storage="fp8"`, which the memory model prices). `compile` compiles the DiT's
    repeated block where it pays (GPUs; `wanctl.models.compiled`)."""

    backend: str = "diffusers"
    chunk_t: int = 1
    decode_ranks: int = 1
    decode_dtype: str = "bf16"
    dit: str = "replicated"
    offload: bool = False
    text_encoder: str = "gpu"
    expandable_segments: bool = True
    decoder: str = "wanctl"
    dit_storage: str = "bf16"
    cfg_parallel: bool = False
    dit_precision: str = "bf16"
    compile: bool = True

    @property
    def cfg_groups(self) -> int:
        """Groups of ranks the guidance passes are split over: 2 with CFG parallel, else 1."""
        return 2 if self.cfg_parallel else 1

    def ulysses(self, gpus: int) -> int:
        """The Ulysses degree of a run on `gpus` ranks: all of them, or half with CFG parallel."""
        return gpus // self.cfg_groups

    def layout(self, gpus: int) -> str:
        """How `gpus` ranks split a step: "Ulysses 4", "CFG 2 x Ulysses 2"."""
        ulysses = f"Ulysses {self.ulysses(gpus)}"
        return f"CFG 2 x {ulysses}" if self.cfg_parallel else ulysses

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend {self.backend!r} is not one of {', '.join(BACKENDS)}")
        if self.chunk_t < 1 or self.decode_ranks < 1:
            raise ValueError("chunk_t and decode_ranks start at 1")
        if self.decode_dtype not in ("bf16", "fp32"):
            raise ValueError(f"decode_dtype {self.decode_dtype!r} is not bf16 or fp32")
        if self.dit not in ("replicated", "fsdp") or self.text_encoder not in ("gpu", "cpu"):
            raise ValueError("dit is replicated or fsdp, text_encoder gpu or cpu")
        if self.decoder not in ("wanctl", "diffusers"):
            raise ValueError("decoder is wanctl or diffusers")
        if self.dit_storage not in ("bf16", "fp8"):
            raise ValueError("dit_storage is bf16 or fp8")
        if self.dit_precision not in ("bf16", "fp8"):
            raise ValueError("dit_precision is bf16 or fp8")
        if self.dit_precision == "fp8" and self.dit_storage != "fp8":
            raise ValueError("fp8 compute stores its weights in fp8: dit_storage must be fp8")

    def unsupported(self) -> str | None:
        """Why the backend cannot execute these settings, or None."""
        if self.backend == "wan-repo" and self.dit_storage == "fp8":
            return (
                "the official generate.py stores its DiT in bf16 (fp32 under --dit_fsdp); fp8 "
                "storage is diffusers' layerwise casting"
            )
        if self.dit_precision == "fp8" and (problem := self._fp8_compute_problem()):
            return problem
        if self.backend == "diffusers" and self.offload and self.dit == "fsdp":
            return (
                "an FSDP shard stays on its GPU: the idle expert goes to the CPU (--offload) or "
                "every expert is sharded (--dit fsdp), not both"
            )
        return None

    def _fp8_compute_problem(self) -> str | None:
        if self.backend == "wan-repo":
            return "the official generate.py computes its DiT in bf16; fp8 compute is wanctl's"
        if self.dit == "fsdp" or self.offload:
            return (
                "fp8 compute (torchao's fp8 weights) runs with the DiT replicated on the GPUs; "
                "with --dit fsdp or --offload use fp8 storage (--dit-storage fp8) instead"
            )
        return None


@dataclass(frozen=True)
class Resident:
    """One network's weights on a rank's GPU during a phase: whole, or a 1/`shards` FSDP shard."""

    # "text encoder" | "DiT" | "high-noise expert" | "low-noise expert" | "VAE" (encoder and
    # decoder) | "VAE decoder"
    network: str
    dtype: str
    shards: int = 1

    def describe(self) -> str:
        share = f" 1/{self.shards} shard" if self.shards > 1 else ""
        return f"{self.network} {self.dtype}{share}"


@dataclass(frozen=True)
class Placement:
    """What one phase holds on each rank's GPU, what it computes, and what happens after."""

    phase: str
    resident: tuple[Resident, ...]
    computes: str
    after: str

    def describe(self) -> str:
        held = ", ".join(r.describe() for r in self.resident) or "nothing"
        return f"{held}; {self.computes}; {self.after}"


def placements(
    settings: Settings, gpus: int, *, image: bool = False, family: Family = TI2V_5B
) -> tuple[Placement, ...]:
    """The phases of a run of `family` on `gpus` ranks with `settings`, each with what it holds
    on a rank's GPU. `text_encode` is listed only when UMT5 runs on the GPU (on the CPU it
    holds nothing there that the next phase does not). `image`: an image conditions the video;
    for I2V-A14B its whole clip is encoded first (`image_encode`), TI2V-5B encodes the first
    frame alone inside sampling."""
    if settings.backend == "wan-repo":
        return _official(settings, gpus)
    encoder = Resident("text encoder", "bf16")
    phases = []
    if settings.text_encoder == "gpu":
        phases.append(Placement("text_encode", (encoder,), "UMT5 over 512 tokens", "freed"))
    vae = (Resident("VAE", "fp32"),) if image else ()
    if image and family.experts == 2:
        phases.append(Placement("image_encode", vae, "the conditioning clip through the VAE "
                                "encoder", "the VAE kept for the pipeline"))  # fmt: skip
    dits, held = _dits(settings, gpus, family)
    degree = settings.ulysses(gpus)
    share = f" over 1/{degree} of the tokens" if degree > 1 else ""
    if settings.cfg_parallel:
        share += ", one guidance pass per half of the ranks"
    phases += [
        Placement(
            "sampling",
            (*dits, *vae),
            f"one {family.dit_name} forward{share}",
            f"{held} freed" + (", VAE freed" if image else ""),
        ),
        _decode(settings),
    ]
    return tuple(phases)


def _dits(settings: Settings, gpus: int, family: Family) -> tuple[tuple[Resident, ...], str]:
    """The DiTs on a rank's GPU while it samples, and what they are called: TI2V-5B's DiT, or
    the two experts (with `offload` the high-noise one alone: the low-noise one waits on the
    CPU and takes its place at the boundary, so one is ever on the GPU)."""
    shards = gpus if settings.dit == "fsdp" else 1
    if family.experts == 1:
        return (Resident("DiT", settings.dit_storage, shards),), "DiT"
    names = ("high-noise expert",) if settings.offload else EXPERTS
    return tuple(Resident(name, settings.dit_storage, shards) for name in names), "experts"


EXPERTS = ("high-noise expert", "low-noise expert")


def _official(settings: Settings, gpus: int) -> tuple[Placement, ...]:
    vae = Resident("VAE", "fp32")
    encoder = Resident("text encoder", "bf16")
    sharded = settings.dit == "fsdp" and gpus > 1
    dit = Resident("DiT", "fp32", gpus) if sharded else Resident("DiT", "bf16")
    # several ranks (or FSDP) load the DiT onto the GPU at construction, before the encode
    dit_early = (dit,) if gpus > 1 or sharded else ()
    phases = []
    if settings.text_encoder == "gpu":
        after = "UMT5 back to the CPU" if settings.offload else "UMT5 stays on the GPU"
        phases.append(
            Placement("text_encode", (vae, *dit_early, encoder), "UMT5 over 512 tokens", after)
        )
    kept = (encoder,) if settings.text_encoder == "gpu" and not settings.offload else ()
    computes = "one DiT forward" + (f" over 1/{gpus} of the tokens" if gpus > 1 else "")
    if sharded:
        computes += ", two bf16 blocks gathered at a time"
    phases += [
        Placement("sampling", (vae, dit, *kept), computes, "latents saved by wanctl's hook; exits"),
        _decode(settings),
    ]
    return tuple(phases)


def _decode(settings: Settings) -> Placement:
    ranks = settings.decode_ranks
    split = f" on 1/{ranks} of the rows" if ranks > 1 else ""
    return Placement(
        "decode",
        (Resident("VAE decoder", settings.decode_dtype),),
        f"wanctl's decode, {settings.chunk_t} latent frame(s) per call{split}",
        "frames streamed to the file",
    )


def run_problem(workload: Workload, settings: Settings) -> str | None:
    """Why the backend cannot run `workload` with `settings` whatever the memory, or None."""
    sizes = workload.family.sizes
    if settings.backend == "wan-repo" and workload.size not in sizes:
        return (
            f"the official generate.py runs {workload.family.name} at {', '.join(sizes)} only "
            f"(its SUPPORTED_SIZES), not {workload.size}"
        )
    if settings.backend == "diffusers" and settings.offload and workload.family.experts == 1:
        return (
            f"--offload moves the idle expert of an A14B model to the CPU; {workload.family.name}"
            " has one DiT, on the GPU throughout sampling"
        )
    if settings.backend == "diffusers" and settings.dit == "fsdp" and workload.gpus == 1:
        return "FSDP shards the DiT over the ranks: with one GPU there is nothing to share"
    if settings.cfg_parallel and (problem := cfg_problem(workload, settings.backend)):
        return problem
    degree = settings.ulysses(workload.gpus)
    return settings.unsupported() or ulysses_problem(workload, settings.backend, degree)


def cfg_problem(workload: Workload, backend: str) -> str | None:
    """Why CFG parallel cannot split `workload`'s guidance passes, or None."""
    if backend == "wan-repo":
        return "the official generate.py has no CFG parallel: its two passes run in turn"
    if workload.gpus % 2:
        return (
            f"CFG parallel runs the two guidance passes on two equal groups of ranks: "
            f"{workload.gpus} GPUs do not split in two"
        )
    return None


def describe(settings: Settings) -> str:
    """The settings in a line: what a plan chose, what a preset holds."""
    official = settings.backend == "wan-repo"
    parts = [
        settings.backend,
        f"text encoder on {settings.text_encoder.upper()}",
        f"DiT {settings.dit}"
        + (", --offload_model" if official and settings.offload else "")
        + (", idle expert on the CPU" if settings.offload and not official else "")
        + {"bf16": "", "fp8": ", stored in fp8"}[settings.dit_storage]
        + (" and computed in fp8" if settings.dit_precision == "fp8" else ""),
        f"decode on {settings.decode_ranks} rank(s) in {settings.decode_dtype}, "
        f"chunk_t {settings.chunk_t}",
        "expandable segments" if settings.expandable_segments else "default allocator",
        *(["CFG parallel (2 groups)"] if settings.cfg_parallel else []),
        *(["eager DiT (no compile)"] if not settings.compile else []),
    ]
    return ", ".join(parts)
