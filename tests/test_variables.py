"""The values of the variables wanctl, PyTorch and NCCL read (`wanctl.core.variables`): parsed
key by key as those libraries parse them, reported by doctor with why and fix, refused by
generate when the run would fail or run otherwise than asked."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from wanctl.cli import app
from wanctl.core import allocator
from wanctl.core.launch import chunk_t
from wanctl.core.variables import ifname_matches, problems, version
from wanctl.doctor.report import Status
from wanctl.doctor.run import diagnose
from wanctl.errors import UsageError
from wanctl.generate.options import GenerateOptions
from wanctl.generate.run import prepare
from wanctl.probe.catalog import MODELS
from wanctl.probe.fake import FakeProbe, describe_rig, healthy_software, scenario

# What torch 2.11.0+cu130 did with each value at its first CUDA allocation, on an H200
# (2026-12-02): "fails" it refused (ValueError or abort), "warns" it ran with a value other
# than the one written, "ok" it ran as written.
TORCH_2_11 = {
    "": "ok",
    "expandable_segments:True": "ok",
    " expandable_segments : True ": "ok",
    "expandable_segments:True,": "ok",
    "max_split_size_mb:20": "ok",
    "max_split_size_mb:128abc": "warns",
    "max_split_size_mb:-5": "warns",
    "max_split_size_mb:128,expandable_segments:True": "warns",
    "garbage_collection_threshold:0.6": "ok",
    "roundup_power2_divisions:4": "ok",
    "roundup_power2_divisions:[256:1,512:2,>:8]": "ok",
    "backend:cudaMallocAsync": "warns",
    "release_lock_on_cudamalloc:True": "ok",
    "pinned_use_cuda_host_register:True": "ok",
    "pinned_use_background_threads:True": "ok",
    "pinned_reserve_segment_size_mb:64": "ok",
    "graph_capture_record_stream_reuse:True": "ok",
    "per_process_memory_fraction:0.5": "ok",
    "garbage": "fails",
    "expandable_segments": "fails",
    "expandable_segments:": "fails",
    "expandable_segments:true": "fails",
    "expandable_segments:[True]": "fails",
    "expandable_segments=True": "fails",
    "Expandable_segments:True": "fails",
    "expandable_segments:True,,max_split_size_mb:128": "fails",
    ",expandable_segments:True": "fails",
    "expandable_segments:True max_split_size_mb:128": "fails",
    "max_split_size_mb:19": "fails",
    "max_split_size_mb:abc": "fails",
    "max_non_split_rounding_mb:10": "fails",
    "garbage_collection_threshold:1.0": "fails",
    "garbage_collection_threshold:abc": "fails",
    "roundup_power2_divisions:3": "fails",
    "roundup_power2_divisions:[100:2]": "fails",
    "roundup_power2_divisions:[256:3]": "fails",
    "roundup_power2_divisions:[256:1": "fails",
    "backend:foo": "fails",
    "pinned_num_register_threads:3": "fails",
    "pinned_num_register_threads:256": "fails",
    "per_process_memory_fraction:1.5": "fails",
    "pinned_free_catch_all:True": "fails",
    "throw_on_cudamalloc_oom:True": "fails",
}


def verdict(conf: allocator.AllocatorConf) -> str:
    return "fails" if conf.fails else "warns" if conf.issues else "ok"


@pytest.mark.parametrize("value", sorted(TORCH_2_11))
def test_the_allocator_configuration_is_read_as_torch_2_11_read_it(value: str) -> None:
    assert verdict(allocator.parse(value, (2, 11, 0))) == TORCH_2_11[value]


def test_keys_newer_than_the_torch_in_use_are_refused_and_known_to_newer_ones() -> None:
    assert allocator.parse("throw_on_cudamalloc_oom:True", (2, 13)).issues == ()
    assert allocator.parse("throw_on_cudamalloc_oom:True").issues == ()  # version unknown
    (issue,) = allocator.parse("pinned_free_catch_all:True", (2, 11)).issues
    assert issue.fails and "needs PyTorch 2.12 or newer, not 2.11" in issue.text


@pytest.mark.parametrize(
    ("value", "suggestion"),
    [
        ("garbage", "expandable_segments:True"),
        ("expandable_segments:true", "expandable_segments:True"),
        ("Expandable_segments:True,garbage_collection_threshold:0.6",
         "expandable_segments:True,garbage_collection_threshold:0.6"),
        ("max_split_size_mb:128,expandable_segments:True", "expandable_segments:True"),
        ("expandable_segments:False,max_split_size_mb:abc", "expandable_segments:False"),
    ],
)  # fmt: skip
def test_the_fix_is_the_configuration_meant(value: str, suggestion: str) -> None:
    assert allocator.parse(value).suggestion() == suggestion


def test_expandable_segments_are_in_force_only_as_torch_reads_them() -> None:
    assert allocator.parse("max_split_size_mb:64, expandable_segments : True").expandable_segments
    assert not allocator.parse("expandable_segments:true").expandable_segments  # refused
    last = allocator.parse("expandable_segments:True,expandable_segments:False")
    assert not last.expandable_segments


def test_an_unknown_key_names_the_one_meant() -> None:
    (issue,) = allocator.parse("expandable_segmnets:True").issues
    assert issue.fails and "did you mean expandable_segments?" in issue.text


@pytest.mark.parametrize(
    ("env", "name", "fails", "fix"),
    [
        ({"NCCL_P2P_DISABLE": "true"}, "nccl_p2p_disable", True, "set NCCL_P2P_DISABLE=1"),
        ({"NCCL_P2P_DISABLE": "2"}, "nccl_p2p_disable", True, "set NCCL_P2P_DISABLE to 0 or 1"),
        ({"NCCL_SHM_DISABLE": "no"}, "nccl_shm_disable", True, "set NCCL_SHM_DISABLE=0"),
        ({"NCCL_NVLS_ENABLE": "3"}, "nccl_nvls_enable", True, "set NCCL_NVLS_ENABLE to 0, 1 or 2"),
        ({"NCCL_P2P_LEVEL": "nvl"}, "nccl_p2p_level", True, "set NCCL_P2P_LEVEL=NVL"),
        ({"NCCL_DEBUG": "verbose"}, "nccl_debug", False, "set NCCL_DEBUG=WARN"),
        ({"NCCL_SOCKET_IFNAME": "eth9"}, "nccl_socket_ifname", True, "set NCCL_SOCKET_IFNAME to"),
    ],
)  # fmt: skip
def test_nccl_variables_are_read_as_nccl_reads_them(
    env: dict[str, str], name: str, fails: bool, fix: str
) -> None:
    (problem,) = problems(env, interfaces=("eth0", "lo"))
    assert (problem.name, problem.fails) == (name, fails)
    assert problem.fix.startswith(fix) and problem.why


@pytest.mark.parametrize(
    "env",
    [
        {"NCCL_P2P_DISABLE": "1", "NCCL_SHM_DISABLE": "0", "NCCL_NVLS_ENABLE": "2"},
        {"NCCL_P2P_LEVEL": "PHB", "NCCL_DEBUG": "info"},
        {"NCCL_P2P_LEVEL": "3"},  # the old numbering
        {"NCCL_SOCKET_IFNAME": "eth"},
        {"NCCL_SOCKET_IFNAME": "=lo"},
        {"NCCL_SOCKET_IFNAME": "^docker,lo"},
    ],
)
def test_nccl_values_nccl_reads_as_written_pass(env: dict[str, str]) -> None:
    assert problems(env, interfaces=("eth0", "lo")) == []


def test_socket_interfaces_match_as_in_nccl() -> None:
    assert ifname_matches("eth", "eth0") and not ifname_matches("=eth", "eth0")
    assert ifname_matches("=eth0,ib0", "ib0") and not ifname_matches("^eth", "eth1")
    assert problems({"NCCL_SOCKET_IFNAME": "eth9"}, interfaces=None) == []  # interfaces unknown


def test_both_allocator_names_set_to_different_values_fail() -> None:
    env = {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True", "PYTORCH_ALLOC_CONF": " "}
    (problem,) = problems(env)
    assert problem.fails and "2.11 reads PYTORCH_CUDA_ALLOC_CONF" in problem.why
    assert problem.fix.startswith("keep one: unset PYTORCH_ALLOC_CONF")
    same = {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
            "PYTORCH_ALLOC_CONF": "expandable_segments: True"}  # fmt: skip
    assert problems(same) == []


def test_the_cpu_reads_only_the_chunk() -> None:
    env = {"PYTORCH_CUDA_ALLOC_CONF": "garbage", "NCCL_P2P_DISABLE": "yes"}
    assert problems(env, gpu=False) == []
    assert [p.name for p in problems({**env, "WAN_VAE_DECODE_CHUNK_T": "0"}, gpu=False)] == [
        "wan_vae_decode_chunk_t"
    ]


def test_torch_versions() -> None:
    assert version("2.11.0+cu130") == (2, 11, 0) and version(None) is None


# --- doctor --------------------------------------------------------------------------------


def env_checks(env: dict[str, str]) -> dict[str, tuple[Status, str, str]]:
    probe = FakeProbe(describe_rig(2, MODELS["rtx-4090"]), healthy_software(env=env))
    report = diagnose(probe)
    return {c.name: (c.status, c.finding, c.fix) for c in report.checks if c.name != "env"}


def test_doctor_fails_the_values_of_the_issue_with_why_and_fix() -> None:
    """Issue 13: `WAN_VAE_DECODE_CHUNK_T=abc` and `PYTORCH_CUDA_ALLOC_CONF=garbage` were ok."""
    found = env_checks({"WAN_VAE_DECODE_CHUNK_T": "abc", "PYTORCH_CUDA_ALLOC_CONF": "garbage"})
    status, finding, fix = found["env.wan_vae_decode_chunk_t"]
    assert status is Status.FAIL and "is not a number of latent frames" in finding
    assert fix.startswith("set WAN_VAE_DECODE_CHUNK_T=1")
    status, finding, fix = found["env.pytorch_cuda_alloc_conf"]
    assert status is Status.FAIL and "'garbage' has no ':value'" in finding
    assert "every rank fails before sampling" in finding
    assert fix == "set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True, or unset it"


def test_doctor_warns_of_max_split_beside_expandable_segments() -> None:
    found = env_checks({"PYTORCH_ALLOC_CONF": "max_split_size_mb:128,expandable_segments:True"})
    status, finding, fix = found["env.pytorch_alloc_conf"]
    assert status is Status.WARN and "pytorch#119452" in finding
    assert fix == "set PYTORCH_ALLOC_CONF=expandable_segments:True, or unset it"


def test_doctor_knows_the_torch_in_use() -> None:
    env = {"PYTORCH_ALLOC_CONF": "throw_on_cudamalloc_oom:True"}
    software = healthy_software(torch="2.11.0+cu130", env=env)
    report = diagnose(FakeProbe(describe_rig(1, MODELS["h100"]), software))
    check = next(c for c in report.checks if c.name == "env.pytorch_alloc_conf")
    assert check.status is Status.FAIL and "not 2.11.0" in check.finding


def test_doctor_reads_this_machines_variables(cli: CliRunner) -> None:
    env = {"WAN_VAE_DECODE_CHUNK_T": "abc", "PYTORCH_CUDA_ALLOC_CONF": "garbage",
           "NCCL_P2P_DISABLE": "true"}  # fmt: skip
    result = cli.invoke(app, ["doctor", "--json"], env=env)
    assert result.exit_code == 1
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    for name in ("env.wan_vae_decode_chunk_t", "env.pytorch_cuda_alloc_conf",
                 "env.nccl_p2p_disable"):  # fmt: skip
        assert checks[name]["status"] == "fail" and checks[name]["fix"], checks[name]


# --- generate and decode -------------------------------------------------------------------


def options(tmp_path: Path, **changes: object) -> GenerateOptions:
    base = GenerateOptions(prompt="cats", output=tmp_path / "cats.mp4", gpus=2, model="tiny")
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def refusal(
    tmp_path: Path, probe: FakeProbe, exported: dict[str, str], **changes: object
) -> UsageError:
    with pytest.raises(UsageError) as refused:
        prepare(options(tmp_path, **changes), probe=probe, env=exported, disk_free=lambda _: 2**40)
    return refused.value


def test_generate_refuses_a_bad_chunk_with_why_and_fix(tmp_path: Path) -> None:
    refused = refusal(tmp_path, scenario("no_driver"), {"WAN_VAE_DECODE_CHUNK_T": "abc"})
    assert refused.message == "WAN_VAE_DECODE_CHUNK_T=abc is not a number of latent frames"
    assert "whole number of at least 1" in refused.why
    assert refused.fix.startswith("set WAN_VAE_DECODE_CHUNK_T=1")


def test_decode_refuses_a_bad_chunk_with_why_and_fix() -> None:
    with pytest.raises(UsageError) as refused:
        chunk_t(None, {"WAN_VAE_DECODE_CHUNK_T": "0"})
    assert refused.value.why and refused.value.fix
    assert chunk_t(None, {"WAN_VAE_DECODE_CHUNK_T": " 3 "}) == 3 and chunk_t(2, {}) == 2


@pytest.mark.parametrize("source", ["exported", "--env"])
def test_generate_refuses_an_allocator_value_torch_refuses(tmp_path: Path, source: str) -> None:
    rig = FakeProbe(describe_rig(2, MODELS["h100"]))
    value = {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:true"}
    if source == "exported":
        refused = refusal(tmp_path, rig, value, model="synthetic-5b")
    else:
        refused = refusal(tmp_path, rig, {}, model="synthetic-5b", env=tuple(value.items()))
    assert refused.message == "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:true"
    assert "'true' is not True or False" in refused.why
    assert refused.fix == "set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True, or unset it"


def test_generate_refuses_several_at_once_and_notes_the_warnings(tmp_path: Path) -> None:
    rig = FakeProbe(describe_rig(2, MODELS["h100"]))
    refused = refusal(tmp_path, rig, {"NCCL_P2P_DISABLE": "true", "NCCL_P2P_LEVEL": "nvl"},
                      model="synthetic-5b")  # fmt: skip
    assert "NCCL_P2P_DISABLE=true" in refused.message and "NCCL_P2P_LEVEL=nvl" in refused.message
    assert refused.fix == "set NCCL_P2P_DISABLE=1; set NCCL_P2P_LEVEL=NVL"
    plan = prepare(options(tmp_path, model="synthetic-5b"), probe=rig,
                   env={"NCCL_DEBUG": "verbose"}, disk_free=lambda _: 2**40)  # fmt: skip
    assert any(note.startswith("NCCL_DEBUG=verbose is not a level") for note in plan.notes)


def test_generate_on_the_cpu_ignores_what_only_gpus_read(tmp_path: Path) -> None:
    """CPU torch reads no allocator configuration (torch 2.13.0+cpu ran with "garbage")."""
    env = {"PYTORCH_CUDA_ALLOC_CONF": "garbage"}
    plan = prepare(options(tmp_path, size="64*64", frames=17), probe=scenario("no_driver"),
                   env=env, disk_free=lambda _: 2**40)  # fmt: skip
    assert plan.device == "cpu"


def test_the_generate_command_says_why_and_fix(cli: CliRunner, tmp_path: Path) -> None:
    result = cli.invoke(
        app,
        ["generate", "--model", "tiny", "--device", "cpu", "--prompt", "x", "--size", "64*64",
         "--frames", "17", "-o", str(tmp_path / "v.mp4"), "--dry-run"],
        env={"WAN_VAE_DECODE_CHUNK_T": "abc", "COLUMNS": "200"},
    )  # fmt: skip
    assert result.exit_code == 2
    text = " ".join(result.stderr.split())
    assert "why: wanctl's decode reads it" in text and "fix: set WAN_VAE_DECODE_CHUNK_T=1" in text
