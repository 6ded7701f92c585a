import ast
import dataclasses
import datetime
import json
import platform
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from kanlib import bench

MIB = 2**20
BIG = 32 * MIB  # bytes of one large temporary in the memory tests


class FakeClock:
    """Stands in for time.perf_counter: time moves only when a fake call says how long it took."""

    def __init__(self):
        self.now_s = 1000.0
        self.calls = 0

    def perf_counter(self):
        return self.now_s

    def call_taking(self, durations_ms):
        """A no-argument fn whose i-th call takes durations_ms[i] on this clock."""
        durations = iter(durations_ms)

        def fn():
            self.calls += 1
            self.now_s += next(durations) / 1e3

        return fn


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(bench.time, "perf_counter", fake.perf_counter)
    return fake


def test_time_fn_statistics_are_exact_on_a_fake_clock(clock):
    warmups = [1e6, 1e6, 1e6]  # would dominate every statistic if they were measured
    measured = [7, 1, 5, 3, 9, 2, 8, 4, 6]
    timing = bench.time_fn(clock.call_taking(warmups + measured), device="cpu", warmup=3, repeat=9)
    assert clock.calls == 12
    exact = dict(rel=1e-9)
    assert timing.median_ms == pytest.approx(5, **exact)
    assert timing.q25_ms == pytest.approx(3, **exact)
    assert timing.q75_ms == pytest.approx(7, **exact)
    assert timing.min_ms == pytest.approx(1, **exact)
    assert timing.max_ms == pytest.approx(9, **exact)
    assert timing.n == 9


def test_quartiles_interpolate_between_runs(clock):
    timing = bench.time_fn(clock.call_taking([4, 1, 3, 2]), device="cpu", warmup=0, repeat=4)
    assert (timing.q25_ms, timing.median_ms, timing.q75_ms) == pytest.approx((1.75, 2.5, 3.25), rel=1e-9)


@pytest.mark.parametrize(
    "call_ms, min_time_s, expected_runs",
    [
        (10.0, 0.5, 50),  # more runs than repeat=30
        (100.0, 0.8, 8),  # fewer runs than repeat=30
        (1000.0, 0.5, bench.MIN_ADAPTIVE_REPEAT),
    ],
)
def test_min_time_s_sets_the_number_of_runs(clock, call_ms, min_time_s, expected_runs):
    fn = clock.call_taking([call_ms] * (2 + expected_runs))
    timing = bench.time_fn(fn, device="cpu", warmup=2, repeat=30, min_time_s=min_time_s)
    assert timing.n == expected_runs
    assert clock.calls == 2 + expected_runs


def test_min_time_s_needs_a_warmup_run():
    with pytest.raises(ValueError, match="warmup"):
        bench.time_fn(lambda: None, device="cpu", warmup=0, min_time_s=1.0)


def test_time_fn_measures_real_time_on_cpu():
    timing = bench.time_fn(lambda: time.sleep(0.002), device=torch.device("cpu"), warmup=1, repeat=5)
    assert timing.n == 5
    assert 2.0 <= timing.min_ms <= timing.q25_ms <= timing.median_ms <= timing.q75_ms <= timing.max_ms < 500


def test_timing_is_frozen_and_prefixes_its_keys():
    timing = bench.Timing.from_samples([1.0, 2.0, 3.0])
    with pytest.raises(dataclasses.FrozenInstanceError):
        timing.median_ms = 0.0
    assert timing.as_dict("mlp_") == {
        "mlp_median_ms": 2.0,
        "mlp_q25_ms": 1.5,
        "mlp_q75_ms": 2.5,
        "mlp_min_ms": 1.0,
        "mlp_max_ms": 3.0,
        "mlp_n": 3,
    }
    with pytest.raises(ValueError, match="at least one"):
        bench.Timing.from_samples([])


