"""doctor --full: checks proven by real transfers, each in child processes under a hard timeout
so that a hang is reported, never inherited. Launched as generate launches: through torchrun
and the `Runner` boundary.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from wanctl.core.launch import LaunchSpec, Runner, visible_gpus, worker_error
from wanctl.doctor.children import Attempt, launch
from wanctl.doctor.links import link_source, links_check
from wanctl.doctor.report import ActiveFindings, Check, Status
from wanctl.probe.base import GpuInventory, Software

ALLREDUCE_WORKER = "wanctl.workers.allreduce"
TRANSFER_WORKER = "wanctl.workers.transfers"
# Tried in order until the all-reduce works; the first that works is the recommendation.
ALLREDUCE_VARIANTS: tuple[dict[str, str], ...] = ({}, {"NCCL_P2P_DISABLE": "1"})
# GB/s per lane and direction after encoding, by PCIe generation.
PCIE_LANE_GBPS = {1: 0.25, 2: 0.5, 3: 0.985, 4: 1.969, 5: 3.938, 6: 7.563}
NVLINK_GBPS_PER_LINK = 25.0  # NVLink 3 and 4, per link and direction
SLOW_FRACTION = 0.5  # below half of the link's rate, a copy is called slow


def _variant_text(env: Mapping[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in env.items()) or "default settings"


def allreduce_attempt(
    runner: Runner,
    nproc: int,
    env: Mapping[str, str],
    timeout_s: float,
    *,
    backend: str = "auto",
    worker: str = ALLREDUCE_WORKER,
    extra_env: Mapping[str, str] | None = None,
) -> Attempt:
    return launch(runner, worker, ["--backend", backend], nproc, env, timeout_s, extra_env)


def allreduce_check(
    runner: Runner,
    nproc: int,
    timeout_s: float,
    *,
    backend: str = "auto",
    variants: Sequence[Mapping[str, str]] = ALLREDUCE_VARIANTS,
    worker: str = ALLREDUCE_WORKER,
    extra_env: Mapping[str, str] | None = None,
) -> tuple[Check, dict[str, str]]:
    """All-reduce known values across `nproc` processes; when it hangs or is wrong, retry with
    the next environment. Returns the check and the environment that worked."""
    attempts: list[Attempt] = []
    for env in variants:
        attempt = allreduce_attempt(
            runner, nproc, env, timeout_s, backend=backend, worker=worker, extra_env=extra_env
        )
        attempts.append(attempt)
        if attempt.ok:
            break
    return _allreduce_verdict(attempts, nproc)


def _allreduce_verdict(attempts: list[Attempt], nproc: int) -> tuple[Check, dict[str, str]]:
    last = attempts[-1]
    tried = "; ".join(f"{_variant_text(a.env)}: {a.failure()}" for a in attempts if not a.ok)
    shell = "NCCL_DEBUG=INFO torchrun --standalone --nproc-per-node N ..."
    if not last.ok:
        return Check(
            "nccl.allreduce",
            "active",
            Status.FAIL,
            f"all-reduce over {nproc} process(es) failed every way tried ({tried})",
            fix="run with NCCL_DEBUG=INFO to see where it stops; check the driver and NCCL "
            "versions above, /dev/shm, and the IOMMU (boot with iommu=pt)",
            shell=shell,
        ), {}
    first = last.ranks[0]
    via = f", via {', '.join(found)}" if (found := last.transports()) else ""
    speed = f", {first['bus_gbps']:.1f} GB/s bus bandwidth" if nproc > 1 else ""
    done = (
        f"all-reduce of known values over {nproc} process(es) ({first['backend']}{via}) "
        f"exact{speed}"
    )
    if len(attempts) == 1:
        return Check("nccl.allreduce", "active", Status.OK, done, shell=shell), dict(last.env)
    return Check(
        "nccl.allreduce",
        "active",
        Status.FAIL,
        f"{tried}; with {_variant_text(last.env)}: {done}",
        fix=f"export {_variant_text(last.env)} (wanctl tune and generate set it for this rig)",
        shell=shell,
    ), dict(last.env)


# --- transfers ---------------------------------------------------------------------------


def _pcie_gbps(inventory: GpuInventory, index: int) -> float | None:
    link = inventory.gpus[index].pcie
    if link.gen_max is None or link.width_max is None:
        return None
    return PCIE_LANE_GBPS.get(link.gen_max, 0.0) * link.width_max


def expected_pair_gbps(inventory: GpuInventory, src: int, dst: int) -> float | None:
    """What a copy between two GPUs should reach: NVLink links x 25 GB/s, else the slower
    of the two PCIe links (halved when there is no P2P and the data bounces through host)."""
    label = inventory.link(src, dst)
    if label.startswith("NV") and label[2:].isdigit():
        return int(label[2:]) * NVLINK_GBPS_PER_LINK
    rates = [r for r in (_pcie_gbps(inventory, src), _pcie_gbps(inventory, dst)) if r]
    if not rates:
        return None
    caps = inventory.caps(src, dst)
    return min(rates) if caps and caps.supported else min(rates) / 2


def transfer_checks(report: dict[str, object], inventory: GpuInventory) -> list[Check]:
    checks = [_host_check(entry, inventory) for entry in report["host"]]  # type: ignore[attr-defined]
    checks += [_pair_check(entry, inventory) for entry in report["pairs"]]  # type: ignore[attr-defined]
    return checks


def _rate_status(measured: float, expected: float | None) -> tuple[Status, str]:
    if expected is None:
        return Status.OK, f"{measured:.1f} GB/s"
    ratio = measured / expected
    status = Status.WARN if ratio < SLOW_FRACTION else Status.OK
    return status, f"{measured:.1f} GB/s ({ratio:.0%} of the link's {expected:.0f} GB/s)"


def _host_check(entry: dict[str, float], inventory: GpuInventory) -> Check:
    gpu = int(entry["gpu"])
    expected = _pcie_gbps(inventory, gpu) if gpu < len(inventory.gpus) else None
    h2d_status, h2d = _rate_status(entry["h2d_gbps"], expected)
    d2h_status, d2h = _rate_status(entry["d2h_gbps"], expected)
    status = Status.WARN if Status.WARN in (h2d_status, d2h_status) else Status.OK
    return Check(
        f"gpu{gpu}.host_copy",
        "active",
        status,
        f"GPU {gpu} host->device {h2d}, device->host {d2h}",
        fix="check the slot's PCIe generation and width in the BIOS, and the CPU/NUMA "
        "affinity of the process"
        if status is Status.WARN
        else "",
        shell=f"nvidia-smi -q -i {gpu} -d PCIE",
    )


def _pair_check(entry: dict[str, object], inventory: GpuInventory) -> Check:
    src, dst = int(entry["src"]), int(entry["dst"])  # type: ignore[call-overload]
    name = f"p2p.{src}-{dst}"
    if not entry["bit_exact"]:
        return Check(
            name,
            "active",
            Status.FAIL,
            f"GPU {src} -> GPU {dst} copy corrupted {entry['mismatched_bytes']} bytes",
            fix="export NCCL_P2P_DISABLE=1, and boot with iommu=pt or disable ACS in the BIOS",
            shell="nvidia-smi topo -p2p rwna",
        )
    status, rate = _rate_status(float(entry["gbps"]), expected_pair_gbps(inventory, src, dst))  # type: ignore[arg-type]
    path = "P2P" if entry["peer_access"] else "through host"
    return Check(
        name,
        "active",
        status,
        f"GPU {src} -> GPU {dst} ({path}) bit-exact, {rate}",
        fix="check NVLink bridges (`nvidia-smi nvlink -s`) or the PCIe slots' width"
        if status is Status.WARN
        else "",
        shell="nvidia-smi topo -m",
    )


def transfer_check(runner: Runner, inventory: GpuInventory, timeout_s: float) -> list[Check]:
    with tempfile.TemporaryDirectory(prefix="wanctl-transfers-") as workdir:
        result_path = Path(workdir) / "transfers.json"
        command = (sys.executable, "-m", TRANSFER_WORKER, "--result", str(result_path))
        # torch's GPU i is then NVML's GPU i, whose link the figures are compared with
        spec = LaunchSpec(command, {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}, timeout_s)
        result = runner.run(spec)
        if not result.ok or not result_path.exists():
            why = (
                "hung"
                if result.timed_out
                else f"exited with code {result.returncode}: {worker_error(result.output)}"
            )
            return [
                Check(
                    "transfers",
                    "active",
                    Status.FAIL,
                    f"the copy check {why}",
                    fix="run `nvidia-smi topo -p2p rwna`; if copies hang, export "
                    "NCCL_P2P_DISABLE=1 and boot with iommu=pt",
                    shell="nvidia-smi topo -p2p rwna",
                )
            ]
        report = json.loads(result_path.read_text())
    return transfer_checks(report, inventory)


def active_checks(
    runner: Runner, timeout_s: float
) -> Callable[[GpuInventory, Software], ActiveFindings]:
    """The `active` step of `wanctl.doctor.run.diagnose`: copies, the all-reduce over NCCL,
    then the parallel layouts' collectives with the NCCL settings the all-reduce proved, on
    the GPUs CUDA_VISIBLE_DEVICES leaves."""

    def run(inventory: GpuInventory, software: Software) -> ActiveFindings:
        count = visible_gpus(len(inventory.live_gpus()), os.environ)
        reason = _skip_reason(inventory, software, count)
        if reason:
            skipped = Check("active", "active", Status.SKIPPED, f"active checks skipped: {reason}")
            return ActiveFindings([skipped], {})
        checks = transfer_check(runner, inventory, timeout_s)
        allreduce, env = allreduce_check(runner, count, timeout_s, backend="nccl")
        if allreduce.status is Status.FAIL and not env:  # failed every way: links would hang too
            return ActiveFindings([*checks, allreduce], env)
        source = link_source(inventory, software, count, datetime.date.today().isoformat())
        links, figures = links_check(runner, count, timeout_s, source=source, backend="nccl",
                                     env=env)  # fmt: skip
        return ActiveFindings([*checks, allreduce, *links], env, figures)

    return run


def _skip_reason(inventory: GpuInventory, software: Software, count: int) -> str | None:
    if inventory.error:
        return "no driver"
    if count == 0:
        return "no GPU to test (CUDA_VISIBLE_DEVICES hides them)" if inventory.gpus else "no GPU"
    if software.torch_cuda is None:
        return "torch cannot use the GPUs (the torch check says why)"
    return None
