"""B-spline basis evaluation on pykan's extended knot grid.

A grid is a tensor ``[I, G + 2k + 1]``: for each of the I inputs, the G + 1 knots of the grid range
extended by k knots on each side. It defines ``G + k`` bases of order k per input; basis m is nonzero on
``[t_m, t_{m+k+1})`` and every basis is zero outside ``[t_0, t_{G+2k})``.

Four ways to evaluate, with one signature ``method(x, grid, spline_order) -> [..., I, G + k]``:

- :func:`cox_de_boor`: the recursion over all bases (the reference; any knots).
- :func:`uniform_closed_form`: local support on a uniform grid: find the knot span, evaluate the k + 1
  nonzero bases as polynomials in the coordinate measured from the span's own knot.
- :func:`local_de_boor`: local support on arbitrary knots (the triangular de Boor scheme).
- :func:`matrix_kan`: MatrixKAN (Coffman and Chen): on a uniform grid, the power basis
  ``[1, t, ..., t^k]`` of the span coordinate times the precomputed ``[k+1, k+1]`` basis matrix.

:func:`uniform_closed_form` and :func:`local_de_boor` are built on the window form :class:`LocalBasis`
that the layers consume directly.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

import torch

__all__ = [
    "LocalBasis",
    "cox_de_boor",
    "uniform_closed_form",
    "local_de_boor",
    "matrix_kan",
    "local_basis",
    "find_span",
    "uniform_basis_matrix",
    "is_uniform",
    "make_grid",
    "extend_grid",
    "check_grid",
    "cardinal_pieces",
    "window_start",
    "align_window",
]


@dataclass(frozen=True)
class LocalBasis:
    """The k + 1 possibly nonzero bases of each input value.

    ``start`` [..., I] (int64): index of the first basis of the window, in ``[0, G - 1]``.
    ``values`` [..., I, k+1]: ``values[..., r]`` is basis ``start + r`` at x (zero outside the grid).
    ``derivatives`` [..., I, k+1] or None: their derivatives with respect to x.
    """

    start: torch.Tensor
    values: torch.Tensor
    derivatives: torch.Tensor | None

    def to_dense(self, n_basis: int) -> torch.Tensor:
        """The full basis ``[..., I, n_basis]`` with zeros outside the window."""
        dense = self.values.new_zeros(*self.values.shape[:-1], n_basis)
        offsets = torch.arange(self.values.shape[-1], device=self.start.device)
        return dense.scatter_(-1, self.start.unsqueeze(-1) + offsets, self.values)


def extend_grid(knots: torch.Tensor, spline_order: int) -> torch.Tensor:
    """Extend ``[I, G + 1]`` knots by ``spline_order`` knots on each side, spaced by the mean interval."""
    step = (knots[:, -1:] - knots[:, :1]) / (knots.shape[1] - 1)
    offsets = torch.arange(1, spline_order + 1, device=knots.device, dtype=knots.dtype)
    left = knots[:, :1] - step * offsets.flip(0)
    right = knots[:, -1:] + step * offsets
    return torch.cat([left, knots, right], dim=1)


def make_grid(in_features: int, grid_size: int, spline_order: int, grid_range=(-1.0, 1.0),
              dtype=torch.float32, device=None) -> torch.Tensor:
    """pykan's initial grid: ``grid_size`` uniform intervals on ``grid_range``, extended; ``[I, G + 2k + 1]``."""
    knots = torch.linspace(float(grid_range[0]), float(grid_range[1]), grid_size + 1, dtype=dtype, device=device)
    return extend_grid(knots.expand(in_features, grid_size + 1), spline_order)


def check_grid(grid: torch.Tensor, spline_order: int) -> None:
    """Raise ValueError unless ``grid`` is ``[I, G + 2k + 1]`` with G >= 1 and non-decreasing knots."""
    if grid.dim() != 2 or grid.shape[1] < 2 * spline_order + 2:
        raise ValueError(
            f"grid must have shape [in_features, grid_size + 2*spline_order + 1] with grid_size >= 1 "
            f"(spline_order={spline_order}), got {tuple(grid.shape)}")
    if bool((grid.diff(dim=1) < 0).any()):
        raise ValueError("grid knots must be non-decreasing along each row")


