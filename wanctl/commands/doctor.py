"""`wanctl doctor`: options in, a `DoctorReport` out, rendered as tables or JSON."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from wanctl.commands.options import Json
from wanctl.doctor.report import DoctorReport, Status
from wanctl.doctor.run import DoctorOptions, failure, run
from wanctl.probe.base import GpuInventory
from wanctl.render import err_console, links_table, show
from wanctl.tune import rig_links

STATUS_STYLE = {
    Status.OK: "green",
    Status.WARN: "yellow",
    Status.FAIL: "bold red",
    Status.SKIPPED: "dim",
}


def doctor(
    full: Annotated[
        bool,
        typer.Option(
            "--full",
            help="Also prove P2P copies and an NCCL all-reduce, and time the all-to-all and "
            "CFG exchange of the parallel layouts.",
        ),
    ] = False,
    json: Json = False,
    timeout: Annotated[
        float, typer.Option(min=5, help="Seconds before an active check is called hung.")
    ] = 120.0,
    save: Annotated[
        bool,
        typer.Option("--save", help="Keep --full's link figures in the rig's user preset."),
    ] = False,
) -> None:
    """Check the GPUs, topology, P2P, NCCL and software of this rig; every problem comes with
    its fix. Exit 0 when no check failed, 1 when one did."""
    options = DoctorOptions(full=full, json=json, timeout_s=timeout, save=save)
    if options.full:
        with err_console().status("running P2P copies, NCCL and the layouts' collectives"):
            report = run(options)
    else:
        report = run(options)
    if options.save:
        report = rig_links.keep(report)
    show(report, render, options.json, failure=failure(report))


def render(report: DoctorReport, console: Console) -> None:
    inventory = report.inventory
    if inventory.gpus:
        console.print(gpu_table(inventory))
    if len(inventory.gpus) > 1:
        console.print(topology_table(inventory))
    console.print(checks_table(report))
    if report.links:
        console.print(
            links_table(report.links, "Collectives of the parallel layouts, 1280*704x121")
        )
    if report.saved:
        console.print(f"links saved to {report.saved}", highlight=False, markup=False)
    env = " ".join(f"{k}={v}" for k, v in report.recommended_env.items())
    summary = (
        f"rig [bold]{report.fingerprint}[/]: {report.count(Status.OK)} ok, "
        f"{report.count(Status.WARN)} warn, {report.count(Status.FAIL)} fail, "
        f"{report.count(Status.SKIPPED)} skipped in {report.seconds:.1f} s"
    )
    console.print(summary + (f"; recommended: {env}" if env else ""))


def _na(value: object) -> str:
    return "N/A" if value is None else str(value)


def gpu_table(inventory: GpuInventory) -> Table:
    """`nvidia-smi -q`, one row a GPU."""
    table = Table(
        title=f"GPUs (driver {inventory.driver_version}, CUDA {inventory.cuda_driver_version})",
        title_justify="left",
    )
    for column in (
        "#",
        "name",
        "bus id",
        "memory used/total",
        "cc",
        "PCIe now/max",
        "BAR1",
        "persist",
        "mode",
        "ECC",
        "CPU / NUMA",
    ):
        table.add_column(column)
    for gpu in inventory.gpus:
        if gpu.lost:
            table.add_row(str(gpu.index), f"[red]lost: {gpu.lost}[/]")
            continue
        link = gpu.pcie
        table.add_row(
            str(gpu.index),
            _na(gpu.name),
            _na(gpu.pci_bus_id),
            f"{_na(gpu.memory_used_mib)}/{_na(gpu.memory_total_mib)} MiB",
            ".".join(map(str, gpu.compute_capability)) if gpu.compute_capability else "N/A",
            f"Gen{_na(link.gen_current)}x{_na(link.width_current)}/"
            f"Gen{_na(link.gen_max)}x{_na(link.width_max)}",
            f"{_na(gpu.bar1_total_mib)} MiB",
            _na(gpu.persistence_mode),
            _na(gpu.compute_mode),
            _na(gpu.ecc_uncorrected),
            f"{_na(gpu.cpu_affinity)} / {_na(gpu.numa_node)}",
        )
    return table


def topology_table(inventory: GpuInventory) -> Table:
    """`nvidia-smi topo -m` beside `nvidia-smi topo -p2p rwna` (read/write/nvlink/atomics)."""
    count = len(inventory.gpus)
    table = Table(title="Topology (link) and P2P read/write/nvlink/atomics", title_justify="left")
    table.add_column("")
    for j in range(count):
        table.add_column(f"GPU{j}")
    for i in range(count):
        cells = []
        for j in range(count):
            caps = inventory.caps(i, j)
            p2p = f" {caps.read}/{caps.write}/{caps.nvlink}/{caps.atomics}" if caps else ""
            cells.append(inventory.link(i, j) + p2p)
        table.add_row(f"GPU{i}", *cells)
    return table


def checks_table(report: DoctorReport) -> Table:
    table = Table(title="Checks", title_justify="left", show_lines=False)
    for column in ("status", "check", "finding", "fix"):
        table.add_column(column, overflow="fold")
    for check in report.checks:
        style = STATUS_STYLE[check.status]
        fix = Text(check.fix)
        if check.fix and check.shell:
            fix.append(f"\nsee: {check.shell}", style="dim")
        status = Text(check.status.value, style)
        table.add_row(status, check.name, Text(check.finding), fix)  # text, not markup
    return table
