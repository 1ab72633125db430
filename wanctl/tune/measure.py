"""`tune --measure`: the plan's run, for real, on this machine's GPUs. The generate worker
(`wanctl.workers.generate`, the code `wanctl generate` runs) samples one step of the synthetic
TI2V-5B (the real DiT and UMT5-XXL architectures, random weights: memory does not depend on
their values) with the plan's settings, and decodes, on as many GPUs as the plan has; each rank
acts as the plan's card when this GPU is larger (`WorkerRequest.memory_cap_gib`). The figures
are each phase's peak as that run reached it, so that a measured row describes a real run.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from wanctl.core.launch import CHUNK_ENV, LaunchSpec, Runner, SubprocessRunner, torchrun_argv
from wanctl.core.status import classify
from wanctl.core.worker import GENERATE_WORKER, WorkerRequest, read_summary
from wanctl.errors import WanctlError
from wanctl.probe.base import GpuInventory
from wanctl.tune.predict import MemoryPlan

PROMPT = "a red fox running through fresh snow at golden hour"


@dataclass(frozen=True)
class MeasuredPhase:
    """A phase's peak on the worst rank, GiB; `total_gib` adds the context. A phase the run
    never reached (it ran out of memory before) has `out_of_memory`."""

    phase: str
    allocated_gib: float
    reserved_gib: float | None
    total_gib: float | None
    out_of_memory: bool = False


def measure_plan(
    plan: MemoryPlan,
    inventory: GpuInventory,
    *,
    runner: Runner | None = None,
    timeout_s: float | None = None,
) -> tuple[MeasuredPhase, ...]:
    """Run the plan's workload with its settings through the generate worker and return each
    phase's measured peak (the worst rank's)."""
    gpus = plan.workload.gpus
    sizes = [gpu.memory_total_mib / 1024 for gpu in inventory.live_gpus() if gpu.memory_total_mib]
    if len(sizes) < gpus or min(sizes, default=0) < plan.card.gib:
        raise WanctlError(
            f"--measure runs the plan on {gpus} GPU(s) of at least {plan.card.gib:.0f} GiB",
            why=f"this machine has {len(sizes)} GPU(s)"
            + (f", the smallest {min(sizes):.0f} GiB" if sizes else ""),
            fix="run it on the rig itself (or a machine with as many GPUs, each as large)",
        )
    workload = plan.workload
    a14b = workload.family.experts == 2
    with tempfile.TemporaryDirectory(prefix="wanctl-measure-") as scratch:
        folder = Path(scratch)
        request = WorkerRequest(
            prompt=PROMPT, size=workload.size, frames=workload.frames,
            steps=2 if a14b else 1,  # the A14B's two experts (and an offload's swap) both run
            seed=0, device="cuda", settings=plan.settings, latents=folder / "x.safetensors",
            output=folder / "x.npy", vae="synthetic-wan2.1" if a14b else "synthetic",
            run_dir=folder, model="synthetic-a14b" if a14b else "synthetic-5b",
            image=_grey_image(folder, workload.width, workload.height) if workload.image else None,
            memory_cap_gib=plan.card.gib if max(sizes) > plan.card.gib else None,
        )  # fmt: skip
        env = {**plan.env, CHUNK_ENV: str(plan.settings.chunk_t)}
        spec_argv = torchrun_argv(GENERATE_WORKER, request.argv(), gpus)
        result = (runner or SubprocessRunner()).run(LaunchSpec(spec_argv, env, timeout_s))
        summary = read_summary(folder)
        if summary is None:
            return _failed(plan, folder, result.output)
        ranks = summary.ranks
    return tuple(_worst(ranks, phase.name) for phase in plan.phases)


def _grey_image(folder: Path, width: int, height: int) -> Path:
    """A conditioning image of the run's size (its values change no peak)."""
    from PIL import Image

    path = folder / "image.png"
    Image.new("RGB", (width, height), (128, 128, 128)).save(path)
    return path


def _worst(ranks: list[dict[str, object]], phase: str) -> MeasuredPhase:
    def figure(rank: dict[str, object], key: str) -> float:
        value = rank[key].get(phase)  # type: ignore[attr-defined]
        return float(value or 0.0)

    worst = max(ranks, key=lambda r: figure(r, "peak_reserved_gib"))
    reserved = figure(worst, "peak_reserved_gib")
    context = float(worst.get("context_gib") or 0.0)  # type: ignore[arg-type]
    return MeasuredPhase(phase, figure(worst, "peak_allocated_gib"), reserved, reserved + context)


def _failed(plan: MemoryPlan, folder: Path, output: str) -> tuple[MeasuredPhase, ...]:
    """A run that ran out of memory is a measurement (the phase it died in, and every later
    one, did not fit); any other failure is an error."""
    records = [json.loads(p.read_text()) for p in folder.glob("rank*.json")]
    failed = [r for r in records if r.get("state") == "failed"]
    causes = {classify(r.get("type", ""), r.get("message", "")) for r in failed}
    if "out of GPU memory" not in causes:
        raise WanctlError(
            "the measuring run failed",
            why="; ".join(f"rank {r['rank']} in {r['phase']}: {r.get('message')}" for r in failed)
            or (output.strip().splitlines() or ["no rank reported"])[-1],
            fix="run the same plan with `wanctl generate --model synthetic-5b` (A14B: "
            "synthetic-a14b) to see its output",
        )
    died = next(r["phase"] for r in failed)
    names = [phase.name for phase in plan.phases]
    reached = names.index(died) if died in names else 0
    return tuple(
        MeasuredPhase(name, 0.0, None, None, out_of_memory=index >= reached)
        for index, name in enumerate(names)
    )
