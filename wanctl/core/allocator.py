"""PyTorch's caching-allocator configuration (`PYTORCH_CUDA_ALLOC_CONF`, `PYTORCH_ALLOC_CONF`)
read key by key as PyTorch reads it, torch-free: what PyTorch refuses, what it accepts but
misreads, and the configuration to use instead.

PyTorch's rules (c10/core/AllocatorConfig.{h,cpp}, c10/cuda/CUDAAllocatorConfig.{h,cpp}): all
whitespace is dropped, then `key:value` pairs separated by commas (one trailing comma is
accepted, an empty pair is not); booleans are exactly `True` or `False`; sizes are read with
`stoull` and fractions with `stod` (a number, then anything); `roundup_power2_divisions` also
takes a list `[64:8,256:4,>:1]`. Checked against torch 2.11.0+cu130 on an H200 (2026-12-02):
every value refused here made the first CUDA allocation fail, with a ValueError or, for a key
with no `:value` ("garbage"), an abort ("terminate called after throwing an instance of
'c10::Error'"); `expandable_segments:true` is refused, `max_split_size_mb:128abc` read as 128.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass

MIN_SPLIT_MB = 20  # kLargeBuffer: the smallest max_split_size_mb / max_non_split_rounding_mb
MAX_REGISTER_THREADS = 128  # CUDAAllocatorConfig::pinned_max_register_threads
_INTEGER = re.compile(r"[+-]?\d+")
_REAL = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


@dataclass(frozen=True)
class Issue:
    """One thing wrong in a configuration; `fails`: PyTorch refuses it (else it runs with a
    value other than the one meant)."""

    text: str
    fails: bool = True


def _boolean(value: str) -> Issue | None:
    if value in ("True", "False"):
        return None
    return Issue(f"{value!r} is not True or False (PyTorch takes only these, capitalised)")


def _number(value: str, pattern: re.Pattern[str]) -> tuple[float | None, Issue | None]:
    """The number PyTorch reads from the start of `value` (stoull, stod), and a warning when it
    is not the whole value; None when it reads none."""
    match = pattern.match(value)
    if not match:
        return None, Issue(f"{value!r} is not a number")
    number = float(match[0])
    if match[0] != value:
        return number, Issue(f"{value!r}: PyTorch reads {match[0]} and ignores the rest", False)
    return number, None


def _megabytes(value: str) -> Issue | None:
    number, issue = _number(value, _INTEGER)
    if number is not None and number < 0:
        return Issue(f"{value} is negative: PyTorch reads it unsigned, as no limit", False)
    if number is not None and number < MIN_SPLIT_MB:
        return Issue(f"{value} MB is below PyTorch's minimum of {MIN_SPLIT_MB}")
    return issue


def _fraction(low_open: bool) -> Callable[[str], Issue | None]:
    def check(value: str) -> Issue | None:
        number, issue = _number(value, _REAL)
        if number is not None and not (0 < number < 1 if low_open else 0 <= number <= 1):
            return Issue(f"{value} is outside {'(0, 1)' if low_open else '[0, 1]'}")
        return issue

    return check


def _power_of_two(value: str, *, zero: bool = False, most: int | None = None) -> Issue | None:
    number, issue = _number(value, _INTEGER)
    if number is None:
        return issue
    whole = int(number)
    if not ((zero and whole == 0) or (whole > 0 and whole & (whole - 1) == 0)):
        return Issue(f"{value} is not a power of 2" + (" (or 0)" if zero else ""))
    if most is not None and whole > most:
        return Issue(f"{value} is more than {most}")
    return issue


def _roundup(value: str) -> Issue | None:
    """A power of 2, or `[SIZE_MB:DIVISIONS,...,>:DIVISIONS]`: sizes powers of 2 (or `>`),
    divisions powers of 2 or 0."""
    if not value.startswith("["):
        return _power_of_two(value)
    if not value.endswith("]"):
        return Issue(f"{value!r} opens a list that does not close")
    for item in value[1:-1].split(","):
        size, colon, divisions = item.partition(":")
        if not colon:
            return Issue(f"{item!r} in the list is not SIZE_MB:DIVISIONS")
        bound = None if size == ">" else _power_of_two(size)
        issue = bound or _power_of_two(divisions, zero=True)
        if issue:
            return issue
    return None


def _positive(value: str) -> Issue | None:
    number, issue = _number(value, _INTEGER)
    return Issue(f"{value} is not above 0") if number is not None and number <= 0 else issue


def _backend(value: str) -> Issue | None:
    if value in ("native", "cudaMallocAsync"):
        return None
    return Issue(f"{value!r} is not a backend (native or cudaMallocAsync)")


# Every key PyTorch's CUDA build reads, with its value's check (torch 2.11; the last two from
# 2.13's headers, refused by 2.11 as unknown keys).
KEYS: dict[str, Callable[[str], Issue | None]] = {
    "max_split_size_mb": _megabytes,
    "max_non_split_rounding_mb": _megabytes,
    "garbage_collection_threshold": _fraction(low_open=True),
    "roundup_power2_divisions": _roundup,
    "expandable_segments": _boolean,
    "pinned_use_background_threads": _boolean,
    "backend": _backend,
    "release_lock_on_cudamalloc": _boolean,
    "release_lock_on_hipmalloc": _boolean,
    "pinned_use_cuda_host_register": _boolean,
    "pinned_use_hip_host_register": _boolean,
    "pinned_num_register_threads": lambda v: _power_of_two(v, most=MAX_REGISTER_THREADS),
    "pinned_reserve_segment_size_mb": _positive,
    "graph_capture_record_stream_reuse": _boolean,
    "per_process_memory_fraction": _fraction(low_open=False),
    "pinned_free_catch_all": _boolean,
    "throw_on_cudamalloc_oom": _boolean,
}
# Keys that older PyTorch refuses: absent from 2.11 (checked), added April 2026 (pytorch#179473).
SINCE = {"pinned_free_catch_all": (2, 12), "throw_on_cudamalloc_oom": (2, 12)}


@dataclass(frozen=True)
class AllocatorConf:
    """A configuration as PyTorch reads it: its `key:value` pairs in order, what is wrong, and
    the pairs meant (those PyTorch accepts as given, a misspelt key or boolean corrected)."""

    pairs: tuple[tuple[str, str], ...]
    issues: tuple[Issue, ...]
    meant: tuple[tuple[str, str], ...]

    @property
    def fails(self) -> bool:
        return any(issue.fails for issue in self.issues)

    @property
    def expandable_segments(self) -> bool:
        """What PyTorch runs with: the last `expandable_segments` given (default False)."""
        values = [value for key, value in self.pairs if key == "expandable_segments"]
        return bool(values) and values[-1] == "True"

    def suggestion(self) -> str:
        """The configuration to use: the pairs meant, without max_split_size_mb beside
        expandable segments; with none, wanctl's own."""
        kept = list(self.meant)
        if ("expandable_segments", "True") in kept:
            kept = [(key, value) for key, value in kept if key != "max_split_size_mb"]
        return ",".join(f"{key}:{value}" for key, value in kept) or "expandable_segments:True"


