"""`wanctl generate` as a library: a prompt to a video on N GPUs, with the rig's settings, and
never a finished sampling thrown away.

`prepare` checks the request, runs doctor's quick checks, resolves the settings (the rig's
preset, or the memory model's plan for the backend; flags override them, the plan is made for
what will run, and the preset file is never touched)
and builds the one `LaunchSpec` that runs it: torchrun over `wanctl.workers.generate` (diffusers
backend) or over the official `generate.py` of a Wan2.2 checkout (wan-repo backend). It writes
nothing: `--dry-run` renders that spec. `run_generate` executes it, reads what every rank
recorded, and returns a `GenerateSummary` or raises a `WanctlError` that names the rank, the
phase and the cause.

The latents are saved (`<output stem>.latents.safetensors`, the `wanctl.decode.latents`
format) before any decode starts. With the wan-repo backend an import hook
(`wanctl.workers.wan_hook`) makes the official code save them instead of decoding on rank 0
alone; wanctl then decodes them on every GPU (`wanctl.decode.run.run_decode`). When a decode
fails the latents stay, and the error gives the `wanctl decode` command that finishes the job.

Nothing here imports torch: the parent process only launches.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from wanctl.core.launch import (
    LaunchSpec,
    Runner,
    SubprocessRunner,
    check_gpus_visible,
    partial_path,
    thread_env,
    torchrun_argv,
    visible_gpus,
)
from wanctl.core.settings import Settings
from wanctl.core.worker import GENERATE_WORKER
from wanctl.core.workload import Workload
from wanctl.doctor.run import diagnose
from wanctl.generate import diffusers, wan_repo
from wanctl.generate.checks import (
    check_disk,
    check_fp8_compute,
    check_host_memory,
    check_preflight,
    check_request,
    check_tokens,
    check_variables,
    choose_device,
)
from wanctl.generate.diffusers import worker_request
from wanctl.generate.failures import file_stamp, interrupted, read_statuses
from wanctl.generate.options import GenerateOptions, RunPaths
from wanctl.generate.plan import GeneratePlan, GenerateSummary
from wanctl.generate.settings import launch_env, overrides_of, resolve_settings
from wanctl.generate.wan_repo import hook_env, official_vae, torchrun_script_argv, wan_repo_args
from wanctl.models.catalog import NOTES, vae_spec
from wanctl.probe.base import Probe
from wanctl.tune.host import HostPlan, host_plan
from wanctl.tune.predict import MemoryPlan


def decode_command(
    paths: RunPaths, vae: str, settings: Settings, device: str, ranks_here: int,
    overwrite: bool = False,
) -> str:  # fmt: skip
    """The `wanctl decode` line that turns the kept latents into the video, on this node (the
    one that holds them): its own GPUs at most, whatever the run's decode spanned."""
    gpus = min(settings.decode_ranks, ranks_here)
    argv = ["wanctl", "decode", str(paths.latents), "-o", str(paths.output), "--vae", vae,
            "--gpus", str(gpus), "--chunk-t", str(settings.chunk_t),
            "--dtype", settings.decode_dtype]  # fmt: skip
    if device == "cpu":
        argv += ["--device", "cpu"]
    if overwrite:  # the earlier video an --overwrite run was to replace is still there
        argv.append("--overwrite")
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
        args = worker_request(options, device, settings, paths, model_vae(options)).argv()
        nnodes = str(options.nnodes) if options.nnodes else None
        argv = torchrun_argv(GENERATE_WORKER, args, ranks, nnodes=nnodes,
                             rdzv_endpoint=options.rdzv_endpoint)  # fmt: skip
    # The official code logs to stdout; wanctl's workers write to stderr only.
    capture = options.json_stdout and options.backend == "wan-repo"
    return LaunchSpec(argv, dict(env), options.timeout_s, capture_output=capture)


def model_vae(options: GenerateOptions) -> str:
    if options.backend == "wan-repo":
        return official_vae(options)
    return vae_spec(options.model, options.ckpt_dir)


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
    workload = Workload(width, height, options.frames, world, image=options.image is not None,
                        family=options.family)  # fmt: skip
    check_tokens(workload, options.backend)
    warnings = check_variables(options, env, report, device)
    if options.preflight:
        check_preflight(report, device)
    settings, source, predicted, settings_env = resolve_settings(
        options, device, report, workload, env
    )
    check_fp8_compute(settings, report.inventory, device)
    paths = RunPaths.for_output(options.output)
    check_disk(paths, workload, disk_free(paths.output.parent))
    host = planned_host(options, device, settings, workload, ranks)
    if host is not None and options.preflight:
        check_host_memory(host, report.system.host_mem_available_bytes, settings, workload)
    wanted = {**settings_env, **thread_env(device, ranks, env), **gloo_interface(options, env)}
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
        decode_command=decode_command(paths, vae, settings, device, ranks, options.overwrite),
        predicted=predicted,
        host=host,
        notes=(*warnings, *_notes(options, device, world, predicted, kept, settings)),
    )


