"""Lookup-table B-splines (KANtize): the basis read from a low-bit table instead of evaluated.

Within one knot interval the k + 1 nonzero bases depend only on where x lies in that interval. The table
holds them at ``2**position_bits`` evenly spaced positions per interval (the centres of the sub-intervals,
so the position error is at most half a sub-interval), stored as unsigned ``table_bits``-bit codes with one
scale: ``value = code * scale``, ``scale = max / (2**table_bits - 1)``. Zero bases stay exactly zero and,
as B-splines are nonnegative, every code is used.

On a uniform grid every interval of every input has the same pieces, so the table is one ``[2**a, k+1]``
block; after ``update_grid`` (per-input knots) there is one block per input and interval,
``[I * (G + 2k), 2**a, k+1]``.

Looking x up gives the input's *position code*: the interval and the position within it, which is how the
input is quantized on this path (``position_bits`` bits per interval).
"""
from __future__ import annotations

import torch

from ..basis import (LocalBasis, align_window, check_grid, cox_de_boor, find_span, is_uniform, window_start,
                     uniform_basis_matrix)
from ..checks import check_int
from ..ops.lut_linear.reference import TABLE_SHIFT
from .tensor import pack_bits, unpack_bits

__all__ = ["BasisTable", "TABLE_SHIFT", "ACTIVATION_BITS", "check_table_bits"]

MAX_POSITION_BITS = 12
ACTIVATION_BITS = 8  # the base activation's codes on the lookup-table path


def check_table_bits(table_bits, position_bits) -> None:
    """Raise unless ``table_bits`` is an int in 2..8 and ``position_bits`` one in 0..MAX_POSITION_BITS."""
    check_int("table_bits", table_bits, 2, 8)
    check_int("position_bits", position_bits, 0, MAX_POSITION_BITS)


