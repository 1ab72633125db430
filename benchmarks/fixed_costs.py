"""The fixed costs of `wanctl decode` (and, with --generate, of `wanctl generate`): each run a
fresh process, as a user starts one, timed from its start to its exit; beside the same runs of
another checkout of wanctl (`--before DIR`), interleaved, so that both meet the same machine
and caches. Each row is a part of the run's own timeline (`--json`'s), each column a run: the
wall seconds, the work (decode; sampling steps), and the rest, the fixed cost.

On one GPU (issue 15: `wanctl decode`'s wall time within 5 s of its decode seconds), with a
checkout of an older commit beside this one (`git worktree add /tmp/before <commit>`):

    python benchmarks/fixed_costs.py --size 1280*704 --frames 121 --before /tmp/before \
        --generate

A smoke test anywhere (the tiny VAE and the tiny model, on the CPU):

    python benchmarks/fixed_costs.py --check-only --generate

The decode reads a diffusers VAE folder (`--vae`'s built-in weights saved as one, as a user's
download is) and latents of the workload, both written first into a temporary folder
(`--folder` picks the disk). The first run of each checkout meets cold caches: the page cache
holds the files after it, and Inductor's and Triton's caches the compiled kernels: each
checkout's verdict is the median of its later runs, its first shown apart, and the checkouts
take turns at running first. Where the installed packages hold no compiled bytecode (a
read-only image), every run compiles it again: `--pycache DIR` gives the children a bytecode
cache (PYTHONPYCACHEPREFIX), as pip's install does.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from decode import add_check_only, add_workload_options, latents, smoke_workload
from diffusers import AutoencoderKLWan
from rich.console import Console
from rich.table import Table

from wanctl.decode.latents import Latents, save_latents
from wanctl.decode.load import BUILT_IN
from wanctl.decode.run import DTYPES

ROOT = Path(__file__).resolve().parent.parent
WITHIN_S = 5.0  # issue 15: a decode's wall time within 5 s of its decode seconds
SUFFIX = {"decode": "npy", "generate": "mp4"}
WORK = {"decode": ("decode",), "generate": ("first step", "more steps", "decode")}


@dataclass(frozen=True)
class Run:
    """One command's run: which checkout, its wall seconds (outside: start to exit), and the
    parts of its timeline (seconds by name)."""

    checkout: str
    command: str
    wall_s: float
    parts: dict[str, float]

    @property
    def work_s(self) -> float:
        return sum(s for name, s in self.parts.items() if name.endswith(WORK[self.command]))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_workload_options(parser, chunk_t=False)
    add_check_only(parser, "160*96", 9)
    parser.add_argument("--before", type=Path, help="A checkout of another wanctl to compare.")
    parser.add_argument("--repeats", type=int, default=3, help="Decodes per checkout.")
    parser.add_argument("--generate", action="store_true", help="Also time `wanctl generate`.")
    parser.add_argument("--generate-repeats", type=int, default=2, help="Generates per checkout.")
    parser.add_argument("--steps", type=int, default=3, help="The generate's sampling steps.")
    parser.add_argument("--pycache", type=Path, help="PYTHONPYCACHEPREFIX for the children.")
    parser.add_argument("--folder", type=Path, help="Where the files go (a temp dir).")
    parser.add_argument("--json", type=Path, help="Also write the runs there, with provenance.")
    args = parser.parse_args()
    smoke_workload(args)
    if args.check_only:
        args.repeats, args.generate_repeats, args.steps = 1, 1, 2
    return args


def write_inputs(args: argparse.Namespace, folder: Path) -> tuple[Path, Path]:
    """The latents of the workload and `--vae`'s built-in weights as a diffusers folder."""
    path = folder / "latents.safetensors"
    z = latents(args.size, args.frames, args.vae)
    save_latents(path, Latents(z, normalized=True, fps=16, source={"benchmark": "fixed_costs"}))
    vae = folder / "vae"
    AutoencoderKLWan.from_config(BUILT_IN[args.vae]).to(DTYPES[args.dtype]).save_pretrained(vae)
    return path, vae


