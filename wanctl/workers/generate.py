"""torchrun worker of `wanctl generate` (diffusers backend): one rank of the Ulysses sampling,
then of the patch-parallel decode.

    python -m wanctl.workers.torchrun --standalone --nproc-per-node=N -m wanctl.workers.generate \
        --model tiny --prompt "..." --size 1280*704 --frames 121 --steps 50 --seed 42 \
        --device cuda --text-encoder gpu --latents out.latents.safetensors --output out.mp4 \
        --vae tiny --decode-dtype bf16 --chunk-t 1 --decode-ranks N --run-dir DIR

NCCL on GPUs (rank r on cuda:LOCAL_RANK), gloo on CPUs. The phases, each recorded in
DIR/rank<r>.json as it starts (`wanctl.core.status.RankStatus`):
- text_encode: rank 0 encodes the prompt and the negative prompt, drops the encoder and
  broadcasts the embeddings (no other rank loads it);
- image_encode (with `--image`): the conditioning clip through the VAE encoder, before any DiT
  is loaded (`wanctl.models.condition`);
- sampling: the DiT (or the two experts of an A14B model, the high-noise one while t >=
  boundary x 1000; each step's expert is recorded from the forwards that ran), placed as
  `--dit`, `--dit-storage` and `--offload` say (`wanctl.models.placement`), Ulysses-parallel
  over all ranks, from the same seed (the same noise) on every rank; every rank ends with the
  whole latents. On GPUs the attention backend is chosen first (`wanctl.models.attention`):
  every rank times the candidates on the shape it attends over, and all run the fastest that
  holds on every rank;
- save: rank 0 writes the latents file while the others wait at a barrier, so that no decode
  starts (nor can fail) before the latents are safe;
- decode: each of the first `--decode-ranks` ranks decodes a slab of rows of every frame
  (`wanctl.decode`), rank 0 writes the video.
Ranks that only wait for another's work (rank 0's text encoder and save, the decoding ranks)
wait over gloo, free of NCCL's 10-minute watchdog (`wanctl.workers.group.waiting_group`).
A rank that fails records the phase and cause there, and exits non-zero: torchrun stops the
others. The first rank of each node ends by writing DIR/summary.json (in its node's run folder)
with every rank's figures and its node's number: each node's wanctl learns the outcome.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record

from wanctl.core.families import Family
from wanctl.core.progress import announce, progress_bar
from wanctl.core.status import RankStatus, classify
from wanctl.core.timeline import process_started
from wanctl.core.worker import write_summary
from wanctl.core.workload import parse_size
from wanctl.decode.latents import Latents, save_latents
from wanctl.decode.run import DTYPES, DecodeOptions, decode_rank
from wanctl.decode.stream import StreamResult
from wanctl.models.catalog import MODELS
from wanctl.models.cfg import CfgBranch
from wanctl.models.compiled import release_compile_workers
from wanctl.models.condition import ReplayEncode, encode_first
from wanctl.models.pipelines import NEGATIVE_PROMPT, WanModel, build_pipeline
from wanctl.models.select import model_for
from wanctl.workers.dits import (
    choose_attention,
    compile_report,
    load_dits,
    record_forwards,
    release,
    set_attention_backend,
)
from wanctl.workers.failures import expected
from wanctl.workers.group import leave, waiting_group

GIB = 2**30


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m wanctl.workers.generate")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", choices=MODELS)
    source.add_argument("--ckpt-dir", type=Path)
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--negative-prompt")
    parser.add_argument("--image", type=Path)
    parser.add_argument("--size", required=True)
    parser.add_argument("--frames", type=int, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--guidance", type=float, help="default: the model's")
    parser.add_argument("--guidance-2", type=float, help="default: the model's")
    parser.add_argument("--device", choices=("cuda", "cpu"), required=True)
    parser.add_argument("--text-encoder", choices=("gpu", "cpu"), required=True)
    parser.add_argument("--latents", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--vae", required=True)
    parser.add_argument("--decode-dtype", choices=tuple(DTYPES), required=True)
    parser.add_argument("--chunk-t", type=int, required=True)
    parser.add_argument("--decode-ranks", type=int, required=True)
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--dit", choices=("replicated", "fsdp"), default="replicated")
    parser.add_argument("--dit-storage", choices=("bf16", "fp8"), default="bf16")
    parser.add_argument("--dit-precision", choices=("bf16", "fp8"), default="bf16")
    parser.add_argument("--no-compile", action="store_true", help="the DiT stays eager")
    parser.add_argument("--offload", action="store_true", help="A14B: the idle expert on the CPU")
    parser.add_argument("--memory-cap-gib", type=float)
    parser.add_argument(
        "--cfg-parallel", action="store_true", help="the two guidance passes on two halves"
    )
    return parser.parse_args(argv)


@dataclass
class RankResult:
    """One rank's figures: seconds and peak device memory (GiB, None on CPU) per phase."""

    rank: int
    seconds: dict[str, float] = field(default_factory=dict)
    peak_allocated_gib: dict[str, float | None] = field(default_factory=dict)
    peak_reserved_gib: dict[str, float | None] = field(default_factory=dict)
    step_seconds: list[float] = field(default_factory=list)
    experts: list[str] = field(default_factory=list)  # per step: "high", "low" or "dit"
    attention: dict[str, Any] | None = None  # an `AttentionChoice`, the same on every rank
    context_gib: float | None = None  # the CUDA context (and NCCL's buffers) on this GPU
    kernel_problem: str | None = None  # why the decode's kernel could not be built
    guidance_passes: int | None = None  # CFG parallel: the DiT passes this rank computed
    encoded_prompt: bool = False  # this rank loaded the text encoder (rank 0 alone)
    host_rss_gib: float | None = None  # this process's peak resident set (Linux, macOS)
    compile: dict[str, Any] | None = None  # a `CompileReport`: compiled or why not, 1st forward
    # wall-clock times (`wanctl.core.timeline`): process, main, group, first_step, <phase>_start
    marks: dict[str, float] = field(default_factory=dict)


