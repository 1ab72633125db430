"""`--json` on every command, failures included: one JSON document on stdout with the error's
what, why, fix and exit code (beside the report a command had produced), the same exit code,
the message still on stderr; command lines the parser refuses too."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer
from conftest import command_paths, use_rig
from typer.testing import CliRunner, Result

from wanctl.cli import app
from wanctl.tune import presets


@dataclass(frozen=True)
class Failing:
    args: tuple[str, ...]  # after the command's words; {tmp} is filled in
    exit_code: int
    message: str  # a part of the error's message


# One failing invocation of every command (the test below checks that none is missing).
FAILING = {
    ("doctor",): Failing((), 1, "1 check failed: nccl"),  # on rtx5090x2_old_nccl
    ("decode",): Failing(
        ("{tmp}/cut.safetensors", "-o", "{tmp}/v.npy", "--vae", "tiny"), 2, "as safetensors"
    ),  # fmt: skip
    ("generate",): Failing(
        ("--model", "tiny", "--prompt", "x", "-o", "{tmp}/v.mp4", "--frames", "4"),
        2,
        "4 frames is not 4n+1",
    ),  # fmt: skip
    ("tune",): Failing(("--rig", "banana"), 2, "unknown GPU model 'banana'"),
    ("presets", "list"): Failing(("extra",), 2, "unexpected extra argument"),  # cannot fail else
    ("presets", "show"): Failing(("nope",), 2, "no preset nope"),
    ("presets", "rm"): Failing(("nope",), 2, "no preset nope"),
}


@pytest.fixture(autouse=True)
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(presets.CONFIG_DIR_ENV, str(tmp_path / "config"))
    return tmp_path / "config"


def one_document(result: Result) -> dict:
    """stdout parsed as exactly one JSON document (json.loads refuses anything after it)."""
    document = json.loads(result.stdout)
    assert isinstance(document, dict)
    return document


def error_of(result: Result, exit_code: int) -> dict:
    assert result.exit_code == exit_code, result.output
    error = one_document(result)["error"]
    assert {"message", "why", "fix", "exit_code"} <= set(error)
    assert error["exit_code"] == exit_code and error["fix"]
    return error


def test_every_command_has_a_failing_case_here() -> None:
    assert set(FAILING) == set(command_paths(app))


@pytest.mark.parametrize("command", sorted(FAILING), ids=" ".join)
def test_a_failure_with_json_is_one_document_with_what_why_fix_and_exit_code(
    cli: CliRunner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, command: tuple[str, ...]
) -> None:
    use_rig(monkeypatch, "rtx5090x2_old_nccl")
    (tmp_path / "cut.safetensors").write_bytes(b"\x08\x00\x00")  # a truncated file
    case = FAILING[command]
    args = [arg.format(tmp=tmp_path) for arg in case.args]
    result = cli.invoke(app, [*command, *args, "--json"])
    error = error_of(result, case.exit_code)
    assert case.message in error["message"]
    assert case.message in " ".join(result.stderr.split())  # the message still on stderr


def test_a_report_that_ends_in_an_error_carries_both(cli: CliRunner, monkeypatch) -> None:
    """tune's refusal and doctor's failed checks: the report's members and the error."""
    result = cli.invoke(app, ["tune", "--rig", "1x RTX 4090 24GB", "--frames", "321", "--json"])
    document = one_document(result)
    assert "does not fit" in error_of(result, 1)["message"]
    assert not document["plan"]["fits"] and document["alternatives"]
    assert "nearest runs that fit" in document["error"]["fix"]
    use_rig(monkeypatch, "rtx5090x2_old_nccl")
    result = cli.invoke(app, ["doctor", "--json"])
    error = error_of(result, 1)
    assert "nvidia-nccl-cu12>=2.26.2" in error["fix"]
    failed = [c["name"] for c in one_document(result)["checks"] if c["status"] == "fail"]
    assert failed == ["nccl"]
    use_rig(monkeypatch, "rtx4090x2_no_p2p")
    assert "error" not in one_document(cli.invoke(app, ["doctor", "--json"]))


