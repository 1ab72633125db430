"""`wanctl generate` as a library: a prompt to a video on N GPUs, with the rig's settings, and
never a finished sampling thrown away.

`prepare` checks the request, runs doctor's quick checks, resolves the settings (the rig's
preset, or the memory model's plan; flags override them, and the preset file is never touched)
and builds the one `LaunchSpec` that runs it: torchrun over `wanctl.workers.generate` (diffusers
backend) or over the official `generate.py` of a Wan2.2 checkout (wan-repo backend). It writes
nothing: `--dry-run` renders that spec. `run_generate` executes it, reads what every rank
recorded, and returns a `GenerateSummary` or raises a `WanctlError` that names the rank, the
phase and the cause.

The latents are saved (`<output stem>.latents.safetensors`, the `wanctl.latents` format) before
any decode starts. With the wan-repo backend an import hook (`wanctl.workers.wan_hook`) makes
the official code save them instead of decoding on rank 0 alone; wanctl then decodes them on
every GPU (`wanctl.vae.job.run_decode`). When a decode fails the latents stay, and the error
gives the `wanctl decode` command that finishes the job.

Nothing here imports torch: the parent process only launches.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wanctl import presets
from wanctl.attention import AttentionChoice
from wanctl.doctor import DoctorReport, Status, diagnose
from wanctl.errors import UsageError, WanctlError
from wanctl.launch import (
    CHUNK_ENV,
    LaunchSpec,
    Runner,
    RunResult,
    SubprocessRunner,
    check_gpus_visible,
    check_output,
    chunk_t,
    thread_env,
    torchrun_argv,
    visible_gpus,
    worker_error,
)
from wanctl.memory import TEMPORAL, MemoryPlan, Settings, Workload, parse_size, ulysses_problem
from wanctl.models.pipelines import FPS, NOTES, checkpoint_problem, vae_spec
from wanctl.probe.base import Probe
from wanctl.workers.wan_hook import HOOK_DIR, LATENTS_ENV, RUN_DIR_ENV, SOURCE_ENV

WORKER = "wanctl.workers.generate"
BACKENDS = ("diffusers", "wan-repo")
MODELS = ("tiny", "synthetic-5b")
DEVICES = ("cuda", "cpu")
# Variables the user may have exported under another name.
ALIASES = {"PYTORCH_CUDA_ALLOC_CONF": ("PYTORCH_ALLOC_CONF",)}
# The official code: its TI2V task, the sizes it accepts for it, and the files it reads.
WAN_TASK = "ti2v-5B"
WAN_SIZES = ("1280*704", "704*1280")
WAN_REPO_FILES = ("generate.py", "wan/modules/vae2_2.py")
WAN_CKPT_FILES = ("config.json", "models_t5_umt5-xxl-enc-bf16.pth", "Wan2.2_VAE.pth")
WAN_VAE = "Wan2.2_VAE.pth"
# Checks that matter on the CPU (no driver is expected there).
CPU_CHECKS = ("torch", "diffusers", "ffmpeg")
DISK_MARGIN_BYTES = 64 * 2**20
PEER_LOST = "lost contact with another rank"


@dataclass(frozen=True)
class GenerateOptions:
    """What the user asked for; None leaves a setting to the preset or the default."""

    prompt: str
    output: Path
    size: str = "1280*704"
    frames: int = 121
    steps: int = 50
    seed: int = 42
    gpus: int | None = None
    backend: str = "diffusers"
    model: str | None = None  # "tiny" | "synthetic-5b"; else --ckpt-dir
    ckpt_dir: Path | None = None
    wan_repo: Path | None = None
    image: Path | None = None
    negative_prompt: str | None = None
    guidance: float | None = None
    device: str | None = None  # "cuda" | "cpu"; None: cuda when a GPU is visible
    nnodes: int | None = None
    rdzv_endpoint: str | None = None
    # Overrides of the preset's settings.
    chunk_t: int | None = None
    decode_ranks: int | None = None
    decode_dtype: str | None = None
    text_encoder: str | None = None
    offload: bool | None = None
    dit: str | None = None
    env: tuple[tuple[str, str], ...] = ()  # --env KEY=VALUE
    preflight: bool = True
    timeout_s: float | None = None
    json_stdout: bool = False  # stdout carries one JSON document (--json)

    def __post_init__(self) -> None:
        # One spelling from here on: 1280x704 and 1280×704 become 1280*704, the form the
        # workers and the official generate.py read.
        width, height = parse_size(self.size)
        object.__setattr__(self, "size", f"{width}*{height}")

    @property
    def dimensions(self) -> tuple[int, int]:
        return parse_size(self.size)


@dataclass(frozen=True)
class RunPaths:
    """Where a run writes: the video, the latents beside it, and a hidden folder beside it for
    what the ranks report (removed at the end)."""

    output: Path
    latents: Path
    run_dir: Path

    @classmethod
    def for_output(cls, output: Path) -> RunPaths:
        return cls(
            output=output,
            latents=output.with_name(f"{output.stem}.latents.safetensors"),
            run_dir=output.with_name(f".{output.name}.wanctl"),
        )

    @property
    def placeholder(self) -> Path:
        """The official generate.py's --save_file: what it writes there is a placeholder."""
        return self.run_dir / "official-placeholder.mp4"