@record
def main(argv: list[str]) -> int:
    marks = {"process": process_started()}
    _import_libraries()
    marks["main"] = time.time()
    args = parse_args(argv)
    device = _device(args.device)
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo",
        device_id=device if device.type == "cuda" else None,
    )
    marks["group"] = time.time()
    rank = dist.get_rank()
    status = RankStatus(args.run_dir, rank)
    try:
        waits = waiting_group()
        if args.memory_cap_gib is not None:
            cap_memory(device, args.memory_cap_gib)
        result = run(args, device, status, waits)
        result.marks.update({k: v for k, v in marks.items() if v is not None})
    except BaseException as error:
        status.failed(error)
        if not expected(error):
            raise  # a bug: the traceback (and torchrun's error file) say where
        # Reported, not raised: the parent names the rank and the cause, no traceback. The
        # process group is left as is: the others may be blocked in an exchange with this rank,
        # and torchrun stops them when it exits.
        print(f"rank {rank}: {classify(type(error).__name__, str(error))}", file=sys.stderr)
        return 1
    results: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(results, asdict(result), group=waits)  # for the decoding ranks
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:  # every node's wanctl reads its own
        write_summary(args.run_dir, results, int(os.environ.get("GROUP_RANK", "0")))
    status.done()
    dist.destroy_process_group()
    return 0


