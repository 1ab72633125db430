"""`wanctl tune` and `wanctl presets` through the CLI: JSON, exit codes, messages."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from conftest import crashed
from typer.testing import CliRunner

import wanctl.tune.run as tune_run
from wanctl.cli import app
from wanctl.probe.fake import scenario
from wanctl.tune import presets

USER_CASE = ["tune", "--rig", "2x RTX 5090 32GB", "--gpus", "2", "--size", "1280*704",
             "--frames", "121"]  # fmt: skip


@pytest.fixture(autouse=True)
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(presets.CONFIG_DIR_ENV, str(tmp_path))
    monkeypatch.setenv("COLUMNS", "250")
    return tmp_path


def test_the_users_case_as_json(cli: CliRunner) -> None:
    result = cli.invoke(app, [*USER_CASE, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["fingerprint"] == "2x-rtx-5090-32gb-pcie"
    chosen = report["plan"]
    assert chosen["fits"] and chosen["settings"]["decode_ranks"] == 2
    assert chosen["settings"]["chunk_t"] == 1 and chosen["settings"]["decode_dtype"] == "bf16"
    assert chosen["env"] == {
        "WAN_VAE_DECODE_CHUNK_T": "1",
        "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
    }
    assert [phase["name"] for phase in chosen["phases"]] == ["text_encode", "sampling", "decode"]
    assert report["alternatives"] == [] and report["written"] is None


def test_the_table_names_the_settings_and_exports(cli: CliRunner) -> None:
    result = cli.invoke(app, USER_CASE)
    assert result.exit_code == 0
    assert "decode on 2 rank(s) in bf16, chunk_t 1" in result.stdout
    assert "export WAN_VAE_DECODE_CHUNK_T=1" in result.stdout
    # the weights go straight to the GPUs; rank 0 alone loads UMT5, its largest tensor cast
    # in host memory on the way
    text = " ".join(result.stdout.split())
    assert (
        "host RAM, loading a checkpoint: 2 rank(s) x (process 2.3), rank 0 4.3 at first (process"
        " 2.3 + UMT5's embedding table on its way 2.0) = 6.6 GiB" in text
    )


def test_a_plan_this_hosts_ram_cannot_hold_is_refused_with_fewer_gpus(
    cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = dataclasses.replace(scenario("rtx4090x2_no_p2p"))
    local = dataclasses.replace(
        local,
        system_info=dataclasses.replace(local.system_info, host_mem_available_bytes=6 * 2**30),
    )
    monkeypatch.setattr(tune_run, "LocalProbe", lambda: local)
    result = cli.invoke(app, ["tune", "--size", "1280*704", "--frames", "121"],
                        env={"COLUMNS": "200"})  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "= 6.6 GiB of host RAM, more than 90% of the 6.0 GiB free" in " ".join(
        result.stdout.split()
    )
    assert "does not fit the host's RAM" in result.stderr
    assert "1 GPUs (instead of 2)" in result.stderr  # one rank loads alone
    roomy = cli.invoke(app, ["tune", "--size", "1280*704", "--frames", "121", "--host-ram", "64"],
                       env={"COLUMNS": "200"})  # fmt: skip
    assert roomy.exit_code == 0, roomy.output
    assert "= 6.6 GiB of 59.6 GiB free" in " ".join(roomy.stdout.split())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--size", "1280x70"], "not made of multiples of 32"),
        (["--size", "big"], "cannot read the size"),
        (["--frames", "120"], "120 frames is not 4n+1"),
        (["--gpus", "4"], "--gpus 4 on a rig of 2 GPUs"),
        (["--gpus", "5"], "--gpus 5 on a rig of 2 GPUs"),
        (["--gpus", "0"], "greater than or equal to 1"),
        (["--dit-precision", "fp8", "--dit-storage", "bf16"], "stored in fp8"),
    ],
)
def test_bad_requests_exit_2_with_a_message(cli: CliRunner, args: list[str], message: str) -> None:
    result = cli.invoke(app, ["tune", "--rig", "2x RTX 5090 32GB", *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and not crashed(result)


def test_a_run_too_big_is_refused_with_the_nearest_that_fit(cli: CliRunner) -> None:
    result = cli.invoke(app, ["tune", "--rig", "1x RTX 4090 24GB", "--frames", "321", "--json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert not report["plan"]["fits"] and report["alternatives"]
    assert "does not fit" in result.stderr and "nearest runs that fit" in result.stderr
    assert "2 GPUs (instead of 1)" in result.stderr


def test_no_gpu_here_asks_for_a_rig(cli: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tune_run, "LocalProbe", lambda: scenario("no_driver"))
    result = cli.invoke(app, ["tune"])
    assert result.exit_code == 2 and "--rig" in result.stderr


def test_this_rig_from_the_probe(cli: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tune_run, "LocalProbe", lambda: scenario("h100x8_nvlink"))
    report = json.loads(cli.invoke(app, ["tune", "--json"]).stdout)
    assert report["fingerprint"] == "8x-h100-80gb-nvlink"
    assert (
        report["plan"]["workload"]["gpus"] == 8 and report["plan"]["settings"]["decode_ranks"] == 8
    )


def test_save_then_presets_list_show_rm(cli: CliRunner, config_dir: Path) -> None:
    saved = cli.invoke(app, [*USER_CASE, "--save"])
    assert saved.exit_code == 0, saved.output
    path = config_dir / "presets" / "2x-rtx-5090-32gb-pcie.toml"
    assert path.is_file() and str(path) in saved.stdout.replace("\n", "")

    listed = json.loads(cli.invoke(app, ["presets", "list", "--json"]).stdout)
    origins = [(item["fingerprint"], item["origin"]) for item in listed]
    assert ("2x-rtx-5090-32gb-pcie", "user") in origins
    assert ("8x-h100-80gb-nvlink", "shipped") in origins
    assert "2x RTX 5090 32GB" in cli.invoke(app, ["presets", "list"]).stdout

    shown = cli.invoke(app, ["presets", "show", "2x-rtx-5090-32gb-pcie"])
    assert shown.exit_code == 0 and "export WAN_VAE_DECODE_CHUNK_T=1" in shown.stdout
    document = json.loads(
        cli.invoke(app, ["presets", "show", "2x-rtx-5090-32gb-pcie", "--json"]).stdout
    )
    assert document["origin"] == "user" and document["entries"][0]["settings"]["decode_ranks"] == 2

    other = cli.invoke(app, [*USER_CASE, "--text-encoder", "cpu", "--save"])
    assert other.exit_code == 2 and "--force" in other.stderr
    assert (
        cli.invoke(app, [*USER_CASE, "--text-encoder", "cpu", "--save", "--force"]).exit_code == 0
    )

    removed = cli.invoke(app, ["presets", "rm", "2x-rtx-5090-32gb-pcie"])
    assert removed.exit_code == 0 and not path.exists()
    assert cli.invoke(app, ["presets", "rm", "2x-rtx-5090-32gb-pcie"]).exit_code == 2


def test_a_corrupt_preset_is_a_clear_error(cli: CliRunner, config_dir: Path) -> None:
    folder = config_dir / "presets"
    folder.mkdir()
    (folder / "2x-rtx-5090-32gb-pcie.toml").write_text("][")
    result = cli.invoke(app, ["presets", "show", "2x-rtx-5090-32gb-pcie"])
    assert result.exit_code == 2 and "is not valid TOML" in result.stderr
    assert not crashed(result)
    saved = cli.invoke(app, [*USER_CASE, "--save"])
    assert saved.exit_code == 2 and "will not overwrite" in saved.stderr


def test_plan_for_the_rig_of_a_preset(cli: CliRunner) -> None:
    result = cli.invoke(app, ["tune", "--preset", "1x-h100-80gb-single", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["plan"]["card"]["memory_mib"] == 81559
    assert cli.invoke(app, ["tune", "--preset", "nothing-here"]).exit_code == 2


def test_a_run_ulysses_cannot_split_is_refused_as_a_bad_request(
    cli: CliRunner, config_dir: Path
) -> None:
    """3 GPUs: 27,280 tokens do not split in 3 equal parts, which diffusers' Ulysses needs."""
    three = ["tune", "--rig", "3x RTX 4090", "--save"]
    result = cli.invoke(app, three)
    assert result.exit_code == 2, result.output
    assert "27280 tokens" in result.stderr and "do not split over 3 GPUs" in result.stderr
    assert "117 frames (instead of 121)" in result.stderr
    assert "2 GPUs (instead of 3)" in result.stderr
    assert "fits:" not in result.output and not (config_dir / "presets").exists()
    as_json = cli.invoke(app, [*three, "--json"])
    assert as_json.exit_code == 2
    report = json.loads(as_json.stdout)
    assert "27280 tokens" in report["plan"]["problem"] and report["alternatives"]
    assert all(a["plan"]["problem"] is None for a in report["alternatives"])
    assert report["written"] is None


