import dataclasses
import sys
from pathlib import Path

import pytest

from wanctl.errors import UsageError
from wanctl.probe import local
from wanctl.probe.base import GpuInventory, fingerprint, interconnect, memory_class_gb, model_slug
from wanctl.probe.catalog import MODELS, parse_rig
from wanctl.probe.fake import describe_rig, scenario
from wanctl.probe.local import LocalProbe


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("h100x1", "1x-h100-80gb-single"),
        ("h100x8_nvlink", "8x-h100-80gb-nvlink"),
        ("rtx4090x2_no_p2p", "2x-rtx-4090-24gb-pcie"),
        ("rtx5090x2_old_nccl", "2x-rtx-5090-32gb-pcie"),
        ("l40sx4_two_sockets", "4x-l40s-48gb-pcie-p2p"),
        ("no_driver", "no-gpu"),
    ],
)
def test_fingerprint_of_each_rig(name: str, expected: str) -> None:
    assert fingerprint(scenario(name).gpus()) == expected


def test_fingerprint_ignores_volatile_values() -> None:
    inventory = scenario("rtx4090x2_no_p2p").gpus()
    busy = dataclasses.replace(
        inventory,
        gpus=tuple(
            dataclasses.replace(
                g,
                uuid=f"GPU-other-{g.index}",
                memory_used_mib=20000,
                memory_free_mib=4564,
                clock_event_reasons=("sw_power_cap",),
            )
            for g in inventory.gpus
        ),
        driver_version="999.1",
    )
    assert fingerprint(busy) == fingerprint(inventory)


def test_fingerprint_changes_with_count_model_and_link() -> None:
    prints = {
        fingerprint(describe_rig(2, MODELS["rtx-4090"])),
        fingerprint(describe_rig(1, MODELS["rtx-4090"])),
        fingerprint(describe_rig(2, MODELS["rtx-5090"])),
        fingerprint(describe_rig(2, MODELS["rtx-4090"], p2p="OK")),
    }
    assert len(prints) == 4


@pytest.mark.parametrize(
    ("mib", "gb"), [(24564, 24), (32607, 32), (81559, 80), (46068, 48), (143771, 141)]
)
def test_memory_class(mib: int, gb: int) -> None:
    assert memory_class_gb(mib) == gb


def test_model_slug() -> None:
    assert model_slug("NVIDIA GeForce RTX 4090") == "rtx-4090"
    assert model_slug("NVIDIA H100 80GB HBM3") == "h100"


def test_interconnect_kinds() -> None:
    assert interconnect(describe_rig(8, MODELS["h100"])) == "nvlink"
    assert interconnect(describe_rig(2, MODELS["rtx-4090"])) == "pcie"
    assert interconnect(describe_rig(2, MODELS["l40s"])) == "pcie-p2p"
    assert interconnect(GpuInventory()) == "single"


def test_parse_rig() -> None:
    count, model, memory = parse_rig("2x RTX 5090 32GB")
    assert (count, model.name, memory) == (2, "NVIDIA GeForce RTX 5090", 32)
    assert parse_rig("8x H100")[0:2] == (8, MODELS["h100"])
    with pytest.raises(UsageError, match="unknown GPU model"):
        parse_rig("2x GTX 9999")
    with pytest.raises(UsageError, match="cannot read the rig"):
        parse_rig("2x 24GB")


def test_local_probe_without_driver_reports_instead_of_raising() -> None:
    """This machine (and CI) has no NVIDIA driver: the probe says so as data."""
    probe = LocalProbe()
    inventory = probe.gpus()
    if inventory.error is None:
        pytest.skip("an NVIDIA driver is present here")
    assert inventory.gpus == ()
    software = probe.software()
    assert software.torch and software.python
    assert probe.system().host_mem_total_bytes


def test_an_ffmpeg_that_fails_is_missing_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    """imageio-ffmpeg raises CalledProcessError when its binary fails `-version`."""
    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", "/bin/false")
    assert LocalProbe().software().ffmpeg is None


def test_local_probe_does_not_initialise_cuda() -> None:
    import torch

    LocalProbe().software()
    assert not torch.cuda.is_initialized()


def test_an_arch_list_torch_cannot_give_is_unknown_and_asked_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A torch whose import fails: None (not "built for nothing"), remembered for this torch,
    so that doctor and generate do not wait on it every run."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = tmp_path / "torch"
    root.mkdir()
    (root / "version.py").write_text("__version__ = '2.13.0'\n")
    monkeypatch.setattr(sys, "executable", "/bin/false")
    assert local._arch_list(root) is None
    answers = tmp_path / "python-that-answers"
    answers.write_text("#!/bin/sh\necho sm_90\n")
    answers.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(answers))
    assert local._arch_list(root) is None  # from the cache: not asked again
    (root / "version.py").write_text("__version__ = '2.13.1'\n")  # another torch: asked
    assert local._arch_list(root) == ("sm_90",)
