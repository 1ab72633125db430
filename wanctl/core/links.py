"""What a rig's links cost the parallel layouts, measured by `wanctl doctor --full` through
NCCL (gloo on CPUs) and kept with the rig's preset; `wanctl.tune.speed` prices each layout's
communication from them. Torch-free.

- `all_to_all`: one of Ulysses' all-to-alls (q, k, v or the attention output of one layer),
  each rank sending `bytes_per_rank` split evenly over the `ranks`;
- `cfg_exchange`: CFG parallel's one exchange a step between the two guidance groups (each
  rank gathers its partner's latent-sized output, `bytes_per_rank`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from wanctl.core.workload import Workload

OPS = ("all_to_all", "cfg_exchange")
LAYER_ALL_TO_ALLS = 4  # Ulysses, per attention layer and forward: q, k, v in, the output back
BF16 = 2


def all_to_all_bytes(workload: Workload, degree: int) -> int:
    """What one rank sends in one of Ulysses' all-to-alls at `degree`: its share of the
    tokens, every head (`dim` = heads x head_dim), in bf16."""
    dit = workload.family.dit
    dim = dit["num_attention_heads"] * dit["attention_head_dim"]
    return workload.tokens // degree * dim * BF16


def cfg_exchange_bytes(workload: Workload) -> int:
    """CFG parallel's exchange a step: one DiT output, latent-sized, in bf16."""
    frames, height, width = workload.latent
    return workload.family.vae.channels * frames * height * width * BF16


def layers(workload: Workload) -> int:
    layer_count: int = workload.family.dit["num_layers"]
    return layer_count


@dataclass(frozen=True)
class Collective:
    """One measured collective: seconds per call (the median of the timed calls), and the
    bandwidth it reached per rank, GB/s (bytes a rank sends / seconds)."""

    op: str  # one of OPS
    ranks: int
    bytes_per_rank: int
    seconds: float
    source: str  # what measured it, where, when ("doctor --full, 2x RTX 4090, 2026-12-02")
    JSON_PROPERTIES: ClassVar[tuple[str, ...]] = ("gb_per_s",)  # in --json documents

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"collective {self.op!r} is not one of {', '.join(OPS)}")

    @property
    def gb_per_s(self) -> float:
        return self.bytes_per_rank / self.seconds / 1e9 if self.seconds > 0 else 0.0


def nearest(links: tuple[Collective, ...], op: str, ranks: int, n_bytes: int) -> Collective | None:
    """The measurement of `op` over `ranks` ranks closest in size to `n_bytes` (by ratio), or
    None when none was measured at that rank count."""
    found = [c for c in links if c.op == op and c.ranks == ranks]
    return min(found, key=lambda c: max(c.bytes_per_rank, n_bytes) / min(c.bytes_per_rank, n_bytes),
               default=None)  # fmt: skip


def from_table(table: Mapping[str, Any]) -> Collective:
    """A `Collective` from its stored fields (a preset's TOML table), types checked."""
    return Collective(str(table["op"]), int(table["ranks"]), int(table["bytes_per_rank"]),
                      float(table["seconds"]), str(table["source"]))  # fmt: skip


def merge(kept: Iterable[Collective], new: Iterable[Collective]) -> tuple[Collective, ...]:
    """`kept` with `new` over it: a new figure replaces the one of the same op, rank count
    and size; the others stay (a count measured earlier, CUDA_VISIBLE_DEVICES set now)."""
    merged = {(c.op, c.ranks, c.bytes_per_rank): c for c in (*kept, *new)}
    return tuple(sorted(merged.values(), key=lambda c: (c.op, c.ranks, c.bytes_per_rank)))


@dataclass(frozen=True)
class StepTime:
    """One layout's predicted seconds per step: compute, communication, and what was assumed."""

    layout: str
    compute_s: float
    comm_s: float
    assumed: tuple[str, ...]

    @property
    def total_s(self) -> float:
        return self.compute_s + self.comm_s
