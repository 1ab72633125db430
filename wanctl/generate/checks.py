"""Checks before launch: the request, the model's files, the image, the output, the disk, the
device and doctor's preflight. Each refusal says what, why and the fix."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

from wanctl.core.launch import (
    CHUNK_ENV,
    check_new,
    check_output,
)
from wanctl.core.settings import FP8_CAPABILITY, FP8_INSTALL, GIB, Settings, torchao_installed
from wanctl.core.variables import problems
from wanctl.core.workload import TEMPORAL, Workload, ulysses_degrees, ulysses_problem
from wanctl.doctor.report import DoctorReport, Status
from wanctl.errors import UsageError, WanctlError
from wanctl.generate.options import BACKENDS, DEVICES, GenerateOptions, RunPaths
from wanctl.generate.wan_repo import check_wan_repo
from wanctl.models.catalog import MODELS
from wanctl.models.layouts import check_diffusers_checkpoint
from wanctl.probe.base import GpuInventory
from wanctl.tune.host import HOST_MARGIN, HostPlan

# Checks that matter on the CPU (no driver is expected there).
CPU_CHECKS = ("torch", "diffusers", "ffmpeg")
DISK_MARGIN_BYTES = 64 * 2**20


def check_request(options: GenerateOptions) -> None:
    """The request alone: backend and model, files, output (reads only small JSON files)."""
    if options.backend not in BACKENDS:
        raise UsageError(f"unknown backend {options.backend!r}", fix="use diffusers or wan-repo")
    if options.device not in (None, *DEVICES):
        raise UsageError(f"unknown device {options.device!r}", fix="use --device cuda or cpu")
    if options.steps < 1:
        raise UsageError(f"--steps is {options.steps}; it must be at least 1")
    if (options.nnodes or 1) > 1 and not options.rdzv_endpoint:
        raise UsageError(
            f"--nnodes {options.nnodes} without --rdzv-endpoint",
            why="the nodes find each other at the rendezvous endpoint; with none, torchrun "
            "cannot bring them together",
            fix="pass --rdzv-endpoint HOST:PORT, the same on every node",
        )
    if CHUNK_ENV in dict(options.env):
        value = dict(options.env)[CHUNK_ENV]
        raise UsageError(
            f"--env {CHUNK_ENV}={value} would not reach the decode",
            why=f"the decode's chunk_t is a setting of its own: wanctl passes it to the workers "
            f"as --chunk-t and sets {CHUNK_ENV} from it",
            fix=f"use --chunk-t {value}",
        )
    if options.backend == "wan-repo":
        check_wan_repo(options)
        check_image_use(options)
    else:
        check_diffusers_model(options)
    if options.image is not None:
        check_image(options.image)
    if options.cfg_parallel and options.guidance is not None and options.guidance <= 1:
        raise UsageError(
            f"--cfg-parallel with --guidance {options.guidance:g}",
            why="a guidance scale of 1 or less turns classifier-free guidance off: each step "
            "runs the DiT once, there is no second pass to run in parallel",
            fix="drop --cfg-parallel (Ulysses over every GPU), or give a --guidance above 1",
        )
    check_output(options.output, overwrite=options.overwrite)
    latents = RunPaths.for_output(options.output).latents
    check_new(latents, "a latents file", options.overwrite)


def check_image(path: Path) -> None:
    """An image PIL can read, checked here rather than by every rank after the models load."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise UsageError(f"image not found: {path}", fix="pass an existing image file")
    try:
        with Image.open(path) as image:
            image.verify()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:
        raise UsageError(
            f"cannot read the image {path}", why=str(error), fix="pass a PNG, JPEG or WebP file"
        ) from None


def check_diffusers_model(options: GenerateOptions) -> None:
    if options.model is not None:
        if options.model not in MODELS:
            raise UsageError(
                f"unknown model {options.model!r}", fix=f"use one of {', '.join(MODELS)}"
            )
        if options.ckpt_dir is not None:
            raise UsageError("both --model and --ckpt-dir given", fix="pass one of them")
    elif options.ckpt_dir is None:
        raise UsageError(
            "no model: pass a checkpoint or a built-in model",
            fix="--ckpt-dir Wan2.2-TI2V-5B-Diffusers (or an A14B one), or --model tiny "
            "(runs anywhere)",
        )
    else:
        check_diffusers_checkpoint(options.ckpt_dir)
    check_image_use(options)