@dataclass(frozen=True)
class GeneratePlan:
    """Everything resolved before launch: how many ranks, on what, with which settings (and
    where each came from), the environment, and the command."""

    options: GenerateOptions
    device: str
    ranks: int  # processes on this node
    world: int  # all ranks: the Ulysses degree
    settings: Settings
    source: str  # where the settings come from: a preset, the model, the CPU defaults
    overridden: tuple[str, ...]  # settings set by flags or by the environment
    env: dict[str, str]  # what wanctl sets for the children
    kept_env: dict[str, str]  # the user's own values, kept over the preset's
    paths: RunPaths
    vae: str  # the decoder `wanctl decode --vae` loads
    spec: LaunchSpec
    decode_command: str
    predicted: MemoryPlan | None
    notes: tuple[str, ...]


@dataclass(frozen=True)
class RankFigures:
    """One rank's peak device memory per phase, GiB (None on the CPU or not measured)."""

    rank: int
    peak_allocated_gib: dict[str, float | None]
    peak_reserved_gib: dict[str, float | None]


@dataclass(frozen=True)
class GenerateSummary:
    output: Path
    latents: Path
    backend: str
    model: str
    device: str
    ranks: int
    frames: int
    width: int
    height: int
    fps: float
    steps: int
    seconds_per_step: float | None  # mean over the steps after the first
    first_step_s: float | None
    text_encode_s: float | None
    load_s: float | None
    sampling_s: float | None
    decode_s: float | None
    decode_warmup_s: float | None  # GPU kernels compiled or loaded before the decode
    total_s: float
    settings: Settings
    source: str
    per_rank: list[RankFigures]
    notes: list[str] = field(default_factory=list)
    # The DiT's attention backend and the timings it was chosen from (diffusers on GPUs).
    attention: AttentionChoice | None = None


class DecodeFailed(WanctlError):
    """Sampling finished and its latents are on disk; only the decode failed."""

    def __init__(self, plan: GeneratePlan, cause: str, detail: str):
        super().__init__(
            f"the decode failed ({cause}); the sampled latents are kept in {plan.paths.latents}",
            why=detail,
            fix=f"finish the job with: {plan.decode_command}",
        )


# --- what a rank records ---------------------------------------------------------------


def classify(type_name: str, message: str) -> str:
    """The cause of a rank's failure, from its exception's type and message."""
    text = message.lower()
    if type_name == "OutOfMemoryError" or "out of memory" in text:
        return "out of GPU memory"
    if type_name == "MemoryError":
        return "out of host memory"
    if "timeout" in text or "timed out" in text:
        return "NCCL timeout" if "nccl" in text or "watchdog" in text else "collective timeout"
    if any(s in text for s in ("connection closed by peer", "connection reset", "broken pipe")):
        return PEER_LOST
    if "nccl" in text or type_name == "DistBackendError":
        return "NCCL error"
    return "error" if type_name in ("UsageError", "WanctlError") else type_name