def peak_rss_gib() -> float | None:
    """This process's peak resident set size, GiB: Linux's VmHWM (this process image's own
    peak). Not getrusage's ru_maxrss, which keeps the peak of the image a process exec'd from
    (torchrun's, for a worker). Elsewhere ru_maxrss (bytes on macOS); None without it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / GIB
    except OSError:
        pass
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / GIB if sys.platform == "darwin" else peak * 1024 / GIB


def cap_memory(device: torch.device, card_gib: float) -> None:
    """Act as a card of `card_gib`: cap the caching allocator at what such a card leaves once
    this process's context is made (`tune --measure` of a smaller card's plan)."""
    torch.zeros(1, device=device)
    free, total = torch.cuda.mem_get_info(device)
    context = total - free - torch.cuda.memory_reserved(device)
    torch.cuda.set_per_process_memory_fraction((card_gib * GIB - context) / total, device)


def run(
    args: argparse.Namespace, device: torch.device, status: RankStatus, waits: dist.ProcessGroup
) -> RankResult:
    """This rank's phases; `waits` (`waiting_group`) carries the waits for rank 0's work."""
    result = RankResult(dist.get_rank())
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = model_for(args.model, args.ckpt_dir, dtype, image=args.image is not None)
    with phase("text_encode", status, result, device):
        embeds = encode_once(model, args, device, waits)
        result.encoded_prompt = dist.get_rank() == 0
    building = time.perf_counter()
    vae: Any = model.vae(device, encoder=args.image is not None)
    result.seconds["pipeline_vae"] = time.perf_counter() - building
    image, replay = None, None
    if args.image is not None:
        from PIL import Image

        image = Image.open(args.image).convert("RGB")
        with phase("image_encode", status, result, device):
            replay = encode_condition(model, vae, image, args, device)
    with phase("sampling", status, result, device):
        sampled = sample(model, args, device, embeds, vae, image, result)
        latents = latents_of(sampled, args, model)
        if replay is not None and not replay.replayed:
            raise RuntimeError("the pipeline encoded another conditioning clip than wanctl's")
        # The DiTs die with `sample`'s frame, but diffusers' hooks tie modules in reference
        # cycles: only the collector frees them (seen on a GPU: an expert's 26.6 GiB held
        # through the decode); the fp32 VAE (0.5 GiB for the Wan2.1 one) goes too.
        vae = replay = None
        del sampled
        release(device)
    del embeds
    with phase("save", status, result, device):
        if dist.get_rank() == 0:
            save_latents(args.latents, latents)
        dist.barrier(group=waits)
    with phase("decode", status, result, device):
        decoded = decode(args, latents, device)
        if decoded is not None:  # the decode itself, without loading the VAE
            result.seconds["vae_decode"] = decoded.seconds
            result.seconds["vae_warmup"] = decoded.warmup_seconds
            result.kernel_problem = decoded.kernel_problem
    result.host_rss_gib = peak_rss_gib()
    if device.type == "cuda":  # what the GPU holds beyond torch's allocator: context, NCCL
        free, total = torch.cuda.mem_get_info(device)
        result.context_gib = (total - free - torch.cuda.memory_reserved(device)) / GIB
    return result


def sample(
    model: WanModel,
    args: argparse.Namespace,
    device: torch.device,
    embeds: list[torch.Tensor],
    vae: Any,
    image: Any,
    result: RankResult,
) -> torch.Tensor:
    """Latents (1, C, T, h, w), float32, in the model's normalised space."""
    start = time.perf_counter()
    family = model.family
    dits, swap, compiled = load_dits(model, device, args, embeds[1])
    pipe = build_pipeline(
        dits[0],
        vae,
        model.scheduler(),
        family=family,
        image=args.image is not None,
        transformer_2=dits[1] if len(dits) > 1 else None,
    )
    pipe.set_progress_bar_config(disable=True)
    result.seconds["load"] = time.perf_counter() - start
    if device.type == "cuda":
        start = time.perf_counter()
        choice = choose_attention(dits[0], args, device, family, compiled=bool(compiled))
        set_attention_backend(dits, choice.backend, compiled)
        result.attention = asdict(choice)
        result.seconds["attention"] = time.perf_counter() - start
    width, height = parse_size(args.size)
    extra: dict[str, Any] = guidance(args, family)
    if image is not None:
        extra["image"] = image
    ran = record_forwards(dits)
    if dist.get_rank() == 0:
        announce(f"sampling {args.steps} steps on {dist.get_world_size()} rank(s)")
    with progress_bar("sampling", "steps", args.steps, dist.get_rank() == 0) as on_step:
        output = pipe(
            prompt_embeds=embeds[0],
            negative_prompt_embeds=embeds[1],
            height=height,
            width=width,
            num_frames=args.frames,
            num_inference_steps=args.steps,
            generator=torch.Generator("cpu").manual_seed(args.seed),
            output_type="latent",
            callback_on_step_end=_step_timer(device, result, ran, on_step),
            **extra,
        )
    latents: torch.Tensor = output.frames.float()
    if compiled:
        release_compile_workers()
    result.compile = compile_report(compiled, device, args)
    if swap is not None and swap.seconds is not None:
        result.seconds["expert_swap"] = swap.seconds
    branches = [dit.forward for dit in dits if isinstance(dit.forward, CfgBranch)]
    if branches:
        result.guidance_passes = sum(branch.computed for branch in branches)
    return latents


def encode_once(
    model: WanModel, args: argparse.Namespace, device: torch.device, waits: dist.ProcessGroup
) -> list[Any]:
    """The prompt's and the negative prompt's embeddings on every rank, encoded by rank 0 alone
    and broadcast: no other rank loads the text encoder (UMT5-XXL, 5.7 B parameters: its
    weights would pass through every rank's host memory) or reads it from disk. The others
    wait for their shapes over `waits` (minutes, on slow storage or a CPU encoder), then get
    the tensors over the default group."""
    if dist.get_rank() == 0:
        encode_on = device if args.text_encoder == "gpu" else torch.device("cpu")
        negative = NEGATIVE_PROMPT if args.negative_prompt is None else args.negative_prompt
        embeds = [e.to(device) for e in model.encode_prompts(args.prompt, negative, encode_on)]
        release(device)  # the text encoder
        shapes: list[Any] = [[(tuple(e.shape), e.dtype) for e in embeds]]
    else:
        shapes = [None]
    dist.broadcast_object_list(shapes, src=0, group=waits)
    if dist.get_rank() != 0:
        embeds = [torch.empty(shape, dtype=dtype, device=device) for shape, dtype in shapes[0]]
    for tensor in embeds:
        dist.broadcast(tensor, src=0)
    return embeds