class BasisTable:
    """A ``table_bits``-bit table of the B-spline basis at ``2**position_bits`` positions per knot interval.

    ``grid`` [I, G + 2k + 1] is the layer's extended knot grid; ``uniform`` (default: detected) picks the
    shared table of a uniform grid.
    """

    def __init__(self, grid: torch.Tensor, spline_order: int, position_bits: int = 8, table_bits: int = 8,
                 uniform: bool | None = None):
        if not isinstance(grid, torch.Tensor) or grid.dim() != 2 or not grid.is_floating_point():
            raise ValueError(f"grid must be a floating-point [I, G + 2k + 1] tensor, got "
                             f"{getattr(grid, 'shape', type(grid).__name__)}")
        check_int("spline_order", spline_order, 0, 64)
        check_grid(grid, spline_order)
        self.spline_order = spline_order
        self.position_bits = check_int("position_bits", position_bits, 0, MAX_POSITION_BITS)
        self.table_bits = check_int("table_bits", table_bits, 2, 8)
        self.grid = grid
        self.uniform = is_uniform(grid) if uniform is None else bool(uniform)
        values = self._exact_values()
        top = float(values.max())
        self.scale = top / (2 ** table_bits - 1) if top > 0 else 1.0
        codes = torch.round(values / self.scale).clamp_(0, 2 ** table_bits - 1).to(torch.uint8)
        self.shape = tuple(codes.shape)
        self.packed = pack_bits(codes.flatten(), table_bits)
        self.codes = unpack_bits(self.packed, table_bits, codes.numel()).view(self.shape)

    @property
    def n_positions(self) -> int:
        return 2 ** self.position_bits

    @property
    def nbytes(self) -> int:
        """Storage of the packed codes plus the one float32 scale."""
        return self.packed.numel() + 4

    def positions(self) -> torch.Tensor:
        """Where the table samples each interval, as fractions of it: [2**a] in (0, 1)."""
        return (torch.arange(self.n_positions, dtype=torch.float64, device=self.grid.device) + 0.5) / self.n_positions

    def values(self, dtype=torch.float32) -> torch.Tensor:
        """The tabulated (quantized) basis values ``codes * scale``: [T, 2**a, k+1]."""
        return self.codes.to(dtype) * self.scale

    def _exact_values(self) -> torch.Tensor:
        """Basis values at the sample positions in float64: [T, 2**a, k+1], r-th entry is basis ``span - k + r``."""
        k = self.spline_order
        t = self.positions()
        if self.uniform:
            matrix = uniform_basis_matrix(k, device=t.device)
            powers = t.unsqueeze(-1) ** torch.arange(k + 1, device=t.device, dtype=t.dtype)
            return (powers @ matrix).unsqueeze(0)
        grid = self.grid.double()
        n_in, n_knots = grid.shape
        left, width = grid[:, :-1], grid[:, 1:] - grid[:, :-1]  # [I, n_knots - 1]
        points = left.unsqueeze(-1) + width.unsqueeze(-1) * t  # [I, n_int, P]
        flat = points.permute(1, 2, 0).reshape(-1, n_in)  # [(n_int * P), I]
        dense = cox_de_boor(flat, grid, k).view(n_knots - 1, self.n_positions, n_in, -1)
        n_basis = dense.shape[-1]
        index = torch.arange(n_knots - 1, device=t.device).view(-1, 1) - k + torch.arange(k + 1, device=t.device)
        valid = (index >= 0) & (index < n_basis)
        picked = dense.gather(-1, index.clamp(0, n_basis - 1).view(-1, 1, 1, k + 1).expand(-1, self.n_positions,
                                                                                             n_in, -1))
        picked = torch.where(valid.view(-1, 1, 1, k + 1), picked, 0.0)
        return picked.permute(2, 0, 1, 3).reshape(n_in * (n_knots - 1), self.n_positions, k + 1)

    def lookup(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Position codes of x [..., I]: (span, row into the table's first two dims, inside) each [..., I].

        ``span`` is the knot interval, ``row`` indexes ``codes.view(-1, k+1)``, ``inside`` is False outside the
        extended grid and for NaN (where every basis is zero).
        """
        grid = self.grid
        n_in, n_knots = grid.shape
        if x.shape[-1] != n_in:
            raise ValueError(f"input must have shape (..., {n_in}), got {tuple(x.shape)}")
        x = x.to(torch.promote_types(x.dtype, torch.float32))  # half-precision positions would be too coarse
        span = find_span(x, grid, self.uniform, self.spline_order)
        row_offset = torch.arange(n_in, device=x.device) * n_knots
        left = grid.flatten()[span + row_offset]
        if self.uniform:
            inv_steps = ((n_knots - 1) / (grid[:, -1] - grid[:, 0]).double()).to(x.dtype)
            fraction = (x - left) * inv_steps
        else:
            width = grid.flatten()[span + 1 + row_offset] - left
            fraction = torch.where(width > 0, (x - left) / torch.where(width > 0, width, 1.0), 0.0)
        position = torch.nan_to_num(fraction * self.n_positions, nan=0.0).floor_().clamp_(0, self.n_positions - 1)
        position = position.long()
        inside = (x >= grid[:, 0]) & (x < grid[:, -1])
        if self.uniform:
            row = position
        else:
            row = (span + torch.arange(n_in, device=x.device) * (n_knots - 1)) * self.n_positions + position
        return span, row, inside

    def window_codes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(span [..., I], codes [..., I, k+1] uint8) of bases ``span - k + r``; zero codes outside the grid."""
        span, row, inside = self.lookup(x)
        codes = self.codes.view(-1, self.spline_order + 1)[row]
        return span, codes * inside.unsqueeze(-1).to(codes.dtype)

    def local_basis(self, x: torch.Tensor) -> LocalBasis:
        """The tabulated basis of x [..., I] in :class:`kanlib.basis.LocalBasis` window form (no derivatives)."""
        span, codes = self.window_codes(x)
        k = self.spline_order
        grid_size = self.grid.shape[1] - 2 * k - 1
        start = window_start(span, grid_size, k)
        values = codes.to(x.dtype) * self.scale
        return LocalBasis(start, align_window(values, span, start, k), None)

    def __repr__(self) -> str:
        kind = "uniform" if self.uniform else "per-input knots"
        return (f"BasisTable(spline_order={self.spline_order}, position_bits={self.position_bits}, "
                f"table_bits={self.table_bits}, {kind}, shape={self.shape}, nbytes={self.nbytes})")