class RankStatus:
    """What one rank is doing, in `<run dir>/rank<r>.json`: the phase it started last, and
    when it fails, why. The parent reads these to name the rank, the phase and the cause."""

    def __init__(self, run_dir: Path, rank: int, phase: str = "start"):
        self.path = run_dir / f"rank{rank}.json"
        self.rank = rank
        self.current = phase

    def phase(self, name: str) -> None:
        self.current = name
        self._write(state="running")

    def failed(self, error: BaseException) -> None:
        message = (str(error).strip().splitlines() or [""])[0][:400]
        self._write(
            state="failed",
            cause=classify(type(error).__name__, message),
            type=type(error).__name__,
            message=message,
            fix=getattr(error, "fix", ""),
        )

    def done(self) -> None:
        self._write(state="done")

    def _write(self, **fields: str) -> None:
        record = {"rank": self.rank, "phase": self.current, "time": time.time(), **fields}
        partial = self.path.with_suffix(".partial")
        partial.write_text(json.dumps(record))
        partial.replace(self.path)


# --- checks before launch ----------------------------------------------------------------


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
        _check_wan_repo(options)
    else:
        _check_diffusers_model(options)
    if options.image is not None:
        check_image(options.image)
    check_output(options.output)


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


def _check_diffusers_model(options: GenerateOptions) -> None:
    if options.model is not None:
        if options.model not in MODELS:
            raise UsageError(f"unknown model {options.model!r}", fix="use tiny or synthetic-5b")
        if options.ckpt_dir is not None:
            raise UsageError("both --model and --ckpt-dir given", fix="pass one of them")
        return
    if options.ckpt_dir is None:
        raise UsageError(
            "no model: pass a checkpoint or a built-in model",
            fix="--ckpt-dir Wan2.2-TI2V-5B-Diffusers, or --model tiny (runs anywhere)",
        )
    problem = checkpoint_problem(options.ckpt_dir)
    if problem:
        raise UsageError(
            f"not a diffusers Wan2.2 TI2V-5B checkpoint: {problem}",
            fix="download Wan-AI/Wan2.2-TI2V-5B-Diffusers (huggingface-cli download "
            "Wan-AI/Wan2.2-TI2V-5B-Diffusers --local-dir DIR) and pass --ckpt-dir DIR; the "
            "official (non-diffusers) checkpoint runs with --backend wan-repo",
        )


def _check_wan_repo(options: GenerateOptions) -> None:
    if options.model is not None:
        raise UsageError(
            f"--model {options.model} runs with the diffusers backend only",
            fix="drop --backend wan-repo, or pass the official checkpoint with --ckpt-dir",
        )
    if options.negative_prompt is not None:
        raise UsageError(
            "--negative-prompt would not reach the official generate.py",
            why="it takes the negative prompt of its config and has no option for it",
            fix="drop --negative-prompt, or use the diffusers backend",
        )
    fix = "pass --wan-repo with a clone of github.com/Wan-Video/Wan2.2"
    if options.wan_repo is None:
        raise UsageError("the wan-repo backend needs --wan-repo", fix=fix)
    _require_files(options.wan_repo, WAN_REPO_FILES, "a Wan2.2 checkout", fix)
    if options.ckpt_dir is None:
        raise UsageError(
            "the wan-repo backend needs --ckpt-dir", fix="pass the Wan2.2-TI2V-5B folder"
        )
    _require_files(
        options.ckpt_dir, WAN_CKPT_FILES, "the official Wan2.2-TI2V-5B checkpoint",
        "huggingface-cli download Wan-AI/Wan2.2-TI2V-5B --local-dir DIR, then --ckpt-dir DIR",
    )  # fmt: skip
    if options.size not in WAN_SIZES:
        raise UsageError(
            f"the official generate.py does not run {WAN_TASK} at {options.size}",
            why=f"its SUPPORTED_SIZES for {WAN_TASK} are {' and '.join(WAN_SIZES)}",
            fix="use one of them, or the diffusers backend",
        )


def _require_files(folder: Path, names: tuple[str, ...], what: str, fix: str) -> None:
    missing = [name for name in names if not (folder / name).is_file()]
    if not folder.is_dir() or missing:
        lacks = "it is not a folder" if not folder.is_dir() else f"no {', '.join(missing)}"
        raise UsageError(f"{folder} is not {what}: {lacks}", fix=fix)


