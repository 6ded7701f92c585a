"""kanlib.bench.timing: time_fn, time_interleaved, Timing and peak_memory_bytes."""
import dataclasses
import time

import pytest
import torch

from kanlib.bench import provenance as bench_provenance
from kanlib.bench import timing as bench_timing


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
    monkeypatch.setattr(bench_timing.time, "perf_counter", fake.perf_counter)
    return fake


def test_time_fn_statistics_are_exact_on_a_fake_clock(clock):
    warmups = [1e6, 1e6, 1e6]  # would dominate every statistic if they were measured
    measured = [7, 1, 5, 3, 9, 2, 8, 4, 6]
    timing = bench_timing.time_fn(clock.call_taking(warmups + measured), device="cpu", warmup=3, repeat=9)
    assert clock.calls == 12
    exact = dict(rel=1e-9)
    assert timing.median_ms == pytest.approx(5, **exact)
    assert timing.q25_ms == pytest.approx(3, **exact)
    assert timing.q75_ms == pytest.approx(7, **exact)
    assert timing.min_ms == pytest.approx(1, **exact)
    assert timing.max_ms == pytest.approx(9, **exact)
    assert timing.n == 9


def test_quartiles_interpolate_between_runs(clock):
    timing = bench_timing.time_fn(clock.call_taking([4, 1, 3, 2]), device="cpu", warmup=0, repeat=4)
    assert (timing.q25_ms, timing.median_ms, timing.q75_ms) == pytest.approx((1.75, 2.5, 3.25), rel=1e-9)


@pytest.mark.parametrize(
    "call_ms, min_time_s, expected_runs",
    [
        (10.0, 0.5, 50),  # more runs than repeat=30
        (100.0, 0.8, 8),  # fewer runs than repeat=30
        (1000.0, 0.5, bench_timing.MIN_ADAPTIVE_REPEAT),
    ],
)
def test_min_time_s_sets_the_number_of_runs(clock, call_ms, min_time_s, expected_runs):
    fn = clock.call_taking([call_ms] * (2 + expected_runs))
    timing = bench_timing.time_fn(fn, device="cpu", warmup=2, repeat=30, min_time_s=min_time_s)
    assert timing.n == expected_runs
    assert clock.calls == 2 + expected_runs


def test_min_time_s_needs_a_warmup_run():
    with pytest.raises(ValueError, match="warmup"):
        bench_timing.time_fn(lambda: None, device="cpu", warmup=0, min_time_s=1.0)


def test_time_fn_measures_real_time_on_cpu():
    timing = bench_timing.time_fn(lambda: time.sleep(0.002), device=torch.device("cpu"), warmup=1, repeat=5)
    assert timing.n == 5
    assert 2.0 <= timing.min_ms <= timing.q25_ms <= timing.median_ms <= timing.q75_ms <= timing.max_ms < 500


def test_timing_is_frozen_and_prefixes_its_keys():
    timing = bench_timing.Timing.from_samples([1.0, 2.0, 3.0])
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
        bench_timing.Timing.from_samples([])


@pytest.mark.parametrize(
    "measure",
    [
        lambda device: bench_timing.time_fn(lambda: None, device=device),
        lambda device: bench_timing.peak_memory_bytes(lambda: None, device=device),
        bench_provenance.device_info,
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
    return bench_timing.peak_memory_bytes(fn, device="cpu")


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


def test_time_interleaved_alternates_the_functions_after_their_warmups():
    from kanlib.bench import time_interleaved

    calls = []
    timings = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                               device="cpu", warmup=2, repeat=3)
    assert calls == ["a", "a", "b", "b"] + ["a", "b"] * 3
    assert timings["a"].n == 3 and timings["b"].n == 3
    with pytest.raises(ValueError, match="repeat must be an int >= 1, got 0"):
        time_interleaved({"a": lambda: None}, device="cpu", repeat=0)


@pytest.mark.parametrize("backend", ["cpu", "sparse"])
def test_peak_memory_sees_the_cpu_kernels_buffers(backend):
    """The CPU kernels' large buffers (the coefficients' gradient, the sparse path's windows, the dense path's
    expansion) come from torch's allocator, so the peak holds at least the gradients a training step returns."""
    from kanlib import BSplineKAN

    layer = BSplineKAN(64, 48, grid_size=40, backend=backend)
    x = torch.rand(256, 64, requires_grad=True) * 2 - 1
    leaves = (x, *(p for p in layer.parameters() if p.requires_grad))

    def step():
        torch.autograd.grad(layer(x), leaves, torch.ones(256, 48))

    step()
    assert cpu_peak(step) >= sum(leaf.numel() for leaf in leaves) * 4
