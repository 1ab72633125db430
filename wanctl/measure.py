"""Measured peaks of a run's phases: the real architectures with random weights (memory does not
depend on their values) run at the target size, one phase at a time, holding what the plan says
stays on the GPU.

Two meters read the same runs. `CudaMeter` reads torch's peak statistics on a GPU
(`max_memory_allocated`/`max_memory_reserved` after `reset_peak_memory_stats`), optionally under
`set_per_process_memory_fraction` to act as a smaller card. `TraceMeter` runs on fake tensors on
the CPU (no memory used, seconds for a 5 B model) and counts the bytes of live tensors: the
allocated peak without the caching allocator, cuDNN workspaces or the context.

One GPU stands for one rank: sampling runs this rank's share of the tokens (the latent cut to
its share of rows) and decode this rank's slab of the frame, so the Ulysses all-to-all and the
halo exchange are not in the figures (the model adds them). Each phase runner is a small
function; the decode runs wanctl's engine (`wanctl.vae.engine`) or diffusers' frame loop.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import weakref
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

from wanctl.errors import WanctlError
from wanctl.memory import GIB, SAFETY_MARGIN, MemoryPlan, Settings, Workload, coefficients
from wanctl.models.configs import (
    TEXT_TOKENS,
    build_dit,
    build_text_encoder,
    build_vae_decoder,
    place,
)
from wanctl.vae.engine import decode_chunks

TORCH_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass(frozen=True)
class Peak:
    """One phase run: GiB held in weights before it, its allocated and reserved peaks
    (reserved None for a trace), or `out_of_memory`."""

    phase: str
    weights_gib: float
    allocated_gib: float
    reserved_gib: float | None
    out_of_memory: bool = False


class Meter(Protocol):
    device: str

    def session(self) -> AbstractContextManager[None]:
        """The context models and inputs are built and run in."""
        ...

    def build(self, make_meta: Callable[[], Any]) -> Any:
        """The model `make_meta` builds on the meta device, allocated on this meter's device."""
        ...

    def peak(self, held: list[Any], run: Callable[[], None]) -> tuple[float, float, float | None]:
        """(weights, allocated, reserved) GiB of `run`, holding `held` (modules and tensors)."""
        ...


class CudaMeter:
    """torch's peak statistics on the current CUDA device."""

    device = "cuda"

    def session(self) -> AbstractContextManager[None]:
        return nullcontext()

    def build(self, make_meta: Callable[[], Any]) -> Any:
        return place(make_meta(), self.device)

    def peak(self, held: list[Any], run: Callable[[], None]) -> tuple[float, float, float | None]:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        weights = torch.cuda.memory_allocated()
        run()
        torch.cuda.synchronize()
        return (
            weights / GIB,
            torch.cuda.max_memory_allocated() / GIB,
            torch.cuda.max_memory_reserved() / GIB,
        )


class _LiveBytes(TorchDispatchMode):
    """Bytes of live tensor storages, counted as operators create them and freed with them."""

    def __init__(self) -> None:
        super().__init__()
        self.live: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.current = 0
        self.peak = 0

    def track(self, value: Any) -> None:
        tensors = (
            [*value.parameters(), *value.buffers()]
            if isinstance(value, torch.nn.Module)
            else tree_leaves(value)
        )
        for tensor in tensors:
            if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
                storage = tensor.untyped_storage()
                if storage not in self.live:
                    self.live[storage] = storage.nbytes()
                    self.current += storage.nbytes()
                    self.peak = max(self.peak, self.current)
                    weakref.finalize(storage, self._free, storage.nbytes())

    def _free(self, n_bytes: int) -> None:
        self.current -= n_bytes

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        self.track(out)
        return out


class TraceMeter:
    """Live tensor bytes of the run on fake CPU tensors."""

    device = "cpu"

    @contextmanager
    def session(self) -> Iterator[None]:
        from torch._subclasses.fake_tensor import FakeTensorMode

        with FakeTensorMode(allow_non_fake_inputs=True):
            yield

    def build(self, make_meta: Callable[[], Any]) -> Any:
        """Real meta tensors first (fake mode would make fake ones that cannot be swapped for
        allocated ones), then fake CPU tensors in their place."""
        from torch._subclasses.fake_tensor import unset_fake_temporarily

        with unset_fake_temporarily():
            model = make_meta()
        return place(model, self.device)

    def peak(self, held: list[Any], run: Callable[[], None]) -> tuple[float, float, float | None]:
        counter = _LiveBytes()
        for value in held:
            counter.track(value)
        weights = counter.current
        with counter:
            run()
        return weights / GIB, counter.peak / GIB, None


# The phase runners: each returns the callable that runs the phase once.


def text_encode_run(encoder: torch.nn.Module, device: str) -> Callable[[], None]:
    """UMT5-XXL over one padded prompt."""
    ids = torch.zeros(1, TEXT_TOKENS, dtype=torch.long, device=device)
    mask = torch.ones_like(ids)

    def run() -> None:
        with torch.no_grad():
            encoder(input_ids=ids, attention_mask=mask)

    return run


