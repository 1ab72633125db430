from __future__ import annotations

import pytest
from typer.testing import CliRunner

from wanctl.probe.fake import SCENARIOS, FakeProbe, scenario


@pytest.fixture
def cli() -> CliRunner:
    return CliRunner()


@pytest.fixture(params=sorted(SCENARIOS))
def any_rig(request: pytest.FixtureRequest) -> FakeProbe:
    return scenario(request.param)
