"""kanlib.ops.triton_tuning: KANLIB_TRITON_AUTOTUNE=first leaves each GPU autotuner one configuration per list."""
import os
import subprocess
import sys

import pytest

from kanlib.ops.triton_tuning import AUTOTUNE_ENV, tuned

COUNT_CONFIGS = """
import triton
from kanlib.ops.basis_linear import triton as basis
from kanlib.ops.lut_linear import triton as lut
from kanlib.ops.spline_linear import triton as dense, triton_local as local
assert not dense.INTERPRET
counts = {}
for module in (dense, local, basis, lut):
    for name, value in sorted(vars(module).items()):
        if isinstance(value, triton.runtime.autotuner.Autotuner):
            counts[f"{module.__name__}.{name}"] = len(value.configs)
print(counts)
"""


def autotuner_sizes(mode):
    pytest.importorskip("triton.backends.nvidia")
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env[AUTOTUNE_ENV] = mode
    done = subprocess.run([sys.executable, "-c", COUNT_CONFIGS], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return eval(done.stdout.strip().splitlines()[-1])


def test_first_keeps_one_configuration_per_list_on_a_gpu():
    every, first = autotuner_sizes("all"), autotuner_sizes("first")
    assert every.keys() == first.keys() and len(every) >= 10
    assert all(every[name] > first[name] for name in every), (every, first)
    # one per list: the dense spline and basis kernels keep a tensor-core and a full-float32 list each
    assert all(first[name] == (2 if ".spline_linear.triton." in name or ".basis_linear." in name else 1)
               for name in first), first


def test_the_setting_is_checked(monkeypatch):
    monkeypatch.setenv(AUTOTUNE_ENV, "all")
    assert tuned([1, 2, 3]) == [1, 2, 3]
    monkeypatch.setenv(AUTOTUNE_ENV, "first")
    assert tuned([1, 2, 3]) == [1]
    monkeypatch.setenv(AUTOTUNE_ENV, "fastest")
    with pytest.raises(ValueError, match=r"KANLIB_TRITON_AUTOTUNE: expected one of \('all', 'first'\), got 'fastest'"):
        tuned([1, 2, 3])