def child_env(checkout: Path, pycache: Path | None) -> dict[str, str]:
    """The environment of a run of `checkout`'s wanctl: it first on the path, the rest kept."""
    path = os.pathsep.join(p for p in (str(checkout), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path}
    if pycache is not None:
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, dict[str, Any]]:
    """Wall seconds of `python -m wanctl argv --json` from its start to its exit, and its JSON."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "wanctl", *argv, "--json"], env=env, cwd=cwd,
                          capture_output=True, text=True)  # fmt: skip
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return wall, json.loads(done.stdout)


def decode_argv(args: argparse.Namespace, inputs: tuple[Path, Path], output: Path) -> list[str]:
    z, vae = inputs
    return ["decode", str(z), "-o", str(output), "--vae", str(vae), "--device", args.device,
            "--dtype", args.dtype]  # fmt: skip


def generate_argv(args: argparse.Namespace, output: Path) -> list[str]:
    model = "tiny" if args.check_only else "synthetic-5b"
    return ["generate", "--prompt", "a fox in the snow", "--model", model, "--size", args.size,
            "--frames", str(args.frames), "--steps", str(args.steps), "--gpus", "1",
            "--device", args.device, "-o", str(output)]  # fmt: skip


def run_all(args: argparse.Namespace, folder: Path) -> list[Run]:
    """Every run, the checkouts interleaved, in turn first (the first run of all meets the
    coldest caches): decodes first, then generates."""
    inputs = write_inputs(args, folder)
    checkouts = {"after": ROOT, **({"before": args.before.resolve()} if args.before else {})}
    runs: list[Run] = []
    plan = [("decode", args.repeats), *([("generate", args.generate_repeats)] * args.generate)]
    for command, repeats in plan:
        for repeat in range(repeats):
            order = list(checkouts.items())
            for label, checkout in order[::-1] if repeat % 2 else order:
                output = folder / f"{label}-{command}-{repeat}.{SUFFIX[command]}"
                argv = (
                    decode_argv(args, inputs, output)
                    if command == "decode"
                    else generate_argv(args, output)
                )
                wall, summary = timed(argv, child_env(checkout, args.pycache), folder)
                runs.append(Run(label, command, wall, dict(summary["timeline"]["parts"])))
                output.unlink()
                print(f"{command} {label} #{repeat + 1}: {wall:.1f} s", flush=True)
    return runs


def render(console: Console, runs: list[Run], command: str) -> None:
    these = [r for r in runs if r.command == command]
    if not these:
        return
    table = Table(title=f"wanctl {command}: seconds, each run a fresh process")
    table.add_column("part")
    for number, run in enumerate(these):
        table.add_column(f"{run.checkout} #{number // len({r.checkout for r in these}) + 1}")
    names = list(dict.fromkeys(name for run in these for name in run.parts))
    for name in names:
        table.add_row(
            name, *(f"{run.parts[name]:.2f}" if name in run.parts else "-" for run in these)
        )
    table.add_row("wall (start to exit)", *(f"{run.wall_s:.2f}" for run in these))
    table.add_row("work", *(f"{run.work_s:.2f}" for run in these))
    table.add_row("wall - work", *(f"{run.wall_s - run.work_s:.2f}" for run in these))
    console.print(table)
    for checkout in dict.fromkeys(r.checkout for r in these):
        rests = [r.wall_s - r.work_s for r in these if r.checkout == checkout]
        # a checkout's first run meets cold caches (bytecode, the files, Inductor's, the
        # attention timings): shown, and left out of the median where more runs followed
        rest = statistics.median(rests[1:] or rests)
        which = f"runs 2-{len(rests)}; run 1, cold: {rests[0]:.2f} s" if rests[1:] else "1 run"
        verdict = f"; within {WITHIN_S:.0f} s: {'yes' if rest <= WITHIN_S else 'no'}"
        console.print(f"{checkout}: wall - work {rest:.2f} s (median of {which})"
                      + (verdict if command == "decode" else ""))  # fmt: skip


def provenance(args: argparse.Namespace) -> str:
    device = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    return (
        f"device: {args.device} ({device}); torch {torch.__version__}; {args.vae} VAE as a "
        f"diffusers folder, {args.dtype}; {args.size} x {args.frames} frames; bytecode cache: "
        f"{args.pycache or 'as installed'}; before: {args.before or '-'}"
    )


def main() -> None:
    args = parse_args()
    console = Console(width=160)  # the tables unwrapped in a log
    console.print(provenance(args))
    with tempfile.TemporaryDirectory(prefix="wanctl-fixed-", dir=args.folder) as name:
        runs = run_all(args, Path(name))
    for command in WORK:
        render(console, runs, command)
    if args.json:
        rows = [{**asdict(run), "work_s": run.work_s} for run in runs]
        args.json.write_text(json.dumps({"provenance": provenance(args), "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
