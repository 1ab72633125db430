"""The decode's chunk_t chosen for its ranks (`wanctl.core.variables.busy_chunk_t`): tune's
search order, its note, and the plan generate runs."""

from __future__ import annotations

import dataclasses

from wanctl.core.workload import Workload
from wanctl.probe.catalog import MODELS
from wanctl.tune.predict import Card
from wanctl.tune.search import Constraints, candidates, plan

H100 = Card(MODELS["h100"].name, MODELS["h100"].memory_total_mib)
USER = Workload(1280, 704, 121, 2)  # shared/seed: 2x RTX 5090, ti2v-5B, Ulysses 2


def test_eight_ranks_decode_four_latent_frames_a_call_then_one_where_that_does_not_fit() -> None:
    """A thin slab per rank leaves its GPU waiting on launches: chunk_t ranks // 2 first
    (`busy_chunk_t`), chunk_t 1 next for the same placement; a pin is the only one tried."""
    eight = Workload(1280, 704, 121, 8)
    tried = list(candidates(eight, Constraints(), "linux"))
    first = tried[0]
    assert [s.chunk_t for s in tried[:2]] == [4, 1]
    assert dataclasses.replace(tried[1], chunk_t=4) == first  # the same run but its chunk
    assert {s.chunk_t for s in candidates(eight, Constraints(chunk_t=2), "linux")} == {2}
    assert {s.chunk_t for s in candidates(USER, Constraints(), "linux")} == {1}
    chosen = plan(eight, H100)
    assert chosen.settings.chunk_t == 4 and chosen.env["WAN_VAE_DECODE_CHUNK_T"] == "4"
    assert any(note.startswith("chunk_t 4: each of 8 ranks") for note in chosen.notes)
    assert chosen.max_chunk_t >= 4


def test_fewer_ranks_than_planned_take_the_smaller_chunk() -> None:
    from wanctl.core.variables import chunk_t_for

    assert chunk_t_for(4, 8, 8) == 4  # as planned
    assert chunk_t_for(4, 8, 4) == 2 and chunk_t_for(4, 8, 1) == 1  # a wider slab each
    assert chunk_t_for(1, 8, 4) == 1  # the plan's smaller chunk (the busy one did not fit)
