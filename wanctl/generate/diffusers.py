"""The diffusers backend: the command line of `wanctl.workers.generate`, and the finish that
reads what its ranks recorded."""

from __future__ import annotations

import time

from wanctl.core.launch import RunResult
from wanctl.core.settings import Settings
from wanctl.core.timeline import Timeline, process_started, run_timeline
from wanctl.core.worker import NodeSummary, WorkerRequest, read_summary
from wanctl.generate.failures import Stamp, failure, read_statuses
from wanctl.generate.options import GenerateOptions, RunPaths
from wanctl.generate.plan import GeneratePlan, GenerateSummary, RankFigures, node_note, summary
from wanctl.models.attention import AttentionChoice


def worker_request(
    options: GenerateOptions, device: str, settings: Settings, paths: RunPaths, vae: str
) -> WorkerRequest:
    """What `wanctl.workers.generate` is asked to run."""
    o = options
    return WorkerRequest(
        prompt=o.prompt, size=o.size, frames=o.frames, steps=o.steps, seed=o.seed, device=device,
        settings=settings, latents=paths.latents, output=paths.output, vae=vae,
        run_dir=paths.run_dir, model=o.model, ckpt_dir=o.ckpt_dir,
        negative_prompt=o.negative_prompt, image=o.image, guidance=o.guidance,
        guidance_2=o.guidance_2,
    )  # fmt: skip


def finish(
    plan: GeneratePlan, result: RunResult, start: float, before: Stamp, launched: float
) -> GenerateSummary:
    """The summary of a run, or the error of a failed one (`before`: the latents file's stamp
    as the run started; `launched`: the wall-clock time torchrun was started)."""
    written = read_summary(plan.paths.run_dir)
    if written is None:  # rank 0 writes it once every rank has decoded its part
        raise failure(plan, read_statuses(plan.paths.run_dir), result, before)
    ranks, node = written.ranks, written.node
    attention = ranks[0].get("attention")
    steps = ranks[0]["step_seconds"]
    seconds = ranks[0]["seconds"]
    return summary(
        plan,
        start,
        seconds_per_step=sum(steps[1:]) / (len(steps) - 1) if len(steps) > 1 else steps[0],
        first_step_s=steps[0],
        text_encode_s=seconds["text_encode"],
        load_s=seconds["load"],
        sampling_s=sum(steps),
        decode_s=seconds["vae_decode"],
        decode_warmup_s=seconds["vae_warmup"],
        expert_swap_s=seconds.get("expert_swap"),
        per_rank=[
            RankFigures(
                r["rank"], r["peak_allocated_gib"], r["peak_reserved_gib"], r.get("host_rss_gib")
            )
            for r in ranks
        ],
        attention=AttentionChoice.from_dict(attention) if attention else None,
        experts=ranks[0].get("experts", []),
        guidance_passes=[r["guidance_passes"] for r in ranks if r.get("guidance_passes")],
        encoded_on=[r["rank"] for r in ranks if r.get("encoded_prompt")],
        compile=ranks[0].get("compile"),
        # rank 0's clock is this machine's on node 0 alone
        timeline=_timeline(written, launched) if node == 0 else None,
        notes=[
            *node_note(plan, node),
            *[r["kernel_problem"] for r in ranks if r.get("kernel_problem")][:1],
        ],
    )


def _timeline(written: NodeSummary, launched: float) -> Timeline | None:
    """Where the run's time went, from this process's start to now, by rank 0's marks and
    the summary's writing."""
    rank = written.ranks[0]
    marks = rank.get("marks") or {}
    if not {"main", "group"} <= marks.keys():
        return None
    started = process_started() or launched
    return run_timeline({**marks, "written": written.written}, rank["seconds"],
                        rank["step_seconds"], started=started, launched=launched,
                        ended=time.time())  # fmt: skip
