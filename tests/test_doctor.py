"""The findings and fixes doctor derives for rigs described as data."""

import dataclasses

import pytest

from wanctl.core.links import Collective
from wanctl.doctor.passive import nccl_environment
from wanctl.doctor.report import ActiveFindings, Check, DoctorReport, Status
from wanctl.doctor.run import diagnose
from wanctl.probe.base import GpuInfo, PcieLink
from wanctl.probe.catalog import MODELS
from wanctl.probe.fake import FakeProbe, describe_rig, healthy_software, healthy_system, scenario

LINK = Collective("all_to_all", 2, 83804160, 0.004, "doctor --full on 2x test GPU, 2026-12-02")


def by_name(report: DoctorReport) -> dict[str, Check]:
    return {check.name: check for check in report.checks}


def problems(report: DoctorReport) -> dict[str, Check]:
    return {c.name: c for c in report.checks if c.status in (Status.WARN, Status.FAIL)}


def test_every_warning_and_failure_has_a_fix(any_rig: FakeProbe) -> None:
    report = diagnose(any_rig)
    for check in report.checks:
        if check.status in (Status.WARN, Status.FAIL):
            assert check.fix, check
    names = [check.name for check in report.checks]  # scripts find a check by its name
    assert len(names) == len(set(names))


def test_a_check_without_fix_cannot_warn() -> None:
    with pytest.raises(ValueError, match="without a fix"):
        Check("x", "gpu", Status.WARN, "something")


def test_healthy_h100_passes_everything() -> None:
    report = diagnose(scenario("h100x1"))
    assert not report.failed and problems(report) == {}
    assert report.fingerprint == "1x-h100-80gb-single"
    assert "driver 580.95.05" in by_name(report)["driver"].finding
    assert by_name(report)["topology"].status is Status.SKIPPED


def test_h100x8_nvlink() -> None:
    report = diagnose(scenario("h100x8_nvlink"))
    assert problems(report) == {}
    assert "NVLink" in by_name(report)["p2p"].finding
    assert report.recommended_env == {}


def test_rtx4090_without_p2p_is_normal_and_leaves_nccl_alone() -> None:
    report = diagnose(scenario("rtx4090x2_no_p2p"))
    p2p = by_name(report)["p2p"]
    assert p2p.status is Status.OK
    assert "CNS (chipset not supported)" in p2p.finding and "SHM" in p2p.finding
    assert report.recommended_env == {}  # NCCL detects missing P2P by itself


def test_rtx4090_without_p2p_and_small_shm_fails_with_docker_fix() -> None:
    small_shm = healthy_system(shm_total_bytes=64 * 1024**2)
    report = diagnose(FakeProbe(describe_rig(2, MODELS["rtx-4090"]), system_info=small_shm))
    shm = problems(report)["shm"]
    assert shm.status is Status.FAIL and "--shm-size" in shm.fix


def test_rtx5090_with_old_nccl_fails_with_upgrade_fix() -> None:
    report = diagnose(scenario("rtx5090x2_old_nccl"))
    assert report.failed
    nccl = problems(report)["nccl"]
    assert "2.25.1" in nccl.finding and "2.26.2" in nccl.finding and "sm_120" in nccl.finding
    assert "nvidia-nccl-cu12>=2.26.2" in nccl.fix


def test_rtx5090_with_torch_built_without_sm120() -> None:
    old_torch = healthy_software(
        torch="2.5.1+cu124", torch_cuda="12.4", torch_arch_list=("sm_80", "sm_86", "sm_90")
    )
    report = diagnose(FakeProbe(describe_rig(2, MODELS["rtx-5090"]), old_torch))
    torch_check = problems(report)["torch"]
    assert torch_check.status is Status.FAIL and "sm_120" in torch_check.finding
    assert "cu128" in torch_check.fix


def test_ptx_and_same_major_arch_cover_newer_gpus() -> None:
    ptx_only = healthy_software(torch_arch_list=("sm_80", "compute_90"))
    report = diagnose(FakeProbe(describe_rig(1, MODELS["h100"]), ptx_only))
    assert by_name(report)["torch"].status is Status.OK
    sm86_on_sm89 = healthy_software(torch_arch_list=("sm_86",))
    report = diagnose(FakeProbe(describe_rig(1, MODELS["rtx-4090"]), sm86_on_sm89))
    assert by_name(report)["torch"].status is Status.OK


def test_two_sockets_warns_with_cuda_visible_devices_fix() -> None:
    report = diagnose(scenario("l40sx4_two_sockets"))
    sockets = problems(report)["topology.sockets"]
    assert sockets.status is Status.WARN and "0-2" in sockets.finding
    assert "CUDA_VISIBLE_DEVICES" in sockets.fix and sockets.shell == "nvidia-smi topo -m"


def test_not_supported_fields_become_skips_not_crashes() -> None:
    report = diagnose(scenario("not_supported_fields"))
    checks = by_name(report)
    assert checks["gpu0.clocks"].status is Status.SKIPPED
    assert checks["gpu0.pcie"].status is Status.SKIPPED
    assert not report.failed