def test_presets_list_never_cuts_the_fingerprint_users_type(
    cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    assert cli.invoke(app, [*USER_CASE, "--save"]).exit_code == 0
    listed = cli.invoke(app, ["presets", "list"])
    assert listed.exit_code == 0
    keys = [item.fingerprint for item in presets.listing()]
    assert "8x-h100-80gb-nvlink" in keys and "2x-rtx-5090-32gb-pcie" in keys
    for key in keys:
        assert key in listed.stdout, listed.stdout


def test_no_empty_table_of_nearest_runs(cli: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tune_run, "alternatives", lambda *args, **kwargs: ())
    result = cli.invoke(app, ["tune", "--rig", "1x RTX 4090 24GB", "--frames", "321"])
    assert result.exit_code == 1 and "does not fit" in result.stdout
    assert "nearest runs that fit" not in result.output and "use a larger GPU" in result.stderr


@pytest.mark.parametrize(
    "args",
    [[*USER_CASE, "--size", "[/]"], ["tune", "--preset", "[/]"], ["presets", "show", "[/x]"]],
)
def test_what_the_user_typed_is_quoted_as_text_not_markup(cli: CliRunner, args: list[str]) -> None:
    result = cli.invoke(app, args)
    assert result.exit_code == 2 and args[-1] in result.stderr


def test_a_preset_file_with_markup_in_it_is_listed_as_text(
    cli: CliRunner, config_dir: Path
) -> None:
    assert cli.invoke(app, [*USER_CASE, "--save"]).exit_code == 0
    saved = config_dir / "presets" / "2x-rtx-5090-32gb-pcie.toml"
    text = saved.read_text().replace('"2x-rtx-5090-32gb-pcie"', '"[/]"')
    saved.write_text(text.replace('"2x RTX 5090 32GB"', '"[bold]2x[/]"'))
    listed = cli.invoke(app, ["presets", "list"])
    assert listed.exit_code == 0 and "[/]" in listed.stdout


def test_a_measurement_that_could_not_be_saved_is_refused_before_it_runs(
    cli: CliRunner, config_dir: Path
) -> None:
    """Here, with no GPU, a measurement would stop on its CUDA check: the refusal comes first."""
    assert cli.invoke(app, [*USER_CASE, "--save"]).exit_code == 0
    result = cli.invoke(app, [*USER_CASE, "--text-encoder", "cpu", "--measure"])
    assert result.exit_code == 2 and "already holds other settings" in result.stderr
    assert "CUDA" not in result.stderr


def test_an_unwritable_config_folder_is_a_clear_error(
    cli: CliRunner, config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = config_dir / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(presets.CONFIG_DIR_ENV, str(blocker / "wanctl"))
    result = cli.invoke(app, [*USER_CASE, "--save"])
    assert result.exit_code == 1 and "could not write" in result.stderr
    assert presets.CONFIG_DIR_ENV in result.stderr


def test_pinned_settings_are_planned_as_given(cli: CliRunner) -> None:
    pins = ["--chunk-t", "2", "--decode-ranks", "1", "--no-offload", "--dit", "replicated"]
    result = cli.invoke(app, [*USER_CASE, *pins, "--text-encoder", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    settings = json.loads(result.stdout)["plan"]["settings"]
    assert (settings["chunk_t"], settings["decode_ranks"], settings["offload"]) == (2, 1, False)
    assert (settings["dit"], settings["text_encoder"]) == ("replicated", "cpu")


def test_a_pin_that_does_not_fit_is_refused_with_the_pin_released(cli: CliRunner) -> None:
    """The seed's rank-0 decode with chunk_t 20: tune names what fits instead."""
    result = cli.invoke(app, [*USER_CASE, "--chunk-t", "20", "--decode-ranks", "1"])
    assert result.exit_code == 1
    assert "chunk_t 1 (instead of 20)" in result.output.replace("\n", " ")


def test_an_fp8_compute_plan_says_so_with_its_measured_error(cli: CliRunner) -> None:
    result = cli.invoke(app, ["tune", "--rig", "2x RTX 5090 32GB", "--dit-precision", "fp8"])
    assert result.exit_code == 0, result.output
    shown = " ".join(result.stdout.split())
    assert "computed in fp8 (torchao" in shown and "2.6e-02" in shown
