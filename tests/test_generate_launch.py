"""`wanctl generate` before launch: the exact torchrun command and environment of each backend,
multi-node flags, the dry run, overrides over the preset, every refusal (exit code, message,
nothing written), and how a failed run names the rank, phase and cause. No process is started
here: rigs come from `wanctl.probe.fake`, and a recorder stands in for the runner."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import pytest
from conftest import crashed
from fake_checkpoints import diffusers_checkpoint
from PIL import Image
from typer.testing import CliRunner

import wanctl.commands.generate as generate_command
from wanctl.cli import app
from wanctl.core.launch import CHUNK_ENV, RunResult, visible_gpus
from wanctl.core.settings import Settings
from wanctl.core.status import classify
from wanctl.core.workload import Workload
from wanctl.errors import UsageError, WanctlError
from wanctl.generate.failures import DecodeFailed, failure
from wanctl.generate.options import GenerateOptions, RunPaths
from wanctl.generate.plan import GeneratePlan
from wanctl.generate.run import prepare
from wanctl.generate.settings import compile_env
from wanctl.probe.base import fingerprint
from wanctl.probe.catalog import MODELS
from wanctl.probe.fake import FakeProbe, describe_rig, scenario
from wanctl.tune import presets
from wanctl.tune.search import plan
from wanctl.workers.wan_hook import HOOK_DIR, LATENTS_ENV, RUN_DIR_ENV, SOURCE_ENV

PYTHON = sys.executable
TORCHRUN = (PYTHON, "-m", "wanctl.workers.torchrun")
# The settings of the user preset these tests write for 2x RTX 5090, one entry per backend:
# not the model's choice (chunk_t 2; the official code's --offload_model), so that they can
# only come from the preset (the diffusers worker offloads only an A14B's idle expert).
PRESET = Settings(chunk_t=2, decode_ranks=2, decode_dtype="bf16", dit="replicated",
                  offload=False, text_encoder="gpu")  # fmt: skip
WAN_PRESET = dataclasses.replace(PRESET, backend="wan-repo", offload=True)
INDUCTOR_ENV = compile_env(Settings())  # the compiled DiT's cache, in wanctl's cache folder
PRESET_ENV = {CHUNK_ENV: "2", "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
              "NCCL_P2P_DISABLE": "1", **INDUCTOR_ENV}  # fmt: skip
RTX5090X2 = FakeProbe(describe_rig(2, MODELS["rtx-5090"]))
H100X8 = FakeProbe(describe_rig(8, MODELS["h100"]))


@pytest.fixture(autouse=True)
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private preset folder holding a user preset for 2x RTX 5090 at 1280*704 x 121, with an
    entry for each backend."""
    folder = tmp_path / "config"
    monkeypatch.setenv(presets.CONFIG_DIR_ENV, str(folder))
    # torch.compile exports its cache folder into the process when it compiles (a test did):
    # here it would be the user's own, which a launch keeps
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    inventory, rig = presets.rig_of("2x RTX 5090 32GB")
    modelled = presets.entry_of(plan(Workload(1280, 704, 121, 2), rig.card), created="x")
    for settings in (PRESET, WAN_PRESET):
        entry = dataclasses.replace(modelled, settings=settings, env=PRESET_ENV,
                                    created="2026-11-24")  # fmt: skip
        presets.save(fingerprint(inventory), rig, entry)
    assert len(presets.require(fingerprint(inventory)).entries) == 2  # keyed by backend too
    return folder


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    """A diffusers-format TI2V-5B checkpoint, as far as the checks before launch read it."""
    return diffusers_checkpoint(tmp_path / "Wan2.2-TI2V-5B-Diffusers")


