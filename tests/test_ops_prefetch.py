"""kanlib.ops.prefetch: the hints compile to the CPU's prefetch instructions and leave a kernel's results as they are,
and a loop's steps ask for every line of a range once."""
import platform

import llvmlite.binding as llvm
import numpy as np
import pytest
from numba import njit

from kanlib.ops.prefetch import PREFETCH_LINE, line_range, prefetch, prefetch_for_write, prefetch_lines


@njit(cache=False)
def _sum_prefetching(values, ahead, n_steps, per_step):
    """The sum of values, prefetching ahead's lines over n_steps steps (per_step lines each), and beyond its end."""
    total = values.dtype.type(0.0)
    step = -(-values.shape[0] // n_steps)
    for s in range(n_steps):
        prefetch_lines(ahead, 0, ahead.size, s * per_step, per_step)
        prefetch(ahead, ahead.size + 1000)  # a hint never faults, even outside the array
        for j in range(s * step, min(values.shape[0], (s + 1) * step)):
            total += values[j]
    return total


@njit(cache=False)
def _scale_prefetching_for_write(values, out, n_steps, per_step):
    """out = 2 * values, asking for out's lines for writing over n_steps steps (per_step lines each), and beyond."""
    step = -(-values.shape[0] // n_steps)
    for s in range(n_steps):
        prefetch_lines(out, 0, out.size, s * per_step, per_step, True)
        prefetch_for_write(out, out.size + 1000)
        for j in range(s * step, min(values.shape[0], (s + 1) * step)):
            out[j] = 2 * values[j]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_kernel_that_prefetches_for_writing_writes_what_it_did(dtype):
    values = np.random.default_rng(2).standard_normal(1003).astype(dtype)
    out = np.full_like(values, np.nan)
    _scale_prefetching_for_write(values, out, 7, 3)
    assert np.array_equal(out, 2 * values)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64") or not llvm.get_host_cpu_features().get("prfchw"),
                    reason="x86-64 CPUs with the PRFCHW feature name the instruction prefetchw")
def test_the_write_hint_is_a_prefetch_for_write_instruction():
    values = np.ones(64, np.float32)
    _scale_prefetching_for_write(values, np.empty_like(values), 4, 1)
    assembly = _scale_prefetching_for_write.inspect_asm(_scale_prefetching_for_write.signatures[-1])
    assert "prefetchw" in assembly and "prefetcht0" not in assembly


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_kernel_that_prefetches_computes_what_it_did(dtype):
    values = np.random.default_rng(1).standard_normal(1003).astype(dtype)
    ahead = np.arange(37 * 5, dtype=dtype).reshape(37, 5)
    np.testing.assert_allclose(_sum_prefetching(values, ahead, 7, 3), values.sum(), rtol=1e-5)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 names the instruction prefetcht0")
def test_the_hint_is_a_prefetch_instruction():
    values = np.ones(64, np.float32)
    _sum_prefetching(values, values, 4, 1)
    assembly = _sum_prefetching.inspect_asm(_sum_prefetching.signatures[-1])
    assert "prefetcht0" in assembly


@pytest.mark.parametrize("start, stop, n_steps", [(0, 1000, 7), (13, 14, 3), (5, 5, 2), (100, 1101, 1)])
@pytest.mark.parametrize("itemsize", [4, 8])
def test_the_steps_ask_for_each_line_of_the_range_once(start, stop, n_steps, itemsize):
    per_line = PREFETCH_LINE // itemsize
    lines = -(-(stop - start) // per_line)
    per_step = -(-lines // n_steps)
    asked = []
    for step in range(n_steps):
        index, end = line_range(start, stop, step * per_step, per_step, per_line)
        asked += list(range(index, end, per_line))
    assert asked == list(range(start, stop, per_line))
