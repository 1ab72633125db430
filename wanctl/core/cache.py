"""wanctl's user cache folder (platformdirs: ~/.cache/wanctl on Linux) and the small JSON files
kept there: answers that cost seconds to get and do not change between runs (torch's CUDA arch
list, the attention backend timings) and Inductor's compiled blocks. A cache that cannot be
read is empty; one that cannot be written is skipped: it is only a cache. Torch-free."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import platformdirs


def cache_path(name: str) -> Path:
    """`name` in wanctl's user cache folder."""
    return Path(platformdirs.user_cache_dir("wanctl")) / name


def read_cache(path: Path) -> dict[str, Any]:
    """The JSON object in `path`, or an empty one when it is missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_cache(path: Path, data: dict[str, Any]) -> None:
    """`data` into `path`, atomically (several ranks of one machine may write at once)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}")
        partial.write_text(json.dumps(data, indent=1))
        os.replace(partial, path)
    except OSError:
        pass