def check_tokens(workload: Workload) -> None:
    """diffusers' Ulysses splits the heads and the token sequence in equal parts
    (`wanctl.memory.ulysses_problem`); the fix names the nearest frame counts that split."""
    problem = ulysses_problem(workload)
    if problem is None:
        return
    nearby = range(workload.frames - 4 * TEMPORAL, workload.frames + 4 * TEMPORAL + 1, TEMPORAL)
    fitting = [
        frames
        for frames in nearby
        if frames > 0 and ulysses_problem(dataclasses.replace(workload, frames=frames)) is None
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
    latents = 48 * frames * height * width * 4
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


def choose_device(options: GenerateOptions, report: DoctorReport, visible: int) -> str:
    """cuda when a GPU is visible and torch can use it; the CPU for the tiny model when not,
    or when asked. The 5B models on the CPU take hours per step: only when asked."""
    can_cuda = visible > 0 and report.software.torch_cuda is not None
    device = options.device or ("cuda" if can_cuda or options.model != "tiny" else "cpu")
    if device == "cpu" and options.model == "synthetic-5b":
        raise UsageError(
            "synthetic-5b is for timing and memory on a GPU",
            fix="run it on a GPU machine, or use --model tiny on the CPU",
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


# --- settings ----------------------------------------------------------------------------


def resolve_settings(
    options: GenerateOptions,
    device: str,
    report: DoctorReport,
    workload: Workload,
    env: Mapping[str, str],
) -> tuple[Settings, str, MemoryPlan | None, dict[str, str]]:
    """(settings, where they come from, the memory plan, the environment they export). On
    GPUs: the rig's preset for this workload, else the memory model's plan. On the CPU: float32
    decode on every rank. Flags, then the user's WAN_VAE_DECODE_CHUNK_T, override them."""
    if device == "cuda":
        plan = presets.resolve(report.inventory, workload, nccl_env=report.recommended_env)
        settings, source, settings_env = plan.settings, plan.source, dict(plan.env)
        if source == "model":
            source = f"memory model (no preset for {report.fingerprint} at this size)"
    else:
        plan = None
        settings = Settings(decode_ranks=workload.gpus, decode_dtype="fp32", text_encoder="cpu")
        source, settings_env = "CPU defaults", {}
    overrides = overrides_of(options, env)
    settings = dataclasses.replace(settings, **overrides)
    settings_env[CHUNK_ENV] = str(settings.chunk_t)
    return settings, source, plan, settings_env


def overrides_of(options: GenerateOptions, env: Mapping[str, str]) -> dict[str, Any]:
    """The settings the user chose: flags first, then an exported WAN_VAE_DECODE_CHUNK_T."""
    chosen = {
        name: getattr(options, name)
        for name in ("chunk_t", "decode_ranks", "decode_dtype", "text_encoder", "offload", "dit")
        if getattr(options, name) is not None
    }
    if "chunk_t" not in chosen and CHUNK_ENV in env:
        chosen["chunk_t"] = chunk_t(None, env)
    return chosen


def check_settings(settings: Settings, options: GenerateOptions, workload: Workload) -> None:
    if options.backend == "diffusers" and options.offload is not None:
        raise UsageError(
            "--offload/--no-offload is the official generate.py's --offload_model",
            why="wanctl's diffusers worker always frees the DiT before the decode",
            fix="drop it, or use --backend wan-repo",
        )
    if options.backend == "diffusers" and settings.dit == "fsdp":
        raise UsageError(
            "the diffusers backend keeps the whole DiT on every GPU, and these settings shard it"
            " (dit = fsdp)",
            fix="--dit replicated if it fits (`wanctl tune` says), or --backend wan-repo, which"
            " shards it with --dit_fsdp",
        )
    _, height, width = workload.latent
    rows = max(height, width)
    if not 1 <= settings.decode_ranks <= min(workload.gpus, rows):
        raise UsageError(
            f"decode on {settings.decode_ranks} ranks is not possible here",
            why=f"the run has {workload.gpus} ranks and the frame {rows} latent rows",
            fix=f"use --decode-ranks 1 to {min(workload.gpus, rows)}",
        )


# --- the command line and environment (pure) ---------------------------------------------


def worker_args(
    options: GenerateOptions, device: str, settings: Settings, paths: RunPaths, vae: str
) -> list[str]:
    """The command line of `wanctl.workers.generate`."""
    o = options
    source = ["--model", o.model] if o.model else ["--ckpt-dir", str(o.ckpt_dir)]
    args = [
        *source,
        "--prompt", o.prompt,
        "--size", o.size,
        "--frames", str(o.frames),
        "--steps", str(o.steps),
        "--seed", str(o.seed),
        "--device", device,
        "--text-encoder", settings.text_encoder,
        "--latents", str(paths.latents),
        "--output", str(paths.output),
        "--vae", vae,
        "--decode-dtype", settings.decode_dtype,
        "--chunk-t", str(settings.chunk_t),
        "--decode-ranks", str(settings.decode_ranks),
        "--run-dir", str(paths.run_dir),
    ]  # fmt: skip
    if o.negative_prompt is not None:
        args += ["--negative-prompt", o.negative_prompt]
    if o.image is not None:
        args += ["--image", str(o.image)]
    if o.guidance is not None:
        args += ["--guidance", str(o.guidance)]
    return args


def wan_repo_args(
    options: GenerateOptions, settings: Settings, paths: RunPaths, world: int
) -> list[str]:
    """The official generate.py's flags, in the order of the user's own command."""
    args = ["--task", WAN_TASK, "--size", options.size, "--ckpt_dir", str(options.ckpt_dir)]
    if settings.dit == "fsdp":
        args.append("--dit_fsdp")
    args += ["--ulysses_size", str(world), "--offload_model", str(settings.offload),
             "--convert_model_dtype"]  # fmt: skip
    if settings.text_encoder == "cpu":
        args.append("--t5_cpu")
    args += ["--frame_num", str(options.frames), "--sample_steps", str(options.steps),
             "--base_seed", str(options.seed)]  # fmt: skip
    if options.guidance is not None:
        args += ["--sample_guide_scale", str(options.guidance)]
    if options.image is not None:
        args += ["--image", str(options.image)]
    return [*args, "--save_file", str(paths.placeholder), "--prompt", options.prompt]


def torchrun_script_argv(
    script: Path, args: list[str], nproc: int, *, nnodes: int | None, rdzv_endpoint: str | None
) -> tuple[str, ...]:
    """torchrun running a script (the official generate.py) instead of a module: the launcher
    flags are `torchrun_argv`'s, its trailing `-m MODULE` replaced by the script."""
    launcher = torchrun_argv(
        "_", (), nproc, nnodes=str(nnodes) if nnodes else None, rdzv_endpoint=rdzv_endpoint
    )
    return (*launcher[:-2], str(script), *args)


def hook_env(paths: RunPaths, options: GenerateOptions, base: Mapping[str, str]) -> dict[str, str]:
    """What the official code's children need for the decode hook: the hook first on
    PYTHONPATH, where to save the latents, and what to record with them."""
    source = {"model": f"Wan2.2-{WAN_TASK} ({options.ckpt_dir})", "prompt": options.prompt,
              "seed": str(options.seed), "steps": str(options.steps), "size": options.size,
              "fps": str(FPS)}  # fmt: skip
    python_path = os.pathsep.join(p for p in (str(HOOK_DIR), base.get("PYTHONPATH", "")) if p)
    return {
        "PYTHONPATH": python_path,
        LATENTS_ENV: str(paths.latents),
        SOURCE_ENV: json.dumps(source, ensure_ascii=False),
        RUN_DIR_ENV: str(paths.run_dir),
    }


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


def decode_command(paths: RunPaths, vae: str, settings: Settings, device: str) -> str:
    """The `wanctl decode` line that turns the kept latents into the video."""
    argv = ["wanctl", "decode", str(paths.latents), "-o", str(paths.output), "--vae", vae,
            "--gpus", str(settings.decode_ranks), "--chunk-t", str(settings.chunk_t),
            "--dtype", settings.decode_dtype]  # fmt: skip
    if device == "cpu":
        argv += ["--device", "cpu"]
    return shlex.join(argv)


def build_spec(
    options: GenerateOptions,
    device: str,
    settings: Settings,
    paths: RunPaths,
    env: Mapping[str, str],
) -> LaunchSpec:
    ranks = options.gpus or 1
    if options.backend == "wan-repo":
        world = ranks * (options.nnodes or 1)
        script = Path(options.wan_repo or ".") / "generate.py"
        argv = torchrun_script_argv(
            script, wan_repo_args(options, settings, paths, world), ranks,
            nnodes=options.nnodes, rdzv_endpoint=options.rdzv_endpoint,
        )  # fmt: skip
    else:
        args = worker_args(options, device, settings, paths, model_vae(options))
        nnodes = str(options.nnodes) if options.nnodes else None
        argv = torchrun_argv(WORKER, args, ranks, nnodes=nnodes,
                             rdzv_endpoint=options.rdzv_endpoint)  # fmt: skip
    # The official code logs to stdout; wanctl's workers write to stderr only.
    capture = options.json_stdout and options.backend == "wan-repo"
    return LaunchSpec(argv, dict(env), options.timeout_s, capture_output=capture)


def model_vae(options: GenerateOptions) -> str:
    if options.backend == "wan-repo":
        return str(Path(options.ckpt_dir or ".") / WAN_VAE)
    return vae_spec(options.model, options.ckpt_dir)


# --- putting it together -----------------------------------------------------------------


def prepare(
    options: GenerateOptions,
    *,
    probe: Probe,
    env: Mapping[str, str] = os.environ,
    disk_free: Callable[[Path], int] = lambda folder: shutil.disk_usage(folder).free,
) -> GeneratePlan:
    """Check everything that can be checked before launch and build the launch. Writes
    nothing (but a probe file, created and removed at once, in the output's folder); a refusal
    is a `UsageError` (or a `WanctlError` for a failed preflight check)."""
    check_request(options)
    report = diagnose(probe)
    visible = visible_gpus(len(report.inventory.live_gpus()), env)
    device = choose_device(options, report, visible)
    ranks = options.gpus or (visible if device == "cuda" else 1)
    options = dataclasses.replace(options, gpus=ranks)
    if device == "cuda":
        check_gpus_visible(ranks, visible)
    world = ranks * (options.nnodes or 1)
    width, height = options.dimensions
    workload = Workload(width, height, options.frames, world)  # size, frames, Ulysses degree
    if options.backend == "diffusers":
        check_tokens(workload)
    if options.preflight:
        check_preflight(report, device)
    settings, source, predicted, settings_env = resolve_settings(
        options, device, report, workload, env
    )
    check_settings(settings, options, workload)
    paths = RunPaths.for_output(options.output)
    check_disk(paths, workload, disk_free(paths.output.parent))
    wanted = {**settings_env, **thread_env(device, ranks, env)}
    child_env, kept = launch_env(wanted, dict(options.env), env)
    if options.backend == "wan-repo":
        # the user's --env PYTHONPATH, like any --env, over the exported one
        child_env.update(hook_env(paths, options, {**env, **dict(options.env)}))
    vae = model_vae(options)
    return GeneratePlan(
        options=options,
        device=device,
        ranks=ranks,
        world=world,
        settings=settings,
        source=source,
        overridden=tuple(sorted(overrides_of(options, env))),
        env=child_env,
        kept_env=kept,
        paths=paths,
        vae=vae,
        spec=build_spec(options, device, settings, paths, child_env),
        decode_command=decode_command(paths, vae, settings, device),
        predicted=predicted,
        notes=_notes(options, device, world, predicted, kept),
    )


def _notes(
    options: GenerateOptions,
    device: str,
    world: int,
    predicted: MemoryPlan | None,
    kept: Mapping[str, str],
) -> tuple[str, ...]:
    notes = [NOTES[options.model]] if options.model in NOTES else []
    if device == "cpu":
        notes.append(f"on the CPU: {world} process(es) over gloo, no preset")
    notes += [f"{key}={value} kept from your environment" for key, value in kept.items()]
    if predicted is not None and not predicted.fits:
        notes.append(
            f"the memory model predicts a peak of {predicted.peak_gib:.1f} GiB "
            f"({predicted.peak_phase}) on a {predicted.card.gib:.0f} GiB card: it may not fit "
            "(`wanctl tune` shows what would)"
        )
    return tuple(notes)


def run_generate(
    plan: GeneratePlan,
    *,
    runner: Runner | None = None,
    notify: Callable[[str], None] = lambda _: None,
) -> GenerateSummary:
    """Launch the plan, and return the summary or raise what failed, rank and phase named."""
    runner = runner or SubprocessRunner()
    start = time.perf_counter()
    plan.paths.run_dir.mkdir(exist_ok=True)
    try:
        result = runner.run(plan.spec)
        if plan.options.backend == "wan-repo":
            return _finish_wan_repo(plan, result, runner, notify, start)
        return _finish_diffusers(plan, result, start)
    finally:
        shutil.rmtree(plan.paths.run_dir, ignore_errors=True)


def _finish_diffusers(plan: GeneratePlan, result: RunResult, start: float) -> GenerateSummary:
    summary_file = plan.paths.run_dir / "summary.json"
    if not summary_file.is_file():  # rank 0 writes it once every rank has decoded its part
        raise failure(plan, read_statuses(plan.paths.run_dir), result)
    ranks = json.loads(summary_file.read_text())["ranks"]
    attention = ranks[0].get("attention")
    steps = ranks[0]["step_seconds"]
    seconds = ranks[0]["seconds"]
    return _summary(
        plan,
        start,
        seconds_per_step=sum(steps[1:]) / (len(steps) - 1) if len(steps) > 1 else steps[0],
        first_step_s=steps[0],
        text_encode_s=seconds["text_encode"],
        load_s=seconds["load"],
        sampling_s=sum(steps),
        decode_s=seconds["vae_decode"],
        decode_warmup_s=seconds["vae_warmup"],
        per_rank=[
            RankFigures(r["rank"], r["peak_allocated_gib"], r["peak_reserved_gib"]) for r in ranks
        ],
        attention=AttentionChoice.from_dict(attention) if attention else None,
        notes=[r["kernel_problem"] for r in ranks if r.get("kernel_problem")][:1],
    )


def _finish_wan_repo(
    plan: GeneratePlan,
    result: RunResult,
    runner: Runner,
    notify: Callable[[str], None],
    start: float,
) -> GenerateSummary:
    """The official sampler ran; if it saved the latents, decode them here on every GPU."""
    if not plan.paths.latents.is_file():
        if result.ok:
            raise WanctlError(
                "the official generate.py finished without calling Wan2_2_VAE.decode",
                why="wanctl's hook saves the latents when it is called; it never was",
                fix="check that --wan-repo is an unmodified Wan2.2 checkout",
            )
        raise failure(plan, read_statuses(plan.paths.run_dir), result)
    if not result.ok:
        notify(f"generate.py exited with {result.returncode} after saving the latents; "
               "decoding them anyway")  # fmt: skip
    from wanctl.vae.job import DecodeOptions, run_decode

    settings = plan.settings
    decode_options = DecodeOptions(
        plan.paths.latents, plan.paths.output, plan.vae, plan.device, settings.decode_dtype,
        settings.chunk_t, settings.decode_ranks,
    )  # fmt: skip
    try:
        decoded = run_decode(decode_options, runner=runner, notify=notify)
    except WanctlError as error:
        raise DecodeFailed(
            plan, classify(type(error).__name__, error.message), str(error)
        ) from None
    return _summary(
        plan, start, seconds_per_step=None, first_step_s=None, text_encode_s=None, load_s=None,
        sampling_s=result.seconds, decode_s=decoded.seconds,
        decode_warmup_s=decoded.warmup_seconds,
        per_rank=[
            RankFigures(rank, {"decode": allocated}, {"decode": reserved})
            for rank, (allocated, reserved) in enumerate(
                zip(decoded.peak_allocated_gib, decoded.peak_reserved_gib, strict=True))
        ],
        notes=["the official sampler: its seconds include loading the models; steps not timed",
               *([decoded.kernel_problem] if decoded.kernel_problem else [])],
    )  # fmt: skip


def _summary(
    plan: GeneratePlan, start: float, *, notes: list[str] | None = None, **figures: Any
) -> GenerateSummary:
    options = plan.options
    width, height = options.dimensions
    return GenerateSummary(
        output=plan.paths.output,
        latents=plan.paths.latents,
        backend=options.backend,
        model=options.model or str(options.ckpt_dir),
        device=plan.device,
        ranks=plan.world,
        frames=options.frames,
        width=width,
        height=height,
        fps=FPS,
        steps=options.steps,
        total_s=time.perf_counter() - start,
        settings=plan.settings,
        source=plan.source,
        notes=[*plan.notes, *(notes or [])],
        **figures,
    )


# --- failures ----------------------------------------------------------------------------

_FIXES = {
    "out of GPU memory": "lower --size or --frames, or run on more GPUs; `wanctl tune` shows "
    "what fits (--text-encoder cpu if it ran out while encoding the prompt)",
    "out of host memory": "close other programs, or keep the text encoder on the GPU",
    "NCCL timeout": "run `wanctl doctor --full`: it proves whether P2P works and tries "
    "NCCL_P2P_DISABLE=1; then pass --env NCCL_P2P_DISABLE=1 if it says so",
    "NCCL error": "run `wanctl doctor --full`; NCCL_DEBUG=INFO (--env) shows the transport",
    "collective timeout": "another rank stopped answering; its error is above",
    PEER_LOST: "another rank stopped first; its error is above",
}


def read_statuses(run_dir: Path) -> list[dict[str, Any]]:
    """Every rank's last record, in rank order."""
    found = []
    for path in run_dir.glob("rank*.json"):
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return sorted(found, key=lambda s: int(s["rank"]))


def failure(plan: GeneratePlan, statuses: list[dict[str, Any]], result: RunResult) -> WanctlError:
    """The error of a failed run: the rank that failed first for its own reason (others only
    lose contact with it), the phase it was in, and the cause."""
    failed = sorted((s for s in statuses if s.get("state") == "failed"), key=lambda s: s["time"])
    root = [s for s in failed if s["cause"] not in (PEER_LOST, "collective timeout")] or failed
    if root:
        first = root[0]
        cause, phase = first["cause"], first["phase"]
        detail = f"rank {first['rank']}: {first['type']}: {first['message']}"
        if phase == "decode" and plan.paths.latents.is_file():
            return DecodeFailed(plan, f"rank {first['rank']}: {cause}", detail)
        return WanctlError(
            f"rank {first['rank']} failed during {phase}: {cause}",
            why=detail,
            fix=first.get("fix") or _FIXES.get(cause) or traceback_fix(plan, first["rank"]),
        )
    if result.timed_out:
        return WanctlError(
            f"the run did not finish within --timeout {plan.options.timeout_s:g} s",
            why=_where(statuses),
            fix="raise --timeout; a hang in NCCL shows with `wanctl doctor --full`",
        )
    stopped = [s for s in statuses if s.get("state") == "running"]
    if stopped and all(s["phase"] == "decode" for s in stopped) and plan.paths.latents.is_file():
        return DecodeFailed(plan, "a rank was killed", _where(statuses))
    return WanctlError(
        f"the workers stopped with torchrun exit code {result.returncode}",
        why=(_where(statuses) + " with no Python error: killed by a signal (the kernel's "
             "out-of-memory killer, or an NCCL watchdog abort)") if stopped
        else worker_error(result.output) or "torchrun's output above says why",
        fix="torchrun's report above names the rank and the signal; `dmesg | tail` shows the "
        "out-of-memory killer",
    )  # fmt: skip


def traceback_fix(plan: GeneratePlan, rank: int) -> str:
    """Where a rank's own traceback is: `--debug` shows only the parent's."""
    if plan.spec.capture_output:  # --json with the official code: its output was captured
        return (f"run again without --json: rank {rank}'s traceback then shows in torchrun's "
                "output")  # fmt: skip
    return (f"rank {rank}'s traceback is in torchrun's output above (and in its 'Root Cause' "
            "summary); --debug shows only wanctl's own process")  # fmt: skip


def _where(statuses: list[dict[str, Any]]) -> str:
    running = [f"rank {s['rank']} in {s['phase']}" for s in statuses if s["state"] == "running"]
    return ", ".join(running) or "no rank had started"
