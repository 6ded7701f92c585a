"""Session setup and the helpers every test file shares.

Without a CUDA device the Triton kernels run under Triton's interpreter on the CPU; the switch is read when
triton is first imported, so it is set here, before any test module imports it.

Helpers (``from conftest import random_grid, inputs_around``): random knot grids, uniform or not, and inputs
that cover the extended grid and reach beyond it on both sides.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from kanlib.basis import extend_grid  # noqa: E402  (after the interpreter switch)


def random_grid(n_in: int, grid_size: int, spline_order: int, generator: torch.Generator, *, uniform: bool = False,
                repeat_knot: bool = False, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[I, G+2k+1] extended knots with a random range per input: evenly spaced, or sorted random knots
    (the shape pykan's update_grid leaves), optionally with one knot repeated."""
    low = torch.rand(n_in, 1, generator=generator, dtype=torch.float64) * 2 - 2
    width = torch.rand(n_in, 1, generator=generator, dtype=torch.float64) * 2 + 1
    if uniform:
        fractions = torch.linspace(0, 1, grid_size + 1, dtype=torch.float64).expand(n_in, -1)
    else:
        gaps = torch.rand(n_in, grid_size, generator=generator, dtype=torch.float64) + 0.2
        fractions = torch.cat([torch.zeros(n_in, 1, dtype=torch.float64), gaps.cumsum(1)], 1)
        fractions = fractions / fractions[:, -1:]
        if repeat_knot and grid_size >= 2:
            fractions[:, 1] = fractions[:, 2]
    return extend_grid(low + width * fractions, spline_order).to(dtype)


def inputs_around(grid: torch.Tensor, n: int, generator: torch.Generator, *, outside: float = 0.5,
                  dtype: torch.dtype | None = None, knots: bool = False, specials: bool = False) -> torch.Tensor:
    """x [n, I] uniform over each input's extended grid widened by ``outside`` times its width on both sides.

    ``knots``: the first rows are the knots themselves (where the half-open intervals meet). ``specials``: a row
    with +inf and -inf and a last row of NaN, where there is room.
    """
    low, high = grid[:, 0].double(), grid[:, -1].double()
    span = high - low
    u = torch.rand(n, grid.shape[0], generator=generator, dtype=torch.float64) * (1 + 2 * outside) - outside
    x = (low + u * span).to(dtype or grid.dtype)
    first = 0
    if knots:
        rows = min(n, grid.shape[1])
        x[:rows] = grid.t()[:rows].to(x.dtype)
        first = rows
    if specials and n - first >= 2:
        x[first, 0], x[first, -1] = float("inf"), float("-inf")
        x[-1] = float("nan")
    return x