@pytest.fixture
def out(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def options(out: Path, **changes: object) -> GenerateOptions:
    base = GenerateOptions(prompt="two cats box", output=out / "cats.mp4", gpus=2)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def prepared(opts: GenerateOptions, probe: FakeProbe = RTX5090X2, **env: str) -> GeneratePlan:
    return prepare(opts, probe=probe, env=env, disk_free=lambda _: 2**40)


def test_diffusers_backend_launches_the_worker_with_the_presets_settings(
    ckpt: Path, out: Path
) -> None:
    launched = prepared(options(out, ckpt_dir=ckpt))
    assert launched.spec.argv == (
        *TORCHRUN, "--standalone", "--nproc-per-node=2", "-m", "wanctl.workers.generate",
        "--ckpt-dir", str(ckpt), "--prompt", "two cats box", "--size", "1280*704",
        "--frames", "121", "--steps", "50", "--seed", "42", "--device", "cuda",
        "--text-encoder", "gpu", "--latents", str(out / "cats.latents.safetensors"),
        "--output", str(out / "cats.mp4"), "--vae", str(ckpt / "vae"), "--decode-dtype", "bf16",
        "--chunk-t", "2", "--decode-ranks", "2", "--dit", "replicated", "--dit-storage", "bf16",
        "--dit-precision", "bf16", "--run-dir", str(out / f".cats.mp4.{os.getpid()}.wanctl"),
    )  # fmt: skip
    assert launched.spec.env == PRESET_ENV
    assert launched.settings == PRESET and launched.overridden == ()
    assert launched.source.startswith("user preset")
    assert launched.spec.capture_output is False and launched.spec.timeout_s is None
    assert launched.decode_command == (
        f"wanctl decode {out}/cats.latents.safetensors -o {out}/cats.mp4 --vae {ckpt}/vae "
        "--gpus 2 --chunk-t 2 --dtype bf16"
    )
    assert list(out.iterdir()) == []


def test_wan_repo_backend_runs_the_official_script_with_the_users_flags(
    wan: tuple[Path, Path], out: Path
) -> None:
    repo, ckpt = wan
    image = out / "first.png"
    Image.new("RGB", (64, 32)).save(image)
    launched = prepared(options(out, backend="wan-repo", wan_repo=repo, ckpt_dir=ckpt, seed=7,
                                text_encoder="cpu", image=image))  # fmt: skip
    placeholder = launched.paths.run_dir / "official-placeholder.mp4"
    assert launched.spec.argv == (
        *TORCHRUN, "--standalone", "--nproc-per-node=2", str(repo / "generate.py"),
        "--task", "ti2v-5B", "--size", "1280*704", "--ckpt_dir", str(ckpt),
        "--ulysses_size", "2", "--offload_model", "True", "--convert_model_dtype", "--t5_cpu",
        "--frame_num", "121", "--sample_steps", "50", "--base_seed", "7",
        "--image", str(image), "--save_file", str(placeholder),
        "--prompt", "two cats box",
    )  # fmt: skip
    env = dict(launched.spec.env)
    assert env.pop("PYTHONPATH") == str(HOOK_DIR)
    assert env.pop(LATENTS_ENV) == str(out / "cats.latents.safetensors")
    assert env.pop(RUN_DIR_ENV) == str(placeholder.parent)
    source = json.loads(env.pop(SOURCE_ENV))
    assert source == {"model": f"Wan2.2-ti2v-5B ({ckpt})", "prompt": "two cats box",
                      "seed": "7", "steps": "50", "size": "1280*704", "fps": "24.0"}  # fmt: skip
    assert env == PRESET_ENV
    assert launched.settings == dataclasses.replace(WAN_PRESET, text_encoder="cpu")
    assert launched.source.startswith("user preset")
    assert launched.vae == str(ckpt / "Wan2.2_VAE.pth")
    assert launched.overridden == ("text_encoder",)


def test_the_hook_goes_before_the_users_pythonpath(wan: tuple[Path, Path], out: Path) -> None:
    repo, ckpt = wan
    launched = prepared(options(out, backend="wan-repo", wan_repo=repo, ckpt_dir=ckpt),
                        PYTHONPATH="/opt/mine")  # fmt: skip
    assert launched.spec.env["PYTHONPATH"] == f"{HOOK_DIR}:/opt/mine"
    flag = (("PYTHONPATH", "/opt/flag"),)
    flagged = prepared(options(out, backend="wan-repo", wan_repo=repo, ckpt_dir=ckpt, env=flag),
                       PYTHONPATH="/opt/mine")  # fmt: skip
    assert flagged.spec.env["PYTHONPATH"] == f"{HOOK_DIR}:/opt/flag"  # --env wins, as always


def test_multi_node_flags_pass_through_and_the_ulysses_degree_spans_the_nodes(
    wan: tuple[Path, Path], ckpt: Path, out: Path
) -> None:
    multi = {"nnodes": 2, "rdzv_endpoint": "10.0.0.1:29500"}
    launcher = (*TORCHRUN, "--nnodes=2", "--rdzv-backend=c10d", "--rdzv-endpoint=10.0.0.1:29500",
                "--nproc-per-node=2")  # fmt: skip
    diffusers = prepared(options(out, ckpt_dir=ckpt, **multi))
    assert diffusers.spec.argv[: len(launcher)] == launcher and diffusers.world == 4
    repo, official = wan
    wan_repo = prepared(options(out, backend="wan-repo", wan_repo=repo, ckpt_dir=official, **multi))
    assert wan_repo.spec.argv[: len(launcher)] == launcher
    degree = wan_repo.spec.argv.index("--ulysses_size")
    assert wan_repo.spec.argv[degree + 1] == "4"
    asked = prepared(options(out, backend="wan-repo", wan_repo=repo, ckpt_dir=official,
                             compile=True))  # fmt: skip
    assert "--compile has no effect on the official generate.py" in " ".join(asked.notes)


@pytest.mark.parametrize(
    ("exported", "gloo"),
    [
        ({"NCCL_SOCKET_IFNAME": "eth0"}, "eth0"),
        ({"NCCL_SOCKET_IFNAME": "^lo,docker"}, None),
        ({"NCCL_SOCKET_IFNAME": "eth0", "GLOO_SOCKET_IFNAME": "ib0"}, None),
        ({}, None),
    ],
)
def test_several_nodes_give_gloo_the_interface_nccl_was_given(
    ckpt: Path, out: Path, exported: dict[str, str], gloo: str | None
) -> None:
    """The workers' waits run over gloo: on several nodes it gets NCCL's one named interface
    (a prefix form has no gloo equivalent; the user's own GLOO_SOCKET_IFNAME is theirs)."""
    multi = options(out, ckpt_dir=ckpt, nnodes=2, rdzv_endpoint="10.0.0.1:29500")
    launched = prepared(multi, **exported)
    assert launched.spec.env.get("GLOO_SOCKET_IFNAME") == gloo
    assert "GLOO_SOCKET_IFNAME" not in prepared(options(out, ckpt_dir=ckpt), **exported).spec.env


def test_flags_override_the_preset_and_leave_its_file_alone(
    ckpt: Path, out: Path, config_dir: Path
) -> None:
    preset_file = config_dir / "presets" / "2x-rtx-5090-32gb-pcie.toml"
    before = preset_file.read_bytes()
    launched = prepared(options(out, ckpt_dir=ckpt, chunk_t=3, decode_ranks=1,
                                decode_dtype="fp32", text_encoder="cpu",
                                env=(("NCCL_DEBUG", "INFO"),)))  # fmt: skip
    assert launched.settings == dataclasses.replace(
        PRESET, chunk_t=3, decode_ranks=1, decode_dtype="fp32", text_encoder="cpu"
    )
    assert launched.overridden == ("chunk_t", "decode_dtype", "decode_ranks", "text_encoder")
    args = launched.spec.argv
    for flag, value in (("--chunk-t", "3"), ("--decode-ranks", "1"), ("--decode-dtype", "fp32"),
                        ("--text-encoder", "cpu")):  # fmt: skip
        assert args[args.index(flag) + 1] == value
    assert launched.spec.env == {**PRESET_ENV, CHUNK_ENV: "3", "NCCL_DEBUG": "INFO"}
    assert preset_file.read_bytes() == before


def test_fewer_decode_ranks_than_planned_decode_fewer_frames_a_call(ckpt: Path, out: Path) -> None:
    """The preset's chunk_t 2 was chosen for its 2 decoding ranks; one rank decodes the whole
    frame, at chunk_t 1 (`busy_chunk_t`), unless chunk_t is pinned too."""
    launched = prepared(options(out, ckpt_dir=ckpt, decode_ranks=1))
    assert launched.settings == dataclasses.replace(PRESET, chunk_t=1, decode_ranks=1)
    assert launched.spec.env[CHUNK_ENV] == "1"
    pinned = prepared(options(out, ckpt_dir=ckpt, decode_ranks=1, chunk_t=2))
    assert pinned.settings.chunk_t == 2


def test_the_users_exported_variables_win_over_the_preset_and_env_flags_over_both(
    ckpt: Path, out: Path
) -> None:
    launched = prepared(
        options(out, ckpt_dir=ckpt, env=(("NCCL_P2P_DISABLE", "0"),)),
        PYTORCH_ALLOC_CONF="max_split_size_mb:512", NCCL_P2P_DISABLE="1", **{CHUNK_ENV: "4"},
    )  # fmt: skip
    # the exported allocator configuration is in force: the plan is made for the default allocator
    assert launched.settings.chunk_t == 4 and not launched.settings.expandable_segments
    assert launched.overridden == ("chunk_t", "expandable_segments")
    assert launched.predicted is not None and launched.predicted.settings == launched.settings
    assert launched.spec.env == {"NCCL_P2P_DISABLE": "0", **INDUCTOR_ENV}  # they inherit the rest
    assert launched.kept_env == {"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:512"}
    assert "PYTORCH_CUDA_ALLOC_CONF=max_split_size_mb:512 kept from your environment" in (
        launched.notes
    )


def test_no_preset_for_the_rig_plans_with_the_memory_model(ckpt: Path, out: Path) -> None:
    launched = prepared(options(out, ckpt_dir=ckpt), H100X8)
    assert launched.source.startswith("memory model (no preset for 8x-h100-80gb-nvlink")
    assert launched.predicted is not None and launched.predicted.fits
    assert launched.spec.env[CHUNK_ENV] == str(launched.settings.chunk_t)


def test_the_cpu_runs_the_tiny_model_in_n_processes_without_a_preset(out: Path) -> None:
    launched = prepared(options(out, model="tiny", size="64*64", frames=17),
                        scenario("no_driver"))  # fmt: skip
    assert launched.device == "cpu" and launched.source == "CPU defaults"
    assert launched.spec.argv[3:9] == ("--standalone", "--nproc-per-node=2", "-m",
                                       "wanctl.workers.generate", "--model", "tiny")  # fmt: skip
    assert launched.settings.decode_dtype == "fp32" and launched.settings.decode_ranks == 2
    assert set(launched.spec.env) == {CHUNK_ENV, "OMP_NUM_THREADS"}
    assert launched.decode_command.endswith("--vae tiny --gpus 2 --chunk-t 1 --dtype fp32 "
                                            "--device cpu")  # fmt: skip


def test_gpus_default_to_every_visible_one(ckpt: Path, out: Path) -> None:
    launched = prepared(options(out, ckpt_dir=ckpt, gpus=None))
    assert launched.ranks == 2 and "--nproc-per-node=2" in launched.spec.argv
    live = len(H100X8.inventory.live_gpus())
    assert visible_gpus(live, {"CUDA_VISIBLE_DEVICES": "0,3,5"}) == 3
    assert visible_gpus(live, {"CUDA_VISIBLE_DEVICES": ""}) == 0
    assert visible_gpus(live, {"CUDA_VISIBLE_DEVICES": "-1"}) == 0  # CUDA's "no GPU"
    assert visible_gpus(live, {"CUDA_VISIBLE_DEVICES": "0,-1,2"}) == 1  # read up to the -1
    assert visible_gpus(live, {"CUDA_VISIBLE_DEVICES": "GPU-8a1e,GPU-77c0"}) == 2
    assert visible_gpus(live, {}) == 8


def _cli(cli: CliRunner, monkeypatch: pytest.MonkeyPatch, probe: FakeProbe, *args: object):
    monkeypatch.setattr(generate_command, "LocalProbe", lambda: probe)
    return cli.invoke(app, ["generate", *map(str, args)], env={"COLUMNS": "200"})


def test_dry_run_prints_the_command_and_runs_nothing(
    cli: CliRunner, monkeypatch: pytest.MonkeyPatch, ckpt: Path, out: Path
) -> None:
    args = ("--prompt", "two cats box", "-o", out / "cats.mp4", "--ckpt-dir", ckpt, "--gpus", "2")
    result = _cli(cli, monkeypatch, RTX5090X2, *args, "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    launched = prepared(options(out, ckpt_dir=ckpt))
    assert document["argv"] == list(launched.spec.argv)
    assert document["command"] == launched.spec.command_line()
    assert document["command"].startswith(
        "NCCL_P2P_DISABLE=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True "
        f"TORCHINDUCTOR_CACHE_DIR={INDUCTOR_ENV['TORCHINDUCTOR_CACHE_DIR']} "
        f"WAN_VAE_DECODE_CHUNK_T=2 {PYTHON} -m wanctl.workers.torchrun"
    )
    assert document["env"] == PRESET_ENV and document["settings"]["chunk_t"] == 2
    assert set(document["predicted_peak_gib"]) == {"text_encode", "sampling", "decode"}
    assert document["decode_command"] == launched.decode_command
    assert list(out.iterdir()) == []
    text = _cli(cli, monkeypatch, RTX5090X2, "--prompt", "x", "-o", out / "cats.mp4",
                "--ckpt-dir", ckpt, "--dry-run")  # fmt: skip
    assert text.exit_code == 0 and "-m wanctl.workers.generate" in text.stdout
    assert list(out.iterdir()) == []


@dataclasses.dataclass(frozen=True)
class Refusal:
    args: tuple[str, ...]  # {ckpt}, {repo}, {official} and {tmp} are filled in
    message: str
    rig: str = "rtx5090x2"
    drop: str = ""  # a file of the fixtures to delete first


DIFFUSERS = ("--ckpt-dir", "{ckpt}")
WAN_REPO = ("--backend", "wan-repo", "--wan-repo", "{repo}", "--ckpt-dir", "{official}")
RIGS = {"rtx5090x2": RTX5090X2, "h100x8": H100X8, "no_driver": scenario("no_driver")}
REFUSALS = {
    "more GPUs than visible": Refusal((*DIFFUSERS, "--gpus", "4"), "--gpus 4 asked, 2 visible"),
    "Ulysses degree": Refusal((*DIFFUSERS, "--gpus", "5"),
                              "24 attention heads do not split over 5 GPUs", "h100x8"),
    "size not a multiple of 32": Refusal((*DIFFUSERS, "--size", "1280*720"),
                                         "not made of multiples of 32"),
    "tokens that do not split": Refusal((*DIFFUSERS, "--gpus", "3"), "do not split over 3",
                                        "h100x8"),
    "size the official code rejects": Refusal((*WAN_REPO, "--size", "1024*1024"),
                                              "does not run ti2v-5B at 1024*1024"),
    "frames not 4n+1": Refusal((*DIFFUSERS, "--frames", "120"), "120 frames is not 4n+1"),
    "missing checkpoint": Refusal(("--ckpt-dir", "{tmp}/nowhere"), "nowhere is not a folder"),
    "checkpoint file missing": Refusal(DIFFUSERS, "vae/config.json is missing",
                                       drop="Wan2.2-TI2V-5B-Diffusers/vae/config.json"),
    "official checkpoint file missing": Refusal(WAN_REPO, "Wan2.2_VAE.pth is missing",
                                                drop="Wan2.2-TI2V-5B/Wan2.2_VAE.pth"),
    "official script missing": Refusal(WAN_REPO, "not a Wan2.2 checkout: no generate.py",
                                       drop="Wan2.2/generate.py"),
    "output folder missing": Refusal((*DIFFUSERS, "-o", "{tmp}/nowhere/v.mp4"),
                                     "is not a writable folder"),
    "output is a folder": Refusal((*DIFFUSERS, "-o", "{tmp}/out"), "it is a folder"),
    "output type": Refusal((*DIFFUSERS, "-o", "{tmp}/out/v.avi"), "unknown video type '.avi'"),
    "missing image": Refusal((*DIFFUSERS, "--image", "{tmp}/cat.png"), "image not found"),
    "image that is none": Refusal((*DIFFUSERS, "--image", "{ckpt}/model_index.json"),
                                  "cannot read the image"),
    "the official code on the CPU": Refusal((*WAN_REPO, "--device", "cpu"),
                                            "the official generate.py runs on CUDA GPUs only"),
    "negative prompt to the official code": Refusal((*WAN_REPO, "--negative-prompt", "blur"),
                                                    "--negative-prompt would not reach"),
    "offload with one DiT": Refusal((*DIFFUSERS, "--offload"),
                                    "ti2v-5B has one DiT, on the GPU throughout sampling"),
    "fp8 with the official code": Refusal((*WAN_REPO, "--dit-storage", "fp8"),
                                          "fp8 storage is diffusers' layerwise casting"),
    "synthetic-5b on the CPU": Refusal(("--model", "synthetic-5b", "--device", "cpu"),
                                       "synthetic-5b is for timing and memory on a GPU"),
    "no GPU for a checkpoint": Refusal(DIFFUSERS, "no GPU is visible", "no_driver"),
    "FSDP on one GPU": Refusal((*DIFFUSERS, "--dit", "fsdp", "--gpus", "1"),
                               "with one GPU there is nothing to share"),
    "too many decode ranks": Refusal((*DIFFUSERS, "--decode-ranks", "3"),
                                     "decode on 3 ranks is not possible here"),
    "several nodes and no rendezvous": Refusal((*DIFFUSERS, "--nnodes", "2"),
                                               "--nnodes 2 without --rdzv-endpoint"),
    "chunk_t through --env": Refusal((*DIFFUSERS, "--env", "WAN_VAE_DECODE_CHUNK_T=4"),
                                     "--env WAN_VAE_DECODE_CHUNK_T=4 would not reach the decode"),
    "output where no file can be created": Refusal((*DIFFUSERS, "-o", "/proc/x.mp4"),
                                                   "/proc is not a writable folder"),
    "model and checkpoint": Refusal((*DIFFUSERS, "--model", "tiny"),
                                    "both --model and --ckpt-dir"),
    "no model": Refusal((), "no model: pass a checkpoint or a built-in model"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusals_exit_2_with_a_message_and_write_nothing(
    case: str,
    cli: CliRunner,
    monkeypatch: pytest.MonkeyPatch,
    ckpt: Path,
    wan: tuple[Path, Path],
    out: Path,
    tmp_path: Path,
) -> None:
    refusal = REFUSALS[case]
    if refusal.drop:
        (tmp_path / refusal.drop).unlink()
    places = {"ckpt": ckpt, "repo": wan[0], "official": wan[1], "tmp": tmp_path}
    args = [arg.format(**places) for arg in refusal.args]
    output = [] if "-o" in args else ["-o", str(out / "v.mp4")]
    before = sorted(tmp_path.rglob("*"))
    result = _cli(cli, monkeypatch, RIGS[refusal.rig], "--prompt", "x", "--gpus", "2",
                  *output, *args)  # fmt: skip
    assert result.exit_code == 2, result.output
    assert refusal.message in " ".join(result.stderr.split()), result.stderr
    assert not crashed(result)
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize(
    ("index", "message"),
    [("{", "is not valid JSON"), ("[1, 2]", "holds a JSON list, not an object")],
)
def test_a_broken_model_index_is_refused(ckpt: Path, out: Path, index: str, message: str) -> None:
    (ckpt / "model_index.json").write_text(index)
    with pytest.raises(UsageError, match=message):
        prepared(options(out, ckpt_dir=ckpt))


def test_too_little_disk_is_refused(ckpt: Path, out: Path) -> None:
    with pytest.raises(UsageError) as refused:
        prepare(options(out, ckpt_dir=ckpt), probe=RTX5090X2, env={},
                disk_free=lambda _: 50 * 2**20)  # fmt: skip
    assert refused.value.exit_code == 2 and "MiB needed" in refused.value.message


def test_a_failed_preflight_check_stops_the_launch(ckpt: Path, out: Path) -> None:
    with pytest.raises(WanctlError) as refused:
        prepared(options(out, ckpt_dir=ckpt), scenario("rtx5090x2_old_nccl"))
    assert "NCCL 2.25.1 is older than 2.26.2" in refused.value.why
    assert "--skip-preflight" in refused.value.fix
    skipped = prepared(options(out, ckpt_dir=ckpt, preflight=False),
                       scenario("rtx5090x2_old_nccl"))  # fmt: skip
    assert skipped.device == "cuda"


@pytest.mark.parametrize(
    ("type_name", "message", "cause"),
    [
        ("OutOfMemoryError", "CUDA out of memory. Tried to allocate 2.00 GiB", "out of GPU memory"),
        ("MemoryError", "", "out of host memory"),
        ("DistBackendError", "[Rank 1] Watchdog caught collective operation timeout: "
         "WorkNCCL(SeqNum=9, OpType=ALLTOALL_BASE) ran for 600000 milliseconds", "NCCL timeout"),
        ("RuntimeError", "[pair.cc:553] Connection closed by peer [127.0.0.1]:5849",
         "lost contact with another rank"),
        ("DistBackendError", "NCCL error in: ProcessGroupNCCL.cpp:1970, unhandled system error",
         "NCCL error"),
        ("UsageError", "4 ranks cannot split a frame of 3 latent rows", "error"),
        ("KeyError", "'latents'", "KeyError"),
    ],
)  # fmt: skip
def test_causes_are_named(type_name: str, message: str, cause: str) -> None:
    assert classify(type_name, message) == cause


def _status(
    rank: int, phase: str, state: str, cause: str = "", message: str = "", at: float = 0.0
) -> dict:
    return {"rank": rank, "phase": phase, "state": state, "cause": cause, "time": at,
            "type": "OutOfMemoryError", "message": message}  # fmt: skip


def test_the_rank_that_failed_first_is_named_not_the_ones_that_lost_it(
    ckpt: Path, out: Path
) -> None:
    launched = prepared(options(out, ckpt_dir=ckpt))
    statuses = [
        _status(0, "sampling", "failed", "lost contact with another rank"),
        _status(1, "sampling", "failed", "out of GPU memory", "CUDA out of memory."),
    ]
    error = failure(launched, statuses, RunResult(1, False, 3.0), None)
    assert error.message == "rank 1 failed during sampling: out of GPU memory"
    assert "CUDA out of memory" in error.why and "wanctl tune" in error.fix
    both = [
        _status(0, "sampling", "failed", "out of GPU memory", "CUDA out of memory.", at=2.0),
        _status(1, "sampling", "failed", "out of GPU memory", "CUDA out of memory.", at=1.0),
    ]
    assert failure(launched, both, RunResult(1, False, 3.0), None).message.startswith("rank 1 ")
    killed = failure(launched, [_status(0, "sampling", "running")], RunResult(-9, False, 3.0), None)
    assert "rank 0 in sampling with no Python error" in killed.why


def test_a_decode_failure_after_the_latents_are_saved_gives_the_decode_command(
    ckpt: Path, out: Path
) -> None:
    launched = prepared(options(out, ckpt_dir=ckpt))
    statuses = [_status(0, "decode", "failed", "out of GPU memory", "CUDA out of memory.")]
    launched.paths.latents.write_bytes(b"saved")
    error = failure(launched, statuses, RunResult(1, False, 3.0), None)
    assert isinstance(error, DecodeFailed)
    assert str(launched.paths.latents) in error.message
    assert error.fix == f"finish the job with: {launched.decode_command}"


def test_run_paths_sit_beside_the_output() -> None:
    paths = RunPaths.for_output(Path("out/demo.mp4"))
    assert paths.latents == Path("out/demo.latents.safetensors")
    # one folder per invocation, so that no other run's (or node's) reports are read
    assert paths.run_dir == Path(f"out/.demo.mp4.{os.getpid()}.wanctl")


def test_a_size_spelled_with_x_is_passed_on_as_the_workers_and_official_code_read_it(
    ckpt: Path, wan: tuple[Path, Path], out: Path
) -> None:
    diffusers = prepared(options(out, ckpt_dir=ckpt, size="1280x704"))
    args = diffusers.spec.argv
    assert args[args.index("--size") + 1] == "1280*704"
    assert diffusers.options.size == "1280*704" and diffusers.options.dimensions == (1280, 704)
    repo, official = wan
    wan_repo = prepared(options(out, backend="wan-repo", wan_repo=repo, ckpt_dir=official,
                                size="704×1280"))  # fmt: skip
    args = wan_repo.spec.argv
    assert args[args.index("--size") + 1] == "704*1280"
    assert json.loads(wan_repo.spec.env[SOURCE_ENV])["size"] == "704*1280"


def test_refusals_say_how_to_fix_them(ckpt: Path, out: Path) -> None:
    with pytest.raises(UsageError) as nodes:
        prepared(options(out, ckpt_dir=ckpt, nnodes=2))
    assert nodes.value.fix == "pass --rdzv-endpoint HOST:PORT, the same on every node"
    assert nodes.value.why
    with pytest.raises(UsageError) as chunk:
        prepared(options(out, ckpt_dir=ckpt, env=(("WAN_VAE_DECODE_CHUNK_T", "4"),)))
    assert chunk.value.fix == "use --chunk-t 4"
    with pytest.raises(UsageError) as heads:  # a Workload of 5 GPUs; Ulysses cannot split it
        prepared(options(out, ckpt_dir=ckpt, gpus=5), H100X8)
    assert "24 attention heads do not split over 5 GPUs" in heads.value.message
    assert heads.value.fix == "use --gpus 2 or 3 or 4"
    from wanctl.core.launch import check_output

    with pytest.raises(UsageError) as proc:
        check_output(Path("/proc/x.mp4"))
    assert proc.value.exit_code == 2 and "creating a file there failed" in proc.value.why
    check_output(out / "fine.mp4")
    assert list(out.iterdir()) == []  # the probe file is gone


def test_the_cpu_note_counts_every_rank_of_every_node(out: Path) -> None:
    launched = prepared(options(out, model="tiny", size="64*64", frames=17, nnodes=2,
                                rdzv_endpoint="10.0.0.1:29500"), scenario("no_driver"))  # fmt: skip
    assert launched.world == 4
    assert "on the CPU: 4 process(es) over gloo, no preset" in launched.notes


def test_a_rank_that_failed_of_a_bug_points_to_its_traceback(ckpt: Path, out: Path) -> None:
    launched = prepared(options(out, ckpt_dir=ckpt))
    bug = {"rank": 1, "phase": "sampling", "state": "failed", "cause": "KeyError", "time": 0.0,
           "type": "KeyError", "message": "'latents'"}  # fmt: skip
    error = failure(launched, [bug], RunResult(1, False, 3.0), None)
    assert error.why == "rank 1: KeyError: 'latents'"
    assert "rank 1's traceback is in torchrun's output above" in error.fix
    assert "run again with --debug" not in error.fix


def test_generate_and_decode_share_one_check_and_one_name() -> None:
    import wanctl.core.launch as launch
    import wanctl.generate.checks as checks
    import wanctl.generate.run as generate
    import wanctl.generate.settings as settings
    from wanctl.decode import run as job
    from wanctl.decode import writers

    assert checks.check_output is job.check_output is launch.check_output
    assert settings.chunk_t is job.chunk_t is launch.chunk_t
    assert generate.thread_env is job.thread_env is launch.thread_env
    assert generate.check_gpus_visible is job.check_gpus_visible is launch.check_gpus_visible
    assert checks.CHUNK_ENV == settings.CHUNK_ENV == launch.CHUNK_ENV == "WAN_VAE_DECODE_CHUNK_T"
    assert launch.VIDEO_SUFFIXES == writers.SUFFIXES


def test_a_timeout_is_the_cause_when_the_ranks_only_lost_each_other(ckpt: Path, out: Path) -> None:
    """Stopped at --timeout, a rank records that its peers went away: the run reports the
    timeout (exit 124), not a rank failure."""
    launched = prepared(options(out, ckpt_dir=ckpt, timeout_s=30.0))
    lost = [_status(0, "sampling", "failed", "lost contact with another rank"),
            _status(1, "sampling", "running")]  # fmt: skip
    error = failure(launched, lost, RunResult(None, True, 30.0), None)
    assert error.exit_code == 124 and "did not finish within --timeout 30 s" in error.message


def test_the_recovery_command_of_an_overwrite_run_replaces_the_earlier_video(
    ckpt: Path, out: Path
) -> None:
    """The earlier video an --overwrite run was to replace is still there when its decode
    fails: the printed command must be allowed to replace it too."""
    assert "--overwrite" not in prepared(options(out, ckpt_dir=ckpt)).decode_command
    again = prepared(options(out, ckpt_dir=ckpt, overwrite=True))
    assert again.decode_command.endswith(" --overwrite")
