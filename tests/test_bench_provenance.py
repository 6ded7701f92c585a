"""kanlib.bench.provenance: the git commit, the device and the C allocator's setting."""
import ast
import shutil
import subprocess
import sys

import pytest

from kanlib.bench import provenance as bench_provenance
from kanlib.bench import results as bench_results
from kanlib.bench import timing as bench_timing


def make_rows():
    return [{"grid": 5, **bench_timing.Timing.from_samples([1.0, 2.0, 3.0]).as_dict("fwd_")}]


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_commit_and_dirty_follow_the_checkout_of_the_package(tmp_path, monkeypatch):
    def git(*args):
        command = ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args]
        result = subprocess.run(command, cwd=tmp_path, check=True, capture_output=True, text=True)
        return result.stdout.strip()

    package = tmp_path / "kanlib"
    package.mkdir()
    (package / "layer.py").write_text("A = 1\n")
    (tmp_path / ".gitignore").write_text("venv/\n")
    git("init", "-q")
    monkeypatch.setattr(bench_provenance, "_PACKAGE_DIR", package)
    assert bench_provenance.git_commit() is None  # no commit yet
    git("add", "-A")
    git("commit", "-qm", "first")
    assert bench_provenance.git_commit() == git("rev-parse", "HEAD")
    assert bench_provenance.git_dirty() is False

    bench_results.write_results("probe", {}, make_rows(), "cpu", out_dir=tmp_path / bench_provenance.RESULTS_DIR)
    assert bench_provenance.git_dirty() is False
    (package / "layer.py").write_text("A = 2\n")
    assert bench_provenance.git_dirty() is True

    installed = tmp_path / "venv" / "kanlib"
    installed.mkdir(parents=True)
    monkeypatch.setattr(bench_provenance, "_PACKAGE_DIR", installed)
    assert bench_provenance.git_commit() is None
    assert bench_provenance.git_dirty() is None


MIB = 2**20
_FAULTS_SCRIPT = """
import resource, sys, torch
import kanlib
from kanlib import bench
def small_step():  # three 10 MB blocks freed together: glibc's default trims them off its heap
    blocks = [torch.ones(2_500_000) for _ in range(3)]
    del blocks
def big_step():  # one 48 MB block, above any mmap threshold glibc accepts: mapped and unmapped by default
    block = torch.ones(12_000_000)
    del block
def faults_per_step(step):
    for _ in range(5):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        step()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20
step = small_step if sys.argv[1] == "small" else big_step
default = faults_per_step(step), bench.device_info("cpu")["malloc"]
kanlib.retain_freed_memory()  # what a training script calls
print(repr((default, (faults_per_step(step), bench.device_info("cpu")["malloc"]))))
"""


def _faults(kind: str):
    done = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT, kind], capture_output=True, text=True, check=True,
                          timeout=120)
    (default_faults, default_setting), (retained_faults, retained_setting) = ast.literal_eval(done.stdout)
    assert default_setting == "default"
    assert retained_setting == "glibc, freed memory retained (no mmap'd blocks, no trimming)"
    return default_faults, retained_faults


@pytest.mark.skipif(not bench_provenance.can_retain_freed_memory(), reason="needs glibc")
def test_retain_freed_memory_stops_the_page_faults_of_reallocated_blocks():
    pages_per_step = 3 * 2_500_000 * 4 / 4096
    for _ in range(3):  # some processes' heap layout keeps the blocks even by default: try another
        default_faults, retained_faults = _faults("small")
        if default_faults > pages_per_step / 2:
            break
    else:
        pytest.skip("glibc kept the blocks by default in three processes in a row")
    assert retained_faults < pages_per_step / 20, (default_faults, retained_faults)


@pytest.mark.skipif(not bench_provenance.can_retain_freed_memory(), reason="needs glibc")
def test_retain_freed_memory_keeps_blocks_above_the_largest_mmap_threshold():
    """By default every step maps a 48 MB block again and faults it in (in 2 MiB pages at least, where the kernel
    backs it with transparent huge pages); retained, the heap serves it without a fault."""
    default_faults, retained_faults = _faults("big")
    assert default_faults >= 12_000_000 * 4 / (2 * MIB) - 1, default_faults
    assert retained_faults < 1, retained_faults


