"""The real `Probe`: NVML for the GPUs, this interpreter's packages, this host's limits.

Nothing here initialises CUDA, nor imports torch (seconds on some machines): its build is
read from its files, its NCCL from the library, its arch list once per install.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import platform
import re
import resource
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from wanctl.core.cache import cache_path, read_cache, write_cache
from wanctl.probe.base import GpuInventory, Software, System
from wanctl.probe.nvml import NvmlReader

# Variables that change how CUDA, the allocator and NCCL behave: doctor shows those in force.
RELEVANT_ENV_PREFIXES = (
    "NCCL_",
    "CUDA_",
    "PYTORCH_CUDA_ALLOC_CONF",
    "PYTORCH_ALLOC_CONF",
    "WAN_VAE_",
    "TORCH_NCCL_",
    "TORCH_SYMM_MEM_",
    "NVSHMEM_",
)


# Set by CUDA container images to describe themselves; they change nothing at run time.
IMAGE_DESCRIPTIONS = frozenset({"CUDA_HOME", "CUDA_PATH", "CUDA_VERSION", "NCCL_VERSION"})


class LocalProbe:
    def gpus(self) -> GpuInventory:
        return NvmlReader().read()

    def software(self) -> Software:
        return read_software()

    def system(self) -> System:
        return read_system()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _ffmpeg() -> str | None:
    try:
        import imageio_ffmpeg

        return f"{imageio_ffmpeg.get_ffmpeg_exe()} ({imageio_ffmpeg.get_ffmpeg_version()})"
    except (ImportError, RuntimeError, OSError, subprocess.CalledProcessError):  # one that fails
        return None


def _torch_root() -> Path | None:
    spec = importlib.util.find_spec("torch")
    return Path(spec.origin).parent if spec and spec.origin else None


def _torch_cuda(root: Path) -> str | None:
    """torch.version.cuda, read from torch/version.py: importing torch takes seconds."""
    try:
        text = (root / "version.py").read_text()
    except OSError:
        return None
    match = re.search(r"^cuda\b[^=]*=\s*['\"]([^'\"]+)['\"]", text, re.M)
    return match[1] if match else None


def _nccl_version(root: Path) -> str | None:
    """ncclGetVersion of the libnccl torch loads: the pip package nvidia-nccl-* beside torch,
    else the copy bundled in torch/lib."""
    candidates = [
        *sorted(root.parent.glob("nvidia/nccl*/lib/libnccl.so*")),
        *sorted(root.glob("lib/libnccl.so*")),
    ]
    for library in candidates:
        try:
            code = ctypes.c_int()
            if ctypes.CDLL(str(library)).ncclGetVersion(ctypes.byref(code)) == 0:
                value = code.value
                return f"{value // 10000}.{value % 10000 // 100}.{value % 100}"
        except (OSError, AttributeError):
            continue
    return None


def _arch_list(root: Path) -> tuple[str, ...] | None:
    """torch's compiled CUDA arch list, None when torch cannot tell (its import fails). Only
    torch itself knows it, and importing torch takes seconds, so it is asked once per torch
    install, in a child (which does not initialise CUDA either), and the answer, a failure
    included, is kept in the user cache."""
    stamp = f"{root}|{(root / 'version.py').stat().st_mtime_ns}"
    cache_file = cache_path("torch-arch-list.json")
    cached = read_cache(cache_file)
    if cached.get("stamp") == stamp and "archs" in cached:
        return None if cached["archs"] is None else tuple(cached["archs"])
    query = "import torch; print(torch._C._cuda_getArchFlags())"
    archs: tuple[str, ...] | None
    try:
        output = subprocess.run(
            [sys.executable, "-c", query], capture_output=True, text=True, timeout=120, check=True
        ).stdout
        archs = tuple(output.split())
    except (subprocess.SubprocessError, OSError):
        archs = None
    write_cache(cache_file, {"stamp": stamp, "archs": archs})
    return archs


def read_software() -> Software:
    root = _torch_root()
    torch_cuda = _torch_cuda(root) if root else None
    return Software(
        python=platform.python_version(),
        torch=_version("torch"),
        torch_cuda=torch_cuda,
        torch_arch_list=_arch_list(root) if root and torch_cuda else (),
        nccl=_nccl_version(root) if root and torch_cuda else None,
        diffusers=_version("diffusers"),
        ffmpeg=_ffmpeg(),
        env={
            k: v
            for k, v in sorted(os.environ.items())
            if k.startswith(RELEVANT_ENV_PREFIXES) and k not in IMAGE_DESCRIPTIONS
        },
    )


def _meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes."""
    values: dict[str, int] = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            values[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return values


def _iommu(cmdline: str | None) -> str:
    """'passthrough' when the kernel maps devices 1:1 (iommu=pt), 'on' when the IOMMU
    translates (PCIe P2P may then be redirected through the root complex), else 'off'."""
    words = (cmdline or "").split()
    if "iommu=pt" in words or "amd_iommu=pt" in words:
        return "passthrough"
    groups = Path("/sys/class/iommu")
    active = groups.is_dir() and any(groups.iterdir())
    if "intel_iommu=off" in words or "amd_iommu=off" in words:
        return "off"
    return "on" if active else "off"


def _interfaces() -> tuple[str, ...] | None:
    """The network interfaces NCCL_SOCKET_IFNAME chooses among (`ls /sys/class/net`)."""
    try:
        return tuple(sorted(os.listdir("/sys/class/net")))
    except OSError:
        return None


def read_system() -> System:
    try:
        shm = os.statvfs("/dev/shm")
        shm_total: int | None = shm.f_frsize * shm.f_blocks
    except OSError:
        shm_total = None
    soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    try:
        cmdline: str | None = Path("/proc/cmdline").read_text().strip()
    except OSError:
        cmdline = None
    meminfo = _meminfo()
    return System(
        shm_total_bytes=shm_total,
        memlock_bytes=None if soft == resource.RLIM_INFINITY else soft,
        iommu=_iommu(cmdline),
        kernel_cmdline=cmdline,
        host_mem_available_bytes=meminfo.get("MemAvailable"),
        host_mem_total_bytes=meminfo.get("MemTotal"),
        in_container=Path("/.dockerenv").exists() or Path("/run/.containerenv").exists(),
        network_interfaces=_interfaces(),
    )
