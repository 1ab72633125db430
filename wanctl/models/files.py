"""The files loading a model reads, checked before launch from their names, JSON and headers
alone (no torch, no tensor read): the weights diffusers' and transformers' `from_pretrained`
look for (one file, or an index and every shard it names), a safetensors header against the
file's size, torch's `.pth` archives, a tokenizer's vocabulary. A problem is a `Broken` (the
file, what is wrong with it, why it matters); the checkpoint's check turns it into a refusal
with the download that fixes it."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

# The weights `from_pretrained` looks for in a model's folder, safetensors first; each may
# also be sharded: `NAME.index.json` maps every tensor to the shard holding it.
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
# A DiT's weights as wanctl streams them (`wanctl.models.weights`): safetensors alone, whose
# headers say where each tensor lies, so that each is read by itself.
STREAMED_WEIGHTS = DIFFUSERS_WEIGHTS[:1]
TRANSFORMERS_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
VOCABULARY_FILES = ("tokenizer.json", "spiece.model")
# Tokenizers built from their config alone: ByT5's tokens are the UTF-8 bytes.
VOCABULARY_FREE = ("ByT5Tokenizer",)
PARTIAL = "a partial download, or a file overwritten since"
# safetensors refuses headers over 100 MB: a larger length is not a safetensors file.
MAX_HEADER_BYTES = 100_000_000


class Broken(Exception):
    """`path` cannot be loaded: `problem` completes the sentence "PATH ...", `why` says what
    loading does with it."""

    def __init__(self, path: Path, problem: str, why: str) -> None:
        super().__init__(f"{path} {problem}")
        self.path = path
        self.problem = problem
        self.why = why


def read_json(path: Path, reader: str) -> dict[str, Any]:
    """The JSON object in `path`, which `reader` reads."""
    if not path.is_file():
        raise Broken(path, "is missing", f"{reader} reads it")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:  # UnicodeDecodeError too; OSError is the caller's
        raise Broken(path, f"is not valid JSON ({error})", PARTIAL) from None
    if not isinstance(value, dict):
        raise Broken(path, f"holds a JSON {type(value).__name__}, not an object", PARTIAL)
    return value


def check_weights(folder: Path, names: tuple[str, ...], reader: str) -> None:
    """One of `names` in `folder`, whole, or its index and every shard it names."""
    for name in names:
        if (folder / f"{name}.index.json").is_file():
            return _check_index(folder / f"{name}.index.json", reader)
        if (folder / name).is_file():
            return _check_weight_file(folder / name)
    otherwise = f" ({names[1]} and its index otherwise)" if len(names) > 1 else ", no other format"
    raise Broken(
        folder, "holds no weights",
        f"{reader} reads {names[0]}, or {names[0]}.index.json and the shards it names{otherwise}",
    )  # fmt: skip


def weight_map(folder: Path, name: str) -> dict[str, Path]:
    """The file holding each tensor of the safetensors weights `name` in `folder`, which
    `check_weights` passed: the map of its index, or the names in the one file's header."""
    index = folder / f"{name}.index.json"
    if index.is_file():
        mapped = read_json(index, "the weights' index")["weight_map"]
        return {tensor: folder / shard for tensor, shard in mapped.items()}
    _, header = _safetensors_header(folder / name)
    return {tensor: folder / name for tensor in header if tensor != "__metadata__"}


def check_torch_file(path: Path, reader: str) -> None:
    """A file `torch.load` reads: since torch 1.6 a zip archive, whose directory sits at its
    end, so that a cut download has none (an older pickle is let through)."""
    if not path.is_file():
        raise Broken(path, "is missing", f"{reader} reads it")
    _check_archive(path)


