"""The checkpoint folders wanctl runs, checked before launch for everything loading them reads
(`wanctl.models.files`; JSON and headers only, no torch):

- a diffusers Wan2.2 checkpoint (TI2V-5B, T2V-A14B, I2V-A14B): every component its
  model_index.json names, with its config and weights, as `DiffusersCheckpoint` and the decode
  load them (a DiT's weights as safetensors: `wanctl.models.weights` streams them);
- an official one (Wan2.2-TI2V-5B, -T2V-A14B, -I2V-A14B): the DiT folders
  `WanModel.from_pretrained` reads (the A14B experts' `high_noise_model/` and
  `low_noise_model/`, TI2V-5B's at the root), the T5 and VAE `.pth` files and the tokenizer.

Each refusal is a `UsageError` (exit 2) naming the file, why loading needs it, and the
`hf download` that fixes it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from wanctl.core.families import Family
from wanctl.errors import UsageError
from wanctl.models.catalog import DOWNLOAD_FIX, index_family, two_experts
from wanctl.models.files import (
    DIFFUSERS_WEIGHTS,
    STREAMED_WEIGHTS,
    TRANSFORMERS_WEIGHTS,
    Broken,
    check_tokenizer,
    check_torch_file,
    check_weights,
    read_json,
    weight_map,
)

OFFICIAL_REPOS = {"ti2v-5B": "Wan-AI/Wan2.2-TI2V-5B", "t2v-A14B": "Wan-AI/Wan2.2-T2V-A14B",
                  "i2v-A14B": "Wan-AI/Wan2.2-I2V-A14B"}  # fmt: skip
PIPELINES = ("WanPipeline", "WanImageToVideoPipeline")
REQUIRED = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
EXPERT_FOLDERS = ("high_noise_model", "low_noise_model")
T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
T5_TOKENIZER = "google/umt5-xxl"
STREAMED_READER = "wanctl's streamed load of a DiT"
PAIR = (
    "diffusers reads each component as a [library, class] pair of strings, such as "
    '["diffusers", "WanTransformer3DModel"] ([null, null] for none)'
)


def check_diffusers_checkpoint(folder: Path) -> None:
    """Refuse a folder that `DiffusersCheckpoint` (and the decode of its `vae/`) cannot load."""
    if not folder.is_dir():
        raise UsageError(f"not a diffusers Wan2.2 checkpoint: {folder} is not a folder",
                         fix=DOWNLOAD_FIX)  # fmt: skip
    path = folder / "model_index.json"
    with _refusing(folder, None):
        index = read_json(path, "diffusers")
        components = _components(path, index)
    _check_pipeline(path, index)
    family = index_family(index)
    config = folder / "transformer" / "config.json"
    with _refusing(folder, diffusers_repo(family)):
        for name, loader in components.items():
            _check_component(folder / name, name, loader)
        channels = read_json(config, "diffusers").get("in_channels")
    _check_channels(config, channels, family, DOWNLOAD_FIX)


def check_official_checkpoint(folder: Path, family: Family) -> None:
    """Refuse a folder the official code cannot load `family` from."""
    repo = OFFICIAL_REPOS[family.name]
    fix = f"`hf download {repo} --local-dir DIR`, then --ckpt-dir DIR"
    if not folder.is_dir():
        raise UsageError(
            f"not the official Wan2.2 {family.name} checkpoint: {folder} is not a folder", fix=fix
        )
    dits = EXPERT_FOLDERS if family.experts == 2 else ("",)
    reader = "the official WanModel.from_pretrained"
    with _refusing(folder, repo):
        configs = {dit: read_json(folder / dit / "config.json", reader) for dit in dits}
        for dit in dits:
            check_weights(folder / dit, DIFFUSERS_WEIGHTS, reader)
        check_torch_file(folder / T5_FILE, "the official T5EncoderModel (torch.load)")
        check_tokenizer(folder / T5_TOKENIZER, "the official T5 encoder's AutoTokenizer")
        check_torch_file(folder / family.vae.file, "the official VAE (torch.load)")
    for dit, values in configs.items():
        _check_channels(folder / dit / "config.json", values.get("in_dim"), family, fix)


def checked_dit_files(folder: Path, component: str, family: Family) -> dict[str, Path]:
    """The file holding each tensor of the diffusers checkpoint's DiT `component`
    ("transformer", "transformer_2"), checked as before launch: a shard missing or cut short
    since is refused with the download that fixes it, not met halfway through the load."""
    path = folder / component
    with _refusing(folder, diffusers_repo(family)):
        check_weights(path, STREAMED_WEIGHTS, STREAMED_READER)
        return weight_map(path, STREAMED_WEIGHTS[0])


def diffusers_repo(family: Family) -> str:
    return f"{OFFICIAL_REPOS[family.name]}-Diffusers"


def download_fix(repo: str, folder: Path, path: Path) -> str:
    """The `hf download` of what `path` lacks or breaks: that file (every file name here has a
    suffix, no folder name does), a folder's files, or the whole checkpoint."""
    relative = path.relative_to(folder).as_posix()
    if relative == ".":
        target = ""
    elif path.suffix:
        target = f"{relative} "
    else:
        target = f"--include '{relative}/*' "
    command = f"`hf download {repo} {target}--local-dir {folder}`"
    if path.is_file():  # hf download keeps a file it has fetched before: delete it first
        return f"delete {path}, then download it again: {command}"
    return f"download it: {command}"