def share_rows(rows: int, ranks: int, multiple: int = 1) -> int:
    """A rank's share of `rows`, rounded up to `multiple` (the first ranks take the rest)."""
    return math.ceil(math.ceil(rows / ranks) / multiple) * multiple


def dit_run(
    dit: torch.nn.Module, workload: Workload, device: str, ranks: int = 1
) -> Callable[[], None]:
    """One forward of the TI2V DiT with its per-token (2-D) timestep, over `ranks`' share of
    the latent's rows when `ranks` > 1 (one GPU standing for one Ulysses rank)."""
    frames, height, width = workload.latent
    height = share_rows(height, ranks, multiple=2)
    tokens = frames * height * width // 4
    latent = torch.randn(1, 48, frames, height, width, dtype=torch.bfloat16, device=device)
    timestep = torch.full((1, tokens), 500.0, device=device)
    text = torch.randn(1, TEXT_TOKENS, 4096, dtype=torch.bfloat16, device=device)

    def run() -> None:
        with torch.no_grad():
            dit(latent, timestep, text, return_dict=False)

    return run


def decode_run(vae: Any, workload: Workload, settings: Settings, device: str) -> Callable[[], None]:
    """Chunked causal decode of this rank's slab (the frame cut along its longer side): frame 0
    alone, then `chunk_t` latent frames per decoder call with the causal cache kept, each
    decoded chunk copied to the host. The peak repeats from the second chunk on, so three
    chunks are decoded. `settings.decoder` picks wanctl's engine or diffusers' frame loop."""
    frames, height, width = workload.latent
    frames = min(frames, 1 + 3 * settings.chunk_t)
    if width > height:
        width = share_rows(width, settings.decode_ranks)
    else:
        height = share_rows(height, settings.decode_ranks)
    dtype = TORCH_DTYPES[settings.decode_dtype]
    latent = torch.randn(1, 48, frames, height, width, dtype=dtype, device=device)
    if settings.decoder == "wanctl":
        return lambda: _drain(decode_chunks(vae, latent, chunk_t=settings.chunk_t))
    for parameter in vae.parameters():  # wanctl's engine lays weights out channels-last in
        parameter.data = parameter.data.contiguous()  # place; diffusers runs as shipped

    def diffusers_loop() -> None:
        with torch.no_grad():
            vae.clear_cache()
            x = vae.post_quant_conv(latent)
            starts = [0, *range(1, frames, settings.chunk_t)]
            for index, start in enumerate(starts):
                stop = 1 if index == 0 else min(start + settings.chunk_t, frames)
                vae._conv_idx = [0]
                out = vae.decoder(
                    x[:, :, start:stop],
                    feat_cache=vae._feat_map,
                    feat_idx=vae._conv_idx,
                    first_chunk=index == 0,
                )
                out.cpu()
                del out
            vae.clear_cache()

    return diffusers_loop


def _drain(chunks: Iterator[torch.Tensor]) -> None:
    with torch.no_grad():
        for pixels in chunks:
            pixels.cpu()
            del pixels


def _peak(meter: Meter, phase: str, held: list[Any], run: Callable[[], None]) -> Peak:
    try:
        return Peak(phase, *meter.peak(held, run))
    except torch.cuda.OutOfMemoryError:
        pass
    # Out of the handler, the failed run's frames are gone: free what they held.
    gc.collect()
    torch.cuda.empty_cache()
    return _no_room(phase)


@dataclass
class Models:
    """What is on the GPU between phases: the VAE decoder always, the DiT once loaded."""

    vae: torch.nn.Module
    dit: torch.nn.Module | None = None

    def held(self) -> list[torch.nn.Module]:
        return [self.vae] if self.dit is None else [self.vae, self.dit]


def _build(meter: Meter, make_meta: Callable[[], Any]) -> Any:
    """The model on the meter's device, or None when its weights do not fit."""
    try:
        return meter.build(make_meta)
    except torch.cuda.OutOfMemoryError:
        pass
    gc.collect()
    torch.cuda.empty_cache()
    return None


def _no_room(phase: str) -> Peak:
    return Peak(phase, 0.0, 0.0, None, out_of_memory=True)


def text_encode_peak(meter: Meter, models: Models) -> Peak:
    """UMT5-XXL built, run over a padded prompt, and freed."""
    encoder = _build(meter, lambda: build_text_encoder("meta", torch.bfloat16))
    if encoder is None:
        return _no_room("text_encode")
    run = text_encode_run(encoder, meter.device)
    peak = _peak(meter, "text_encode", [encoder, *models.held()], run)
    del encoder, run
    gc.collect()
    if meter.device == "cuda":  # as a run does (workers/generate.py) before loading the DiT,
        torch.cuda.empty_cache()  # whose weights would otherwise fill the encoder's segments
    return peak