@pytest.mark.parametrize(
    ("args", "message", "fix"),
    [
        (["generate", "--gpus", "0"], "'--gpus'", "wanctl generate --help"),
        (["tune", "--frames", "many"], "'--frames'", "wanctl tune --help"),
        (["decode", "x.safetensors"], "'--output'", "wanctl decode --help"),
        (["doctor", "--gpus", "1"], "--gpus", "wanctl doctor --help"),
        (["presets", "rm"], "FINGERPRINT", "wanctl presets rm --help"),
        (["doctr"], "Did you mean 'doctor'?", "wanctl --help"),
        (["presets", "remove"], "No such command 'remove'", "wanctl presets --help"),
        (["--bogus", "doctor"], "--bogus", "wanctl --help"),
        (["--"], "No such option: --json", "wanctl --help"),  # parsed twice, reported once
    ],
)
def test_a_command_line_the_parser_refuses_gives_the_document_too(
    cli: CliRunner, args: list[str], message: str, fix: str
) -> None:
    result = cli.invoke(app, [*args, "--json"])
    error = error_of(result, 2)
    assert message.lower() in error["message"].lower() and fix in error["fix"]
    assert "Usage: wanctl" in result.stderr
    assert cli.invoke(app, args).stdout == ""  # without --json, no document


def test_a_decode_that_failed_after_sampling_names_the_latents_and_the_command(
    cli: CliRunner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The run fails in the decode once rank 0 saved the latents (the recorder of the launch
    stands in for torchrun): the document carries what the error does."""
    import wanctl.generate.run as generate_run
    from wanctl.core.launch import LaunchSpec, RunResult

    class DecodeFails:
        def run(self, spec: LaunchSpec) -> RunResult:
            argv = list(spec.argv)
            Path(argv[argv.index("--latents") + 1]).write_bytes(b"saved")
            run_dir = Path(argv[argv.index("--run-dir") + 1])
            status = {"rank": 0, "phase": "decode", "state": "failed", "time": 0.0,
                      "cause": "out of GPU memory", "type": "OutOfMemoryError",
                      "message": "CUDA out of memory."}  # fmt: skip
            (run_dir / "rank0.json").write_text(json.dumps(status))
            return RunResult(1, False, 1.0)

    monkeypatch.setattr(generate_run, "SubprocessRunner", DecodeFails)
    output = tmp_path / "fox.mp4"
    result = cli.invoke(app, ["generate", "--model", "tiny", "--device", "cpu", "--gpus", "1",
                              "--size", "64*64", "--frames", "5", "--prompt", "a fox",
                              "-o", str(output), "--json"])  # fmt: skip
    error = error_of(result, 1)
    latents = tmp_path / "fox.latents.safetensors"
    assert error["latents"] == str(latents) and error["output"] == str(output)
    assert error["decode_command"].startswith(f"wanctl decode {latents} -o {output} --vae tiny")
    assert error["fix"] == f"finish the job with: {error['decode_command']}"
    assert "the sampled latents are kept" in " ".join(result.stderr.split())


def test_presets_rm_json_names_the_file_removed(cli: CliRunner, config_dir: Path) -> None:
    rig = ["--rig", "2x RTX 5090 32GB", "--gpus", "2", "--save"]
    assert cli.invoke(app, ["tune", *rig]).exit_code == 0
    path = config_dir / "presets" / "2x-rtx-5090-32gb-pcie.toml"
    result = cli.invoke(app, ["presets", "rm", "2x-rtx-5090-32gb-pcie", "--json"])
    assert result.exit_code == 0, result.output
    assert one_document(result) == {"fingerprint": "2x-rtx-5090-32gb-pcie", "removed": str(path)}
    assert not path.exists()


def test_every_command_takes_json() -> None:
    """The README's promise, read from the commands themselves."""
    group = typer.main.get_command(app)
    for words in command_paths(app):
        command = group
        for word in words:
            command = command.commands[word]
        assert "--json" in [opt for param in command.params for opt in param.opts], words
