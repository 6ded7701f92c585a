"""kanlib.ops.contention: the kernels' thread count lowered while the caller waits for a core, and raised again."""
import os
import subprocess
import sys
import threading

import pytest
import torch

from kanlib.ops.contention import ContentionGuard, guard_from_environment, runqueue_wait_s


class FakeMachine:
    """A clock and a caller's waiting, both in seconds, advanced by :meth:`run`."""

    def __init__(self):
        self.now = 0.0
        self.waited_s = 0.0
        self.readable = True

    def clock(self):
        return self.now

    def waited(self):
        return self.waited_s if self.readable else None

    def run(self, guard, threads, seconds, waiting):
        """One kernel call on ``threads`` threads lasting ``seconds``, waiting for a core ``waiting`` of it."""
        started = guard.start(threads)
        self.now += seconds
        self.waited_s += seconds * waiting
        guard.stop(started, threads)


def _guard(machine, **options):
    return ContentionGuard(window_s=0.05, wait_above=0.25, hold_s=1.0, clock=machine.clock, waited=machine.waited,
                           **options)


def test_alone_the_count_stays():
    machine = FakeMachine()
    guard = _guard(machine)
    for _ in range(100):
        machine.run(guard, 2, 0.01, waiting=0.02)
        assert guard.threads(2) == 2
    assert guard.cap is None


@pytest.mark.parametrize("threads,waiting,capped", [(2, 0.5, 1), (2, 0.3, 1), (16, 0.5, 8), (16, 0.9, 2),
                                                    (4, 1.0, 1)])
def test_waiting_for_cores_lowers_the_count_for_a_while(threads, waiting, capped):
    machine = FakeMachine()
    guard = _guard(machine)
    machine.run(guard, threads, 0.03, waiting)
    assert guard.threads(threads) == threads  # the window is not full yet
    machine.run(guard, threads, 0.03, waiting)
    assert guard.threads(threads) == capped and guard.cap == capped
    assert guard.threads(1) == 1  # a cap never raises a count
    machine.run(guard, capped, 0.99, waiting)
    assert guard.threads(threads) == capped
    machine.run(guard, capped, 0.02, waiting)  # the hold is over: every thread again, measured anew
    assert guard.threads(threads) == threads and guard.cap is None


def test_the_hold_counts_the_kernels_time_not_the_clocks():
    machine = FakeMachine()
    guard = _guard(machine)
    machine.run(guard, 2, 0.06, waiting=0.5)
    assert guard.cap == 1
    machine.now += 60.0  # an hour of other work would not lift it either
    assert guard.threads(2) == 1
    for _ in range(9):
        machine.run(guard, 1, 0.1, waiting=0.0)  # small calls on one thread count too
    assert guard.cap == 1
    machine.run(guard, 1, 0.11, waiting=0.0)
    assert guard.cap is None


def _hold_after_waiting(machine, guard):
    """Runs the full count for a window while waiting, then capped calls until the cap lifts: their total time."""
    machine.run(guard, 2, 0.06, waiting=0.5)
    assert guard.cap == 1
    held = 0.0
    while guard.cap is not None:
        machine.run(guard, 1, 0.25, waiting=0.3)
        held += 0.25
    return held


def test_the_hold_doubles_while_the_cores_stay_taken_and_starts_over_when_they_are_free():
    machine = FakeMachine()
    guard = _guard(machine, max_hold_s=4.0)
    held = [_hold_after_waiting(machine, guard) for _ in range(4)]
    assert held == pytest.approx([1.0, 2.0, 4.0, 4.0], abs=0.25)  # to the call that used the hold up
    machine.run(guard, 2, 0.06, waiting=0.0)  # the neighbour is gone
    assert guard.cap is None and guard.hold == 1.0
    assert _hold_after_waiting(machine, guard) == pytest.approx(1.0, abs=0.25)


def test_waiting_below_the_bar_keeps_the_count():
    machine = FakeMachine()
    guard = _guard(machine)
    machine.run(guard, 2, 0.06, waiting=0.2)
    assert guard.threads(2) == 2


def test_the_window_starts_again_after_each_verdict():
    machine = FakeMachine()
    guard = _guard(machine)
    machine.run(guard, 2, 0.06, waiting=0.0)  # a full window without waiting
    machine.run(guard, 2, 0.04, waiting=1.0)  # waiting, but not yet a window of it
    assert guard.threads(2) == 2
    machine.run(guard, 2, 0.02, waiting=1.0)
    assert guard.threads(2) == 1


def test_single_threaded_calls_are_not_measured():
    machine = FakeMachine()
    guard = _guard(machine)
    assert guard.start(1) is None
    machine.run(guard, 1, 10.0, waiting=1.0)
    assert guard.threads(2) == 2


def test_unreadable_statistics_or_a_disabled_guard_never_lower_the_count():
    machine = FakeMachine()
    machine.readable = False
    guard = _guard(machine)
    machine.run(guard, 2, 1.0, waiting=1.0)
    assert guard.threads(2) == 2
    machine.readable = True
    off = _guard(machine, enabled=False)
    machine.run(off, 2, 1.0, waiting=1.0)
    assert off.threads(2) == 2
    guard.reset()
    machine.run(guard, 2, 1.0, waiting=1.0)
    assert guard.threads(2) == 1
    guard.enabled = False
    assert guard.threads(2) == 2