def encode_condition(
    model: WanModel, vae: Any, image: Any, args: argparse.Namespace, device: torch.device
) -> ReplayEncode:
    """The image's conditioning clip through the VAE encoder before any DiT is loaded
    (`wanctl.models.condition`): its peak is its own, not stacked on the experts'."""
    width, height = parse_size(args.size)
    replay = encode_first(vae, model.scheduler(), model.family, image, height=height,
                          width=width, frames=args.frames, device=device)  # fmt: skip
    release(device)
    return replay


def guidance(args: argparse.Namespace, family: Family) -> dict[str, float]:
    """The pipeline's guidance scales: the DiT's, or the high-noise expert's and the low-noise
    expert's; the model's official ones where not given."""
    given = (args.guidance, args.guidance_2)
    scales = {"guidance_scale": family.guidance[0] if given[0] is None else given[0]}
    if family.experts == 2:
        scales["guidance_scale_2"] = family.guidance[1] if given[1] is None else given[1]
    return scales


def latents_of(tensor: torch.Tensor, args: argparse.Namespace, model: WanModel) -> Latents:
    source = {
        "model": model.name,
        "prompt": args.prompt,
        "seed": str(args.seed),
        "steps": str(args.steps),
        "size": args.size,
    }
    return Latents(tensor.cpu(), normalized=True, fps=model.family.fps, source=source)


def decode(args: argparse.Namespace, latents: Latents, device: torch.device) -> StreamResult | None:
    """The first `--decode-ranks` ranks decode, split by rows; the others only wait."""
    ranks = args.decode_ranks
    group = dist.new_group(list(range(ranks))) if ranks < dist.get_world_size() else None
    if dist.get_rank() >= ranks:
        return None
    options = DecodeOptions(
        args.latents, args.output, args.vae, device.type, args.decode_dtype, args.chunk_t, ranks
    )
    return decode_rank(options, latents, device, ranks, group)


@contextmanager
def phase(
    name: str, status: RankStatus, result: RankResult, device: torch.device
) -> Iterator[None]:
    """Record the phase as started (rank 0 announces it), then its seconds and peak memory on
    this rank."""
    status.phase(name)
    result.marks[f"{name}_start"] = time.time()
    if dist.get_rank() == 0:
        announce(PHASE_TITLES[name])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    yield
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        result.peak_allocated_gib[name] = torch.cuda.max_memory_allocated(device) / GIB
        result.peak_reserved_gib[name] = torch.cuda.max_memory_reserved(device) / GIB
    else:
        result.peak_allocated_gib[name] = result.peak_reserved_gib[name] = None
    result.seconds[name] = time.perf_counter() - start


PHASE_TITLES = {
    "text_encode": "encoding the prompt",
    "image_encode": "encoding the conditioning image",
    "sampling": "loading the DiT(s)",
    "save": "saving the latents",
    "decode": "decoding",
}


def _step_timer(
    device: torch.device, result: RankResult, ran: list[str], on_step: Callable[[], None]
) -> Callable[..., dict[str, Any]]:
    """The pipeline's end-of-step callback: the step's wall time (the GPU synchronised, so
    that it is the step's and not its launch's), the expert that ran it, the progress bar."""
    last = [time.perf_counter()]

    def callback(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        now = time.perf_counter()
        if not result.step_seconds:
            result.marks["first_step"] = time.time()
        result.step_seconds.append(now - last[0])
        last[0] = now
        result.experts.append("+".join(sorted(set(ran))))
        ran.clear()
        on_step()
        return {}

    return callback


def _device(kind: str) -> torch.device:
    if kind == "cpu":
        return torch.device("cpu")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    torch.cuda.set_device(device)
    return device


def _import_libraries() -> None:
    """The libraries' modules every run uses, imported first, so that the timeline charges
    their import (seconds on a cold start) to "imports", not to the first phase that needs
    them; and their notices quieted, which would print once per rank on every run: diffusers'
    'experimental feature', the deprecation of a collective it calls, transformers' note on an
    image processor Wan2.2 does not use."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    # quieted before the models import: diffusers' torchao support warns as it is imported
    # where torchao's version lacks the tensor classes it lists (0.18: "Unable to import")
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    from diffusers import AutoencoderKLWan, WanPipeline, WanTransformer3DModel  # noqa: F401
    from transformers import UMT5EncoderModel  # noqa: F401

    warnings.filterwarnings("ignore", category=FutureWarning, module="diffusers.hooks")


if __name__ == "__main__":
    leave(main(sys.argv[1:]) or 0)
