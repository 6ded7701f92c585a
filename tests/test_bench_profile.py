"""python -m kanlib profile: the layer's host and wall time per call and torch.profiler's tables."""
import subprocess
import sys

from types import SimpleNamespace

import pytest
from torch.autograd import DeviceType

from kanlib.bench.profile import device_tasks_per_call, profile_layer
from kanlib.book.paths import PROJECT_ROOT


def test_the_profile_times_the_calls_and_names_the_layers_operators():
    # every operator's row (which rows a short table keeps depends on their times, as does any ratio of two times)
    result = profile_layer("cpu", batch=24, width=6, grid_size=4, calls=3, warmup=1, rows=1000)
    assert result.sizes == "batch 24, width 6, G = 4, k = 3, float32"
    for host, wall in ((result.forward_host_ms, result.forward_wall_ms), (result.step_host_ms, result.step_wall_ms)):
        assert 0 < host <= wall
    table = result.tables["operators by self host time"]
    assert "kanlib.forward" in table and "kanlib.backward" in table
    assert "FusedSplineLayer" in table  # the CPU layer's own autograd function, forward and backward
    assert list(result.tables) == ["operators by self host time"]  # the device table only on a GPU
    assert result.device_tasks is None
    text = result.format()
    assert text.startswith("layer profile on cpu: batch 24, width 6, G = 4") and "to issue" in text
    assert "device tasks" not in text


def test_the_profile_runs_the_compiled_layer_through_its_operators():
    result = profile_layer("cpu", batch=24, width=6, grid_size=4, calls=2, warmup=1, rows=1000,
                           compile_mode="reduce-overhead")
    assert result.sizes == "batch 24, width 6, G = 4, k = 3, float32, torch.compile(mode='reduce-overhead')"
    table = result.tables["operators by self host time"]
    assert "kanlib::spline_layer" in table and "kanlib::spline_layer_backward" in table
    assert "FusedSplineLayer" not in table
    assert 0 < result.step_host_ms <= result.step_wall_ms


def test_device_tasks_count_the_devices_events_per_call():
    averages = [SimpleNamespace(count=6, device_type=DeviceType.CUDA),
                SimpleNamespace(count=40, device_type=DeviceType.CPU),
                SimpleNamespace(count=3, device_type=DeviceType.CUDA)]
    assert device_tasks_per_call(averages, 2) == 4.5


@pytest.mark.parametrize("args,words", [
    (["--grid", "5", "50"], "--grid: expected one grid size, got [5, 50]"),
    (["--calls", "0"], "--calls"),
    (["--compile", "max"], "--compile: invalid choice: 'max'"),
])
def test_bad_profile_options_are_named(args, words):
    done = subprocess.run([sys.executable, "-m", "kanlib", "profile", *args], cwd=PROJECT_ROOT, capture_output=True,
                          text=True)
    assert done.returncode == 2 and words in done.stderr


def test_bad_sizes_are_named():
    with pytest.raises(ValueError, match="calls"):
        profile_layer("cpu", calls=0)
    with pytest.raises(ValueError, match=r"compile_mode must be one of \('none', 'default', 'reduce-overhead'\), "
                                         r"got 'max'"):
        profile_layer("cpu", compile_mode="max")
