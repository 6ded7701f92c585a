"""CPU kernel (numba) for the lookup-table KAN product: the int8 codes of the expanded input in one pass.

For each input value it finds the knot span and the position within it, reads the k + 1 basis codes from
the table and writes them into the spline matrix, and writes the 8-bit code of the base activation. The
integer products that follow are BLAS-free int8 GEMMs (``torch._int_mm``). The reference is
:func:`kanlib.ops.lut_linear.reference.expand_codes` with :func:`kanlib.ops.lut_linear.reference.quantize_activation`.
"""
from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange

from ..spline_linear.cpu import ACTIVATION_IDS, activation_at, find_span_at
from .reference import TABLE_SHIFT


@njit(parallel=True, cache=True, error_model="numpy")
def expand_codes(x, grid, inv_steps, uniform, spline_order, n_positions, table, shift, activation, act_scale,
                 act_limit, spline_out, base_out):
    """spline_out [N, I*(G+k)] int8 (table codes minus shift, -shift where a basis is zero) and base_out
    [N, I] int8 (codes of the base activation, clamped to [-act_limit, act_limit - 1]).

    table [rows, k+1] uint8: row ``position`` on a uniform grid, else ``(i * (n_knots-1) + span) * P + position``.
    """
    n_rows, n_in = x.shape
    n_knots = grid.shape[1]
    k = spline_order
    n_basis = spline_out.shape[1] // n_in
    for n in prange(n_rows):
        for i in range(n_in):
            value = x[n, i]
            offset = i * n_basis
            for m in range(n_basis):
                spline_out[n, offset + m] = -shift
            activated = activation_at(value, activation) / act_scale
            if activated != activated:
                base_out[n, i] = 0
            else:
                code = np.round(activated)
                base_out[n, i] = int(min(max(code, -act_limit), act_limit - 1))
            span = find_span_at(value, grid, inv_steps, i, uniform, k)
            if span < 0:
                continue
            if uniform:
                fraction = (value - grid[i, span]) * inv_steps[i]
            else:
                width = grid[i, span + 1] - grid[i, span]
                fraction = (value - grid[i, span]) / width if width > 0 else 0.0
            position = min(max(int(np.floor(fraction * n_positions)), 0), n_positions - 1)
            row = position if uniform else (i * (n_knots - 1) + span) * n_positions + position
            for r in range(k + 1):
                m = span - k + r
                if 0 <= m < n_basis:
                    spline_out[n, offset + m] = int(table[row, r]) - shift


def expand_codes_cpu(x: torch.Tensor, table, act_scale: float, activation: str, act_bits: int):
    """The numba kernel's (spline codes [N, I*(G+k)], base codes [N, I]) for a float32/float64 CPU x."""
    grid = table.grid.to(x.dtype).contiguous()
    n_in, n_knots = grid.shape
    n_basis = n_knots - table.spline_order - 1
    inv_steps = ((n_knots - 1) / (grid[:, -1] - grid[:, 0]).double()).to(x.dtype)
    spline = torch.empty(x.shape[0], n_in * n_basis, dtype=torch.int8)
    base = torch.empty(x.shape[0], n_in, dtype=torch.int8)
    expand_codes(x.detach().contiguous().numpy(), grid.numpy(), inv_steps.numpy(), table.uniform,
                 table.spline_order, table.n_positions, table.codes.view(-1, table.spline_order + 1).numpy(),
                 TABLE_SHIFT if table.table_bits == 8 else 0, ACTIVATION_IDS[activation],
                 float(act_scale), 2 ** (act_bits - 1), spline.numpy(), base.numpy())
    return spline, base
