"""Where a result was measured: the device, the library versions, the C allocator's setting, the git commit."""

from __future__ import annotations

import os
import pathlib
import platform
import re
import subprocess
from typing import Any

import torch

from ..checks import check_device

RESULTS_DIR = "data/results"
_PACKAGE_DIR = pathlib.Path(__file__).resolve().parent.parent


CPUINFO = "/proc/cpuinfo"  # Linux's
PROCESS_MAPS = "/proc/self/maps"  # Linux's: the files mapped into this process
# File names of the OpenMP runtimes: GNU's libgomp, LLVM's libomp, Intel's libiomp5 (with or without a wheel's
# hash in the name, e.g. libgomp-a34b3233.so.1)
_OPENMP_RUNTIME = re.compile(r"^lib(gomp|omp|iomp5)([-.].*)?\.so(\.[0-9]+)*$")


def _cpuinfo_value(*keys: str) -> str | None:
    """The value of the first line of CPUINFO that starts with one of keys; None without one (or without the file)."""
    try:
        with open(CPUINFO) as cpuinfo:
            for line in cpuinfo:
                if line.startswith(keys):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _cpu_model_name() -> str:
    return _cpuinfo_value("model name") or platform.processor() or platform.machine()


# Vector extensions, widest first: x86's (AVX-512 Foundation, AVX2, AVX, SSE4.2), then ARM's (SVE, NEON as asimd).
_SIMD_EXTENSIONS = ("avx512f", "avx2", "avx", "sse4_2", "sve", "asimd")


def _simd_extension() -> str | None:
    """The widest vector extension the CPU reports (a name from _SIMD_EXTENSIONS); None where it cannot be read."""
    flags = set((_cpuinfo_value("flags", "Features") or "").split())
    return next((name for name in _SIMD_EXTENSIONS if name in flags), None)


def _triton_version() -> str | None:
    # Read from the package metadata: importing triton here would fix its interpreter mode
    # (TRITON_INTERPRET) before a notebook has chosen it.
    from importlib import metadata

    try:
        return metadata.version("triton")
    except metadata.PackageNotFoundError:
        return None


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
NEVER_TRIM = -1  # M_TRIM_THRESHOLD's value that turns trimming off
_malloc_setting = "default"


