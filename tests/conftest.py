from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from fake_checkpoints import official_checkpoint
from typer.testing import CliRunner, Result

import wanctl.doctor.run as doctor_run
from wanctl.core.launch import LaunchSpec, SubprocessRunner, torchrun_argv
from wanctl.probe.fake import SCENARIOS, FakeProbe, scenario

TESTS = Path(__file__).parent


def run_test_workers(
    module: str, args: list[str], ranks: int, *, timeout_s: float = 240, **env: str
) -> None:
    """`module` (a test file, also the torchrun worker of its tests) on `ranks` real processes
    through torchrun, with tests/ on their path; fails the test with the ranks' output's end
    when they do."""
    spec = LaunchSpec(
        torchrun_argv(module, args, ranks),
        env={"PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path]), **env},
        timeout_s=timeout_s,
    )
    result = SubprocessRunner().run(spec)
    assert result.ok, result.output[-3000:]


def crashed(result: Result) -> bool:
    """Whether the command ended by an exception rather than an exit: the traceback a user
    would see (CliRunner keeps it off `result.output`, so looking for one there finds none)."""
    return result.exception is not None and not isinstance(result.exception, SystemExit)


def command_paths(group: typer.Typer, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The words of every command of the app: ("doctor",), ("presets", "rm"), ..."""
    names = [(*prefix, c.name or c.callback.__name__) for c in group.registered_commands]
    for sub in group.registered_groups:
        names += command_paths(sub.typer_instance, (*prefix, sub.name or ""))
    return names


def use_rig(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """doctor reads a rig of `wanctl.probe.fake`."""
    monkeypatch.setattr(doctor_run, "LocalProbe", lambda: scenario(name))
    monkeypatch.setenv("COLUMNS", "250")  # rich wraps tables at 80 columns otherwise


class Cli(CliRunner):
    """A runner for which any command that crashes fails the test."""

    def invoke(self, *args: Any, **kwargs: Any) -> Result:
        result = super().invoke(*args, **kwargs)
        if crashed(result):
            raise AssertionError(f"the command crashed: {result.exception!r}") from result.exception
        return result


@pytest.fixture
def cli() -> CliRunner:
    return Cli()


@pytest.fixture(params=sorted(SCENARIOS))
def any_rig(request: pytest.FixtureRequest) -> FakeProbe:
    return scenario(request.param)


@pytest.fixture
def wan(tmp_path: Path) -> tuple[Path, Path]:
    """A Wan2.2 checkout and the official checkpoint, as far as the launcher reads them."""
    repo = tmp_path / "Wan2.2"
    for name in ("generate.py", "wan/modules/vae2_2.py", "wan/modules/vae2_1.py"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text("")
    return repo, official_checkpoint(tmp_path / "Wan2.2-TI2V-5B")