def check_image_use(options: GenerateOptions) -> None:
    """I2V-A14B samples from an image, T2V-A14B from a prompt alone; TI2V-5B takes either."""
    family = options.family
    if family.image == "required" and options.image is None:
        raise UsageError(
            f"{family.name} generates from an image, and none was given",
            why="its DiT conditions every step on the image's latents (36 input channels)",
            fix="pass --image PATH, or use a T2V-A14B or TI2V-5B checkpoint for text alone",
        )
    if family.image == "none" and options.image is not None:
        raise UsageError(
            f"{family.name} takes no image",
            why="its DiT has no input for one (16 channels: the noise alone)",
            fix="drop --image, or use Wan2.2-I2V-A14B-Diffusers (or TI2V-5B) for image to video",
        )
    if options.guidance_2 is not None and family.experts == 1:
        raise UsageError(
            f"--guidance-2 is the low-noise expert's scale, and {family.name} has one DiT",
            fix="drop --guidance-2 (--guidance sets its scale)",
        )


def check_tokens(workload: Workload, backend: str) -> None:
    """The backend's Ulysses must split the heads (and for diffusers the tokens) in equal parts
    (`wanctl.core.workload.ulysses_problem`); the fix names the GPU counts that divide the heads,
    or the nearest frame counts whose tokens split."""
    problem = ulysses_problem(workload, backend)
    if problem is None:
        return
    heads = workload.family.heads
    if heads % workload.gpus:
        degrees = [str(n) for n in ulysses_degrees(heads) if n < workload.gpus]
        raise UsageError(problem, fix=f"use --gpus {' or '.join(degrees[-3:])}")
    nearby = range(workload.frames - 4 * TEMPORAL, workload.frames + 4 * TEMPORAL + 1, TEMPORAL)
    fitting = [
        frames
        for frames in nearby
        if frames > 0
        and ulysses_problem(dataclasses.replace(workload, frames=frames), backend) is None
    ]
    raise UsageError(
        problem,
        fix=(f"use {' or '.join(map(str, fitting[:3]))} frames" if fitting
             else "use another size, or a number of GPUs that divides the tokens"),
    )  # fmt: skip


def check_disk(paths: RunPaths, workload: Workload, free_bytes: int) -> None:
    """Room for the latents (float32) and the video (raw for .npy; H.264 at Wan's quality
    stays well under a tenth of the raw frames)."""
    frames, height, width = workload.latent
    latents = workload.family.vae.channels * frames * height * width * 4
    raw = workload.frames * workload.width * workload.height * 3
    video = raw if paths.output.suffix == ".npy" else raw // 10
    needed = latents + video + DISK_MARGIN_BYTES
    if free_bytes < needed:
        raise UsageError(
            f"{free_bytes / 2**20:.0f} MiB free in {paths.output.parent}, "
            f"{needed / 2**20:.0f} MiB needed",
            why="the latents and the video are written there",
            fix="free some space or write the output elsewhere",
        )


def check_host_memory(
    host: HostPlan, available_bytes: int | None, settings: Settings, workload: Workload
) -> None:
    """The ranks of this host must fit its free RAM; else refuse, with what would fit (a GPU
    count Ulysses can split the run over)."""
    if available_bytes is None:
        return
    room = HOST_MARGIN * available_bytes / GIB
    if host.total_gib <= room:
        return
    fits = [
        n for n in ulysses_degrees(workload.family.heads)
        if n * host.per_rank_gib <= room
        and ulysses_problem(dataclasses.replace(workload, gpus=n), settings.backend) is None
    ]  # fmt: skip
    options = [f"--gpus {fits[-1]} (each rank needs {host.per_rank_gib:.1f} GiB)"] if fits else []
    if settings.offload:
        options.append("drop --offload (the low-noise expert waits in host memory)")
        if settings.dit_storage == "bf16":
            options.append("--dit-storage fp8 (the waiting expert in half the memory)")
    options.append("free host memory, or add swap (--skip-preflight launches anyway)")
    raise UsageError(
        f"host RAM: this run needs about {host.total_gib:.1f} GiB, the host has "
        f"{available_bytes / GIB:.1f} GiB free",
        why=f"{host.describe()}; beyond {HOST_MARGIN:.0%} of the free memory the kernel's "
        "out-of-memory killer stops ranks while they load",
        fix="; or ".join(options),
    )