@pytest.mark.parametrize(
    "measure",
    [
        lambda device: bench.time_fn(lambda: None, device=device),
        lambda device: bench.peak_memory_bytes(lambda: None, device=device),
        bench.device_info,
    ],
    ids=["time_fn", "peak_memory_bytes", "device_info"],
)
def test_bad_device_names_what_was_expected_and_what_came(measure):
    with pytest.raises(ValueError, match=r"expected 'cpu', 'cuda'.*got 'gpu'"):
        measure("gpu")
    with pytest.raises(ValueError, match=r"expected 'cpu', 'cuda'.*got 'meta'"):
        measure(torch.device("meta"))
    with pytest.raises(TypeError, match=r"expected 'cpu'.*got int 0"):
        measure(0)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"got 'cuda'.*is_available\(\) is False"):
            measure("cuda")


def cpu_peak(fn):
    return bench.peak_memory_bytes(fn, device="cpu")


def test_peak_memory_of_nothing_is_zero():
    assert cpu_peak(lambda: None) == 0


@pytest.mark.parametrize(
    "allocate",
    [
        lambda: torch.empty(BIG, dtype=torch.uint8),
        lambda: torch.zeros(BIG // 4),
        lambda: torch.UntypedStorage(BIG),  # no aten op: only the allocator sees it
    ],
    ids=["empty", "zeros", "UntypedStorage"],
)
def test_peak_memory_counts_a_freed_temporary(allocate):
    peak = cpu_peak(allocate)
    assert BIG <= peak < BIG + MIB


def test_peak_memory_of_two_live_temporaries_is_twice_one():
    def one():
        torch.empty(BIG, dtype=torch.uint8)

    def two_live():
        first = torch.empty(BIG, dtype=torch.uint8)
        second = torch.empty(BIG, dtype=torch.uint8)
        del first, second

    def two_in_turn():
        one()
        one()

    assert cpu_peak(two_live) == pytest.approx(2 * cpu_peak(one), rel=0.02)
    assert cpu_peak(two_live) >= 2 * BIG
    assert cpu_peak(two_in_turn) < 1.1 * BIG


def test_peak_memory_of_matmul_forward_and_backward_holds_output_and_gradients():
    x = torch.randn(512, 256, requires_grad=True)
    w = torch.randn(256, 1024, requires_grad=True)

    def step():
        y = x @ w
        y.sum().backward()

    output_and_gradients = (512 * 1024 + x.numel() + w.numel()) * 4
    assert output_and_gradients <= cpu_peak(step) < 2 * output_and_gradients


class SavesBig(torch.autograd.Function):
    """y = 2x, saving a BIG-byte tensor for backward."""

    @staticmethod
    def forward(ctx, x):
        big = x[:, None].expand(-1, BIG // 4 // len(x)).contiguous()
        ctx.save_for_backward(big)
        return 2 * x

    @staticmethod
    def backward(ctx, grad):
        (big,) = ctx.saved_tensors
        return grad * 2 + 0 * big[:, 0]


class BackwardMakesBig(torch.autograd.Function):
    """y = 2x, whose backward builds a BIG-byte temporary."""

    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, grad):
        scratch = grad[:, None].expand(-1, BIG // 4 // len(grad)).contiguous()
        return scratch[:, 0] * 2


def test_peak_memory_sees_tensors_saved_for_backward_while_they_live():
    x = torch.randn(1024, requires_grad=True)

    def step():
        y = SavesBig.apply(x)
        torch.empty(BIG, dtype=torch.uint8)  # live at the same time as the saved tensor
        y.sum().backward()

    assert cpu_peak(step) >= 2 * BIG


def test_peak_memory_sees_temporaries_of_backward():
    x = torch.randn(1024, requires_grad=True)
    assert cpu_peak(lambda: BackwardMakesBig.apply(x).sum().backward()) >= BIG


def test_peak_memory_ignores_history():
    """Freeing memory from before the call does not lower the figure, so repeated calls agree."""
    x = torch.randn(512, 256, requires_grad=True)
    w = torch.randn(256, 1024, requires_grad=True)

    def step():
        x.grad = w.grad = None  # frees the gradients of the previous call
        (x @ w).sum().backward()

    step()
    first, second = cpu_peak(step), cpu_peak(step)
    assert first == second >= (x.numel() + w.numel()) * 4

    held = [torch.empty(BIG, dtype=torch.uint8)]

    def swap():
        held.pop()
        held.append(torch.empty(BIG, dtype=torch.uint8))

    assert cpu_peak(swap) >= BIG


def make_rows():
    mlp, kan = bench.Timing.from_samples([1, 2, 4]), bench.Timing.from_samples([2, 3])
    return [
        {"layer": "mlp", "batch": 64, **mlp.as_dict(), "peak_bytes": 3 * MIB},
        {"layer": "fastkan", "batch": np.int64(64), **kan.as_dict(), "speedup": 0.5},
    ]


def test_write_then_load_round_trip(tmp_path):
    params = {"sizes": [64, 128], "quick": True, "seed": 0}
    before = datetime.datetime.now(datetime.timezone.utc)
    path = bench.write_results("layer-sweep", params, make_rows(), "cpu", out_dir=tmp_path / "results")

    assert path.parent == tmp_path / "results"
    assert re.fullmatch(r"layer-sweep-cpu-\d{8}T\d{6}\.\d{6}Z\.json", path.name)
    (result,) = bench.load_results(tmp_path / "results")
    assert result == json.loads(path.read_text())
    assert tuple(result) == bench.RESULT_KEYS
    assert result["benchmark"] == "layer-sweep"
    assert result["params"] == params
    assert result["rows"][1]["batch"] == 64
    assert result["rows"][0]["median_ms"] == 2.0 and result["rows"][0]["q75_ms"] == 3.0
    created = datetime.datetime.fromisoformat(result["created_utc"])
    assert created.utcoffset() == datetime.timedelta(0)
    assert before <= created <= datetime.datetime.now(datetime.timezone.utc)
    device = result["device"]
    assert device["type"] == "cpu"
    assert isinstance(device["name"], str) and device["name"]
    assert device["cpu_count"] >= 1
    assert device["torch"] == torch.__version__
    assert device["cuda"] == torch.version.cuda
    assert device["python"] == platform.python_version()
    assert device["triton"] is None or isinstance(device["triton"], str)
    assert set(result["git"]) == {"commit", "dirty"}


def test_relative_out_dir_is_taken_from_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = bench.write_results("probe", {}, make_rows(), torch.device("cpu"), out_dir="out")
    assert path.parent == tmp_path / "out"
    assert len(bench.load_results("out")) == 1


@pytest.mark.parametrize(
    "row, message",
    [
        ({"median_ms": float("nan"), "q25_ms": 1.0, "q75_ms": 1.0}, r"rows\[0\]\['median_ms'\].*finite"),
        ({"time_ms": 1.0}, r"rows\[0\]\['time_ms'\].*<prefix>median_ms"),
        ({"kan_median_ms": 1.0}, r"missing \['kan_q25_ms', 'kan_q75_ms'\]"),
        ({"sizes": [1, 2]}, r"rows\[0\]\['sizes'\].*single figure"),
        ({"loss": torch.ones(3)}, r"rows\[0\]\['loss'\].*shape \(3,\)"),
    ],
)
def test_write_results_rejects_rows_that_are_not_figures(tmp_path, row, message):
    with pytest.raises((ValueError, TypeError), match=message):
        bench.write_results("bad", {}, [row], "cpu", out_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_load_results_names_the_malformed_file(tmp_path):
    bench.write_results("fine", {}, make_rows(), "cpu", out_dir=tmp_path)
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="broken.json"):
        bench.load_results(tmp_path)
    (tmp_path / "broken.json").write_text(json.dumps({"benchmark": "x", "rows": []}))
    missing = r"broken.json.*missing \['params', 'device', 'git', 'created_utc'\]"
    with pytest.raises(ValueError, match=missing):
        bench.load_results(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        bench.load_results(tmp_path / "nowhere")


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
    monkeypatch.setattr(bench, "_PACKAGE_DIR", package)
    assert bench.git_commit() is None  # no commit yet
    git("add", "-A")
    git("commit", "-qm", "first")
    assert bench.git_commit() == git("rev-parse", "HEAD")
    assert bench.git_dirty() is False

    bench.write_results("probe", {}, make_rows(), "cpu", out_dir=tmp_path / bench.RESULTS_DIR)
    assert bench.git_dirty() is False
    (package / "layer.py").write_text("A = 2\n")
    assert bench.git_dirty() is True

    installed = tmp_path / "venv" / "kanlib"
    installed.mkdir(parents=True)
    monkeypatch.setattr(bench, "_PACKAGE_DIR", installed)
    assert bench.git_commit() is None
    assert bench.git_dirty() is None


def test_format_table_aligns_and_formats_by_column_name():
    rows = [
        {"layer": "mlp", "median_ms": 0.012345, "speedup": 1.0, "peak_bytes": 3 * MIB, "n": 30},
        {"layer": "fastkan", "median_ms": 123.456, "speedup": 2.346, "peak_bytes": 1536},
        {"layer": "efficient-kan", "median_ms": 9.996, "speedup": None, "peak_bytes": np.int64(5 * MIB), "n": 7},
    ]
    expected = (
        "layer          median_ms  speedup   peak_bytes   n\n"
        "-------------  ---------  -------  -----------  --\n"
        "mlp               0.0123     1.00     3.00 MiB  30\n"
        "fastkan              123     2.35  0.00146 MiB   -\n"
        "efficient-kan       10.0        -     5.00 MiB   7"
    )
    assert bench.format_table(rows, ["layer", "median_ms", "speedup", "peak_bytes", "n"]) == expected
    assert bench.format_table(rows) == expected
    with pytest.raises(KeyError, match="'mean_ms'"):
        bench.format_table(rows, ["layer", "mean_ms"])


def test_time_interleaved_alternates_the_functions_after_their_warmups():
    from kanlib.bench import time_interleaved

    calls = []
    timings = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                               device="cpu", warmup=2, repeat=3)
    assert calls == ["a", "a", "b", "b"] + ["a", "b"] * 3
    assert timings["a"].n == 3 and timings["b"].n == 3
    with pytest.raises(ValueError, match="repeat: expected an int >= 1, got 0"):
        time_interleaved({"a": lambda: None}, device="cpu", repeat=0)


_FAULTS_SCRIPT = """
import resource, torch
from kanlib import bench
def step():  # three 10 MB blocks freed together: glibc's default trims them off its heap
    blocks = [torch.ones(2_500_000) for _ in range(3)]
    del blocks
def faults_per_step():
    for _ in range(5):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        step()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20
default = faults_per_step(), bench.device_info("cpu")["malloc"]
bench.retain_freed_memory()
print(repr((default, (faults_per_step(), bench.device_info("cpu")["malloc"]))))
"""


@pytest.mark.skipif(not bench.can_retain_freed_memory(), reason="needs glibc")
def test_retain_freed_memory_stops_the_page_faults_of_reallocated_blocks():
    pages_per_step = 3 * 2_500_000 * 4 / 4096
    for _ in range(3):  # some processes' heap layout keeps the blocks even by default: try another
        done = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT], capture_output=True, text=True, check=True,
                              timeout=120)
        (default_faults, default_setting), (retained_faults, retained_setting) = ast.literal_eval(done.stdout)
        assert default_setting == "default"
        assert "retained" in retained_setting and "32 MiB" in retained_setting
        if default_faults > pages_per_step / 2:
            break
    else:
        pytest.skip("glibc kept the blocks by default in three processes in a row")
    assert retained_faults < pages_per_step / 20, (default_faults, retained_faults)


def test_retain_freed_memory_says_what_it_needs_without_glibc(monkeypatch):
    monkeypatch.setattr(bench.platform, "libc_ver", lambda: ("", ""))
    assert not bench.can_retain_freed_memory()
    with pytest.raises(RuntimeError, match="needs glibc's mallopt"):
        bench.retain_freed_memory()