def check_tokenizer(folder: Path, reader: str) -> None:
    """The files `AutoTokenizer.from_pretrained(folder)` builds a tokenizer from: its config
    (which names the class) and a vocabulary. With none, loading fails (transformers: "Couldn't
    instantiate the backend tokenizer"); with the config alone, a T5 tokenizer with no
    vocabulary loads and turns every prompt into unknown tokens."""
    if not folder.is_dir():
        raise Broken(folder, "is missing", f"{reader} reads the tokenizer from it")
    config = folder / "tokenizer_config.json"
    tokenizer_class = read_json(config, reader).get("tokenizer_class") if config.exists() else None
    present = [name for name in VOCABULARY_FILES if (folder / name).is_file()]
    if not present and tokenizer_class not in VOCABULARY_FREE:
        raise Broken(
            folder, "holds no vocabulary",
            f"{reader} builds the tokenizer from {' or '.join(VOCABULARY_FILES)}",
        )  # fmt: skip
    for name in present:
        _check_not_cut(folder / name)


def _check_index(index_path: Path, reader: str) -> None:
    weight_map = read_json(index_path, reader).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise Broken(index_path, "has no weight_map of tensors to shards", PARTIAL)
    shards = set(weight_map.values())
    if not all(isinstance(shard, str) and shard for shard in shards):
        raise Broken(index_path, "maps a tensor to no shard file name", PARTIAL)
    for shard in sorted(shards):
        path = index_path.parent / shard
        if not path.is_file():
            raise Broken(path, "is missing", f"{index_path.name} keeps tensors in it")
        _check_weight_file(path)


def _check_weight_file(path: Path) -> None:
    if path.suffix == ".safetensors":
        _check_safetensors(path)
    else:  # a .bin: torch.save's
        _check_archive(path)


def _check_archive(path: Path) -> None:
    with path.open("rb") as file:
        start = file.read(2)
    if not start:
        raise Broken(path, "is empty", PARTIAL)
    if start == b"PK" and not zipfile.is_zipfile(path):
        raise Broken(path, "is cut short: its zip archive has no directory at its end", PARTIAL)


def _check_safetensors(path: Path) -> None:
    """The header (8 bytes of length, then JSON naming each tensor's byte range) read, and the
    file long enough for every range: a cut download is refused here, not after minutes."""
    size = path.stat().st_size
    length, header = _safetensors_header(path)
    if length > min(size - 8, MAX_HEADER_BYTES):
        raise Broken(path, f"is cut short: {size} bytes, less than its own header", PARTIAL)
    if not isinstance(header, dict):
        raise Broken(path, "is not a safetensors file: its header is not a JSON object", PARTIAL)
    tensors = [entry for name, entry in header.items() if name != "__metadata__"]
    if not all(_offsets_ok(entry) for entry in tensors):
        raise Broken(path, "is not a safetensors file: a tensor has no byte range", PARTIAL)
    needed = 8 + length + max((entry["data_offsets"][1] for entry in tensors), default=0)
    if size < needed:
        raise Broken(path, f"is cut short: {size} bytes of the {needed} its header describes",
                     PARTIAL)  # fmt: skip


def _safetensors_header(path: Path) -> tuple[int, Any]:
    """A safetensors file's header length and its JSON (None where the length runs past the
    file or what it spans is not JSON)."""
    size = path.stat().st_size
    with path.open("rb") as file:
        length = int.from_bytes(file.read(8), "little")
        if length > min(size - 8, MAX_HEADER_BYTES):
            return length, None
        try:
            return length, json.loads(file.read(length))
        except (UnicodeDecodeError, ValueError):
            return length, None


def _offsets_ok(entry: Any) -> bool:
    offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
    return (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(offset, int) and offset >= 0 for offset in offsets)
    )


def _check_not_cut(path: Path) -> None:
    """A vocabulary file that is not empty, and for JSON one that ends as an object does (the
    file is not parsed: UMT5's tokenizer.json is 16 MB)."""
    size = path.stat().st_size
    if size == 0:
        raise Broken(path, "is empty", PARTIAL)
    if path.suffix == ".json":
        with path.open("rb") as file:
            file.seek(max(0, size - 64))
            if not file.read().rstrip().endswith(b"}"):
                raise Broken(path, "is cut short: its JSON does not end", PARTIAL)
