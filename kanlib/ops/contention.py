"""Fewer kernel threads while other processes hold the cores.

The CPU kernels run on as many threads as torch's intra-op count. Beside a process that keeps the cores busy, each
parallel loop ends at a barrier that waits for the thread the scheduler set aside, so a step on every core can take
longer than one on fewer (measured with ``python -m kanlib bench threads``, chapter 09). The kernels' caller thread
tells how busy the machine is: the time it spent ready to run but waiting for a core, which Linux counts per thread
in ``/proc/thread-self/schedstat`` (second field, in ns; its scheduler statistics, ``CONFIG_SCHED_INFO``). Alone it
stays near zero, even with threads spinning at barriers; beside a busy process of as many threads as cores it is
about half the time.

:class:`ContentionGuard` sums that waiting over the kernel calls that run on more than one thread. After
``window_s`` seconds of such calls, if the caller waited for a core more than ``wait_above`` of the time, the
calls that follow run on ``round(threads * (1 - waiting))`` threads (at least one) until they have taken ``hold``
seconds between them: the kernels' own time, so that a program that spends most of its time elsewhere (in torch's
products, or loading data) still gives the kernels as long on fewer threads. Then the full count runs again and is
measured anew, so the kernels go back to every core when the neighbour stops. Each such measurement costs a window
on every thread while the cores are taken, so while the neighbour stays it is made less often: ``hold`` starts at
``hold_s``, doubles each time the full count is found waiting again, up to ``max_hold_s``, and falls back to
``hold_s`` when it is not. Where the statistics cannot be read (not Linux, or a kernel without them) the guard never
lowers the count.

Thread counts do not change a kernel's results beyond float rounding (some kernels split sums by thread count).
The environment variable ``KANLIB_CONTENTION_GUARD=0`` turns the guard off for a process.
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

__all__ = ["ContentionGuard", "runqueue_wait_s", "guard_from_environment"]

_SCHEDSTAT = "/proc/thread-self/schedstat"


class _SchedstatFile:
    """One thread's open schedstat file, closed when its thread's local storage goes."""

    def __init__(self):
        self.fd = os.open(_SCHEDSTAT, os.O_RDONLY)

    def waited_s(self) -> float:
        return int(os.pread(self.fd, 128, 0).split()[1]) * 1e-9

    def __del__(self):
        if getattr(self, "fd", None) is not None:  # None when the open failed
            os.close(self.fd)


_LOCAL = threading.local()


def _forget_files() -> None:
    """In a forked child: its threads are new, so the parent's open files would tell the parent's waiting."""
    global _LOCAL
    _LOCAL = threading.local()


os.register_at_fork(after_in_child=_forget_files)


def runqueue_wait_s() -> float | None:
    """Seconds the calling thread has spent ready to run but waiting for a core since it started (Linux's
    schedstat); None where that cannot be read."""
    handle = getattr(_LOCAL, "schedstat", False)
    if handle is False:
        try:
            handle = _SchedstatFile()
            handle.waited_s()
        except (OSError, ValueError, IndexError):
            handle = None
        _LOCAL.schedstat = handle
    return None if handle is None else handle.waited_s()


class ContentionGuard:
    """The thread count kernel calls may use while the machine is contended (see the module's docstring).

    ``clock`` (seconds, monotonic) and ``waited`` (the calling thread's waiting so far in seconds, or None where
    unknown) are injectable for tests. Not thread-safe beyond what a training loop needs: concurrent callers only
    blur one window's figures.
    """

    def __init__(self, window_s: float = 0.05, wait_above: float = 0.25, hold_s: float = 1.0, max_hold_s: float = 8.0,
                 enabled: bool = True, clock: Callable[[], float] = time.perf_counter,
                 waited: Callable[[], float | None] = runqueue_wait_s):
        if not (window_s > 0 and 0 < hold_s <= max_hold_s and 0 < wait_above < 1):
            raise ValueError(f"expected window_s > 0, 0 < hold_s <= max_hold_s and 0 < wait_above < 1, got "
                             f"window_s={window_s}, hold_s={hold_s}, max_hold_s={max_hold_s}, wait_above={wait_above}")
        self.window_s, self.wait_above, self.enabled = window_s, wait_above, enabled
        self.hold_s, self.max_hold_s = hold_s, max_hold_s
        self.clock, self.waited = clock, waited
        self.reset()

    def reset(self) -> None:
        """Forget what was measured and lift any cap."""
        self._ran = self._waited = 0.0
        self._cap: int | None = None
        self._left = 0.0  # kernel time the cap still holds for
        self.hold = self.hold_s  # what the next cap holds for

    def threads(self, wanted: int) -> int:
        """The threads a call that would use ``wanted`` may use now."""
        cap = self._cap if self.enabled else None
        return wanted if cap is None else max(1, min(wanted, cap))

    def start(self, threads: int) -> tuple[float, float | None] | None:
        """Before a kernel call on ``threads`` threads: what :meth:`stop` takes, or None when it is not measured.
        Under a cap every call is timed (it counts the hold down); otherwise calls on two threads or more."""
        if not self.enabled:
            return None
        if self._cap is not None:
            return self.clock(), None
        if threads < 2:
            return None
        waited = self.waited()
        return None if waited is None else (self.clock(), waited)

    def stop(self, started: tuple[float, float | None] | None, threads: int) -> None:
        """After the call: counts the hold down under a cap; otherwise adds the call to the window and, once the
        window is full, caps the count if the caller waited."""
        if started is None:
            return
        if started[1] is None:
            self._left -= self.clock() - started[0]
            if self._left <= 0.0:
                self._cap = None
            return
        waited = self.waited()
        if waited is None:
            return
        self._ran += self.clock() - started[0]
        self._waited += waited - started[1]
        if self._ran < self.window_s:
            return
        share = min(1.0, max(0.0, self._waited / self._ran))
        self._ran = self._waited = 0.0
        if share > self.wait_above:
            self._cap = max(1, round(threads * (1.0 - share)))
            self._left = self.hold
            self.hold = min(self.max_hold_s, 2.0 * self.hold)
        else:
            self.hold = self.hold_s

    @property
    def cap(self) -> int | None:
        """The count calls are held to now, or None."""
        return self._cap


def guard_from_environment() -> ContentionGuard:
    """The process's guard: on unless ``KANLIB_CONTENTION_GUARD`` is "0"."""
    setting = os.environ.get("KANLIB_CONTENTION_GUARD", "1")
    if setting not in ("0", "1"):
        raise ValueError(f"KANLIB_CONTENTION_GUARD: expected '0' or '1', got {setting!r}")
    return ContentionGuard(enabled=setting == "1")
