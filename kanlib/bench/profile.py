"""Where one B-spline KAN layer's time goes: the layer benchmark's ``bsplinekan`` candidate (same sizes, inputs and
gradient) run forward, then forward + backward, first timed on the host clock alone, then under torch.profiler.

The host clock answers the first question on a GPU: when issuing the calls takes as long as running them
(``host_ms`` close to ``wall_ms``), the layer is bound by the Python and launch work between the kernels, not by
the kernels. The profiler's tables then say which operators and kernels that time goes to.
"""
from __future__ import annotations

import dataclasses
import time

import torch
from torch.autograd import DeviceType

from ..checks import check_choice, check_int, resolve_device
from ..layers import BSplineKAN
from .candidates import INPUT_RANGE, uniform_inputs

__all__ = ["LayerProfile", "profile_layer", "COMPILE_MODES"]


@dataclasses.dataclass(frozen=True)
class LayerProfile:
    """Per call, in ms: ``host_ms`` the time to issue it (no wait for the device), ``wall_ms`` until the device has
    finished it (the mean of ``calls`` back-to-back calls); one pair for the forward and one for forward + backward.
    ``tables``: torch.profiler's operator tables (by self host time; on a GPU also by self device time).
    ``device_tasks``: on a GPU, the kernels, copies and fills the device ran per forward + backward, from the
    profile (each a launch the host issued); None elsewhere."""

    device: str
    sizes: str
    calls: int
    forward_host_ms: float
    forward_wall_ms: float
    step_host_ms: float
    step_wall_ms: float
    tables: dict[str, str]
    device_tasks: float | None = None

    def format(self) -> str:
        lines = [f"layer profile on {self.device}: {self.sizes}, {self.calls} calls each"]
        for what, host, wall in (("forward:           ", self.forward_host_ms, self.forward_wall_ms),
                                 ("forward + backward:", self.step_host_ms, self.step_wall_ms)):
            lines.append(f"  {what} {host:.4g} ms to issue, {wall:.4g} ms to finish")
        if self.device_tasks is not None:
            lines.append(f"  device tasks (kernels, copies, fills) per forward + backward: {self.device_tasks:.4g}")
        for title, table in self.tables.items():
            lines += ["", title, table]
        return "\n".join(lines)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _per_call_ms(call, calls: int, device: torch.device) -> tuple[float, float]:
    """(host ms, wall ms) per call over ``calls`` back-to-back calls, the device idle at the start."""
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        call()
    issued = time.perf_counter()
    _synchronize(device)
    finished = time.perf_counter()
    return (issued - start) * 1e3 / calls, (finished - start) * 1e3 / calls


def _device_sort_key(averages) -> str:
    """The profiler's name for self device time: ``self_device_time_total`` in recent torch, else the CUDA one."""
    first = averages[0] if len(averages) else None
    return "self_device_time_total" if hasattr(first, "self_device_time_total") else "self_cuda_time_total"


# how the layer runs: as it is, or under torch.compile in one of its modes ("reduce-overhead": CUDA graphs on a GPU)
COMPILE_MODES = ("none", "default", "reduce-overhead")


def profile_layer(device: str | torch.device = "cpu", batch: int = 1024, width: int = 256, grid_size: int = 5,
                  spline_order: int = 3, dtype: torch.dtype = torch.float32, calls: int = 20, warmup: int = 5,
                  seed: int = 0, rows: int = 25, compile_mode: str = "none") -> LayerProfile:
    """Profile ``BSplineKAN(width, width, grid_size, spline_order)`` (backend "auto") on x [batch, width], as it is
    or under ``torch.compile(mode=compile_mode)`` (one of COMPILE_MODES; each call then marks a new step for CUDA
    graphs, as a training loop's iterations are)."""
    for name, value in (("batch", batch), ("width", width), ("grid_size", grid_size), ("calls", calls),
                        ("rows", rows)):
        check_int(name, value, 1)
    check_int("warmup", warmup, 0)
    check_choice("compile_mode", compile_mode, COMPILE_MODES)
    device = resolve_device(device)
    torch.manual_seed(seed)
    layer = BSplineKAN(width, width, grid_size=grid_size, spline_order=spline_order).to(device, dtype)
    generator = torch.Generator(device=device).manual_seed(seed)
    low, high = INPUT_RANGE
    x = uniform_inputs((batch, width), low, high, generator, device, dtype).requires_grad_()
    grad_out = torch.randn(batch, width, generator=generator, device=device).to(dtype)
    wrt = [x, *(p for p in layer.parameters() if p.requires_grad)]
    run = layer if compile_mode == "none" else torch.compile(layer, mode=compile_mode)

    def forward():
        if compile_mode != "none":
            torch.compiler.cudagraph_mark_step_begin()
        return run(x)

    def step():
        return torch.autograd.grad(forward(), wrt, grad_out)

    for _ in range(warmup):
        step()
    forward_host, forward_wall = _per_call_ms(forward, calls, device)
    step_host, step_wall = _per_call_ms(step, calls, device)

    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    _synchronize(device)
    with torch.profiler.profile(activities=activities) as profiler:
        for _ in range(calls):
            with torch.profiler.record_function("kanlib.forward"):
                out = forward()
            with torch.profiler.record_function("kanlib.backward"):
                torch.autograd.grad(out, wrt, grad_out)
        _synchronize(device)
    averages = profiler.key_averages()
    tables = {"operators by self host time": averages.table(sort_by="self_cpu_time_total", row_limit=rows)}
    device_tasks = None
    if device.type == "cuda":
        tables["operators by self device time"] = averages.table(sort_by=_device_sort_key(averages), row_limit=rows)
        device_tasks = device_tasks_per_call(averages, calls)
    sizes = f"batch {batch}, width {width}, G = {grid_size}, k = {spline_order}, {str(dtype).removeprefix('torch.')}"
    if compile_mode != "none":
        sizes += f", torch.compile(mode={compile_mode!r})"
    return LayerProfile(str(device), sizes, calls, forward_host, forward_wall, step_host, step_wall, tables,
                        device_tasks)


def device_tasks_per_call(averages, calls: int) -> float:
    """The device's own events (kernels, copies, fills) in a profile's averages, per call."""
    return sum(event.count for event in averages if event.device_type == DeviceType.CUDA) / calls
