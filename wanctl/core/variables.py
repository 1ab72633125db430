"""The variables that wanctl and the libraries under it read, checked by value and torch-free:
doctor reports each `Problem` (fail or warn), generate refuses the ones that fail.

- `WAN_VAE_DECODE_CHUNK_T`: wanctl's decode, latent frames per decoder call.
- `PYTORCH_CUDA_ALLOC_CONF` / `PYTORCH_ALLOC_CONF`: PyTorch's allocator, key by key
  (`wanctl.core.allocator`).
- NCCL's, as NCCL parses them: numbers with strtoll/strtol (src/misc/param.cc; a word reads as
  0, so `NCCL_P2P_DISABLE=true` leaves P2P on), P2P disabled only for `NCCL_P2P_DISABLE=1` and
  `NCCL_P2P_LEVEL` compared case-sensitively (src/graph/paths.cc), `NCCL_DEBUG` in any case
  (src/debug.cc); a `NCCL_SOCKET_IFNAME` that matches no interface stops NCCL at init
  (ncclInvalidUsage, even on one rank: NCCL 2.28.9 on an H200, 2026-12-02).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from wanctl.core import allocator
from wanctl.errors import UsageError

# Latent frames per decoder call, read by wanctl's decode engine (the official vae2_2.py reads no
# variable: the name came from a fork of it; wanctl keeps it for the users who set it).
CHUNK_ENV = "WAN_VAE_DECODE_CHUNK_T"
ALLOC_ENV = "PYTORCH_CUDA_ALLOC_CONF"
ALLOC_ALIAS = "PYTORCH_ALLOC_CONF"
# NCCL's switches: the values it documents, and what NCCL does when it reads 0.
NCCL_SWITCHES = {
    "NCCL_P2P_DISABLE": (("0", "1"), "P2P stays on"),
    "NCCL_SHM_DISABLE": (("0", "1"), "the shared-memory transport stays on"),
    "NCCL_IB_DISABLE": (("0", "1"), "InfiniBand stays on"),
    "NCCL_CUMEM_ENABLE": (("0", "1"), "cuMem allocations are off"),
    "NCCL_NVLS_ENABLE": (("0", "1", "2"), "NVLink SHARP is off"),
}
# topoPathTypeStr up to PATH_SYS; NCCL's documentation names the first, PIX, PXB, PHB and SYS.
P2P_LEVELS = ("LOC", "NVL", "NVB", "C2C", "PIX", "PXB", "PXN", "P2C", "PHB", "SYS")
DEBUG_LEVELS = ("VERSION", "WARN", "INFO", "ABORT", "TRACE")
ON_WORDS, OFF_WORDS = ("true", "yes", "on", "y", "t"), ("false", "no", "off", "n", "f")
ALLOCATOR_SHELL = "python -c 'import torch; torch.zeros(1, device=\"cuda\")'"


@dataclass(frozen=True)
class Problem:
    """A variable whose value will not do what it says: what, why, the fix; `fails`: the run
    fails or runs otherwise than asked (doctor: fail, generate: refused), else a warning."""

    name: str  # doctor's check is `env.<name>`
    what: str
    why: str
    fix: str
    fails: bool
    shell: str = ""

    def refusal(self) -> UsageError:
        return UsageError(self.what, why=self.why, fix=self.fix)


def version(text: str | None) -> tuple[int, ...] | None:
    """'2.11.0+cu130' -> (2, 11, 0)."""
    numbers = re.findall(r"\d+", (text or "").split("+")[0])[:3]
    return tuple(map(int, numbers)) or None


def chunk_t_problem(value: str) -> Problem | None:
    if re.fullmatch(r"\s*\d+\s*", value) and int(value) >= 1:
        return None
    return Problem(
        CHUNK_ENV.lower(),
        f"{CHUNK_ENV}={value} is not a number of latent frames",
        why="wanctl's decode reads it as the latent frames per decoder call, a whole number of "
        "at least 1; `wanctl generate` and `wanctl decode` refuse anything else",
        fix=f"set {CHUNK_ENV}=1 (each frame more per call costs a frame of activations), or "
        "unset it (wanctl then decodes ranks // 2 latent frames a call, at least 1)",
        fails=True,
        shell=f"echo ${CHUNK_ENV}",
    )


def _allocator_problem(name: str, value: str, torch: tuple[int, ...] | None) -> Problem | None:
    conf = allocator.parse(value, torch)
    if not conf.issues:
        return None
    found = "; ".join(issue.text for issue in conf.issues)
    effect = (
        "PyTorch refuses it at the first CUDA allocation (a ValueError, or an abort for a key "
        "with no value): every rank fails before sampling"
        if conf.fails
        else "PyTorch runs with it"
    )
    return Problem(
        name.lower(), f"{name}={value}", why=f"{found}. {effect}",
        fix=f"set {name}={conf.suggestion()}, or unset it", fails=conf.fails, shell=ALLOCATOR_SHELL,
    )  # fmt: skip


def allocator_problems(env: Mapping[str, str], torch: tuple[int, ...] | None) -> list[Problem]:
    """Each allocator variable set, key by key; and both names set to different values."""
    found = [
        problem
        for name in (ALLOC_ENV, ALLOC_ALIAS)
        if name in env and (problem := _allocator_problem(name, env[name], torch))
    ]
    values = [re.sub(r"\s+", "", env[name]) for name in (ALLOC_ENV, ALLOC_ALIAS) if name in env]
    if len(values) == 2 and values[0] != values[1]:
        found.append(Problem(
            "pytorch_alloc_conf_both",
            f"{ALLOC_ENV}={env[ALLOC_ENV]} and {ALLOC_ALIAS}={env[ALLOC_ALIAS]} are both set",
            why=f"PyTorch reads one of them, which one depends on its version (2.11 reads "
            f"{ALLOC_ENV} and ignores {ALLOC_ALIAS}; newer ones call {ALLOC_ENV} deprecated): "
            "wanctl cannot tell which configuration its memory plan is for",
            fix=f"keep one: unset {ALLOC_ALIAS} (or give both the same value)",
            fails=True, shell="env | grep ALLOC_CONF",
        ))  # fmt: skip
    return found


def _either(values: tuple[str, ...]) -> str:
    """('0', '1', '2') -> '0, 1 or 2'."""
    return " or ".join([", ".join(values[:-1]), values[-1]]) if len(values) > 1 else values[0]


def _switch_problem(name: str, value: str) -> Problem | None:
    allowed, zero = NCCL_SWITCHES[name]
    text = value.strip()
    if text in allowed:
        return None
    number = re.match(r"[+-]?\d+", text)
    if number:
        why = f"NCCL reads it as {int(number[0])}; it documents only {_either(allowed)}"
    else:
        why = f"NCCL reads this variable as a number, and {value!r} as 0: {zero}"
    meant = "1" if text.lower() in ON_WORDS else "0" if text.lower() in OFF_WORDS else None
    return Problem(
        name.lower(), f"{name}={value} is not a value NCCL reads as meant", why=why,
        fix=f"set {name}={meant}" if meant else f"set {name} to {_either(allowed)}",
        fails=True, shell="env | grep ^NCCL_",
    )  # fmt: skip


def _p2p_level_problem(value: str) -> Problem | None:
    if value in P2P_LEVELS or value[:1].isdigit():
        return None
    upper = value.upper()
    return Problem(
        "nccl_p2p_level",
        f"NCCL_P2P_LEVEL={value} is not a level NCCL knows",
        why="NCCL compares it case-sensitively with LOC, NVL, PIX, PXB, PHB, SYS (or a number) "
        "and ignores anything else: P2P is then used wherever NCCL's own rules allow it",
        fix=f"set NCCL_P2P_LEVEL={upper}" if upper in P2P_LEVELS
        else "set NCCL_P2P_LEVEL to LOC, NVL, PIX, PXB, PHB or SYS",
        fails=True, shell="nvidia-smi topo -m",
    )  # fmt: skip


def _debug_problem(value: str) -> Problem | None:
    if value.strip().upper() in DEBUG_LEVELS:
        return None
    return Problem(
        "nccl_debug",
        f"NCCL_DEBUG={value} is not a level NCCL knows",
        why="NCCL knows VERSION, WARN, INFO, ABORT and TRACE (in any case) and logs nothing for "
        "another value",
        fix="set NCCL_DEBUG=WARN (INFO also shows the transport NCCL picks: `via P2P/...` or "
        "`via SHM`)",
        fails=False, shell="env | grep ^NCCL_",
    )  # fmt: skip


def ifname_matches(spec: str, interface: str) -> bool:
    """NCCL's NCCL_SOCKET_IFNAME rule for one interface: comma-separated prefixes, `=` before
    the list for exact names, `^` before it to exclude instead."""
    exclude = spec.startswith("^")
    body = spec[1:] if exclude else spec
    exact = body.startswith("=")
    names = [name for name in (body[1:] if exact else body).split(",") if name]
    hit = any(interface == name if exact else interface.startswith(name) for name in names)
    return hit != exclude


def _ifname_problem(value: str, interfaces: tuple[str, ...]) -> Problem | None:
    if not value or any(ifname_matches(value, interface) for interface in interfaces):
        return None
    return Problem(
        "nccl_socket_ifname",
        f"NCCL_SOCKET_IFNAME={value} matches none of this host's interfaces "
        f"({', '.join(interfaces) or 'none'})",
        why="NCCL finds no socket interface for its bootstrap and stops at init "
        "(ncclInvalidUsage), even with one rank",
        fix="set NCCL_SOCKET_IFNAME to one of the interfaces listed (`=lo` on one host), or "
        "unset it",
        fails=True, shell="ls /sys/class/net",
    )  # fmt: skip


def nccl_problems(env: Mapping[str, str], interfaces: tuple[str, ...] | None) -> list[Problem]:
    found = [_switch_problem(name, env[name]) for name in NCCL_SWITCHES if name in env]
    if "NCCL_P2P_LEVEL" in env:
        found.append(_p2p_level_problem(env["NCCL_P2P_LEVEL"]))
    if "NCCL_DEBUG" in env:
        found.append(_debug_problem(env["NCCL_DEBUG"]))
    if "NCCL_SOCKET_IFNAME" in env and interfaces is not None:
        found.append(_ifname_problem(env["NCCL_SOCKET_IFNAME"], interfaces))
    return [problem for problem in found if problem]


def problems(
    env: Mapping[str, str],
    *,
    torch: str | None = None,
    interfaces: tuple[str, ...] | None = None,
    gpu: bool = True,
) -> list[Problem]:
    """What is wrong in `env` for a run with `torch` (its version; None: the newest known) on a
    host with these network `interfaces` (None: unknown); without `gpu`, what the CPU reads."""
    found = [problem] if CHUNK_ENV in env and (problem := chunk_t_problem(env[CHUNK_ENV])) else []
    if gpu:
        found += allocator_problems(env, version(torch))
        found += nccl_problems(env, interfaces)
    return found


def busy_chunk_t(ranks: int) -> int:
    """Latent frames per decoder call for a decode split over `ranks` GPUs: ranks // 2, at
    least 1. A rank's slab shrinks as 1/N, the ~670 kernel launches of a decoder call per
    latent frame do not, so thin slabs leave the GPU waiting on Python; more frames per call
    amortise the launches, and the activations they add are a slab's, so a rank's peak stays
    under one GPU's at chunk_t 1. `benchmarks/decode_slab.py --chunks 1,2,4` on one H200 (a
    rank's slab of 1280*704x121, bf16, 2026-12-02), seconds x N / one GPU's at chunk_t 1
    (3.34 s, 7.60 GiB): 2 ranks 1.06 at chunk_t 1; 4 ranks 1.13 at 1, 1.03 at 2 (3.62 GiB);
    8 ranks 1.51 at 1 (the GPU 72% busy), 1.15 at 2, 1.04 at 4 (95% busy, 3.25 GiB). On one
    GPU chunk_t 4 is 4% faster than 1 for 10.4 GiB more: not worth it."""
    return max(1, ranks // 2)


def chunk_t_for(planned: int, planned_ranks: int, ranks: int) -> int:
    """The chunk_t of a decode on `ranks` GPUs when the plan chose `planned` for
    `planned_ranks`: the plan's where the count is the same, else the smaller of it and what
    keeps the new count busy (`busy_chunk_t`): fewer ranks decode wider slabs, whose frames per
    call cost more memory."""
    return planned if ranks == planned_ranks else min(planned, busy_chunk_t(ranks))
