"""The memory model: fitted from its measurements, monotonic, 1/N, and right on the user's rig."""

from __future__ import annotations

import dataclasses

import pytest

from wanctl import memory
from wanctl.errors import UsageError
from wanctl.memory import (
    MEASUREMENTS,
    Card,
    Constraints,
    Settings,
    Workload,
    alternatives,
    coefficients,
    plan,
    predict,
)
from wanctl.probe.catalog import MODELS

RTX_5090 = Card(MODELS["rtx-5090"].name, MODELS["rtx-5090"].memory_total_mib)
RTX_4090 = Card(MODELS["rtx-4090"].name, MODELS["rtx-4090"].memory_total_mib)
H100 = Card(MODELS["h100"].name, MODELS["h100"].memory_total_mib)
USER = Workload(1280, 704, 121, 2)  # shared/seed: 2x RTX 5090, ti2v-5B, Ulysses 2


def totals(workload: Workload, settings: Settings) -> dict[str, float]:
    return {phase.name: phase.total_gib for phase in memory.phases(workload, settings)}


def test_the_users_rig_fits_with_decode_on_both_ranks_and_a_small_chunk() -> None:
    chosen = plan(USER, RTX_5090)
    assert chosen.fits and chosen.headroom_gib > RTX_5090.gib * memory.SAFETY_MARGIN
    assert chosen.settings.decode_ranks == 2 and chosen.settings.chunk_t <= 2
    assert chosen.settings.expandable_segments
    assert chosen.env["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    assert chosen.env["WAN_VAE_DECODE_CHUNK_T"] == str(chosen.settings.chunk_t)
    assert "NCCL_P2P_DISABLE" not in chosen.env  # GeForce: no P2P, NCCL finds SHM itself


@pytest.mark.parametrize("decoder", ["wanctl", "diffusers"])
def test_the_naive_rank0_decode_with_chunk_20_does_not_fit_on_32gb(decoder: str) -> None:
    naive = Settings(chunk_t=20, decode_ranks=1, decoder=decoder)
    assert not predict(USER, RTX_5090, naive).fits
    assert not predict(USER, RTX_5090, dataclasses.replace(naive, offload=True)).fits


def test_the_official_fp32_rank0_decode_is_predicted_to_run_out_of_memory() -> None:
    """The seed's OOM: diffusers-style fp32 decode on rank 0, the DiT still on the GPU."""
    official = Settings(decode_ranks=1, decode_dtype="fp32", decoder="diffusers")
    result = predict(USER, RTX_5090, official)
    assert not result.fits and result.peak_phase == "decode"


def test_every_phase_grows_with_frames_area_and_chunk() -> None:
    settings = Settings(decode_ranks=2, offload=False)
    base = totals(USER, settings)
    for bigger in (
        totals(dataclasses.replace(USER, frames=161), settings),
        totals(dataclasses.replace(USER, width=1408, height=768), settings),
    ):
        assert bigger["sampling"] > base["sampling"] and bigger["decode"] >= base["decode"]
    chunks = [totals(USER, dataclasses.replace(settings, chunk_t=k))["decode"] for k in (1, 2, 4)]
    assert chunks == sorted(chunks) and chunks[0] < chunks[2]


def test_activations_fall_as_one_over_n() -> None:
    """Sampling: the rank's share of tokens, plus the small part every rank computes over the
    whole sequence (traced under Ulysses). Decode: the rank's slab, plus its halo rows."""
    c = coefficients()
    share = c.dit_global / (c.dit_local + c.dit_global)
    assert 0 < share < 0.05
    one = memory.activations(dataclasses.replace(USER, gpus=1), Settings(decode_ranks=1))
    for n in (2, 4, 8):
        split = memory.activations(dataclasses.replace(USER, gpus=n), Settings(decode_ranks=n))
        assert split["sampling"] == pytest.approx(one["sampling"] * ((1 - share) / n + share))
        assert one["decode"] / n < split["decode"] < one["decode"] / n * 1.15
    assert memory.weights(Settings(), 8)["DiT"] == memory.weights(Settings(), 1)["DiT"]
    assert memory.weights(Settings(dit="fsdp"), 8)["DiT"] * 8 == pytest.approx(
        memory.weights(Settings(), 1)["DiT"]
    )


def test_the_fit_reproduces_its_gpu_anchors() -> None:
    for m in (m for m in MEASUREMENTS if m.method == "cuda" and m.phase in ("decode", "sampling")):
        workload = Workload(m.width, m.height, m.frames, m.ranks)
        settings = Settings(chunk_t=max(1, m.chunk_t), decode_dtype=m.dtype, decoder=m.decoder)
        predicted = memory.activations(workload, settings)[m.phase]
        assert predicted == pytest.approx(m.allocated_gib - m.weights_gib, rel=0.03), m


def test_every_coefficient_names_its_measurements() -> None:
    for row in MEASUREMENTS:
        assert row.device and row.versions and row.date and row.source and row.method
    c = coefficients()
    assert set(c.provenance) >= {"sampling", "text_encode", "reserved_ratio", "context"}
    assert all(c.provenance.values())
    assert c.reserved_ratio["decode", False] > 1.4  # facts.md: reserved ~1.6x allocated


def test_parameter_counts_match_the_architectures() -> None:
    from wanctl.models.configs import parameter_counts

    assert parameter_counts() == memory.PARAMS


def test_the_model_matches_a_trace_at_another_size() -> None:
    """The DiT and decode coefficients come from 1280x704 runs; a fake-tensor trace of the
    real architectures at 832x480x81 must agree (a few seconds, no memory)."""
    from wanctl.measure import Models, TraceMeter, decode_peak, sampling_peak
    from wanctl.models.configs import build_vae_decoder

    workload, settings = Workload(832, 480, 81, 1), Settings(offload=True)
    meter = TraceMeter()
    with meter.session():
        import torch

        models = Models(vae=meter.build(lambda: build_vae_decoder("meta", torch.bfloat16)))
        decode = decode_peak(meter, models, workload, settings)
        sampling = sampling_peak(meter, models, workload)
    predicted = {p.name: p.allocated_gib for p in memory.phases(workload, settings)}
    assert predicted["decode"] == pytest.approx(decode.allocated_gib, rel=0.05)
    assert predicted["sampling"] == pytest.approx(sampling.allocated_gib, rel=0.05)


def test_too_big_for_one_4090_is_refused_with_the_nearest_runs_that_fit() -> None:
    too_big = Workload(1280, 704, 241, 1)
    chosen = plan(too_big, RTX_4090)
    assert not chosen.fits
    found = {a.change.split(" ")[1]: a for a in alternatives(too_big, RTX_4090)}
    assert {"frames", "GPUs"} <= set(found) and any("*" in a.change for a in found.values())
    assert all(a.plan.fits for a in found.values())
    assert found["frames"].plan.workload.frames < 241
    assert found["GPUs"].plan.workload.gpus == 2


def test_a_pinned_text_encoder_is_released_as_an_alternative() -> None:
    pinned = Constraints(text_encoder="gpu", offload=False)
    workload = Workload(1280, 704, 121, 1)
    assert not plan(workload, RTX_4090, pinned).fits
    changes = [a.change for a in alternatives(workload, RTX_4090, pinned)]
    assert any(change.startswith("offload the DiT") for change in changes)


def test_more_gpus_than_heads_allow_and_bad_shapes_are_usage_errors() -> None:
    for bad in (
        lambda: Workload(1280, 700, 121, 1),
        lambda: Workload(1280, 704, 120, 1),
        lambda: Workload(1280, 704, 121, 5),
        lambda: memory.parse_size("1280 by 704"),
    ):
        with pytest.raises(UsageError) as caught:
            bad()
        assert caught.value.exit_code == 2 and caught.value.fix


def test_expandable_segments_unless_known_to_misbehave() -> None:
    assert memory.allocator_conf("linux") == "expandable_segments:True"
    assert memory.allocator_conf("win32") is None
    assert "max_split_size_mb" not in plan(USER, RTX_5090).env.get("PYTORCH_CUDA_ALLOC_CONF", "")
    windows = plan(USER, RTX_5090, platform="win32")
    assert "PYTORCH_CUDA_ALLOC_CONF" not in windows.env
    assert not windows.settings.expandable_segments


def test_nccl_settings_pass_through_to_the_environment() -> None:
    env = plan(USER, RTX_5090, nccl_env={"NCCL_P2P_DISABLE": "1"}).env
    assert env["NCCL_P2P_DISABLE"] == "1"


def test_the_largest_chunk_that_fits_is_reported() -> None:
    chosen = plan(USER, RTX_5090)
    at_max = dataclasses.replace(chosen.settings, chunk_t=chosen.max_chunk_t)
    beyond = dataclasses.replace(chosen.settings, chunk_t=chosen.max_chunk_t + 1)
    assert predict(USER, RTX_5090, at_max).fits and not predict(USER, RTX_5090, beyond).fits
    assert plan(USER, H100).max_chunk_t > chosen.max_chunk_t
