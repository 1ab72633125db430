"""Where a run's settings come from: the rig's preset or the memory model's plan for this
backend, then the user's flags and exported variables over them; the children's environment."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping
from typing import Any

from wanctl.core import allocator
from wanctl.core.cache import cache_path
from wanctl.core.launch import CHUNK_ENV, chunk_t
from wanctl.core.settings import GIB, Settings, cfg_problem, check_fp8_pins, run_problem
from wanctl.core.variables import ALLOC_ALIAS, ALLOC_ENV, busy_chunk_t, chunk_t_for
from wanctl.core.workload import Workload
from wanctl.doctor.report import DoctorReport
from wanctl.errors import UsageError
from wanctl.generate.options import GenerateOptions
from wanctl.tune import presets
from wanctl.tune.predict import MemoryPlan, environment, predict
from wanctl.tune.predict import unplanned as unplanned_reason
from wanctl.tune.rig_links import links_of
from wanctl.tune.search import with_step

# Variables the user may have exported under another name.
ALIASES = {ALLOC_ENV: (ALLOC_ALIAS,)}


def resolve_settings(
    options: GenerateOptions,
    device: str,
    report: DoctorReport,
    workload: Workload,
    env: Mapping[str, str],
) -> tuple[Settings, str, MemoryPlan | None, dict[str, str]]:
    """(settings, where they come from, the memory plan of exactly these settings, the
    environment they export). On GPUs: the rig's preset for this workload and backend, else the
    memory model's plan for the backend; flags, then the user's WAN_VAE_DECODE_CHUNK_T, over
    them, and the plan re-predicted for what will run. On the CPU: float32 decode on every
    rank, no plan (the CPU has no memory model). Settings the backend cannot run are refused
    (`check_settings`) before they are priced."""
    overrides = overrides_of(options, env)
    if device != "cuda":
        settings = Settings(
            backend=options.backend, decode_ranks=workload.gpus, decode_dtype="fp32",
            text_encoder="cpu",
        )  # fmt: skip
        settings = dataclasses.replace(settings, **overrides)
        check_settings(settings, options, workload)
        return settings, "CPU defaults", None, {CHUNK_ENV: str(settings.chunk_t)}
    if unplanned_reason(workload, options.backend):
        return unplanned(options, report, workload, overrides)
    free = report.system.host_mem_available_bytes
    resolved = presets.resolve(
        report.inventory, workload, backend=options.backend, nccl_env=report.recommended_env,
        # a checkpoint's load passes through host RAM: choose among settings the host holds
        host_free_gib=free / GIB if free and options.model is None and options.preflight
        else None,
    )  # fmt: skip
    source = resolved.source
    if source == "model":
        source = f"memory model (no preset for {report.fingerprint} at this size)"
    settings = without_idle_cfg(dataclasses.replace(resolved.settings, **overrides), options)
    settings = chunk_for_ranks(settings, resolved.settings, overrides)
    check_settings(settings, options, workload)
    plan = resolved
    if settings != resolved.settings:  # the plan describes the run that will happen
        plan = predict(
            workload, resolved.card, settings, platform=sys.platform,
            nccl_env=report.recommended_env,
        )  # fmt: skip
        plan = dataclasses.replace(plan, env={**resolved.env, **plan.env}, source=source)
        plan = with_step(plan, links_of(report.fingerprint))
    settings_env = {**plan.env, CHUNK_ENV: str(settings.chunk_t), **compile_env(settings)}
    return settings, source, plan, settings_env


INDUCTOR_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


def compile_env(settings: Settings) -> dict[str, str]:
    """Inductor's cache in wanctl's user cache folder when the DiT is compiled: the compiled
    block of a size is kept across runs (and reboots, unlike the default under /tmp)."""
    if not settings.compile or settings.backend != "diffusers":
        return {}
    return {INDUCTOR_CACHE_ENV: str(cache_path("inductor"))}


UNPLANNED = (
    "{family} defaults: the official code's placement (on one GPU it keeps the idle expert on "
    "the CPU), the decode on every rank (no prediction: {reason})"
)


def unplanned(
    options: GenerateOptions,
    report: DoctorReport,
    workload: Workload,
    overrides: dict[str, Any],
) -> tuple[Settings, str, None, dict[str, str]]:
    """The settings of a run the memory model does not plan (the official code's A14B runs):
    the defaults, the flags over them, no prediction; the source says why."""
    default = Settings(backend=options.backend, decode_ranks=workload.gpus,
                       chunk_t=busy_chunk_t(workload.gpus))  # fmt: skip
    settings = chunk_for_ranks(dataclasses.replace(default, **overrides), default, overrides)
    check_settings(settings, options, workload)
    env = environment(settings, sys.platform, report.recommended_env)
    reason = unplanned_reason(workload, settings.backend) or ""
    return settings, UNPLANNED.format(family=workload.family.name, reason=reason), None, env


def chunk_for_ranks(
    settings: Settings, planned: Settings, overrides: Mapping[str, Any]
) -> Settings:
    """`settings` with a chunk_t for the ranks that decode (`chunk_t_for`: `--decode-ranks`
    may have changed them from the plan's), unless chunk_t is pinned."""
    if "chunk_t" in overrides:
        return settings
    chunk = chunk_t_for(planned.chunk_t, planned.decode_ranks, settings.decode_ranks)
    return dataclasses.replace(settings, chunk_t=chunk)


def overrides_of(options: GenerateOptions, env: Mapping[str, str]) -> dict[str, Any]:
    """The settings the user chose: flags first, then an exported WAN_VAE_DECODE_CHUNK_T and
    allocator configuration."""
    chosen = {
        name: getattr(options, name)
        for name in (
            "chunk_t",
            "decode_ranks",
            "decode_dtype",
            "text_encoder",
            "offload",
            "dit",
            "dit_storage",
            "cfg_parallel",
            "dit_precision",
            "compile",
        )
        if getattr(options, name) is not None
    }
    check_fp8_pins(options.dit_precision, options.dit_storage)
    if chosen.get("dit_precision") == "fp8":
        chosen["dit_storage"] = "fp8"
    if "chunk_t" not in chosen and CHUNK_ENV in env:
        chosen["chunk_t"] = chunk_t(None, env)
    conf = allocator_in_force(dict(options.env), env)
    if conf is not None:
        chosen["expandable_segments"] = allocator.parse(conf).expandable_segments
    return chosen


def allocator_in_force(flags: Mapping[str, str], env: Mapping[str, str]) -> str | None:
    """The allocator configuration the children will read, when the user set one (`--env`
    over an exported value; either of PyTorch's names, PYTORCH_CUDA_ALLOC_CONF first as torch
    2.11 reads them; both set to different values are refused before): the plan is made for
    it."""
    for source in (flags, env):
        for name in (ALLOC_ENV, *ALIASES[ALLOC_ENV]):
            if name in source:
                return source[name]
    return None


def check_settings(settings: Settings, options: GenerateOptions, workload: Workload) -> None:
    """Settings the backend executes for this workload (`run_problem`) and a decode split it
    can make."""
    if settings.cfg_parallel and (problem := cfg_problem(workload, settings.backend)):
        raise UsageError(
            "--cfg-parallel cannot split this run", why=problem, fix=cfg_layouts(workload)
        )
    problem = run_problem(workload, settings)
    if problem:
        chosen = (options.dit or options.offload is not None or options.dit_storage
                  or options.dit_precision)  # fmt: skip
        raise UsageError(
            f"the {settings.backend} backend cannot run these settings "
            f"({'your flags' if chosen else 'the preset'})",
            why=problem,
            fix="drop --dit fsdp, --offload, --dit-storage or --dit-precision, as the reason says",
        )
    _, height, width = workload.latent
    rows = max(height, width)
    if not 1 <= settings.decode_ranks <= min(workload.gpus, rows):
        raise UsageError(
            f"decode on {settings.decode_ranks} ranks is not possible here",
            why=f"the run has {workload.gpus} ranks and the frame {rows} latent rows",
            fix=f"use --decode-ranks 1 to {min(workload.gpus, rows)}",
        )


def without_idle_cfg(settings: Settings, options: GenerateOptions) -> Settings:
    """The settings without a preset's or plan's CFG parallel when guidance is off (a scale
    of 1 or less: one DiT pass a step, nothing to run in parallel); a pinned --cfg-parallel is
    refused before (`check_request`)."""
    off = options.guidance is not None and options.guidance <= 1
    return dataclasses.replace(settings, cfg_parallel=False) if off else settings


def cfg_layouts(workload: Workload) -> str:
    """The layouts that run `workload` when CFG parallel cannot split it."""
    gpus = workload.gpus
    layouts = [f"Ulysses over all {gpus} GPU(s): drop --cfg-parallel"]
    if gpus % 2:
        layouts += [f"CFG 2 x Ulysses {n // 2} with --gpus {n}" for n in (gpus - 1, gpus + 1)
                    if n >= 2]  # fmt: skip
    return "; ".join(layouts)


def launch_env(
    wanted: Mapping[str, str],
    flags: Mapping[str, str],
    base: Mapping[str, str],
) -> tuple[dict[str, str], dict[str, str]]:
    """(the variables wanctl sets, the user's exported values it keeps). A variable the user
    exported wins over the settings' (accelerate does the same for NCCL); `--env` wins over
    both."""
    kept = {
        key: base[name]
        for key in wanted
        for name in (key, *ALIASES.get(key, ()))
        if name in base and key not in flags
    }
    env = {k: v for k, v in wanted.items() if k not in kept}
    return {**env, **flags}, {k: v for k, v in kept.items() if v != wanted[k]}
