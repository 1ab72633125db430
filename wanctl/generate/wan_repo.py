"""The wan-repo backend: the official Wan2.2 `generate.py` under torchrun, its checks, its
command line and the decode hook's environment, and the finish: wanctl decodes the latents
the hook saved on every GPU."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from wanctl.core.launch import (
    Runner,
    RunResult,
    torchrun_argv,
)
from wanctl.core.settings import Settings
from wanctl.core.status import classify
from wanctl.core.variables import chunk_t_for
from wanctl.errors import UsageError, WanctlError
from wanctl.generate.failures import (
    DecodeFailed,
    Stamp,
    failure,
    kept_latents,
    read_statuses,
)
from wanctl.generate.options import GenerateOptions, RunPaths
from wanctl.generate.plan import GeneratePlan, GenerateSummary, RankFigures, node_note, summary
from wanctl.models.layouts import check_official_checkpoint
from wanctl.workers.wan_hook import (
    HOOK_DIR,
    LATENTS_ENV,
    NODE,
    RUN_DIR_ENV,
    SAMPLING_PEAK,
    SOURCE_ENV,
)

# The files of the official code wanctl runs and hooks (its tasks are the family names).
WAN_REPO_FILES = ("generate.py", "wan/modules/vae2_2.py", "wan/modules/vae2_1.py")


def official_vae(options: GenerateOptions) -> str:
    """The checkpoint's VAE file, which wanctl's decode loads."""
    return str(Path(options.ckpt_dir or ".") / options.family.vae.file)


def check_wan_repo(options: GenerateOptions) -> None:
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
    if options.guidance_2 is not None:
        raise UsageError(
            "--guidance-2 would not reach the official generate.py",
            why="its --sample_guide_scale sets one scale for both experts",
            fix="drop --guidance-2 (--guidance sets both), or use the diffusers backend",
        )
    fix = "pass --wan-repo with a clone of github.com/Wan-Video/Wan2.2"
    if options.wan_repo is None:
        raise UsageError("the wan-repo backend needs --wan-repo", fix=fix)
    _require_files(options.wan_repo, WAN_REPO_FILES, "a Wan2.2 checkout", fix)
    if options.ckpt_dir is None:
        raise UsageError(
            "the wan-repo backend needs --ckpt-dir",
            fix="pass the official checkpoint folder (Wan2.2-TI2V-5B, Wan2.2-T2V-A14B, ...)",
        )
    family = options.family
    check_official_checkpoint(options.ckpt_dir, family)
    if options.size not in family.sizes:
        raise UsageError(
            f"the official generate.py does not run {family.name} at {options.size}",
            why=f"its SUPPORTED_SIZES for {family.name} are {', '.join(family.sizes)}",
            fix="use one of them, or the diffusers backend",
        )


def wan_repo_args(
    options: GenerateOptions, settings: Settings, paths: RunPaths, world: int
) -> list[str]:
    """The official generate.py's flags, in the order of the user's own command."""
    task = options.family.name
    args = ["--task", task, "--size", options.size, "--ckpt_dir", str(options.ckpt_dir)]
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
    family = options.family
    source = {"model": f"Wan2.2-{family.name} ({options.ckpt_dir})", "prompt": options.prompt,
              "seed": str(options.seed), "steps": str(options.steps), "size": options.size,
              "fps": str(family.fps)}  # fmt: skip
    python_path = os.pathsep.join(p for p in (str(HOOK_DIR), base.get("PYTHONPATH", "")) if p)
    return {
        "PYTHONPATH": python_path,
        LATENTS_ENV: str(paths.latents),
        SOURCE_ENV: json.dumps(source, ensure_ascii=False),
        RUN_DIR_ENV: str(paths.run_dir),
    }


def finish(
    plan: GeneratePlan,
    result: RunResult,
    runner: Runner,
    notify: Callable[[str], None],
    start: float,
    before: Stamp,
) -> GenerateSummary:
    """The official sampler ran; if it saved the latents (this run's: not the file stamped
    `before` it) and was not stopped at --timeout, decode them here on every GPU. On a node
    other than the first, which holds no latents, the run's outcome and where they are."""
    node = official_node(plan.paths.run_dir)
    if node and result.ok:
        return summary(
            plan, start, seconds_per_step=None, first_step_s=None, text_encode_s=None,
            load_s=None, sampling_s=result.seconds, decode_s=None, decode_warmup_s=None,
            expert_swap_s=None, per_rank=[], notes=node_note(plan, node),
        )  # fmt: skip
    if not kept_latents(plan, before) or result.timed_out:
        if result.ok:
            raise WanctlError(
                "the official generate.py finished without calling its VAE's decode",
                why="wanctl's hook saves the latents when it is called; it never was",
                fix="check that --wan-repo is an unmodified Wan2.2 checkout",
            )
        raise failure(plan, read_statuses(plan.paths.run_dir), result, before)
    if not result.ok:
        notify(f"generate.py exited with {result.returncode} after saving the latents; "
               "decoding them anyway")  # fmt: skip
    from wanctl.decode.run import DecodeOptions, run_decode

    settings = plan.settings
    here = min(settings.decode_ranks, plan.ranks)  # this node's GPUs
    chunk = chunk_t_for(settings.chunk_t, settings.decode_ranks, here)
    decode_options = DecodeOptions(
        plan.paths.latents, plan.paths.output, plan.vae, plan.device, settings.decode_dtype,
        chunk, here, overwrite=plan.options.overwrite,
    )  # fmt: skip
    try:
        decoded = run_decode(decode_options, runner=runner, notify=notify)
    except WanctlError as error:
        cause = classify(type(error).__name__, error.message)
        raise DecodeFailed(plan, cause, str(error), error.exit_code) from None
    sampled = sampling_peak(plan.paths.run_dir)
    per_rank = [
        RankFigures(rank, {"decode": allocated}, {"decode": reserved})
        for rank, (allocated, reserved) in enumerate(
            zip(decoded.peak_allocated_gib, decoded.peak_reserved_gib, strict=True))
    ]  # fmt: skip
    if sampled is not None and per_rank:  # rank 0's, the one that calls the decode
        per_rank[0].peak_allocated_gib["sampling"] = sampled["allocated_gib"]
        per_rank[0].peak_reserved_gib["sampling"] = sampled["reserved_gib"]
    return summary(
        plan, start, seconds_per_step=None, first_step_s=None, text_encode_s=None, load_s=None,
        sampling_s=result.seconds, decode_s=decoded.seconds,
        decode_warmup_s=decoded.warmup_seconds,
        expert_swap_s=None,
        per_rank=per_rank,
        notes=["the official sampler: its seconds include loading the models; steps not timed",
               *([decoded.kernel_problem] if decoded.kernel_problem else [])],
    )  # fmt: skip


def official_node(run_dir: Path) -> int:
    """This node's number in the run, as its first official rank recorded it (0 if none did)."""
    path = run_dir / NODE
    node: int = json.loads(path.read_text())["node"] if path.is_file() else 0
    return node


def sampling_peak(run_dir: Path) -> dict[str, float] | None:
    """Rank 0's peak in the official process up to its decode call, as the hook recorded it."""
    path = run_dir / SAMPLING_PEAK
    if not path.is_file():
        return None
    figures: dict[str, float] = json.loads(path.read_text())
    return figures


def _require_files(folder: Path, names: tuple[str, ...], what: str, fix: str) -> None:
    missing = [name for name in names if not (folder / name).is_file()]
    if not folder.is_dir() or missing:
        lacks = "it is not a folder" if not folder.is_dir() else f"no {', '.join(missing)}"
        raise UsageError(f"{folder} is not {what}: {lacks}", fix=fix)