@contextmanager
def _refusing(folder: Path, repo: str | None) -> Iterator[None]:
    """A broken file becomes a refusal with the download that fixes it (any of the diffusers
    checkpoints while the model is not known yet); an unreadable one, with its permissions."""
    try:
        yield
    except Broken as broken:
        fix = download_fix(repo, folder, broken.path) if repo else DOWNLOAD_FIX
        raise UsageError(str(broken), why=broken.why, fix=fix) from None
    except OSError as error:
        raise UsageError(
            f"cannot read {error.filename or folder}", why=error.strerror or str(error),
            fix="make it readable by this user (`ls -l` shows its owner and mode)",
        ) from None  # fmt: skip


def _components(path: Path, index: dict[str, Any]) -> dict[str, str]:
    """Each component the index names, with the class that loads it. The A14B's
    `transformer_2` and I2V's `image_encoder` may be [null, null]; those of `REQUIRED` not."""
    listed = [name for name, entry in index.items()
              if isinstance(entry, list) and not name.startswith("_")]  # fmt: skip
    components = {}
    for name in dict.fromkeys([*REQUIRED, "transformer_2", *listed]):
        entry = index.get(name)
        if (entry is None or entry == [None, None]) and name not in REQUIRED:
            continue
        if entry is None or entry == [None, None]:
            raise Broken(path, f"names no {name}", f"wanctl loads the {name} from {name}/")
        if not (isinstance(entry, list) and len(entry) == 2
                and all(isinstance(part, str) for part in entry)):  # fmt: skip
            raise Broken(path, f"gives {name} as {json.dumps(entry)}, not a [library, class] "
                         "pair", PAIR)  # fmt: skip
        components[name] = entry[1]
    return components


def _check_pipeline(path: Path, index: dict[str, Any]) -> None:
    pipeline = index.get("_class_name")
    if pipeline not in PIPELINES:
        raise UsageError(
            f"not a diffusers Wan2.2 checkpoint: {path} names a {pipeline} pipeline",
            why=f"Wan2.2's diffusers checkpoints are a {' or a '.join(PIPELINES)}",
            fix=DOWNLOAD_FIX,
        )
    boundary = index.get("boundary_ratio")
    if two_experts(index) and not (isinstance(boundary, float) and 0 < boundary < 1):
        raise UsageError(
            f"{path} names two experts but its boundary_ratio is {boundary!r}",
            why="the boundary is the fraction of the timesteps where the low-noise expert takes "
            "over (T2V-A14B: 0.875, I2V-A14B: 0.9)",
            fix=DOWNLOAD_FIX,
        )


def _check_component(folder: Path, name: str, loader: str) -> None:
    reader = f"{loader}.from_pretrained"
    check = CHECKS.get(name)
    if check is not None:
        check(folder, reader)
    elif not folder.is_dir():
        raise Broken(folder, "is missing", f"model_index.json names it ({loader})")


def _diffusers_model(folder: Path, reader: str) -> None:
    read_json(folder / "config.json", reader)
    check_weights(folder, DIFFUSERS_WEIGHTS, reader)


def _streamed_dit(folder: Path, reader: str) -> None:
    read_json(folder / "config.json", reader)
    check_weights(folder, STREAMED_WEIGHTS, STREAMED_READER)


def _transformers_model(folder: Path, reader: str) -> None:
    read_json(folder / "config.json", reader)
    check_weights(folder, TRANSFORMERS_WEIGHTS, reader)


def _scheduler(folder: Path, reader: str) -> None:
    path = folder / "scheduler_config.json"
    if not isinstance(read_json(path, reader).get("_class_name"), str):
        raise Broken(path, "names no scheduler class (_class_name)",
                     "wanctl builds the scheduler of the class it names")  # fmt: skip


def _check_channels(path: Path, channels: Any, family: Family, fix: str) -> None:
    expected = family.dit["in_channels"]
    if channels is not None and channels != expected:
        raise UsageError(
            f"{path}: this DiT takes {channels!r} input channels, not the {expected} of Wan2.2 "
            f"{family.name}",
            why="a Wan2.1 checkpoint or another model",
            fix=fix,
        )


# How wanctl loads each component; another one the index names must at least be there.
CHECKS: dict[str, Callable[[Path, str], None]] = {
    "transformer": _streamed_dit,
    "transformer_2": _streamed_dit,
    "vae": _diffusers_model,
    "text_encoder": _transformers_model,
    "tokenizer": lambda folder, _: check_tokenizer(folder, "AutoTokenizer.from_pretrained"),
    "scheduler": _scheduler,
}