def test_lost_gpu_fails_and_the_others_still_report() -> None:
    report = diagnose(scenario("gpu_lost"))
    lost = problems(report)["gpu3.lost"]
    assert lost.status is Status.FAIL and "nvidia-smi -r -i 3" in lost.fix
    assert {"gpu0.memory", "gpu1.memory", "gpu2.memory"} <= set(by_name(report))
    assert report.fingerprint == "3x-h100-80gb-nvlink"


def test_no_driver_fails_but_software_and_system_still_report() -> None:
    report = diagnose(scenario("no_driver"))
    assert report.failed and problems(report)["driver"].shell == "nvidia-smi"
    checks = by_name(report)
    assert checks["torch"].status is Status.OK  # a CPU build is fine without GPUs
    assert {"diffusers", "ffmpeg", "shm", "host_ram", "env"} <= set(checks)


def test_busy_gpu_and_display_and_thermal_slowdown_and_narrow_link() -> None:
    inventory = describe_rig(1, MODELS["rtx-4090"])
    gpu = dataclasses.replace(
        inventory.gpus[0],
        memory_used_mib=9000,
        display_active=True,
        clock_event_reasons=("hw_thermal_slowdown",),
        pcie=PcieLink(4, 4, 8, 16),
    )
    report = diagnose(FakeProbe(dataclasses.replace(inventory, gpus=(gpu,))))
    found = problems(report)
    assert set(found) >= {"gpu0.memory", "gpu0.display", "gpu0.clocks", "gpu0.pcie"}
    assert "x8" in found["gpu0.pcie"].finding and "bifurcation" in found["gpu0.pcie"].fix
    assert "cooling" in found["gpu0.clocks"].fix


def test_uncorrected_ecc_and_prohibited_mode_fail() -> None:
    inventory = describe_rig(1, MODELS["h100"])
    gpu = dataclasses.replace(inventory.gpus[0], ecc_uncorrected=3, compute_mode="Prohibited")
    found = problems(diagnose(FakeProbe(dataclasses.replace(inventory, gpus=(gpu,)))))
    assert found["gpu0.ecc"].status is Status.FAIL
    assert "-c DEFAULT" in found["gpu0.compute_mode"].fix


def test_iommu_translating_pcie_p2p_warns_and_recommends_p2p_disable() -> None:
    inventory = describe_rig(2, MODELS["l40s"])
    system = healthy_system(iommu="on")
    report = diagnose(FakeProbe(inventory, system_info=system))
    assert "iommu=pt" in problems(report)["topology.iommu"].fix
    assert nccl_environment(inventory, system) == {"NCCL_P2P_DISABLE": "1"}
    assert report.recommended_env == {"NCCL_P2P_DISABLE": "1"}
    names = [check.name for check in report.checks]
    assert len(names) == len(set(names))


def test_the_p2p_disable_doctor_recommends_is_not_also_warned_against() -> None:
    inventory = describe_rig(2, MODELS["l40s"])
    software = healthy_software(env={"NCCL_P2P_DISABLE": "1"})
    report = diagnose(FakeProbe(inventory, software, healthy_system(iommu="on")))
    assert report.recommended_env == {"NCCL_P2P_DISABLE": "1"}
    assert "env.p2p_disable" not in problems(report)


def test_environment_checks() -> None:
    env = {"CUDA_VISIBLE_DEVICES": "1,0", "NCCL_P2P_DISABLE": "1"}
    report = diagnose(FakeProbe(describe_rig(8, MODELS["h100"]), healthy_software(env=env)))
    found = problems(report)
    assert found["env.device_order"].fix == "export CUDA_DEVICE_ORDER=PCI_BUS_ID"
    assert "unset NCCL_P2P_DISABLE" in found["env.p2p_disable"].fix
    assert "CUDA_VISIBLE_DEVICES=1,0" in by_name(report)["env"].finding


def test_old_diffusers_and_missing_ffmpeg_fail() -> None:
    software = healthy_software(diffusers="0.35.2", ffmpeg=None)
    found = problems(diagnose(FakeProbe(describe_rig(1, MODELS["h100"]), software)))
    assert "diffusers>=0.36" in found["diffusers"].fix
    assert "imageio-ffmpeg" in found["ffmpeg"].fix


def test_active_step_is_called_with_the_inventory_and_its_env_recommended() -> None:
    seen = []

    def active(inventory, software):
        seen.append((inventory, software))
        checks = [Check("nccl.allreduce", "active", Status.OK, "fine")]
        return ActiveFindings(checks, {"NCCL_P2P_DISABLE": "1"}, (LINK,))

    probe = scenario("rtx4090x2_no_p2p")
    report = diagnose(probe, active)
    assert seen == [(probe.gpus(), probe.software())]
    assert report.recommended_env == {"NCCL_P2P_DISABLE": "1"}
    assert report.checks[-1].name == "nccl.allreduce"
    assert report.links == (LINK,)


def test_gpu_info_sm() -> None:
    assert GpuInfo(0, compute_capability=(12, 0)).sm == "sm_120"


def test_a_torch_that_cannot_say_its_gpus_is_a_warning_not_a_missing_kernel() -> None:
    unknown = healthy_software(torch_arch_list=None)
    report = diagnose(FakeProbe(describe_rig(1, MODELS["h100"]), unknown))
    torch_check = by_name(report)["torch"]
    assert torch_check.status is Status.WARN and "importing it failed" in torch_check.finding
    assert "get_arch_list" in torch_check.shell