_HEAP_TOP_SCRIPT = """
import ctypes
from kanlib import bench
bench.retain_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.sbrk.restype = libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
start = libc.sbrk(0)
blocks = [libc.malloc(200 * 2**20) for _ in range(6)]  # never touched: address space only
grown = libc.sbrk(0) - start
for block in reversed(blocks):
    libc.free(block)
print(grown, libc.sbrk(0) - start)
"""


@pytest.mark.skipif(not bench_provenance.can_retain_freed_memory(), reason="needs glibc")
def test_retain_freed_memory_keeps_a_free_heap_top_of_any_size():
    """1.2 GB freed at the top of the heap at once (an unfused layer's step at G = 200 frees about 2 GB): retained,
    the heap keeps it (a finite trim threshold, such as 1 GiB, hands it back to the system)."""
    done = subprocess.run([sys.executable, "-c", _HEAP_TOP_SCRIPT], capture_output=True, text=True, check=True,
                          timeout=120)
    grown, kept = map(int, done.stdout.split())
    assert grown > 1024 * MIB, grown  # the blocks came from the heap (a little of it may have been free before)
    assert kept == grown, (grown, kept)


def test_retain_freed_memory_says_what_it_needs_without_glibc(monkeypatch):
    monkeypatch.setattr(bench_provenance.platform, "libc_ver", lambda: ("", ""))
    assert not bench_provenance.can_retain_freed_memory()
    with pytest.raises(RuntimeError, match="needs glibc's mallopt"):
        bench_provenance.retain_freed_memory()


@pytest.mark.parametrize("flags, widest", [
    ("flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512bw", "avx512f"),
    ("flags\t\t: fpu sse4_2 avx avx2 fma", "avx2"),
    ("Features\t: fp asimd evtstrm aes", "asimd"),
    ("flags\t\t: fpu vme", None),
])
def test_device_info_names_the_widest_vector_extension(tmp_path, monkeypatch, flags, widest):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Some CPU\n{flags}\n")
    monkeypatch.setattr(bench_provenance, "CPUINFO", str(cpuinfo))
    monkeypatch.setenv("NUMBA_CPU_FEATURES", "+avx2,-prefer-256-bit")
    info = bench_provenance.device_info("cpu")
    assert (info["cpu_model"], info["simd"], info["numba_cpu_features"]) == ("Some CPU", widest,
                                                                             "+avx2,-prefer-256-bit")
    monkeypatch.setattr(bench_provenance, "CPUINFO", str(tmp_path / "absent"))
    monkeypatch.delenv("NUMBA_CPU_FEATURES")
    info = bench_provenance.device_info("cpu")
    assert info["simd"] is None and info["numba_cpu_features"] is None and info["cpu_model"]


def test_openmp_runtimes_lists_each_mapped_runtime_once(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text(
        "7f00-7f01 r--p 00000000 08:01 11 /usr/lib/x86_64-linux-gnu/libgomp.so.1.0.0\n"
        "7f01-7f02 r-xp 00001000 08:01 11 /usr/lib/x86_64-linux-gnu/libgomp.so.1.0.0\n"
        "7f02-7f03 r--p 00000000 08:01 12 /venv/site-packages/torch/lib/libgomp-a34b3233.so.1\n"
        "7f03-7f04 r--p 00000000 08:01 13 /venv/site-packages/numba/np/ufunc/omppool.cpython-311-x86_64-linux-gnu.so\n"
        "7f04-7f05 r--p 00000000 08:01 14 /opt/intel/libiomp5.so\n"
        "7f05-7f06 r--p 00000000 08:01 15 /usr/lib/libomp.so.5\n"
        "7f06-7f07 rw-p 00000000 00:00 0 \n"
        "7f07-7f08 r--p 00000000 08:01 16 /usr/lib/libgompish.so.1\n"
        "7ffd-7ffe rw-p 00000000 00:00 0                          [stack]\n")
    assert bench_provenance.openmp_runtimes(maps) == [
        "/usr/lib/x86_64-linux-gnu/libgomp.so.1.0.0", "/venv/site-packages/torch/lib/libgomp-a34b3233.so.1",
        "/opt/intel/libiomp5.so", "/usr/lib/libomp.so.5"]
    assert bench_provenance.openmp_runtimes(tmp_path / "missing") is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's /proc/self/maps")
def test_openmp_runtimes_finds_torchs_after_a_parallel_product():
    import torch

    a = torch.randn(256, 256)
    a @ a
    assert bench_provenance.openmp_runtimes(), "torch's CPU wheel runs its products on an OpenMP runtime"
