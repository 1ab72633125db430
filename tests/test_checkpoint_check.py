"""The checkpoint check before launch (`wanctl.models.layouts`): a diffusers folder and an
official one hold everything loading reads, weights and tokenizer included, or the launch is
refused with the file, why loading needs it and the `hf download` that fixes it (exit 2,
`--dry-run` too), never a traceback. The folders come from `fake_checkpoints`; each case
breaks one piece of a complete one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from fake_checkpoints import (
    diffusers_checkpoint,
    official_checkpoint,
    write_json,
    write_safetensors,
    write_torch_file,
)
from PIL import Image
from typer.testing import CliRunner

import wanctl.commands.generate as generate_command
from wanctl.cli import app
from wanctl.core.families import I2V_A14B, T2V_A14B, TI2V_5B, Family
from wanctl.errors import UsageError
from wanctl.generate.options import GenerateOptions
from wanctl.generate.plan import GeneratePlan
from wanctl.generate.run import prepare
from wanctl.models.catalog import DOWNLOAD_FIX
from wanctl.probe.catalog import MODELS
from wanctl.probe.fake import FakeProbe, describe_rig
from wanctl.tune import presets

H100X2 = FakeProbe(describe_rig(2, MODELS["h100"]))
SHARD = "diffusion_pytorch_model-00002-of-00002.safetensors"
FAMILIES = {family.name: family for family in (TI2V_5B, T2V_A14B, I2V_A14B)}


@pytest.fixture(autouse=True)
def no_user_presets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(presets.CONFIG_DIR_ENV, str(tmp_path / "config"))


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "first.png"
    Image.new("RGB", (64, 36)).save(path)
    return path


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A Wan2.2 checkout, as far as the launcher reads it."""
    folder = tmp_path / "Wan2.2"
    for name in ("generate.py", "wan/modules/vae2_2.py", "wan/modules/vae2_1.py"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("")
    return folder


def request(folder: Path, family: Family, image: Path, repo: Path | None = None) -> list[str]:
    """`wanctl generate`'s arguments for `folder` (official with `repo`), on 2 GPUs."""
    args = ["--prompt", "a fox", "-o", str(folder.parent / "fox.mp4"), "--gpus", "2",
            "--ckpt-dir", str(folder)]  # fmt: skip
    if repo is not None:
        args += ["--backend", "wan-repo", "--wan-repo", str(repo)]
    return args + (["--image", str(image)] if family.image == "required" else [])


def options(folder: Path, family: Family, image: Path, repo: Path | None = None) -> GenerateOptions:
    return GenerateOptions(
        prompt="a fox", output=folder.parent / "fox.mp4", gpus=2, ckpt_dir=folder,
        backend="wan-repo" if repo else "diffusers", wan_repo=repo,
        image=image if family.image == "required" else None,
    )  # fmt: skip


def prepared(opts: GenerateOptions) -> GeneratePlan:
    return prepare(opts, probe=H100X2, env={}, disk_free=lambda _: 2**40)


def dry_run(cli: CliRunner, monkeypatch: pytest.MonkeyPatch, args: list[str]):
    monkeypatch.setattr(generate_command, "LocalProbe", lambda: H100X2)
    return cli.invoke(app, ["generate", *args, "--dry-run"], env={"COLUMNS": "1000"})


def refused(opts: GenerateOptions) -> UsageError:
    with pytest.raises(UsageError) as refusal:
        prepared(opts)
    assert refusal.value.exit_code == 2
    return refusal.value


# --- a complete folder passes ----------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_a_complete_diffusers_checkpoint_passes(
    name: str, tmp_path: Path, image: Path, cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    family = FAMILIES[name]
    folder = diffusers_checkpoint(tmp_path / "ckpt", family)
    assert prepared(options(folder, family, image)).options.family.name == name
    result = dry_run(cli, monkeypatch, request(folder, family, image))
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_a_complete_official_checkpoint_passes(
    name: str,
    tmp_path: Path,
    image: Path,
    repo: Path,
    cli: CliRunner,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    family = FAMILIES[name]
    folder = official_checkpoint(tmp_path / "ckpt", family)
    assert prepared(options(folder, family, image, repo)).options.family.name == name
    result = dry_run(cli, monkeypatch, request(folder, family, image, repo))
    assert result.exit_code == 0, result.output


def test_weights_in_one_file_or_as_bin_pass_too(tmp_path: Path, image: Path) -> None:
    """from_pretrained's other layouts: one safetensors file (the VAE's already), or .bin (not
    for a DiT: `a DiT as .bin` below)."""
    folder = diffusers_checkpoint(tmp_path / "ckpt")
    for path in (folder / "transformer").glob("diffusion_pytorch_model*"):
        path.unlink()
    write_safetensors(folder / "transformer" / "diffusion_pytorch_model.safetensors")
    for path in (folder / "text_encoder").glob("model*"):
        path.unlink()
    write_torch_file(folder / "text_encoder" / "pytorch_model.bin")
    prepared(options(folder, TI2V_5B, image))


def test_the_check_imports_no_torch(tmp_path: Path) -> None:
    folder = diffusers_checkpoint(tmp_path / "ckpt", T2V_A14B)
    official = official_checkpoint(tmp_path / "official", T2V_A14B)
    code = (
        "import sys; from pathlib import Path; from wanctl.core.families import T2V_A14B; "
        "from wanctl.models.layouts import check_diffusers_checkpoint as d, "
        "check_official_checkpoint as o; "
        f"d(Path({str(folder)!r})); o(Path({str(official)!r}), T2V_A14B); "
        "assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file_is_refused_with_its_permissions(tmp_path: Path, image: Path) -> None:
    folder = diffusers_checkpoint(tmp_path / "ckpt")
    (folder / "transformer" / SHARD).chmod(0)
    error = refused(options(folder, TI2V_5B, image))
    assert error.message == f"cannot read {folder / 'transformer' / SHARD}"
    assert "ls -l" in error.fix


# --- every missing or broken piece is refused before launch ----------------------------


@dataclass(frozen=True)
class Damage:
    family: Family
    damage: Callable[[Path], object]  # breaks the complete folder
    message: str  # in the refusal's message
    fix: str = "hf download"  # in its fix


def unlink(*names: str) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        for name in names:
            for path in folder.glob(name):
                path.unlink()

    return damage


def write(name: str, content: str | bytes) -> Callable[[Path], object]:
    def damage(folder: Path) -> object:
        path = folder / name
        return path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)

    return damage


def cut(name: str, keep: int) -> Callable[[Path], object]:
    return lambda folder: write(name, (folder / name).read_bytes()[:keep])(folder)


def index_with(**entries: object) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        index = json.loads((folder / "model_index.json").read_text())
        write_json(folder / "model_index.json", {**index, **entries})

    return damage


def only_the_six_configs(folder: Path) -> None:
    """The issue's folder: model_index.json, the four configs and an empty tokenizer/."""
    for path in sorted(folder.rglob("*"), reverse=True):
        keep = path.name in ("model_index.json", "config.json", "scheduler_config.json")
        if path.is_file() and not keep:
            path.unlink()


def a_bin_dit(folder: Path) -> None:
    unlink("transformer/diffusion_pytorch_model*")(folder)
    write_torch_file(folder / "transformer" / "diffusion_pytorch_model.bin")


def a_cut_bin_vae(folder: Path) -> None:
    (folder / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    (folder / "vae" / "diffusion_pytorch_model.bin").write_bytes(b"PK\x03\x04 the first part")


T5_SHARD = "text_encoder/model-00002-of-00002.safetensors"
DIFFUSERS_DAMAGE = {
    "six configs and nothing else": Damage(TI2V_5B, only_the_six_configs,
                                           "transformer holds no weights"),
    "a missing shard": Damage(TI2V_5B, unlink(f"transformer/{SHARD}"),
                              f"transformer/{SHARD} is missing",
                              f"download it: `hf download Wan-AI/Wan2.2-TI2V-5B-Diffusers "
                              f"transformer/{SHARD} --local-dir "),
    "a shard cut short": Damage(TI2V_5B, cut(f"transformer/{SHARD}", 40), "is cut short",
                                "then download it again: `hf download"),
    "a shard whose header is cut": Damage(TI2V_5B, cut(T5_SHARD, 20),
                                          "less than its own header"),
    "a shard that is not safetensors": Damage(TI2V_5B, write(T5_SHARD, b"\x02" + bytes(7) + b"[]"),
                                              "is not a safetensors file"),
    "a broken index": Damage(T2V_A14B,
                             write("transformer_2/diffusion_pytorch_model.safetensors.index.json",
                                   "{"), "index.json is not valid JSON"),
    "an index without weight_map": Damage(TI2V_5B,
                                          write("text_encoder/model.safetensors.index.json", "{}"),
                                          "has no weight_map"),
    "no text encoder weights": Damage(TI2V_5B, unlink("text_encoder/model*"),
                                      "text_encoder holds no weights",
                                      "--include 'text_encoder/*'"),
    "a DiT as .bin": Damage(TI2V_5B, a_bin_dit, "transformer holds no weights",
                            "--include 'transformer/*'"),
    "a .bin cut short": Damage(TI2V_5B, a_cut_bin_vae, "diffusion_pytorch_model.bin is cut short"),
    "no VAE weights": Damage(TI2V_5B, unlink("vae/diffusion_pytorch_model.safetensors"),
                             "vae holds no weights"),
    "no vocabulary": Damage(T2V_A14B, unlink("tokenizer/tokenizer.json", "tokenizer/spiece.model"),
                            "tokenizer holds no vocabulary"),
    "a vocabulary cut short": Damage(TI2V_5B, write("tokenizer/tokenizer.json", '{"model": {'),
                                     "its JSON does not end"),
    "a broken tokenizer config": Damage(TI2V_5B, write("tokenizer/tokenizer_config.json", ""),
                                        "tokenizer_config.json is not valid JSON"),
    "no scheduler class": Damage(I2V_A14B, write("scheduler/scheduler_config.json", "{}"),
                                 "names no scheduler class"),
    "a config that is a list": Damage(TI2V_5B, write("vae/config.json", "[]"),
                                      "vae/config.json holds a JSON list, not an object"),
    "no low-noise expert": Damage(T2V_A14B, unlink("transformer_2/*"),
                                  "transformer_2/config.json is missing"),
    "no model_index.json": Damage(TI2V_5B, unlink("model_index.json"),
                                  "model_index.json is missing", DOWNLOAD_FIX),
    "a component given as a number": Damage(TI2V_5B, index_with(transformer_2=5),
                                            "gives transformer_2 as 5, not a [library, class]"),
    "a component given as one string": Damage(TI2V_5B, index_with(vae=["AutoencoderKLWan"]),
                                              'gives vae as ["AutoencoderKLWan"]'),
    "a component given as numbers": Damage(T2V_A14B, index_with(transformer=[1, 2]),
                                           "gives transformer as [1, 2]"),
    "a required component not named": Damage(TI2V_5B, index_with(text_encoder=[None, None]),
                                             "names no text_encoder"),
    "a named component not there": Damage(I2V_A14B,
                                          index_with(image_encoder=["transformers",
                                                                    "CLIPVisionModel"]),
                                          "image_encoder is missing"),
    "a boundary that is a string": Damage(I2V_A14B, index_with(boundary_ratio="0.9"),
                                          "boundary_ratio is '0.9'", DOWNLOAD_FIX),
    "another pipeline": Damage(TI2V_5B, index_with(_class_name="FluxPipeline"),
                               "names a FluxPipeline pipeline", DOWNLOAD_FIX),
    "a Wan2.1 DiT": Damage(TI2V_5B, write("transformer/config.json", '{"in_channels": 16}'),
                           "takes 16 input channels, not the 48 of Wan2.2 ti2v-5B"),
}  # fmt: skip
OFFICIAL_DAMAGE = {
    "a missing shard": Damage(TI2V_5B, unlink(SHARD), f"{SHARD} is missing",
                              f"`hf download Wan-AI/Wan2.2-TI2V-5B {SHARD} --local-dir "),
    "no DiT weights": Damage(T2V_A14B, unlink("low_noise_model/diffusion_pytorch_model*"),
                             "low_noise_model holds no weights",
                             "`hf download Wan-AI/Wan2.2-T2V-A14B --include 'low_noise_model/*'"),
    "a shard cut short": Damage(I2V_A14B, cut(f"high_noise_model/{SHARD}", 50), "is cut short"),
    "a broken DiT config": Damage(TI2V_5B, write("config.json", "{"), "is not valid JSON"),
    "an empty T5 file": Damage(T2V_A14B, write("models_t5_umt5-xxl-enc-bf16.pth", b""),
                               "models_t5_umt5-xxl-enc-bf16.pth is empty"),
    "a VAE file cut short": Damage(TI2V_5B, write("Wan2.2_VAE.pth", b"PK\x03\x04 half of it"),
                                   "Wan2.2_VAE.pth is cut short"),
    "no Wan2.1 VAE": Damage(I2V_A14B, unlink("Wan2.1_VAE.pth"), "Wan2.1_VAE.pth is missing",
                            "download it: `hf download Wan-AI/Wan2.2-I2V-A14B Wan2.1_VAE.pth"),
    "no tokenizer": Damage(TI2V_5B, unlink("google/umt5-xxl/*"),
                           "google/umt5-xxl holds no vocabulary",
                           "--include 'google/umt5-xxl/*'"),
    "a Wan2.1 DiT": Damage(TI2V_5B, write("config.json", '{"in_dim": 16}'),
                           "takes 16 input channels, not the 48 of Wan2.2 ti2v-5B"),
}  # fmt: skip


def check_refusal(
    case: Damage,
    folder: Path,
    image: Path,
    repo: Path | None,
    cli: CliRunner,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same refusal through `prepare` and the CLI's dry run, before anything is written."""
    case.damage(folder)
    before = sorted(folder.parent.rglob("*"))
    error = refused(options(folder, case.family, image, repo))
    assert case.message in error.message and case.fix in error.fix, str(error)
    assert error.why
    result = dry_run(cli, monkeypatch, request(folder, case.family, image, repo))
    assert result.exit_code == 2, result.output
    assert case.message in result.stderr and case.fix in result.stderr, result.stderr
    assert sorted(folder.parent.rglob("*")) == before


@pytest.mark.parametrize("name", sorted(DIFFUSERS_DAMAGE))
def test_a_broken_diffusers_checkpoint_is_refused_before_launch(
    name: str, tmp_path: Path, image: Path, cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = DIFFUSERS_DAMAGE[name]
    folder = diffusers_checkpoint(tmp_path / "Wan2.2-Diffusers", case.family)
    check_refusal(case, folder, image, None, cli, monkeypatch)


@pytest.mark.parametrize("name", sorted(OFFICIAL_DAMAGE))
def test_a_broken_official_checkpoint_is_refused_before_launch(
    name: str,
    tmp_path: Path,
    image: Path,
    repo: Path,
    cli: CliRunner,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    case = OFFICIAL_DAMAGE[name]
    folder = official_checkpoint(tmp_path / "Wan2.2", case.family)
    check_refusal(case, folder, image, repo, cli, monkeypatch)
