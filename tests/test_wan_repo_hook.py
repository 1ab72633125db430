"""`wanctl generate --backend wan-repo` against a fake Wan2.2 checkout written here: a
`generate.py` that parses the official flags, records its arguments and environment, samples
latents and calls `Wan2_2_VAE.decode` on rank 0 as the official one does, and a `wan` package
whose own decode must never run. wanctl's hook saves the latents instead; wanctl then decodes
them on every rank into the user's path."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import imageio_ffmpeg
import pytest
import torch
from fake_checkpoints import official_checkpoint
from PIL import Image
from typer.testing import CliRunner

import wanctl.generate.run as generate_run
from wanctl.cli import app
from wanctl.core.families import T2V_A14B
from wanctl.decode.latents import load_latents
from wanctl.decode.load import TINY_CONFIG, TINY_WAN21_CONFIG, random_vae
from wanctl.doctor.report import DoctorReport
from wanctl.generate import checks
from wanctl.generate.options import GenerateOptions
from wanctl.workers.wan_hook import HOOK_DIR, LATENTS_ENV, SOURCE_ENV

FAKE_GENERATE = """
import argparse, json, os
import torch
import torch.distributed as dist
from wan.modules.vae2_1 import Wan2_1_VAE
from wan.modules.vae2_2 import Wan2_2_VAE

parser = argparse.ArgumentParser()
for flag in ("--task", "--size", "--ckpt_dir", "--offload_model", "--prompt", "--image",
             "--save_file"):
    parser.add_argument(flag)
for flag in ("--ulysses_size", "--frame_num", "--sample_steps", "--base_seed"):
    parser.add_argument(flag, type=int)
parser.add_argument("--sample_guide_scale", type=float)
for flag in ("--convert_model_dtype", "--t5_cpu", "--dit_fsdp"):
    parser.add_argument(flag, action="store_true")
args = parser.parse_args()
rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
if world > 1:
    dist.init_process_group("gloo")
if os.environ.get("FAKE_FAIL") and rank == 1:
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
if world > 1:
    dist.barrier()  # as sampling's all-to-alls: rank 0 waits for rank 1 here
keys = ("PYTHONPATH", "WANCTL_LATENTS", "WANCTL_LATENTS_SOURCE", "WANCTL_RUN_DIR",
        "WAN_VAE_DECODE_CHUNK_T", "OMP_NUM_THREADS")
record = {"argv": vars(args), "env": {k: os.environ.get(k) for k in keys}}
width, height = (int(side) for side in args.size.split("*"))
channels, space, vae = (48, 16, Wan2_2_VAE) if args.task == "ti2v-5B" else (16, 8, Wan2_1_VAE)
latent = torch.randn(channels, (args.frame_num - 1) // 4 + 1, height // space, width // space,
                     generator=torch.Generator().manual_seed(args.base_seed))
if rank == 0:
    video = vae().decode([latent])[0]
    record["placeholder"] = list(video.shape)
    torch.save(latent, os.environ["FAKE_RECORD"] + ".latent.pt")
    with open(args.save_file, "wb") as placeholder:
        placeholder.write(b"placeholder")
    with open(os.environ["FAKE_RECORD"], "w") as out:
        json.dump(record, out)
if world > 1:
    dist.barrier()
"""
FAKE_VAE = """
class Wan2_{version}_VAE:
    def decode(self, zs):
        raise RuntimeError("the official decode ran: wanctl's hook did not take")