def sampling_peak(meter: Meter, models: Models, workload: Workload) -> Peak:
    if models.dit is None:
        models.dit = _build(meter, lambda: build_dit("meta", torch.bfloat16))
        if models.dit is None:
            return _no_room("sampling")
    run = dit_run(models.dit, workload, meter.device, workload.gpus)
    return _peak(meter, "sampling", models.held(), run)


def decode_peak(meter: Meter, models: Models, workload: Workload, settings: Settings) -> Peak:
    run = decode_run(models.vae, workload, settings, meter.device)
    return _peak(meter, "decode", models.held(), run)


def measure_phases(
    meter: Meter, workload: Workload, settings: Settings
) -> tuple[list[Peak], Models]:
    """The phases of `settings` in the order of a run: the text encoder (when on the GPU) with
    the VAE decoder, then the DiT loaded for sampling, then the decode with the DiT unless
    offloaded. Returns the peaks and what is left on the GPU for further decodes. Call it
    inside `meter.session()`."""
    models = Models(vae=meter.build(lambda: build_vae_decoder("meta", _dtype(settings))))
    peaks = []
    if settings.text_encoder == "gpu":
        peaks.append(text_encode_peak(meter, models))
    peaks.append(sampling_peak(meter, models, workload))
    if settings.offload:
        models.dit = None
        gc.collect()
    peaks.append(decode_peak(meter, models, workload, settings))
    return peaks, models


def _dtype(settings: Settings) -> torch.dtype:
    return TORCH_DTYPES[settings.decode_dtype]


def largest_chunk_t(meter: Meter, models: Models, workload: Workload, settings: Settings) -> int:
    """The largest chunk_t the decode runs with under the meter's memory limit, trying 1, 2,
    3, ... up to every latent frame at once; 0 when even chunk_t 1 runs out of memory."""
    best = 0
    for chunk_t in range(1, max(1, workload.latent[0] - 1) + 1):
        trial = dataclasses.replace(settings, chunk_t=chunk_t)
        if decode_peak(meter, models, workload, trial).out_of_memory:
            break
        best = chunk_t
    return best


def cuda_context_gib() -> float:
    """GiB the CUDA context takes on the current device: used memory after initialisation less
    what torch reserved (other processes on the GPU count in: measure on an idle GPU)."""
    torch.zeros(1, device="cuda")
    free, total = torch.cuda.mem_get_info()
    return (total - free - torch.cuda.memory_reserved()) / GIB


def use_allocator(expandable: bool) -> None:
    """Measure under the allocator setting a plan exports (`PYTORCH_CUDA_ALLOC_CONF`), not the
    one this process started with: expandable segments on or off from here on."""
    torch.cuda.empty_cache()
    torch.cuda.memory._set_allocator_settings(f"expandable_segments:{expandable}")


def simulate_card(card_gib: float, outside_gib: float) -> float:
    """Cap the caching allocator at what a `card_gib` card leaves it (`outside_gib` going to
    the CUDA context and NCCL), and return the fraction set."""
    total = torch.cuda.get_device_properties(0).total_memory / GIB
    fraction = (card_gib - outside_gib) / total
    torch.cuda.set_per_process_memory_fraction(fraction)
    return fraction


@dataclass(frozen=True)
class MeasuredPlan:
    plan: MemoryPlan
    context_gib: float
    peaks: tuple[Peak, ...]
    max_chunk_t: int
    simulated: bool  # the card was simulated with set_per_process_memory_fraction

    @property
    def ok(self) -> bool:
        return not any(peak.out_of_memory for peak in self.peaks)


def measure_plan(plan: MemoryPlan) -> MeasuredPlan:
    """Run the plan's phases on this GPU (as the plan's card when this GPU is larger), under
    the plan's allocator setting, and search the largest chunk_t that still runs."""
    if not torch.cuda.is_available():
        raise WanctlError(
            "--measure needs a CUDA GPU",
            why="it runs the phases for real and reads torch's peak memory statistics",
            fix="run it on the rig, or on a larger GPU (it then acts as the card)",
        )
    context = cuda_context_gib()
    total = torch.cuda.get_device_properties(0).total_memory / GIB
    if total < plan.card.gib * (1 - SAFETY_MARGIN):
        raise WanctlError(
            f"this GPU ({total:.1f} GiB) is smaller than the card ({plan.card.gib:.1f} GiB)",
            fix="measure on the rig itself or on a larger GPU",
        )
    simulated = total > plan.card.gib
    if simulated:  # NCCL's buffers would take their share on a rig of several GPUs
        nccl = coefficients().nccl_gib if plan.workload.gpus > 1 else 0.0
        simulate_card(plan.card.gib, context + nccl)
    use_allocator(plan.settings.expandable_segments)
    meter = CudaMeter()
    peaks, models = measure_phases(meter, plan.workload, plan.settings)
    return MeasuredPlan(
        plan=plan,
        context_gib=context,
        peaks=tuple(peaks),
        max_chunk_t=largest_chunk_t(meter, models, plan.workload, plan.settings),
        simulated=simulated,
    )