def planned_host(
    options: GenerateOptions, device: str, settings: Settings, workload: Workload, ranks: int
) -> HostPlan | None:
    """The host RAM of this node's ranks (the diffusers worker on GPUs; the official code's
    own loading is not modelled)."""
    if device != "cuda" or options.backend != "diffusers":
        return None
    return host_plan(workload, settings, ranks, checkpoint=options.model is None)


def gloo_interface(options: GenerateOptions, env: Mapping[str, str]) -> dict[str, str]:
    """On several nodes, gloo's interface where NCCL's is one named interface: the workers'
    waits run over gloo (`wanctl.workers.group.waiting_group`), which otherwise binds the
    address the host name resolves to (127.0.1.1 on a default Ubuntu: the other nodes never
    connect). NCCL's prefix forms (`^lo`, `=eth0`, lists) have no gloo equivalent."""
    flags = dict(options.env)
    chosen = flags.get(NCCL_IFNAME, env.get(NCCL_IFNAME))
    several = (options.nnodes or 1) > 1 and options.backend == "diffusers"
    if not several or GLOO_IFNAME in flags or GLOO_IFNAME in env or not chosen:
        return {}
    if any(mark in chosen for mark in "^=,"):
        return {}
    return {GLOO_IFNAME: chosen}


NCCL_IFNAME, GLOO_IFNAME = "NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME"


def _notes(
    options: GenerateOptions,
    device: str,
    world: int,
    predicted: MemoryPlan | None,
    kept: Mapping[str, str],
    settings: Settings,
) -> tuple[str, ...]:
    notes = [NOTES[options.model]] if options.model in NOTES else []
    official_a14b = options.family.experts == 2 and options.backend == "wan-repo"
    if official_a14b and world > 1 and settings.dit != "fsdp":
        # read in its text2video.py: init_on_cpu is off under sequence parallelism
        notes.append(
            "with several GPUs the official code keeps both experts (53 GiB in bf16) and, "
            "unless --text-encoder cpu, UMT5 (10.6 GiB) on every GPU: only 80 GB cards hold "
            "that; --dit fsdp shards the experts"
        )
    if device == "cpu":
        notes.append(f"on the CPU: {world} process(es) over gloo, no preset")
    if settings.dit_precision == "fp8" and options.dit_precision is None:
        error = (
            next((n for n in predicted.notes if "computed in fp8" in n), "") if predicted else ""
        )
        notes.append(
            "the DiT computes in fp8 because no placement of its bf16 weights fits this card"
            + (f" ({error})" if error else "")
            + "; --dit-precision bf16 pins bf16"
        )
    if options.compile and options.backend == "wan-repo":
        notes.append("--compile has no effect on the official generate.py: its DiT runs eager")
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
    """Launch the plan, and return the summary or raise what failed, rank and phase named.
    Ctrl-C stops every rank (the runner kills torchrun's process group) and raises the
    interruption, naming the kept latents; whatever ends the run, no partial file is left."""
    runner = runner or SubprocessRunner()
    start = time.perf_counter()
    before = file_stamp(plan.paths.latents)  # an older file an --overwrite run would replace
    shutil.rmtree(plan.paths.run_dir, ignore_errors=True)  # a killed run's, same pid reused
    plan.paths.run_dir.mkdir()
    notify(f"starting {plan.ranks} rank(s) on {plan.device} with torchrun")
    launched = time.time()
    try:
        result = runner.run(plan.spec)
        if plan.options.backend == "wan-repo":
            return wan_repo.finish(plan, result, runner, notify, start, before)
        return diffusers.finish(plan, result, start, before, launched)
    except KeyboardInterrupt:
        raise interrupted(plan, read_statuses(plan.paths.run_dir), before) from None
    finally:
        for path in (plan.paths.output, plan.paths.latents):
            partial_path(path).unlink(missing_ok=True)
        shutil.rmtree(plan.paths.run_dir, ignore_errors=True)
