"""A diffusers DiT checkpoint loaded onto the GPU three ways, each in a fresh process (so that
the peaks do not mix), side by side: host memory at its peak, seconds, GPU peak, and whether
the weights are those of the old way, tensor by tensor.

- `from_pretrained`: the old way, `WanTransformer3DModel.from_pretrained` into host memory,
  stored as `--storage` says there (fp8: diffusers' layerwise casting), then `.to(device)`;
- `device_map`: diffusers' own straight load, `from_pretrained(device_map={"": device})`,
  then the storage applied on the GPU (its bf16 DiT is there whole first);
- `streamed`: wanctl's (`wanctl.models.weights`): built on the meta device, stored there,
  allocated on the GPU and filled tensor by tensor from the files.

The checkpoint is random, written first in diffusers' layout (config.json, shards of
`--shard-size` and their index) for a built-in model's DiT: synthetic-5b is TI2V-5B's,
synthetic-a14b an A14B expert. Host memory from /proc/self/status: VmHWM (the peak resident
set of this process image; getrusage's ru_maxrss is not used: it keeps the peak of the image
a process exec'd from, here the parent that wrote the checkpoint, 10.29 GiB on the H200 host
for every way), and RssAnon (anonymous memory: what the
kernel must find room for) and RssFile (the checkpoint's pages mapped into the process: page
cache, shared between processes reading the same file, reclaimable) sampled every 5 ms.

On a GPU (the checkpoint of 5B bf16 parameters is 10 GB on disk, an A14B expert's 28.6 GB;
`--folder` keeps it for the next run; `--checkpoint-dtype fp32` writes float32 files, which
`from_pretrained` casts to bf16 in host memory):

    PYTHONPATH=. python benchmarks/host_memory.py --model synthetic-5b --storage bf16 \
        --folder /tmp/dit-5b

A smoke test anywhere (a tiny DiT, on the CPU):

    python benchmarks/host_memory.py --check-only
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch
from diffusers import WanTransformer3DModel
from rich.console import Console
from rich.table import Table

from wanctl.core.architectures import DIT_A14B, DIT_TI2V_5B
from wanctl.models.builtin import TINY_DIT
from wanctl.models.files import STREAMED_WEIGHTS, weight_map
from wanctl.models.placement import prepare_dit
from wanctl.models.weights import Weights, empty_dit

ROOT = Path(__file__).resolve().parent.parent
GIB = 2**30
CONFIGS = {"synthetic-5b": DIT_TI2V_5B, "synthetic-a14b": DIT_A14B, "tiny": TINY_DIT}
WAYS = ("from_pretrained", "device_map", "streamed")
KINDS = ("RssAnon", "RssFile")  # sampled
MARK = "host_memory.json"  # what the folder's checkpoint was written for
NOTE = (
    "GiB of host memory: the baseline is the process's resident set before the load (imports, "
    "CUDA context); VmHWM its peak; +anon peak: RssAnon's peak over its baseline, the "
    "process's own memory; +file peak: RssFile's, the checkpoint's pages mapped while read "
    "(page cache, reclaimable). GPU peak: max_memory_allocated."
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("synthetic-5b", "synthetic-a14b"),
                        default="synthetic-5b", help="Whose DiT the checkpoint holds.")  # fmt: skip
    parser.add_argument("--storage", choices=("bf16", "fp8"), default="bf16")
    parser.add_argument("--checkpoint-dtype", choices=("bf16", "fp32"), default="bf16",
                        help="The dtype the checkpoint's files hold.")  # fmt: skip
    parser.add_argument("--shard-size", default="10GB", help="save_pretrained's default.")
    parser.add_argument(
        "--folder",
        type=Path,
        help="Where to write the checkpoint (kept; default: a temporary folder).",
    )
    parser.add_argument("--check-only", action="store_true", help="A tiny DiT on the CPU.")
    parser.add_argument("--way", choices=WAYS, help=argparse.SUPPRESS)  # one measured process
    parser.add_argument("--device", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.check_only:
        args.model, args.shard_size, args.device = "tiny", "200KB", "cpu"
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return args


def write_checkpoint(folder: Path, config: dict[str, Any], dtype: torch.dtype, shard: str) -> None:
    """Random weights of `config`'s DiT in diffusers' layout, split as `save_pretrained`
    splits them (huggingface_hub's `split_torch_state_dict_into_shards`), one shard in memory
    at a time."""
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    with torch.device("meta"):
        model: Any = WanTransformer3DModel(**config)
    model.save_config(folder)
    shapes = {name: tensor.to(dtype) for name, tensor in model.state_dict().items()}
    split = split_torch_state_dict_into_shards(
        shapes, filename_pattern="diffusion_pytorch_model{suffix}.safetensors",
        max_shard_size=shard,
    )  # fmt: skip
    fill_on = "cuda" if torch.cuda.is_available() else "cpu"
    for file, names in split.filename_to_tensors.items():
        tensors = {name: (0.02 * torch.randn(shapes[name].shape, device=fill_on)).to(dtype).cpu()
                   for name in names}  # fmt: skip
        save_file(tensors, folder / file)
    index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))


class Sampler(threading.Thread):
    """The largest RssAnon and RssFile of this process (KiB), read every 5 ms."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peaks = dict.fromkeys(KINDS, 0)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.005):
            for key, kib in status(*self.peaks).items():
                self.peaks[key] = max(self.peaks[key], kib)


def status(*keys: str) -> dict[str, int]:
    """Fields of /proc/self/status, KiB."""
    lines = Path("/proc/self/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in lines)
    return {key: int(fields[key].split()[0]) for key in keys if key in fields}


def load(way: str, folder: Path, storage: str, device: torch.device) -> Any:
    """The DiT in `folder` on `device`, loaded the `way` named."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    placed: dict[str, Any] = dict(storage=storage, shard=False, device=device, compute=dtype)
    if way == "streamed":
        weights = Weights(folder, weight_map(folder, STREAMED_WEIGHTS[0]), dtype, fix="")
        empty = empty_dit(WanTransformer3DModel.load_config(folder), dtype)
        return prepare_dit(empty, weights=weights, **placed)
    device_map = {"device_map": {"": device}} if way == "device_map" else {}
    model = WanTransformer3DModel.from_pretrained(folder, torch_dtype=dtype, **device_map)
    return prepare_dit(model, **placed)


def measure(way: str, folder: Path, storage: str, device: torch.device) -> dict[str, Any]:
    """One way's figures, in this process (fresh: its peaks are this load's)."""
    import accelerate  # noqa: F401  (imported by the loads: before the baseline)

    if device.type == "cuda":
        torch.zeros(1, device=device)  # the CUDA context, before the baseline
    baseline = status("VmRSS", *KINDS)
    sampler = Sampler()
    sampler.start()
    start = time.perf_counter()
    model = load(way, folder, storage, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    sampler.stop.set()
    sampler.join()
    figures = {
        "seconds": seconds,
        "baseline_gib": baseline["VmRSS"] / 2**20,
        "vmhwm_gib": status("VmHWM")["VmHWM"] / 2**20,
        **{f"{key}_gib": (kib - baseline[key]) / 2**20 for key, kib in sampler.peaks.items()},
        "gpu_peak_gib": torch.cuda.max_memory_allocated(device) / GIB
        if device.type == "cuda" else None,
    }  # fmt: skip
    return {**figures, "checksums": checksums(model)}


def checksums(model: Any) -> dict[str, str]:
    """sha256 of each parameter's and buffer's bytes (after the peaks were read)."""
    named = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    return {name: hashlib.sha256(t.detach().contiguous().view(torch.uint8).cpu().numpy())
            .hexdigest() for name, t in named.items()}  # fmt: skip


def run_way(way: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    command = [sys.executable, __file__, "--way", way, "--folder", str(folder),
               "--storage", args.storage, "--device", args.device]  # fmt: skip
    paths = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}  # the caller's paths kept
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{way} failed:\n{done.stdout[-2000:]}{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def prepared_folder(args: argparse.Namespace) -> tuple[Path, bool]:
    """The checkpoint's folder, written unless it already holds this one; and whether it is a
    temporary one, to delete."""
    folder = args.folder or Path(tempfile.mkdtemp(prefix="wanctl-host-memory-"))
    wanted = {"model": args.model, "dtype": args.checkpoint_dtype, "shard": args.shard_size}
    mark = folder / MARK
    if not (mark.is_file() and json.loads(mark.read_text()) == wanted):
        folder.mkdir(parents=True, exist_ok=True)
        dtype = torch.bfloat16 if args.checkpoint_dtype == "bf16" else torch.float32
        write_checkpoint(folder, CONFIGS[args.model], dtype, args.shard_size)
        mark.write_text(json.dumps(wanted))
    return folder, args.folder is None


def warm(folder: Path) -> None:
    """Read the files once, so that every way finds them in the page cache (the first would
    pay the disk otherwise)."""
    for path in sorted(folder.glob("*.safetensors")):
        with path.open("rb") as file:
            while file.read(1 << 26):
                pass


def table(results: dict[str, dict[str, Any]]) -> Table:
    reference = results["from_pretrained"]["checksums"]
    out = Table(title="one DiT loaded onto the device, a fresh process each", title_justify="left")
    columns = ("way", "seconds", "baseline", "VmHWM", "+anon peak", "+file peak", "GPU peak",
               "same weights")  # fmt: skip
    for column in columns:
        out.add_column(column, justify="left" if column == "way" else "right")
    for way, r in results.items():
        differ = sum(r["checksums"][name] != digest for name, digest in reference.items())
        gpu = "n/a" if r["gpu_peak_gib"] is None else f"{r['gpu_peak_gib']:.2f}"
        out.add_row(way, f"{r['seconds']:.1f}", *(f"{r[key]:.2f}" for key in (
            "baseline_gib", "vmhwm_gib", "RssAnon_gib", "RssFile_gib")), gpu,
            "yes" if not differ else f"no: {differ} of {len(reference)} differ")  # fmt: skip
    return out


def provenance(args: argparse.Namespace, folder: Path) -> str:
    import diffusers
    import safetensors

    device = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    shards = len(list(folder.glob("*.safetensors")))
    return (f"{device}; torch {torch.__version__}, diffusers {diffusers.__version__}, "
            f"safetensors {safetensors.__version__}; {args.model}'s DiT, a "
            f"{args.checkpoint_dtype} checkpoint in {shards} shard(s), {args.storage} storage; "
            f"{time.strftime('%Y-%m-%d')}")  # fmt: skip


def main() -> None:
    args = parse_args()
    if args.way:
        figures = measure(args.way, args.folder, args.storage, torch.device(args.device))
        print(json.dumps(figures))
        return
    folder, temporary = prepared_folder(args)
    try:
        warm(folder)
        results = {way: run_way(way, args, folder) for way in WAYS}
        console = Console()
        console.print(provenance(args, folder))
        console.print(table(results))
        console.print(NOTE)
    finally:
        if temporary:
            shutil.rmtree(folder)


if __name__ == "__main__":
    main()