def _glibc():
    """The C library as a ctypes handle when it is glibc (it has mallopt), else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    import ctypes

    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def can_retain_freed_memory() -> bool:
    """Whether :func:`retain_freed_memory` can run here (the C library is glibc)."""
    return _glibc() is not None


def retain_freed_memory() -> str:
    """Make glibc's malloc keep freed memory for reuse instead of handing it back to the OS; returns the setting.

    By default glibc trims the top of its heap once more than twice its largest recent block is free there, and
    it maps every block above its mmap threshold (at most 32 MiB) on its own and unmaps it when freed; the next
    allocation faults those pages back in, page by page. A training step that frees and allocates buffers of
    several MiB (a KAN layer's expanded input, its weight, the gradients) then pays page faults on many steps
    (on every step for blocks above 32 MiB, such as a 256 x 256 layer's weight at G = 200), which is glibc's
    heuristic, not the computation. This serves blocks of every size from the heap (no mmap'd blocks) and never
    trims it, for the whole process, as ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=-1`` would at its start: the
    process keeps the largest heap it has needed. (A finite threshold still trims after a step that frees more: an
    unfused layer's step at G = 200 frees about 2 GB, which every step then faulted back in, a minute or more of
    system time in one layer benchmark.) :func:`device_info` records the setting. RuntimeError where the C library
    is not glibc.
    """
    global _malloc_setting
    libc = _glibc()
    if libc is None:
        raise RuntimeError(f"retain_freed_memory needs glibc's mallopt; this system's C library is "
                           f"{platform.libc_ver()[0] or 'unknown'} ({platform.system()})")
    if not (libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, NEVER_TRIM)):
        raise RuntimeError("glibc's mallopt refused the mmap count or the trim threshold")
    _malloc_setting = "glibc, freed memory retained (no mmap'd blocks, no trimming)"
    return _malloc_setting


def openmp_runtimes(maps: str | os.PathLike[str] = PROCESS_MAPS) -> list[str] | None:
    """The files of the OpenMP runtimes mapped into this process, each once, in address order; None
    where ``maps`` (Linux's list of a process's mapped files) cannot be read. torch's wheel loads its own runtime at
    ``import torch``; numba's OpenMP threading layer loads one at its first parallel kernel, the same file or a
    second copy (then two pools of threads)."""
    try:
        with open(maps) as lines:
            fields = [line.split(maxsplit=5) for line in lines]
    except OSError:
        return None
    paths = (parts[5].strip() for parts in fields if len(parts) == 6)  # the sixth field: the mapped file
    return list(dict.fromkeys(path for path in paths if _OPENMP_RUNTIME.match(os.path.basename(path))))


def device_info(device: str | torch.device) -> dict[str, Any]:
    """What a result needs to say about the machine: device, CPU, and library versions.

    Keys: type ('cpu' or 'cuda'), name (GPU name, or the CPU model on CPU), cpu_model, cpu_count
    (logical cores), simd (the CPU's widest vector extension, e.g. 'avx512f' or 'avx2'; None where unknown),
    numba_cpu_features (the NUMBA_CPU_FEATURES override of the features numba compiles for, None when unset),
    torch_threads, gpu_capability and gpu_memory_bytes (None on CPU), torch, triton
    (None when not importable), cuda (the CUDA version torch was built with, None for CPU builds),
    python, os, malloc (the C allocator's setting: "default" unless :func:`retain_freed_memory` ran).
    """
    device = check_device(device)
    gpu = torch.cuda.get_device_properties(device) if device.type == "cuda" else None
    cpu_model = _cpu_model_name()
    return {
        "type": device.type,
        "name": gpu.name if gpu else cpu_model,
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "simd": _simd_extension(),
        # numba compiles the CPU kernels for the host's features unless this overrides them
        "numba_cpu_features": os.environ.get("NUMBA_CPU_FEATURES"),
        "torch_threads": torch.get_num_threads(),
        "gpu_capability": f"{gpu.major}.{gpu.minor}" if gpu else None,
        "gpu_memory_bytes": gpu.total_memory if gpu else None,
        "torch": torch.__version__,
        "triton": _triton_version(),
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "os": platform.platform(),
        "malloc": _malloc_setting,
    }


def _git(*args: str) -> subprocess.CompletedProcess[str] | None:
    """Run git in the package's folder; None when git is not installed."""
    try:
        return subprocess.run(["git", *args], cwd=_PACKAGE_DIR, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return None


def _package_in_checkout() -> bool:
    """Whether the package lies in a git working tree and is not ignored there (as in a .venv)."""
    result = _git("check-ignore", "-q", str(_PACKAGE_DIR))
    return result is not None and result.returncode == 1


def git_commit() -> str | None:
    """Hash of the HEAD commit of the checkout holding this package.

    None when there is none: git missing, an installed copy, or a repository without commits.
    """
    if not _package_in_checkout():
        return None
    result = _git("rev-parse", "--verify", "-q", "HEAD")
    return result.stdout.strip() if result is not None and result.returncode == 0 else None


def git_dirty() -> bool | None:
    """Whether the checkout holding this package differs from HEAD (changed or untracked files).

    Files under data/results are left out, so writing results does not make the next run dirty.
    None when the package is not in a git checkout.
    """
    if not _package_in_checkout():
        return None
    result = _git("status", "--porcelain", "--", ":/", f":(top,exclude){RESULTS_DIR}")
    if result is None or result.returncode != 0:
        return None
    return result.stdout.strip() != ""
