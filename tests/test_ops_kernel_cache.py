"""The CPU kernels load from numba's on-disk cache in a new process instead of compiling again.

A kernel whose cache key changes from one process to the next (a closure over another compiled function: its
key hashes the pickled cells, and a compiled function pickles with an id drawn anew in every process) compiles
at every start: seconds of LLVM per kernel before a layer's first call.
"""
import os
import subprocess
import sys

# A dense layer on an adapted grid, forward and backward, small (the serial twins) and large (the parallel
# kernels), its uniform twin, and the edge-sparse layer built from it, forward and backward: the kernels a
# pykan-style fit runs.
PROGRAM = """
import torch
import kanlib

torch.manual_seed(0)
layer = kanlib.BSplineKAN(16, 8, grid_size=5)
uniform = kanlib.BSplineKAN(16, 8, grid_size=5)
with torch.no_grad():
    layer.update_grid(torch.randn(64, 16))
for model in (layer, uniform):
    for rows in (40, 1000):
        model(torch.randn(rows, 16, requires_grad=True)).sum().backward()
with torch.no_grad():
    layer.mask[::2] = 0.0
kanlib.SparseBSplineKAN.from_dense(layer)(torch.randn(40, 16, requires_grad=True)).sum().backward()
"""


def _run(cache_dir) -> str:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir), "NUMBA_DEBUG_CACHE": "1"}
    done = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


def test_a_second_process_loads_every_kernel_from_the_cache(tmp_path):
    first = _run(tmp_path)
    assert "[cache] data saved" in first  # the first process compiled and saved
    second = _run(tmp_path)
    saved = [line for line in second.splitlines() if "[cache]" in line and "saved" in line]
    assert not saved, "compiled again in the second process:\n" + "\n".join(saved)
    assert "[cache] data loaded" in second