"""
FRAMES = 5


@pytest.fixture
def official(tmp_path: Path) -> tuple[Path, Path]:
    """The fake checkout, and a checkpoint folder whose Wan2.2_VAE.pth holds the tiny decoder."""
    repo, ckpt = tmp_path / "Wan2.2", tmp_path / "Wan2.2-TI2V-5B"
    files = {repo / "generate.py": FAKE_GENERATE, repo / "wan/__init__.py": "",
             repo / "wan/modules/__init__.py": "",
             repo / "wan/modules/vae2_2.py": FAKE_VAE.format(version=2),
             repo / "wan/modules/vae2_1.py": FAKE_VAE.format(version=1)}  # fmt: skip
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    official_checkpoint(ckpt)
    torch.save(random_vae(TINY_CONFIG).state_dict(), ckpt / "Wan2.2_VAE.pth")
    return repo, ckpt


def choose_device_anywhere(options: GenerateOptions, report: DoctorReport, visible: int) -> str:
    """generate's device choice as for the diffusers backend: the fake official code runs on
    the CPU over gloo, which the real one cannot (tests/test_generate_launch.py checks that
    refusal); every other device check kept."""
    anywhere = dataclasses.replace(options, backend="diffusers")
    return checks.choose_device(anywhere, report, visible)


@pytest.fixture(autouse=True)
def official_code_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(generate_run, "choose_device", choose_device_anywhere)


def run(cli: CliRunner, official: tuple[Path, Path], output: Path, *args: str):
    repo, ckpt = official
    return cli.invoke(app, [
        "generate", "--backend", "wan-repo", "--wan-repo", str(repo), "--ckpt-dir", str(ckpt),
        "--device", "cpu", "--gpus", "2", "--size", "1280*704", "--frames", str(FRAMES),
        "--steps", "2", "--seed", "3", "--prompt", "two cats box", "-o", str(output), *args,
    ])  # fmt: skip


def test_the_hooked_decode_saves_the_latents_and_wanctl_decodes_them_on_every_rank(
    cli: CliRunner, official: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_RECORD", str(tmp_path / "record.json"))
    output = tmp_path / "cats.mp4"
    result = run(cli, official, output, "--json")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "record.json").read_text())
    repo, ckpt = official
    placeholder = tmp_path / f".cats.mp4.{os.getpid()}.wanctl" / "official-placeholder.mp4"
    assert record["argv"] == {
        "task": "ti2v-5B", "size": "1280*704", "ckpt_dir": str(ckpt), "offload_model": "False",
        "prompt": "two cats box", "image": None, "save_file": str(placeholder),
        "ulysses_size": 2, "frame_num": FRAMES, "sample_steps": 2, "base_seed": 3,
        "sample_guide_scale": None, "convert_model_dtype": True, "t5_cpu": True,
        "dit_fsdp": False,
    }  # fmt: skip
    env = record["env"]
    assert env["PYTHONPATH"].split(":")[0] == str(HOOK_DIR)
    assert env[LATENTS_ENV] == str(tmp_path / "cats.latents.safetensors")
    assert json.loads(env[SOURCE_ENV])["prompt"] == "two cats box"
    assert env["WANCTL_RUN_DIR"] == str(placeholder.parent)
    assert env["WAN_VAE_DECODE_CHUNK_T"] == "1" and env["OMP_NUM_THREADS"]
    assert record["placeholder"] == [3, 1, 16, 16]

    latents = load_latents(tmp_path / "cats.latents.safetensors")
    sampled = torch.load(tmp_path / "record.json.latent.pt")
    assert torch.equal(latents.tensor, sampled.unsqueeze(0)) and latents.normalized
    assert dict(latents.source) == {"model": f"Wan2.2-ti2v-5B ({ckpt})", "prompt": "two cats box",
                                    "seed": "3", "steps": "2", "size": "1280*704"}  # fmt: skip
    assert imageio_ffmpeg.count_frames_and_secs(str(output))[0] == FRAMES
    summary = json.loads(result.stdout)
    assert summary["backend"] == "wan-repo" and len(summary["per_rank"]) == 2
    assert not placeholder.parent.exists()


@pytest.fixture
def official_a14b(official: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    """An official T2V-A14B checkpoint folder whose Wan2.1_VAE.pth holds the tiny Wan2.1
    decoder."""
    repo, _ = official
    ckpt = official_checkpoint(tmp_path / "Wan2.2-T2V-A14B", T2V_A14B)
    torch.save(random_vae(TINY_WAN21_CONFIG).state_dict(), ckpt / "Wan2.1_VAE.pth")
    return repo, ckpt


def test_the_hook_takes_over_the_wan21_decode_of_the_a14b_tasks(
    cli: CliRunner, official_a14b: tuple[Path, Path], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """--task t2v-A14B from the checkpoint folder, its size and fps; `Wan2_1_VAE.decode` saves
    the 16-channel latents, which wanctl decodes with the checkpoint's Wan2.1_VAE.pth."""
    monkeypatch.setenv("FAKE_RECORD", str(tmp_path / "record.json"))
    output = tmp_path / "fox.mp4"
    repo, ckpt = official_a14b
    result = cli.invoke(app, [
        "generate", "--backend", "wan-repo", "--wan-repo", str(repo), "--ckpt-dir", str(ckpt),
        "--device", "cpu", "--gpus", "2", "--size", "832*480", "--frames", str(FRAMES),
        "--steps", "2", "--seed", "3", "--prompt", "a fox", "-o", str(output), "--json",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    argv = json.loads((tmp_path / "record.json").read_text())["argv"]
    assert (argv["task"], argv["size"], argv["ulysses_size"]) == ("t2v-A14B", "832*480", 2)
    latents = load_latents(tmp_path / "fox.latents.safetensors")
    assert latents.tensor.shape == (1, 16, 2, 60, 104) and latents.fps == 16
    assert latents.source["model"] == f"Wan2.2-t2v-A14B ({ckpt})"
    assert imageio_ffmpeg.count_frames_and_secs(str(output))[0] == FRAMES
    summary = json.loads(result.stdout)
    assert summary["family"] == "t2v-A14B" and summary["fps"] == 16


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--size", "1280*704"), "does not run t2v-A14B at 1280*704"),
        (("--size", "1280*720", "--guidance-2", "3"), "--guidance-2 would not reach"),
        (("--size", "1280*720", "--image", "IMAGE"), "t2v-A14B takes no image"),
    ],
)
def test_a14b_requests_the_official_code_cannot_run_are_refused(
    cli: CliRunner, official_a14b: tuple[Path, Path], tmp_path: Path,
    args: tuple[str, ...], message: str,
) -> None:  # fmt: skip
    repo, ckpt = official_a14b
    image = tmp_path / "cat.png"
    Image.new("RGB", (64, 64)).save(image)
    args = tuple(str(image) if a == "IMAGE" else a for a in args)
    result = cli.invoke(app, [
        "generate", "--backend", "wan-repo", "--wan-repo", str(repo), "--ckpt-dir", str(ckpt),
        "--device", "cpu", "--prompt", "a fox", "-o", str(tmp_path / "v.mp4"), "--dry-run",
        *args,
    ])  # fmt: skip
    assert result.exit_code == 2 and message in result.output, result.output


