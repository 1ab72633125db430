"""The CLI edge: exit codes, JSON on stdout, errors without tracebacks, help for every command."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from conftest import command_paths, crashed, use_rig
from typer.testing import CliRunner

import wanctl.doctor.run as doctor_run
from wanctl.cli import app, handle_errors
from wanctl.core.links import Collective
from wanctl.doctor.report import ActiveFindings, Check, Status
from wanctl.errors import UsageError, WanctlError

README = Path(__file__).resolve().parent.parent / "README.md"


def test_doctor_json_is_one_complete_document(cli: CliRunner, monkeypatch) -> None:
    use_rig(monkeypatch, "h100x8_nvlink")
    result = cli.invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["fingerprint"] == "8x-h100-80gb-nvlink"
    assert len(report["inventory"]["gpus"]) == 8
    assert report["inventory"]["topology"][0][1] == "NV18"
    assert report["inventory"]["p2p"][0][1]["read"] == "OK"
    assert {"python", "torch", "nccl", "diffusers", "ffmpeg", "env"} <= set(report["software"])
    assert {"shm_total_bytes", "iommu", "memlock_bytes"} <= set(report["system"])
    assert all({"name", "status", "finding", "fix", "shell"} <= set(c) for c in report["checks"])
    assert report["recommended_env"] == {}


def test_doctor_exit_codes(cli: CliRunner, monkeypatch) -> None:
    use_rig(monkeypatch, "rtx4090x2_no_p2p")
    assert cli.invoke(app, ["doctor"]).exit_code == 0
    use_rig(monkeypatch, "rtx5090x2_old_nccl")
    failed = cli.invoke(app, ["doctor"])
    assert failed.exit_code == 1 and "nvidia-nccl-cu12>=2.26.2" in failed.stdout
    assert cli.invoke(app, ["doctor", "--no-such-flag"]).exit_code == 2
    assert cli.invoke(app, ["doctor", "--timeout", "1"]).exit_code == 2


def test_doctor_table_shows_gpus_topology_and_fingerprint(cli: CliRunner, monkeypatch) -> None:
    use_rig(monkeypatch, "rtx4090x2_no_p2p")
    output = cli.invoke(app, ["doctor"]).stdout
    assert "NVIDIA GeForce RTX 4090" in output and "CNS/CNS/NS/CNS" in output
    assert "rig 2x-rtx-4090-24gb-pcie" in output


def test_doctor_table_gives_each_problem_its_fix_and_command(cli: CliRunner, monkeypatch) -> None:
    use_rig(monkeypatch, "l40sx4_two_sockets")
    output = cli.invoke(app, ["doctor"], env={"COLUMNS": "250"}).stdout
    assert "CUDA_VISIBLE_DEVICES" in output and "see: nvidia-smi topo -m" in output


LINK = Collective("all_to_all", 2, 83804160, 0.004, "doctor --full on 2x RTX 4090, 2026-12-02")


def test_doctor_full_save_keeps_the_links_with_the_rig(
    cli: CliRunner, monkeypatch, tmp_path: Path
) -> None:
    """The children replaced by their findings: the report's JSON carries the figures with
    their GB/s, the rig's preset keeps them and `presets show` displays them."""
    use_rig(monkeypatch, "rtx4090x2_no_p2p")
    monkeypatch.setenv("WANCTL_CONFIG_DIR", str(tmp_path))
    found = ActiveFindings([Check("links.all_to_all.2", "active", Status.OK, "fine")], {}, (LINK,))
    monkeypatch.setattr(doctor_run, "active_checks", lambda runner, timeout: lambda i, s: found)
    result = cli.invoke(app, ["doctor", "--full", "--save", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    path = tmp_path / "presets" / "2x-rtx-4090-24gb-pcie.toml"
    assert report["saved"] == str(path) and path.is_file()
    assert report["links"] == [{**dataclasses.asdict(LINK), "gb_per_s": LINK.gb_per_s}]
    shown = cli.invoke(app, ["presets", "show", "2x-rtx-4090-24gb-pcie"]).stdout
    assert "all_to_all" in shown and "21.0" in shown and LINK.source in shown
    assert "links saved to" in cli.invoke(app, ["doctor", "--full", "--save"]).stdout


def test_doctor_save_needs_full(cli: CliRunner, monkeypatch) -> None:
    use_rig(monkeypatch, "rtx4090x2_no_p2p")
    result = cli.invoke(app, ["doctor", "--save"])
    assert result.exit_code == 2 and "--full --save" in result.stderr


def test_doctor_on_this_machine_runs_without_traceback(cli: CliRunner) -> None:
    """No driver here (and in CI): a failed check, exit 1, software and system still shown."""
    result = cli.invoke(app, ["doctor", "--json"])
    report = json.loads(result.stdout)
    assert result.exit_code == 1 if report["inventory"]["error"] else result.exit_code in (0, 1)
    assert not crashed(result)
    names = {c["name"] for c in report["checks"]}
    assert {"torch", "diffusers", "ffmpeg", "shm", "host_ram"} <= names


def _failing_app(error: WanctlError) -> typer.Typer:
    test_app = typer.Typer()

    @test_app.callback()
    def root() -> None: ...

    @test_app.command()
    @handle_errors
    def boom() -> None:
        raise error

    return test_app


def test_errors_become_what_why_fix_and_exit_code(cli: CliRunner) -> None:
    error = UsageError("the latents file is unreadable", why="it is empty", fix="re-run")
    result = cli.invoke(_failing_app(error), ["boom"])
    assert result.exit_code == 2
    assert "error: the latents file is unreadable" in result.stderr
    assert "why: it is empty" in result.stderr and "fix: re-run" in result.stderr
    assert not crashed(result)
    assert cli.invoke(_failing_app(WanctlError("x", exit_code=3)), ["boom"]).exit_code == 3


def test_debug_shows_the_traceback(cli: CliRunner, monkeypatch) -> None:
    from wanctl import cli as cli_module

    monkeypatch.setitem(cli_module._state, "debug", True)
    result = cli.invoke(_failing_app(WanctlError("broken")), ["boom"])
    assert "Traceback" in result.stderr and "error: broken" in result.stderr


@pytest.mark.parametrize("command", command_paths(app), ids=" ".join)
def test_every_command_has_help_and_a_readme_section(cli: CliRunner, command) -> None:
    result = cli.invoke(app, [*command, "--help"])
    assert result.exit_code == 0 and len(result.stdout.strip()) > 40
    assert re.search(rf"^#+ .*`wanctl {' '.join(command)}", README.read_text(), re.M), command


def test_version(cli: CliRunner) -> None:
    assert re.fullmatch(r"wanctl \d+\.\d+\.\d+\n", cli.invoke(app, ["--version"]).stdout)


def test_the_cli_starts_without_importing_torch() -> None:
    """Importing torch takes seconds on some machines: doctor and --help must not pay it."""
    code = "import sys, wanctl.cli; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


def _help_words(text: str) -> str:
    """Help text as words, with the line breaks the layout put after hyphens undone."""
    return re.sub(r"-\s+", "-", " ".join(text.split()))


@pytest.mark.parametrize("command", [(), *command_paths(app)], ids=lambda c: " ".join(c) or "-")
def test_help_at_80_columns_shows_every_option_whole(command) -> None:
    """No option name cut short or wrapped, no `<bool>` after a flag, each help text as
    written (no markup eating the `*` of `1280*704`), nothing wider than the terminal. A real
    process: CliRunner lays help out at a width of its own."""
    argv = [sys.executable, "-m", "wanctl", *command, "--help"]
    result = subprocess.run(
        argv, capture_output=True, text=True, env={**os.environ, "COLUMNS": "80"}
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(map(len, lines)) <= 80
    assert "<bool>" not in result.stdout
    group = typer.main.get_command(app)
    for word in command:
        group = group.commands[word]
    for param in group.get_params(group.context_class(group)):
        for name in [*param.opts, *param.secondary_opts]:
            whole = re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])")
            assert any(whole.search(line) for line in lines), (name, result.stdout)
        if param.help:
            assert _help_words(param.help) in _help_words(result.stdout)
