"""Timing and memory measurement for benchmarks: medians with quartiles, never one run.

`time_fn` and `time_interleaved` time calls (CUDA events on a GPU, `time.perf_counter` on the CPU, both
after a warm-up); `peak_memory_bytes` measures what a call allocates.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile

from ..checks import check_device, check_int

MIN_ADAPTIVE_REPEAT = 5
MAX_ADAPTIVE_REPEAT = 10_000


@dataclasses.dataclass(frozen=True)
class Timing:
    """Summary of the run times of repeated calls, in milliseconds; `n` is the number of runs."""

    median_ms: float
    q25_ms: float
    q75_ms: float
    min_ms: float
    max_ms: float
    n: int

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float]) -> Timing:
        """Summarize run times in ms; quartiles interpolate linearly between order statistics."""
        if len(samples_ms) == 0:
            raise ValueError("Timing.from_samples: expected at least one run time, got none")
        q25, median, q75 = np.percentile(samples_ms, [25, 50, 75])
        return cls(
            median_ms=float(median),
            q25_ms=float(q25),
            q75_ms=float(q75),
            min_ms=float(min(samples_ms)),
            max_ms=float(max(samples_ms)),
            n=len(samples_ms),
        )

    def as_dict(self, prefix: str = "") -> dict[str, float | int]:
        """The fields as a row fragment, each key prefixed (e.g. prefix="mlp_" gives "mlp_median_ms")."""
        return {prefix + key: value for key, value in dataclasses.asdict(self).items()}


def _call_timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    """A function that calls `fn()` once and returns its run time in ms, measured the device's way."""
    if device.type == "cpu":

        def cpu_call_ms(fn: Callable[[], object]) -> float:
            start_s = time.perf_counter()
            fn()
            return (time.perf_counter() - start_s) * 1e3

        return cpu_call_ms

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def cuda_call_ms(fn: Callable[[], object]) -> float:
        torch.cuda.synchronize(device)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    return cuda_call_ms


def time_fn(
    fn: Callable[[], object],
    *,
    device: str | torch.device,
    warmup: int = 5,
    repeat: int = 30,
    min_time_s: float | None = None,
) -> Timing:
    """Time `fn()` on `device`: `warmup` unmeasured calls, then `repeat` measured ones.

    CPU calls are timed with time.perf_counter; CUDA calls with a pair of CUDA events recorded
    around each call, after a synchronize, so each run starts on an idle device.
    min_time_s: when given, `repeat` is replaced by the number of runs that takes about this many
    seconds (between MIN_ADAPTIVE_REPEAT and MAX_ADAPTIVE_REPEAT), estimated from the median
    warm-up run; it needs warmup >= 1.
    """
    device = check_device(device)
    check_int("warmup", warmup, 0)
    check_int("repeat", repeat, 1)
    if min_time_s is not None and not (min_time_s > 0 and warmup >= 1):
        raise ValueError(
            f"min_time_s: expected a time > 0 s together with warmup >= 1, got min_time_s={min_time_s!r}, "
            f"warmup={warmup!r}"
        )
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        call_ms = _call_timer(device)
        warmup_ms = [call_ms(fn) for _ in range(warmup)]
        if min_time_s is not None:
            per_call_ms = float(np.median(warmup_ms))
            wanted = round(min_time_s * 1e3 / per_call_ms) if per_call_ms > 0 else MAX_ADAPTIVE_REPEAT
            repeat = min(max(wanted, MIN_ADAPTIVE_REPEAT), MAX_ADAPTIVE_REPEAT)
        return Timing.from_samples([call_ms(fn) for _ in range(repeat)])


def interleaved_samples(fns: Mapping[str, Callable[[], object]], *, device: str | torch.device, warmup: int = 5,
                        repeat: int = 30) -> dict[str, list[float]]:
    """Each function's ``repeat`` run times (ms), the functions called in alternation: each round calls every one
    once, so a machine whose speed drifts during the run (a shared VM) shifts them all alike and their ratios stay
    comparable."""
    device = check_device(device)
    check_int("warmup", warmup, 0)
    check_int("repeat", repeat, 1)
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        call_ms = _call_timer(device)
        for fn in fns.values():
            for _ in range(warmup):
                call_ms(fn)
        samples = {name: [] for name in fns}
        for _ in range(repeat):
            for name, fn in fns.items():
                samples[name].append(call_ms(fn))
    return samples


def time_interleaved(fns: Mapping[str, Callable[[], object]], *, device: str | torch.device, warmup: int = 5,
                     repeat: int = 30) -> dict[str, Timing]:
    """The :class:`Timing` of each function's :func:`interleaved_samples`."""
    samples = interleaved_samples(fns, device=device, warmup=warmup, repeat=repeat)
    return {name: Timing.from_samples(values) for name, values in samples.items()}


def peak_memory_bytes(fn: Callable[[], object], *, device: str | torch.device) -> int:
    """Peak bytes that `fn()` allocates on `device` while it runs, above what was allocated before.

    CUDA: the caching allocator's peak statistic (reset before the call) minus the bytes allocated
    at the start; memory freed during the call that existed before it lowers the figure.
    CPU: torch.profiler records every block that torch's CPU allocator hands out or takes back on
    the calling thread (op outputs, tensors saved for backward, the backward pass, temporaries
    inside kernels); the blocks allocated during the call are replayed in time order and the
    highest running total is returned. Blocks that existed before the call are not counted when
    they are freed, so the figure does not depend on what earlier calls left behind. Not seen:
    blocks allocated on other threads (OpenMP workers inside a kernel) and memory that does not
    come from torch's allocator (numpy arrays, torch.from_numpy; kanlib's CPU kernels take their
    large buffers from torch's, but not the tiles that numba kernels allocate inside themselves).
    """
    device = check_device(device)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            baseline_bytes = torch.cuda.memory_allocated()
            fn()
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - baseline_bytes
    # The profiler's C++ side logs on start and stop, and when a block allocated before it started is freed.
    with native_stderr_silenced():
        profiler = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        profiler.start()
        try:
            fn()
        finally:
            profiler.stop()
    return _peak_of_allocation_events(profiler.profiler.kineto_results.experimental_event_tree())


@contextlib.contextmanager
def native_stderr_silenced():
    """Send file descriptor 2 to /dev/null (native log lines; Python's sys.stderr in a notebook is not fd 2)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _peak_of_allocation_events(event_tree: list) -> int:
    """Highest running total of the CPU blocks allocated within a profiler event tree, in bytes."""
    allocations = []
    pending = list(event_tree)
    while pending:
        event = pending.pop()
        pending.extend(event.children)
        if event.tag == _EventType.Allocation and event.extra_fields.device.type == "cpu":
            allocations.append(event)
    allocations.sort(key=lambda event: event.start_time_ns)
    bytes_by_address: dict[int, int] = {}
    live_bytes = peak_bytes = 0
    for event in allocations:
        fields = event.extra_fields
        if fields.alloc_size > 0:
            bytes_by_address[fields.ptr] = fields.alloc_size
            live_bytes += fields.alloc_size
            peak_bytes = max(peak_bytes, live_bytes)
        else:
            # A block missing from the table was allocated before the call: its release is not counted.
            live_bytes -= bytes_by_address.pop(fields.ptr, 0)
    return peak_bytes