def choose_device(options: GenerateOptions, report: DoctorReport, visible: int) -> str:
    """cuda when a GPU is visible and torch can use it; the CPU for the tiny model when not,
    or when asked. The 5B models on the CPU take hours per step: only when asked."""
    can_cuda = visible > 0 and report.software.torch_cuda is not None
    anywhere = options.model in ("tiny", "tiny-moe")
    device = options.device or ("cuda" if can_cuda or not anywhere else "cpu")
    if device == "cpu" and options.model in ("synthetic-5b", "synthetic-a14b"):
        raise UsageError(
            f"{options.model} is for timing and memory on a GPU",
            fix="run it on a GPU machine, or use --model tiny (or tiny-moe) on the CPU",
        )
    if device == "cpu" and options.backend == "wan-repo":
        raise UsageError(
            "the official generate.py runs on CUDA GPUs only",
            why="it puts every model on cuda:LOCAL_RANK and its attention is flash-attn's",
            fix="drop --device cpu, or use the diffusers backend (--model tiny runs on the CPU)",
        )
    if device == "cuda" and not visible:
        raise UsageError(
            "no GPU is visible",
            why=report.inventory.error or "CUDA_VISIBLE_DEVICES hides them, or NVML sees none",
            fix="check `nvidia-smi -L` and CUDA_VISIBLE_DEVICES; --model tiny runs on the CPU",
        )
    return device


def check_preflight(report: DoctorReport, device: str) -> None:
    """Refuse when a check that matters for this run failed (on the CPU: torch, diffusers,
    ffmpeg)."""
    failed = [
        check
        for check in report.checks
        if check.status is Status.FAIL and (device == "cuda" or check.name in CPU_CHECKS)
    ]
    if failed:
        raise WanctlError(
            f"the preflight found {len(failed)} problem(s) that would stop the run",
            why="; ".join(check.finding for check in failed),
            fix="; ".join(check.fix for check in failed)
            + " (`wanctl doctor` explains; --skip-preflight launches anyway)",
        )


def check_variables(
    options: GenerateOptions, env: Mapping[str, str], report: DoctorReport, device: str
) -> tuple[str, ...]:
    """Refuse the variables the children would misread (`wanctl.core.variables`: exported or
    passed with --env), each with why and fix; the ones that only warn come back as notes."""
    found = problems({**env, **dict(options.env)}, torch=report.software.torch,
                     interfaces=report.system.network_interfaces, gpu=device == "cuda")  # fmt: skip
    failing = [problem for problem in found if problem.fails]
    if failing:
        raise UsageError(
            "; ".join(problem.what for problem in failing),
            why="; ".join(problem.why for problem in failing),
            fix="; ".join(problem.fix for problem in failing),
        )
    return tuple(f"{problem.what}: {problem.why}" for problem in found)


def check_fp8_compute(settings: Settings, inventory: GpuInventory, device: str) -> None:
    """fp8 compute needs fp8 tensor cores (compute capability 8.9+) on every GPU, and torchao;
    refused before launch, not by a rank after the load."""
    if settings.dit_precision != "fp8":
        return
    fix = "drop --dit-precision fp8 (--dit-storage fp8 halves the DiT's memory without them)"
    if device != "cuda":
        raise UsageError("fp8 compute runs on NVIDIA GPUs", why="this run is on the CPU", fix=fix)
    old = [gpu for gpu in inventory.live_gpus() if gpu.compute_capability is not None
           and gpu.compute_capability < FP8_CAPABILITY]  # fmt: skip
    if old:
        names = ", ".join(f"GPU {g.index} {g.name} ({g.sm})" for g in old)
        why = f"{names}: fp8 matrix multiplications start at compute capability 8.9 (sm_89)"
        raise UsageError("these GPUs have no fp8 tensor cores", why=why, fix=fix)
    if not torchao_installed():
        raise UsageError("fp8 compute needs torchao", why="it is not installed",
                         fix=f"{FP8_INSTALL}, or {fix}")  # fmt: skip