def _split(text: str) -> tuple[list[str], Issue | None]:
    """Top-level comma-separated parts (commas inside [...] stay), one trailing comma allowed."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    if parts and parts[-1] == "" and len(parts) > 1:
        parts.pop()  # PyTorch accepts one trailing comma
    if "" in parts and text:
        return [part for part in parts if part], Issue("an empty entry (',,' or a leading comma)")
    return [part for part in parts if part], None


def _pair_issue(key: str, value: str, torch: tuple[int, ...] | None) -> Issue | None:
    if key not in KEYS:
        close = difflib.get_close_matches(key.lower(), KEYS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        return Issue(f"{key!r} is not an allocator option{hint}")
    since = SINCE.get(key)
    if torch and since and torch[:2] < since:
        wanted = ".".join(map(str, since))
        return Issue(f"{key} needs PyTorch {wanted} or newer, not {'.'.join(map(str, torch))}")
    issue = KEYS[key](value)
    return Issue(f"{key}: {issue.text}", issue.fails) if issue else None


def _combination_issues(pairs: list[tuple[str, str]]) -> list[Issue]:
    """Pairs PyTorch accepts together but that misrepresent the run wanctl plans."""
    keys = dict(pairs)
    issues = []
    if "max_split_size_mb" in keys and keys.get("expandable_segments") == "True":
        issues.append(Issue(
            "max_split_size_mb beside expandable_segments:True: the two together have tripped "
            "an internal assert of the allocator near out of memory (pytorch#119452), and "
            "wanctl's memory model is fitted without max_split_size_mb", fails=False,
        ))  # fmt: skip
    if keys.get("backend") == "cudaMallocAsync":
        issues.append(Issue(
            "backend:cudaMallocAsync replaces the caching allocator that wanctl's memory model "
            "is fitted on (and ignores max_split_size_mb, roundup_power2_divisions and "
            "garbage_collection_threshold)", fails=False,
        ))  # fmt: skip
    return issues


def _meant(key: str, value: str, torch: tuple[int, ...] | None) -> tuple[str, str] | None:
    """The pair as it was meant, when PyTorch would take it: the key's close match, a
    boolean capitalised; None when neither makes it valid."""
    close = difflib.get_close_matches(key.lower(), KEYS, n=1)
    key = key if key in KEYS else close[0] if close else key
    if KEYS.get(key) is _boolean and value.lower() in ("true", "false"):
        value = value.capitalize()
    issue = _pair_issue(key, value, torch)
    return (key, value) if issue is None else None


def parse(text: str, torch: tuple[int, ...] | None = None) -> AllocatorConf:
    """`text` key by key, as `torch` (major, minor, ...) reads it (None: the newest known)."""
    parts, issue = _split(re.sub(r"\s+", "", text))
    issues = [issue] if issue else []
    pairs, meant = [], []
    for part in parts:
        key, colon, value = part.partition(":")
        if not colon or not value:
            issues.append(Issue(f"{part!r} has no ':value'"))
            continue
        pairs.append((key, value))
        if ":" in value and not value.startswith("["):
            issues.append(Issue(f"{part!r} holds two ':': PyTorch reads what follows the value "
                                "as another key (pairs are separated by ',')"))  # fmt: skip
            continue
        pair_issue = _pair_issue(key, value, torch)
        if pair_issue:
            issues.append(pair_issue)
        if (corrected := _meant(key, value, torch)) is not None:
            meant.append(corrected)
    issues += _combination_issues(pairs)
    return AllocatorConf(tuple(pairs), tuple(issues), tuple(meant))
