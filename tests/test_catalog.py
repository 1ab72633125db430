"""The rig catalog (`wanctl.probe.catalog`): the cards people run Wan on, each with memory,
compute capability, PCIe generation and P2P class; how a described rig is read; a model the
catalog lacks planned from its memory with a warning."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from wanctl.cli import app
from wanctl.doctor.report import Status
from wanctl.doctor.run import diagnose
from wanctl.errors import UsageError
from wanctl.probe.base import fingerprint, memory_class_gb
from wanctl.probe.catalog import MODELS, parse_rig
from wanctl.probe.fake import FakeProbe, describe_rig
from wanctl.tune import presets

# Issue 13: refused, although people run Wan on them.
ISSUE_RIGS = {
    "4x RTX 4080": (4, "NVIDIA GeForce RTX 4080"),
    "2x RTX A6000": (2, "NVIDIA RTX A6000"),
    "8x A800": (8, "NVIDIA A800-SXM4-80GB"),
    "4x L20": (4, "NVIDIA L20"),
    "RTX PRO 6000": (1, "NVIDIA RTX PRO 6000 Blackwell Workstation Edition"),
    "H20": (1, "NVIDIA H20"),
    "4090": (1, "NVIDIA GeForce RTX 4090"),
}
# Each card of the issue as people write it, the NVML name and the size it is sold as.
CARDS = {
    "RTX 3060": ("NVIDIA GeForce RTX 3060", 12),
    "RTX 3080": ("NVIDIA GeForce RTX 3080", 12),
    "RTX 3080 Ti": ("NVIDIA GeForce RTX 3080 Ti", 12),
    "RTX 3090": ("NVIDIA GeForce RTX 3090", 24),
    "RTX 3090 Ti": ("NVIDIA GeForce RTX 3090 Ti", 24),
    "RTX 4060 Ti 16GB": ("NVIDIA GeForce RTX 4060 Ti", 16),
    "RTX 4070": ("NVIDIA GeForce RTX 4070", 12),
    "RTX 4070 SUPER": ("NVIDIA GeForce RTX 4070 SUPER", 12),
    "RTX 4070 Ti": ("NVIDIA GeForce RTX 4070 Ti", 12),
    "RTX 4070 Ti SUPER": ("NVIDIA GeForce RTX 4070 Ti SUPER", 16),
    "RTX 4080": ("NVIDIA GeForce RTX 4080", 16),
    "RTX 4080 SUPER": ("NVIDIA GeForce RTX 4080 SUPER", 16),
    "RTX 4090": ("NVIDIA GeForce RTX 4090", 24),
    "RTX 4090 D": ("NVIDIA GeForce RTX 4090 D", 24),
    "RTX 5060 Ti": ("NVIDIA GeForce RTX 5060 Ti", 16),
    "RTX 5070": ("NVIDIA GeForce RTX 5070", 12),
    "RTX 5070 Ti": ("NVIDIA GeForce RTX 5070 Ti", 16),
    "RTX 5080": ("NVIDIA GeForce RTX 5080", 16),
    "RTX 5090": ("NVIDIA GeForce RTX 5090", 32),
    "RTX A5000": ("NVIDIA RTX A5000", 24),
    "RTX A6000": ("NVIDIA RTX A6000", 48),
    "RTX 6000 Ada": ("NVIDIA RTX 6000 Ada Generation", 48),
    "RTX PRO 6000 Blackwell": ("NVIDIA RTX PRO 6000 Blackwell Workstation Edition", 96),
    "RTX PRO 6000 Server": ("NVIDIA RTX PRO 6000 Blackwell Server Edition", 96),
    "L4": ("NVIDIA L4", 24),
    "L20": ("NVIDIA L20", 48),
    "L40": ("NVIDIA L40", 48),
    "L40S": ("NVIDIA L40S", 48),
    "A10": ("NVIDIA A10", 24),
    "A40": ("NVIDIA A40", 48),
    "A100 40GB": ("NVIDIA A100-SXM4-40GB", 40),
    "A100 80GB": ("NVIDIA A100-SXM4-80GB", 80),
    "A100 PCIe 40GB": ("NVIDIA A100-PCIE-40GB", 40),
    "A100 PCIe": ("NVIDIA A100 80GB PCIe", 80),
    "A800": ("NVIDIA A800-SXM4-80GB", 80),
    "A800 PCIe": ("NVIDIA A800 80GB PCIe", 80),
    "H800": ("NVIDIA H800", 80),
    "H20": ("NVIDIA H20", 96),
    "H100 PCIe": ("NVIDIA H100 PCIe", 80),
    "H100 SXM": ("NVIDIA H100 80GB HBM3", 80),
    "H100 NVL": ("NVIDIA H100 NVL", 94),
    "H200": ("NVIDIA H200", 141),
    "B200": ("NVIDIA B200", 180),
}
# Compute capability by architecture (NVIDIA's CUDA GPU table).
ARCHITECTURES = [
    (r"RTX 30|RTX A[56]000|A10$|A40$", (8, 6)),
    (r"RTX 40|Ada|L4$|L20|L40", (8, 9)),
    (r"RTX 50|PRO 6000", (12, 0)),
    (r"A100|A800", (8, 0)),
    (r"H100|H200|H800|H20$", (9, 0)),
    (r"B200", (10, 0)),
]


@pytest.mark.parametrize("description", sorted(ISSUE_RIGS))
def test_the_rigs_of_the_issue_are_known(description: str) -> None:
    count, model, _ = parse_rig(description)
    assert (count, model.name) == ISSUE_RIGS[description] and model.known


@pytest.mark.parametrize("written", sorted(CARDS))
def test_each_card_is_found_as_people_write_it(written: str) -> None:
    name, sold_gb = CARDS[written]
    _, model, _ = parse_rig(f"2x {written}")
    assert model.name == name
    assert memory_class_gb(model.memory_total_mib) == sold_gb >= 12


@pytest.mark.parametrize("slug", sorted(MODELS))
def test_each_model_is_complete_and_consistent(slug: str) -> None:
    model = MODELS[slug]
    assert model.name.startswith("NVIDIA ") and model.known
    assert model.pcie_gen in (4, 5) and model.pcie_width in (8, 16)
    assert (model.p2p == "CNS") == ("GeForce" in model.name)  # P2P class
    expected = [cc for pattern, cc in ARCHITECTURES if re.search(pattern, model.name)]
    assert expected == [model.compute_capability], model.name
    assert model.pcie_gen == (5 if model.compute_capability >= (9, 0) else 4)
    assert not (model.nvlinks and re.search("PCIe|PCIE|NVL$|GeForce|RTX|L4|L20|A10$", model.name))
    assert parse_rig(model.name)[1] == model  # NVML's own name finds it


@pytest.mark.parametrize("slug", sorted(MODELS))
def test_a_rig_of_each_model_passes_doctor(slug: str) -> None:
    report = diagnose(FakeProbe(describe_rig(2, MODELS[slug])))
    assert not [check for check in report.checks if check.status is Status.FAIL]


@pytest.mark.parametrize(
    ("description", "name", "memory_mib"),
    [
        ("A100", "NVIDIA A100-SXM4-80GB", 81920),
        ("1x A100 40GB", "NVIDIA A100-SXM4-40GB", 40960),
        ("H100", "NVIDIA H100 80GB HBM3", 81559),
        ("1x H100 94GB", "NVIDIA H100 NVL", 95830),
        ("H200 141GB", "NVIDIA H200", 143771),
        ("1x RTX 4090 48GB", "NVIDIA GeForce RTX 4090", 48 * 1024),  # the 48 GB 4090s
        ("NVIDIA GeForce RTX 4090", "NVIDIA GeForce RTX 4090", 24564),
        ("rtx5090", "NVIDIA GeForce RTX 5090", 32607),
    ],
)
def test_the_memory_given_chooses_among_models_of_a_name(
    description: str, name: str, memory_mib: int
) -> None:
    _, rig = presets.rig_of(description)
    assert (rig.gpu_name, rig.memory_mib) == (name, memory_mib)


def test_a_model_without_a_count_is_one_card() -> None:
    inventory, rig = presets.rig_of("4090")
    assert rig.gpus == 1 and fingerprint(inventory) == "1x-rtx-4090-24gb-single"


def test_an_unknown_model_with_its_memory_is_planned_as_such() -> None:
    count, model, memory_gb = parse_rig("2x FOO 24GB")
    assert (count, model.name, memory_gb, model.known) == (2, "FOO", 24, False)
    assert model.warning and "FOO is not in wanctl's catalog" in model.warning
    inventory, rig = presets.rig_of("2x FOO 24GB")
    assert fingerprint(inventory) == "2x-foo-24gb-pcie" and rig.memory_mib == 24 * 1024
    assert MODELS["h100"].warning is None


def test_an_unknown_model_without_memory_is_refused_with_the_way_out() -> None:
    with pytest.raises(UsageError) as refused:
        parse_rig("2x FOO")
    assert 'give its memory to plan for it anyway ("2x FOO 24GB")' in refused.value.fix


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(presets.CONFIG_DIR_ENV, str(tmp_path))
    monkeypatch.setenv("COLUMNS", "250")
    return tmp_path


def test_tune_warns_of_an_unknown_model_in_its_table_and_json(
    cli: CliRunner, config_dir: Path
) -> None:
    table = cli.invoke(app, ["tune", "--rig", "2x FOO 24GB"])
    assert table.exit_code == 0, table.output
    assert "warning: FOO is not in wanctl's catalog: planned as a 24 GB card" in table.stdout
    document = cli.invoke(app, ["tune", "--rig", "2x FOO 24GB", "--json"])
    report = json.loads(document.stdout)
    assert report["fingerprint"] == "2x-foo-24gb-pcie" and report["plan"]["fits"]
    assert report["warnings"] == [parse_rig("2x FOO 24GB")[1].warning]
    assert "warning: FOO" in document.stderr
    known = json.loads(cli.invoke(app, ["tune", "--rig", "4x L20", "--json"]).stdout)
    assert known["warnings"] == [] and known["fingerprint"] == "4x-l20-48gb-pcie-p2p"


def test_tune_plans_for_one_card_written_alone(cli: CliRunner, config_dir: Path) -> None:
    result = cli.invoke(app, ["tune", "--rig", "4090", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["fingerprint"] == "1x-rtx-4090-24gb-single"