def is_uniform(grid: torch.Tensor, rtol: float | None = None) -> bool:
    """True when every row's knots are equally spaced within ``rtol`` of the spacing (None: 1e-10 for float64,
    1e-5 for the narrower dtypes: a float32 grid cast to float64 is uniform only to float32's rounding, and the
    closed form would then be that far from the knots' own basis)."""
    if rtol is None:
        rtol = 1e-10 if grid.dtype == torch.float64 else 1e-5
    steps = (grid[:, -1:] - grid[:, :1]) / (grid.shape[1] - 1)
    if bool((steps <= 0).any()):
        return False
    line = grid[:, :1] + steps * torch.arange(grid.shape[1], device=grid.device, dtype=grid.dtype)
    return bool(((grid - line).abs() <= rtol * steps).all())


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den with 0 where den == 0 (a repeated knot), keeping NaN from num."""
    return num / torch.where(den == 0, torch.full_like(den, float("inf")), den)


def cox_de_boor(x: torch.Tensor, grid: torch.Tensor, spline_order: int) -> torch.Tensor:
    """Reference: all ``G + k`` bases by the Cox-de Boor recursion. x [..., I], grid [I, n] -> [..., I, n - k - 1]."""
    x = x.unsqueeze(-1)
    basis = ((x >= grid[:, :-1]) & (x < grid[:, 1:])).to(x.dtype)
    basis = torch.where(torch.isnan(x), x, basis)
    for d in range(1, spline_order + 1):
        left = _safe_div(x - grid[:, : -(d + 1)], grid[:, d:-1] - grid[:, : -(d + 1)])
        right = _safe_div(grid[:, d + 1:] - x, grid[:, d + 1:] - grid[:, 1:-d])
        basis = left * basis[..., :-1] + right * basis[..., 1:]
    return basis


@lru_cache(maxsize=None)
def cardinal_pieces(order: int) -> tuple[tuple[Fraction, ...], ...]:
    """Polynomial pieces of the cardinal B-spline of ``order`` on [r, r+1], in t = u - r, exact."""
    if order == 0:
        return ((Fraction(1),),)
    lower = cardinal_pieces(order - 1)

    def times_linear(poly, c0, c1):  # poly(t) * (c0 + c1 t) / order
        out = [Fraction(0)] * (len(poly) + 1)
        for p, a in enumerate(poly):
            out[p] += a * c0 / order
            out[p + 1] += a * c1 / order
        return out

    pieces = []
    for r in range(order + 1):
        piece = [Fraction(0)] * (order + 1)
        if r <= order - 1:  # u / order * B_{order-1}(u), u = t + r
            for p, a in enumerate(times_linear(lower[r], Fraction(r), Fraction(1))):
                piece[p] += a
        if r >= 1:  # (order + 1 - u) / order * B_{order-1}(u - 1)
            for p, a in enumerate(times_linear(lower[r - 1], Fraction(order + 1 - r), Fraction(-1))):
                piece[p] += a
        pieces.append(tuple(piece))
    return tuple(pieces)


@lru_cache(maxsize=None)
def _basis_matrix_cpu(spline_order: int) -> torch.Tensor:
    pieces = cardinal_pieces(spline_order)
    k = spline_order
    rows = [[float(pieces[k - r][p]) for r in range(k + 1)] for p in range(k + 1)]
    return torch.tensor(rows, dtype=torch.float64)


def uniform_basis_matrix(spline_order: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """``[k+1, k+1]`` matrix M with ``values[r] = sum_p t**p * M[p, r]`` on a uniform span (MatrixKAN's form)."""
    return _basis_matrix_cpu(spline_order).to(dtype=dtype, device=device)


def window_start(span: torch.Tensor, grid_size: int, spline_order: int) -> torch.Tensor:
    return (span - spline_order).clamp(0, grid_size - 1)


def align_window(values: torch.Tensor, span: torch.Tensor, start: torch.Tensor, spline_order: int) -> torch.Tensor:
    """Move values of bases ``span - k + r`` to the window of bases ``start + r``; zeros where none."""
    k = spline_order
    padded = torch.nn.functional.pad(values, (k, k))
    shift = (start - span + 2 * k).unsqueeze(-1)
    return padded.gather(-1, shift + torch.arange(k + 1, device=values.device))


def _uniform_steps(grid: torch.Tensor):
    first = grid[:, 0]
    step = (grid[:, -1] - first) / (grid.shape[1] - 1)
    return first, step


def find_span(x: torch.Tensor, grid: torch.Tensor, uniform: bool, spline_order: int) -> torch.Tensor:
    """Knot span j of each x (``t_j <= x < t_{j+1}``), clamped to ``[0, n - 2]``: x [..., I] -> int64 [..., I].

    On a uniform grid the span is computed arithmetically (off by one within rounding of a knot, where every
    basis of order >= 1 is continuous; order 0 is corrected against the knots); elsewhere by binary search.
    """
    n_knots = grid.shape[1]
    if uniform:
        first, step = _uniform_steps(grid)
        span = torch.nan_to_num((x - first) / step, nan=0.0).clamp(0, n_knots - 2).long()
        if spline_order == 0:
            flat_index = span + torch.arange(grid.shape[0], device=x.device) * n_knots
            span = span - (x < grid.flatten()[flat_index]).long()
            span = span + (x >= grid.flatten()[flat_index + 1]).long()
            span = span.clamp(0, n_knots - 2)
        return span
    flat_x = x.reshape(-1, grid.shape[0]).t().contiguous()
    span = torch.searchsorted(grid.contiguous(), flat_x, right=True).t().reshape(x.shape)
    return (span - 1).clamp(0, n_knots - 2)


def local_basis(x: torch.Tensor, grid: torch.Tensor, spline_order: int, uniform: bool,
                derivatives: bool = False, span: torch.Tensor | None = None) -> LocalBasis:
    """Window form of the basis. x [..., I], grid [I, G + 2k + 1]; ``uniform`` picks the closed form.

    ``span`` (from :func:`find_span`) may be passed to skip the search.
    """
    if span is None:
        span = find_span(x, grid, uniform, spline_order)
    if uniform:
        return _local_uniform(x, grid, spline_order, derivatives, span)
    return _local_general(x, grid, spline_order, derivatives, span)


def _horner(t: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """``sum_p t**p * matrix[p]`` for t [...] and matrix [P, R] -> [..., R]."""
    t = t.unsqueeze(-1)
    out = matrix[-1].expand(*t.shape[:-1], matrix.shape[1])
    for row in matrix.flip(0)[1:]:
        out = torch.addcmul(row, out, t)
    return out


def _local_uniform(x, grid, spline_order, derivatives, span):
    k = spline_order
    n_in, n_knots = grid.shape
    grid_size = n_knots - 2 * k - 1
    first, step = _uniform_steps(grid)
    span_knot = grid.flatten()[span + torch.arange(n_in, device=x.device) * n_knots]
    # The coordinate is measured from the span's own knot, so its error does not grow with G. Clamping it
    # to [0, 1] makes every basis vanish outside the extended grid (for k >= 1: the end pieces are 0 there).
    # Its gradient: 1 / step inside [t_0, t_n), also where the arithmetic span is the neighbour of x's own
    # within rounding of a knot and the clamp moves t by that rounding; none outside (at x = t_n the clamp
    # would pass the left slope on).
    inside = (x >= first) & (x < grid[:, -1])
    coordinate = (x - span_knot) / step
    clamped = coordinate.clamp(0.0, 1.0)
    t = torch.where(inside, coordinate + (clamped - coordinate).detach(), clamped.detach())
    matrix = uniform_basis_matrix(k, dtype=x.dtype, device=x.device)
    values = _horner(t, matrix)
    if k == 0:
        values = torch.where(inside.unsqueeze(-1), values, 0.0)
    start = window_start(span, grid_size, k)
    d_values = None
    if derivatives:
        if k == 0:
            d_values = torch.zeros_like(values)
        else:
            d_matrix = matrix[1:] * torch.arange(1, k + 1, device=x.device, dtype=x.dtype).unsqueeze(-1)
            d_values = align_window(_horner(t, d_matrix) / step.unsqueeze(-1), span, start, k)
            # the clamped coordinate is flat outside [t_0, t_n): no slope there
            d_values = torch.where(inside.unsqueeze(-1), d_values, 0.0)
    return LocalBasis(start, align_window(values, span, start, k), d_values)


def _local_general(x, grid, spline_order, derivatives, span):
    k = spline_order
    n_in, n_knots = grid.shape
    grid_size = n_knots - 2 * k - 1
    inside = (x >= grid[:, 0]) & (x < grid[:, -1])
    # Knots g[j - k + 1 .. j + k] around each span j, from a grid padded so the window always exists.
    padded = extend_grid(grid, k) if k > 0 else grid
    window_index = span.unsqueeze(-1) + torch.arange(1, 2 * k + 1, device=x.device)
    row_offset = (torch.arange(n_in, device=x.device) * padded.shape[1]).unsqueeze(-1)
    knots = padded.flatten()[window_index + row_offset]  # [..., I, 2k]; knots[q] = g[j - k + 1 + q]
    # Outside the grid the recursion runs at the span's knot instead of at x, and its values are dropped below: at x
    # its terms can overflow (float16), and autograd's 0 * inf through the dropped branch gave NaN gradients.
    xs = (torch.where(inside | torch.isnan(x), x, knots[..., k - 1]) if k > 0 else x).unsqueeze(-1)
    left = [None] + [xs[..., 0] - knots[..., k - d] for d in range(1, k + 1)]
    right = [None] + [knots[..., k - 1 + d] - xs[..., 0] for d in range(1, k + 1)]
    values = [torch.where(torch.isnan(x), x, torch.ones_like(x))]
    lower = values
    for d in range(1, k + 1):
        lower = values
        saved = torch.zeros_like(x)
        values = []
        for r in range(d):
            temp = _safe_div(lower[r], right[r + 1] + left[d - r])
            values.append(saved + right[r + 1] * temp)
            saved = left[d - r] * temp
        values.append(saved)
    stacked = torch.where(inside.unsqueeze(-1), torch.stack(values, -1), 0.0)
    start = window_start(span, grid_size, k)
    d_values = None
    if derivatives:
        d_values = torch.where(inside.unsqueeze(-1), _general_derivatives(lower, knots, k), 0.0)
        d_values = align_window(d_values, span, start, k)
    return LocalBasis(start, align_window(stacked, span, start, k), d_values)


def _general_derivatives(lower, knots, k):
    """d/dx of bases j-k+r from the order k-1 values ``lower`` (bases j-k+1..j) and the knot window."""
    if k == 0:
        return torch.zeros_like(lower[0]).unsqueeze(-1)
    zero = torch.zeros_like(lower[0])
    out = []
    for r in range(k + 1):
        # basis m = j-k+r: k * (B_{m,k-1} / (t_{m+k} - t_m) - B_{m+1,k-1} / (t_{m+k+1} - t_{m+1}))
        rise = _safe_div(lower[r - 1], knots[..., k - 1 + r] - knots[..., r - 1]) if r >= 1 else zero
        fall = _safe_div(lower[r], knots[..., k + r] - knots[..., r]) if r <= k - 1 else zero
        out.append(k * (rise - fall))
    return torch.stack(out, -1)


def uniform_closed_form(x: torch.Tensor, grid: torch.Tensor, spline_order: int) -> torch.Tensor:
    """All ``G + k`` bases via the uniform closed form (grid must be uniform). x [..., I] -> [..., I, G + k]."""
    return local_basis(x, grid, spline_order, uniform=True).to_dense(grid.shape[1] - spline_order - 1)


def local_de_boor(x: torch.Tensor, grid: torch.Tensor, spline_order: int) -> torch.Tensor:
    """All ``G + k`` bases via the local triangular scheme on any knots. x [..., I] -> [..., I, G + k]."""
    return local_basis(x, grid, spline_order, uniform=False).to_dense(grid.shape[1] - spline_order - 1)


def matrix_kan(x: torch.Tensor, grid: torch.Tensor, spline_order: int) -> torch.Tensor:
    """All ``G + k`` bases the MatrixKAN way (uniform grids only). x [..., I] -> [..., I, G + k].

    Per input value: the span j and t = (x - t_j) / h in [0, 1], then one product
    ``[..., I, k+1] @ [k+1, k+1]`` of the powers of t with :func:`uniform_basis_matrix`, scattered into place.
    """
    if not is_uniform(grid):
        raise ValueError("matrix_kan needs uniform knots in every row of the grid, got a non-uniform grid "
                         "(use cox_de_boor or local_de_boor)")
    k = spline_order
    n_in, n_knots = grid.shape
    grid_size = n_knots - 2 * k - 1
    first, step = _uniform_steps(grid)
    span = find_span(x, grid, True, k)
    span_knot = grid.flatten()[span + torch.arange(n_in, device=x.device) * n_knots]
    t = ((x - span_knot) / step).clamp(0.0, 1.0)  # clamped: the end pieces vanish beyond the grid (k >= 1)
    powers = t.unsqueeze(-1) ** torch.arange(k + 1, device=x.device, dtype=x.dtype)
    values = powers @ uniform_basis_matrix(k, dtype=x.dtype, device=x.device)
    if k == 0:
        values = torch.where(((x >= first) & (x < grid[:, -1])).unsqueeze(-1), values, 0.0)
    start = window_start(span, grid_size, k)
    return LocalBasis(start, align_window(values, span, start, k), None).to_dense(grid_size + k)