def test_a_rank_of_the_official_code_that_dies_is_named_with_its_cause(
    cli: CliRunner, official: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_FAIL", "1")
    result = run(cli, official, tmp_path / "cats.mp4", "--json")
    assert result.exit_code == 1
    assert "error: rank 1 failed during the official generate.py: out of GPU memory" in (
        result.stderr
    )
    assert "why: rank 1: OutOfMemoryError: CUDA out of memory" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Wan2.2", "Wan2.2-TI2V-5B"]


def test_the_sitecustomize_it_shadows_still_runs(tmp_path: Path) -> None:
    """The hook's folder comes first on PYTHONPATH; a distribution's sitecustomize behind it
    must still run, and without WANCTL_LATENTS nothing is hooked."""
    (tmp_path / "sitecustomize.py").write_text("import builtins; builtins.SHADOWED_RAN = True\n")
    code = (
        "import builtins, sys; print(getattr(builtins, 'SHADOWED_RAN', False), "
        "[type(f).__name__ for f in sys.meta_path if type(f).__name__ == '_Finder'])"
    )
    env = {"PYTHONPATH": f"{HOOK_DIR}:{tmp_path}", "PATH": ""}
    shown = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert shown.stdout.split() == ["True", "[]"], shown.stderr
    hooked = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**env, LATENTS_ENV: str(tmp_path / "l.safetensors")})  # fmt: skip
    assert hooked.stdout.split() == ["True", "['_Finder']"], hooked.stderr


def test_each_node_of_a_two_node_run_reports_it_and_node_0_holds_the_video(
    official: tuple[Path, Path], tmp_path: Path
) -> None:
    """Two torchrun nodes on one machine (c10d on 127.0.0.1, gloo, one official rank each), as
    two `wanctl generate` commands (this file's `__main__`: wanctl with the fake code allowed
    on the CPU): node 0 decodes, node 1 exits 0 and says where the video is."""
    repo, ckpt = official
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        endpoint = f"127.0.0.1:{probe.getsockname()[1]}"
    env = {**os.environ, "FAKE_RECORD": str(tmp_path / "record.json"),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}  # fmt: skip
    nodes = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        argv = [sys.executable, "-m", "test_wan_repo_hook", "generate", "--backend", "wan-repo",
                "--wan-repo", str(repo), "--ckpt-dir", str(ckpt), "--device", "cpu", "--gpus",
                "1", "--nnodes", "2", "--rdzv-endpoint", endpoint, "--size", "1280*704",
                "--frames", str(FRAMES), "--steps", "2", "--prompt", "two cats box", "-o",
                str(tmp_path / name / "cats.mp4"), "--json"]  # fmt: skip
        nodes.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env=env))  # fmt: skip
    outcomes = [node.communicate(timeout=300) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], [err[-2000:] for _, err in outcomes]
    holders = [name for name in ("a", "b") if (tmp_path / name / "cats.mp4").is_file()]
    assert len(holders) == 1  # rank 0's node
    other = json.loads(outcomes[("a", "b").index(holders[0]) ^ 1][0])
    assert any("this is node 1 of 2" in note for note in other["notes"])
    assert imageio_ffmpeg.count_frames_and_secs(str(tmp_path / holders[0] / "cats.mp4"))[0] == 5


if __name__ == "__main__":  # one node's wanctl, for the two-node test
    generate_run.choose_device = choose_device_anywhere  # type: ignore[assignment]
    sys.argv[0] = "wanctl"
    from wanctl.cli import main

    main()
