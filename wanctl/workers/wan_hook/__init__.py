"""The decode hook `wanctl generate --backend wan-repo` puts into the official Wan2.2 code,
without editing the checkout.

The official `generate.py` decodes on rank 0 alone, the whole video on one GPU (the OOM this
project is about). wanctl puts this folder first on the children's PYTHONPATH, so that Python
runs its `sitecustomize.py` at start-up in every process; when `WANCTL_LATENTS` is set, that
installs an import hook which, once `wan.modules.vae2_2` (TI2V-5B) or `wan.modules.vae2_1` (the
A14B models) is imported, replaces `Wan2_2_VAE.decode` or `Wan2_1_VAE.decode` with
`save_instead_of_decode`: the sampled latents (a list of one normalised (48, T, h, w) or
(16, T, h, w) tensor) go to the latents file, and the official code gets a
one-frame black placeholder, which it writes to its --save_file (a scratch path). wanctl then
decodes the latents on every GPU and writes the video to the user's path. A rank of the official
code that dies of an exception records it in `WANCTL_RUN_DIR` as wanctl's own workers do, so
that wanctl names the rank and the cause.

Nothing here imports torch until the hooked decode runs.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

HOOK_DIR = Path(__file__).resolve().parent
LATENTS_ENV = "WANCTL_LATENTS"  # where to save the latents
SOURCE_ENV = "WANCTL_LATENTS_SOURCE"  # JSON: the latents file's source metadata, and fps
RUN_DIR_ENV = "WANCTL_RUN_DIR"  # where each rank records why it died
# The official VAE modules, and the class whose decode the hook takes over in each.
TARGETS = {"wan.modules.vae2_2": "Wan2_2_VAE", "wan.modules.vae2_1": "Wan2_1_VAE"}
PLACEHOLDER_SIZE = 16  # pixels of the placeholder frame


def install() -> None:
    """Hook the import of the official VAE modules, and record a rank's fatal exception, when
    wanctl asked for it (WANCTL_LATENTS)."""
    if os.environ.get(LATENTS_ENV) and not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
        sys.excepthook = _recording(sys.excepthook)
        record_node()


def record_node() -> None:
    """In a node's first rank (LOCAL_RANK 0), its node number (torchrun's GROUP_RANK) in the
    run folder: a node other than 0 holds no latents (rank 0 saves them on its node), and its
    wanctl must know that it is not the one to decode."""
    run_dir = os.environ.get(RUN_DIR_ENV)
    if run_dir and os.environ.get("LOCAL_RANK") == "0":
        node = int(os.environ.get("GROUP_RANK", "0"))
        (Path(run_dir) / NODE).write_text(json.dumps({"node": node}))


def _recording(previous: Any) -> Any:
    """An excepthook that records the exception a torchrun rank dies of, then shows it."""

    def hook(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
        run_dir, rank = os.environ.get(RUN_DIR_ENV), os.environ.get("RANK")
        if run_dir and rank is not None:
            from wanctl.core.status import RankStatus

            RankStatus(Path(run_dir), int(rank), phase="the official generate.py").failed(error)
        previous(kind, error, tb)

    return hook


def save_instead_of_decode(self: Any, zs: Sequence[Any]) -> list[Any]:
    """`Wan2_2_VAE.decode(zs)` or `Wan2_1_VAE.decode(zs)` as wanctl runs it: save the
    latents, return a placeholder."""
    import torch

    from wanctl.decode.latents import Latents, save_latents

    if len(zs) != 1:
        raise ValueError(f"wanctl's decode hook expects one video's latents, got {len(zs)}")
    source = json.loads(os.environ.get(SOURCE_ENV, "{}"))
    fps = float(source.pop("fps", 24))
    tensor = zs[0].detach().float().cpu().unsqueeze(0)
    save_latents(Path(os.environ[LATENTS_ENV]), Latents(tensor, normalized=True, fps=fps,
                                                        source=source))  # fmt: skip
    record_sampling_peak(zs[0].device)
    return [torch.zeros(3, 1, PLACEHOLDER_SIZE, PLACEHOLDER_SIZE)]


SAMPLING_PEAK = "official-sampling-peak.json"
NODE = "official-node.json"  # this node's number in the run, from its first official rank


def record_sampling_peak(device: Any) -> None:
    """The official process's peak GPU memory up to its decode call (loading, text encoding
    and sampling: its `sampling` phase as wanctl models it), for the summary to set against
    the memory model's prediction."""
    import torch

    run_dir = os.environ.get(RUN_DIR_ENV)
    if not run_dir or device.type != "cuda":
        return
    free, total = torch.cuda.mem_get_info(device)
    figures = {
        "allocated_gib": torch.cuda.max_memory_allocated(device) / 2**30,
        "reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30,
        "context_gib": (total - free - torch.cuda.memory_reserved(device)) / 2**30,
    }
    (Path(run_dir) / SAMPLING_PEAK).write_text(json.dumps(figures))


def run_shadowed_sitecustomize() -> None:
    """Python runs the first `sitecustomize` on sys.path, and this folder comes first: run
    the one it shadows (a distribution's or a virtual environment's), as without wanctl."""
    rest = [p for p in sys.path if Path(p or ".").resolve() != HOOK_DIR]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


class _Finder(importlib.abc.MetaPathFinder):
    """Finds the official VAE modules as the other finders would, with a loader that patches
    each once it has run."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in TARGETS:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _PatchingLoader(spec.loader)
        return spec


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader):
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        getattr(module, TARGETS[module.__name__]).decode = save_instead_of_decode
