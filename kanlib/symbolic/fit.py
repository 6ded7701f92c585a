"""The affine fit ``y ~ c * f(a * x + b) + d`` of one edge's samples (pykan's ``fit_params``)."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from ..checks import check_int, is_real

__all__ = ["AffineFit", "fit_affine", "correlation_r2"]

# Grid cells evaluated at once: N * rows * grid_number stays under this many values.
_CHUNK_VALUES = 2**24


class AffineFit(NamedTuple):
    """The fitted constants of ``c * f(a * x + b) + d`` and the R^2 of the grid search's best (a, b)."""
    a: float
    b: float
    c: float
    d: float
    r2: float


def correlation_r2(values: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """pykan's R^2 of the best line through (values, y): cov^2 / (var_f var_y + 1e-4) on sums, NaN as 0.

    values [N, ...], y [N] -> [...]. The 1e-4 keeps a constant ``values`` at 0 (so it favors larger signals).
    """
    centered_y = y - y.mean(0)
    centered = values - values.mean(0, keepdim=True)
    shape = (-1,) + (1,) * (values.dim() - 1)
    numerator = (centered * centered_y.view(shape)).sum(0) ** 2
    denominator = (centered**2).sum(0) * (centered_y**2).sum()
    return torch.nan_to_num(numerator / (denominator + 1e-4))


def _check_range(name: str, value) -> tuple[float, float]:
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != 2 \
            or not all(is_real(v) for v in value) or not float(value[0]) < float(value[1]):
        raise ValueError(f"{name} must be a pair (low, high) of numbers with low < high, got {value!r}")
    return float(value[0]), float(value[1])


def _grid_r2(x: torch.Tensor, y: torch.Tensor, function, a_values: torch.Tensor, b_values: torch.Tensor):
    """R^2 of every (a, b) cell: [len(a_values), len(b_values)], in chunks of a rows."""
    rows = max(1, _CHUNK_VALUES // max(1, x.shape[0] * len(b_values)))
    parts = []
    for start in range(0, len(a_values), rows):
        a_chunk = a_values[start:start + rows]
        inner = a_chunk[None, :, None] * x[:, None, None] + b_values[None, None, :]
        parts.append(correlation_r2(function(inner), y))
    return torch.cat(parts)


def fit_affine(x: torch.Tensor, y: torch.Tensor, function: Callable[[torch.Tensor], torch.Tensor],
               a_range=(-10.0, 10.0), b_range=(-10.0, 10.0), grid_number: int = 101,
               iterations: int = 3) -> AffineFit:
    """Fit ``y ~ c * function(a * x + b) + d`` for x, y [N] as pykan's ``fit_params``.

    ``iterations`` times, every (a, b) of a ``grid_number`` x ``grid_number`` grid over a_range x b_range is
    scored by :func:`correlation_r2` and the ranges shrink to the neighbours of the best cell (to the edge cell
    along an axis where the best is on the boundary). Then c, d are the least-squares line through
    ``(function(a x + b), y)`` (NaN values taken as 0). ``r2`` is the best cell's score.
    """
    if x.dim() != 1 or y.shape != x.shape:
        raise ValueError(f"fit_affine needs x and y of the same shape [N], got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[0] < 2:
        raise ValueError(f"fit_affine needs at least 2 samples, got {x.shape[0]}")
    for name, values in (("x", x), ("y", y)):
        if not bool(torch.isfinite(values).all()):
            raise ValueError(f"fit_affine needs finite samples; {name} has NaN or inf (c and d would be NaN)")
    grid_number = check_int("grid_number", grid_number, 3)
    iterations = check_int("iterations", iterations, 1)
    a_low, a_high = _check_range("a_range", a_range)
    b_low, b_high = _check_range("b_range", b_range)
    x, y = x.detach(), y.detach()
    for _ in range(iterations):
        a_values = torch.linspace(a_low, a_high, grid_number, dtype=x.dtype, device=x.device)
        b_values = torch.linspace(b_low, b_high, grid_number, dtype=x.dtype, device=x.device)
        r2 = _grid_r2(x, y, function, a_values, b_values)
        best = int(torch.argmax(r2))
        a_id, b_id = divmod(best, grid_number)
        last = grid_number - 1
        if a_id in (0, last) or b_id in (0, last):
            # On the boundary only the boundary axes shrink (to their edge cell); the other keeps its range.
            if a_id in (0, last):
                a_low, a_high = (a_values[0], a_values[1]) if a_id == 0 else (a_values[-2], a_values[-1])
            if b_id in (0, last):
                b_low, b_high = (b_values[0], b_values[1]) if b_id == 0 else (b_values[-2], b_values[-1])
        else:
            a_low, a_high = a_values[a_id - 1], a_values[a_id + 1]
            b_low, b_high = b_values[b_id - 1], b_values[b_id + 1]
        a_low, a_high, b_low, b_high = (float(v) for v in (a_low, a_high, b_low, b_high))
    a, b = a_values[a_id], b_values[b_id]
    values = torch.nan_to_num(function(a * x + b)).double()
    target = y.double()
    centered = values - values.mean()
    variance = (centered**2).sum()
    c = float((centered * (target - target.mean())).sum() / variance) if float(variance) > 0 else 0.0
    d = float(target.mean() - c * values.mean())
    return AffineFit(float(a), float(b), c, d, float(r2[a_id, b_id]))