@pytest.mark.parametrize("options,message", [({"window_s": 0}, "window_s > 0"), ({"hold_s": -1}, "0 < hold_s"),
                                             ({"hold_s": 2.0, "max_hold_s": 1.0}, "hold_s <= max_hold_s"),
                                             ({"wait_above": 1.0}, "0 < wait_above < 1")])
def test_bad_settings_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        ContentionGuard(**options)


def test_the_environment_switch(monkeypatch):
    monkeypatch.setenv("KANLIB_CONTENTION_GUARD", "0")
    assert not guard_from_environment().enabled
    monkeypatch.setenv("KANLIB_CONTENTION_GUARD", "1")
    assert guard_from_environment().enabled
    monkeypatch.setenv("KANLIB_CONTENTION_GUARD", "off")
    with pytest.raises(ValueError, match="KANLIB_CONTENTION_GUARD: expected '0' or '1', got 'off'"):
        guard_from_environment()


@pytest.mark.skipif(not os.path.exists("/proc/thread-self/schedstat"), reason="Linux scheduler statistics")
def test_the_callers_waiting_is_read_per_thread():
    first = runqueue_wait_s()
    assert isinstance(first, float) and first >= 0.0
    assert runqueue_wait_s() >= first
    seen = {}
    worker = threading.Thread(target=lambda: seen.update(value=runqueue_wait_s()))
    worker.start()
    worker.join()
    assert isinstance(seen["value"], float) and seen["value"] >= 0.0


@pytest.fixture
def busy_guard(monkeypatch):
    """cpu.CONTENTION replaced by a guard whose caller waits for a core all the time, judged after every call."""
    from kanlib.ops.spline_linear import cpu

    machine = FakeMachine()
    guard = ContentionGuard(window_s=1e-12, hold_s=1.0, clock=machine.clock, waited=machine.waited)
    calls = []

    def waited():
        calls.append(1)
        machine.now += 0.01
        machine.waited_s += 0.01
        return machine.waited_s

    guard.waited = waited
    monkeypatch.setattr(cpu, "CONTENTION", guard)
    return cpu, machine, guard, calls


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="needs two threads to lower")
def test_the_kernels_run_on_fewer_threads_while_the_caller_waits(busy_guard):
    import numba

    from kanlib import BSplineKAN

    cpu, machine, guard, calls = busy_guard
    layer = BSplineKAN(48, 40, grid_size=30, backend="sparse")
    x = (torch.rand(1500, 48) * 2.4 - 1.2).requires_grad_()
    assert cpu.thread_count() == min(torch.get_num_threads(), numba.get_num_threads())
    reference = layer(x)
    assert calls, "the kernel calls were not measured"
    assert cpu.thread_count() == 1
    with cpu.threads_for(cpu.SERIAL_BELOW):
        assert numba.get_num_threads() == 1
    again = layer(x)  # now on one thread: the same outputs
    torch.testing.assert_close(again, reference, rtol=1e-5, atol=1e-6)
    grads = torch.autograd.grad(again.square().sum(), [x, layer.coef])
    assert all(torch.isfinite(g).all() for g in grads)
    machine.run(guard, 1, 2.0, waiting=0.0)  # the hold's kernel time used up
    assert cpu.thread_count() == min(torch.get_num_threads(), numba.get_num_threads())


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="needs two threads to lower")
def test_threads_for_counts_for_the_guard(busy_guard):
    cpu, _, guard, calls = busy_guard
    with cpu.threads_for(cpu.SERIAL_BELOW):
        pass
    assert calls and cpu.thread_count() == 1


def test_the_test_session_runs_without_the_guard():
    """conftest turns the guard off, so that no test's thread count depends on what else the machine runs."""
    script = "from kanlib.ops.spline_linear import cpu; print(cpu.CONTENTION.enabled)"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


@pytest.mark.skipif(not os.path.exists("/proc/thread-self/schedstat") or not hasattr(os, "fork"),
                    reason="Linux scheduler statistics and fork")
def test_a_forked_child_reads_its_own_thread_and_starts_unguarded(monkeypatch):
    from kanlib.ops import contention
    from kanlib.ops.spline_linear import cpu

    runqueue_wait_s()  # the parent's file is open now
    parent_file = contention._LOCAL.schedstat
    machine = FakeMachine()
    for name, value in (("enabled", True), ("clock", machine.clock), ("waited", machine.waited)):
        monkeypatch.setattr(cpu.CONTENTION, name, value)
    machine.run(cpu.CONTENTION, 2, 1.0, waiting=1.0)
    assert cpu.CONTENTION.cap == 1
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave at once
        try:
            fresh = getattr(contention._LOCAL, "schedstat", None) is None
            value = runqueue_wait_s()
            ok = fresh and contention._LOCAL.schedstat is not parent_file and value is not None
            os.write(write, b"1" if ok and cpu.CONTENTION.cap is None else b"0")
        finally:
            os._exit(0)
    os.close(write)
    answer = os.read(read, 1)
    os.close(read)
    os.waitpid(pid, 0)
    assert answer == b"1"
    assert cpu.CONTENTION.cap == 1  # the parent keeps its own
    cpu.CONTENTION.reset()


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_without_scheduler_statistics_the_waiting_is_unknown(monkeypatch):
    import gc

    from kanlib.ops import contention

    monkeypatch.setattr(contention, "_SCHEDSTAT", "/nonexistent/schedstat")
    seen = {}
    worker = threading.Thread(target=lambda: seen.update(value=runqueue_wait_s()))
    worker.start()
    worker.join()
    gc.collect()
    assert seen == {"value": None}
