"""Layer benchmark: one B-spline KAN layer against the performance model's floor, an MLP layer, an
unfused layer and pykan, all measured in the same run.

For each grid size G, with batch B, I = O = width and spline order k, the candidates are:

- ``dense``: the floor, ``X @ W`` with X [B, K], W [K, O], K = I*(G+k+1); X and W require grad, as
  the expanded input and the weight of an unfused layer would.
- ``mlp``: ``silu(nn.Linear(I, O)(x))``, an MLP layer of the same width.
- ``bsplinekan``: ``kanlib.BSplineKAN(I, O, grid_size=G, spline_order=k)`` with ``backend="auto"``: the
  numba CPU kernels on the CPU (the local-support ones once G is large, see
  :func:`kanlib.ops.spline_linear.prefers_sparse`), the Triton kernels on CUDA.
- ``unfused``: :class:`UnfusedKAN` (efficient-kan's layout) holding the same function as ``bsplinekan``;
  it keeps the [B, I, G+k] basis for backward.
- ``pykan``: pykan's ``KANLayer(I, O, num=G, k=k)`` (its first output), timed with fewer repeats.

Inputs x [B, I] are uniform on the grid range widened by 10% of its width on each side, drawn from a
seeded torch.Generator; parameters are initialized after ``torch.manual_seed(seed)``.

Figures of each row (one row per grid size and candidate); times in ms:

- ``fwd_*_ms``: the forward pass as in training (autograd recording), median, quartiles, min, max.
- ``fwdbwd_*_ms``: forward, then ``torch.autograd.grad`` of the output against the input and every
  trainable parameter with a fixed random output gradient [B, O]. Gradients are returned, never
  accumulated into ``.grad``, so every run of every candidate starts from the same state.
- ``ratio_to_dense``: forward+backward median over dense's, same grid size, same run.
- ``peak_bytes``: peak training memory of one forward+backward step: the peak of what the step
  allocates (``kanlib.bench.peak_memory_bytes``) plus ``state_bytes``, the bytes of the tensors the step
  reads: its input, the output gradient, and the parameters and buffers. The dense product is thus
  charged for its X [B, K] and W exactly as a layer is charged for its x [B, I] and parameters.
- ``memory_ratio_to_dense``: peak_bytes over dense's.
- ``flops``, ``gflops_per_s`` (dense and bsplinekan; None for the others): forward+backward counted as
  3x the dense product's forward 2*B*K*O.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..checks import check_int, resolve_device
from ..layers import BSplineKAN
from .candidates import (DTYPES, GRID_RANGE, OUTSIDE_FRACTION, Candidate, UnfusedKAN, check_sizes, measure,
                         module_candidate, nbytes, pykan_layer, uniform_inputs)
from .targets import target_entry

__all__ = [
    "CANDIDATES",
    "DTYPES",
    "TABLE_COLUMNS",
    "TARGETS",
    "TARGET_CONFIGURATION",
    "run_layer_benchmark",
    "target_report",
]

CANDIDATES = ("dense", "mlp", "bsplinekan", "unfused", "pykan")
TABLE_COLUMNS = (
    "grid", "candidate", "fwd_median_ms", "fwdbwd_median_ms", "fwdbwd_q25_ms", "fwdbwd_q75_ms",
    "ratio_to_dense", "peak_bytes", "memory_ratio_to_dense", "gflops_per_s",
)
# The goals, for bsplinekan at TARGET_CONFIGURATION: (name, grid, figure, reference grid or None for dense's
# figure at the same grid, goal, direction). The grid sweep's: a layer near the nonzero work of its local
# support at large G (its time no longer growing with G), and near the dense product where the dense path runs.
TARGETS = (
    ("fwd+bwd time of bsplinekan / dense at G = 50", 50, None, 0.35, "<="),
    ("fwd+bwd time of bsplinekan at G = 100 / at G = 50", 100, 50, 1.5, "<="),
    ("fwd+bwd time of bsplinekan at G = 200 / at G = 50", 200, 50, 1.5, "<="),
    ("fwd+bwd time of bsplinekan / dense at G = 5", 5, None, 1.15, "<="),
)
TARGET_CONFIGURATION = {"batch": 1024, "width": 256, "order": 3, "dtype": "float32"}


def target_report(rows: Sequence[dict]) -> list[dict]:
    """The goals (TARGETS) on rows measured at TARGET_CONFIGURATION; a value is None when its grid sizes were not
    measured. ``python -m kanlib bench layer --grid 5 50 100 200`` measures them all."""
    times = {(row["grid"], row["candidate"]): row["fwdbwd_median_ms"] for row in rows
             if all(row.get(key) == value for key, value in TARGET_CONFIGURATION.items())}
    report = []
    for name, grid_size, reference_grid, goal, direction in TARGETS:
        top = times.get((grid_size, "bsplinekan"))
        bottom = times.get((grid_size, "dense") if reference_grid is None else (reference_grid, "bsplinekan"))
        report.append(target_entry(name, top / bottom if top is not None and bottom else None, direction, goal))
    return report


def _candidates(batch: int, width: int, grid_size: int, order: int, device: torch.device, dtype: torch.dtype,
                seed: int, skip_pykan: bool) -> list[Candidate]:
    """The candidates for one grid size, each with its own inputs drawn from the same seed."""
    generator = torch.Generator(device=device).manual_seed(seed)
    span = GRID_RANGE[1] - GRID_RANGE[0]
    low, high = GRID_RANGE[0] - OUTSIDE_FRACTION * span, GRID_RANGE[1] + OUTSIDE_FRACTION * span
    x = uniform_inputs((batch, width), low, high, generator, device, dtype).requires_grad_()
    expanded_width = width * (grid_size + order + 1)
    dense_x = uniform_inputs((batch, expanded_width), low, high, generator, device, dtype).requires_grad_()
    dense_w = (torch.randn(expanded_width, width, generator=generator, device=device, dtype=torch.float32)
               * expanded_width ** -0.5).to(dtype).requires_grad_()

    torch.manual_seed(seed)
    mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU()).to(device=device, dtype=dtype)
    bspline = BSplineKAN(width, width, grid_size=grid_size, spline_order=order, grid_range=GRID_RANGE,
                         device=device, dtype=dtype)
    candidates = [
        Candidate("dense", lambda: dense_x @ dense_w, (dense_x, dense_w), nbytes([dense_x, dense_w])),
        module_candidate("mlp", mlp, x),
        module_candidate("bsplinekan", bspline, x),
        module_candidate("unfused", UnfusedKAN.from_bspline(bspline), x),
    ]
    if not skip_pykan:
        pykan = pykan_layer(width, grid_size, order, device, dtype)
        candidates.append(module_candidate("pykan", pykan, x, forward=lambda: pykan(x)[0]))
    return candidates


def run_layer_benchmark(device: str | torch.device, batch: int, width: int, grids: Sequence[int], order: int = 3,
                        dtype: torch.dtype = torch.float32, repeat: int = 20, warmup: int = 3,
                        skip_pykan: bool = False, seed: int = 0) -> list[dict]:
    """Time every candidate (CANDIDATES) at each grid size in ``grids``; one row per grid and candidate.

    device: 'cpu', 'cuda' or 'auto'. batch B, width I = O, order k. pykan runs
    ``min(repeat, max(3, repeat // 10))`` times after at most one warm-up. Row keys: see the module docstring.
    """
    device = resolve_device(device)
    check_int("batch", batch, 1)
    check_int("width", width, 1)
    check_int("order", order, 1)
    check_int("repeat", repeat, 1)
    check_int("warmup", warmup, 0)
    check_int("seed", seed, 0)
    check_sizes("grids", grids, "grid sizes")
    if dtype not in DTYPES.values():
        raise ValueError(f"dtype: expected one of {list(DTYPES.values())}, got {dtype!r}")

    dtype_name = str(dtype).removeprefix("torch.")
    rows = []
    for grid_size in grids:
        grad_out = torch.randn(batch, width, generator=torch.Generator(device=device).manual_seed(seed + 1),
                               device=device, dtype=torch.float32).to(dtype)
        expanded_width = width * (grid_size + order + 1)
        forward_backward_flops = 3 * 2 * batch * expanded_width * width
        grid_rows = []
        candidates = _candidates(batch, width, grid_size, order, device, dtype, seed, skip_pykan)
        fast = [c for c in candidates if c.name != "pykan"]
        slow = [c for c in candidates if c.name == "pykan"]
        measured = measure(fast, grad_out, device, repeat, warmup)
        if slow:
            measured.update(measure(slow, grad_out, device, min(repeat, max(3, repeat // 10)), min(warmup, 1)))
        for candidate in candidates:
            figures = measured[candidate.name]
            counted = candidate.name in ("dense", "bsplinekan")
            grid_rows.append({
                "grid": grid_size, "candidate": candidate.name, "batch": batch, "width": width, "order": order,
                "dtype": dtype_name, "dense_k": expanded_width, **figures,
                "flops": forward_backward_flops if counted else None,
                "gflops_per_s": forward_backward_flops / (figures["fwdbwd_median_ms"] * 1e6) if counted else None,
            })
        dense = grid_rows[0]
        for row in grid_rows:
            row["ratio_to_dense"] = row["fwdbwd_median_ms"] / dense["fwdbwd_median_ms"]
            row["memory_ratio_to_dense"] = row["peak_bytes"] / dense["peak_bytes"]
        rows.extend(grid_rows)
    return rows
