"""The lookup-table product's pieces in plain PyTorch: the table codes of the expanded input and the codes of
the base activation, what the numba and Triton kernels are tested against."""
from __future__ import annotations

import torch

from ...basis import align_window, window_start

__all__ = ["TABLE_SHIFT", "quantize_activation", "expand_codes"]

# 8-bit codes (0..255) enter int8 products shifted by this (code - 128); the integer paths add it back
# through the weights' column sums
TABLE_SHIFT = 128


def quantize_activation(values: torch.Tensor, scale: float | torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Symmetric ``bits``-bit codes of values (NaN -> 0): int8, same shape."""
    limit = 2 ** (bits - 1)
    codes = torch.nan_to_num(torch.round(values / scale), nan=0.0).clamp_(-limit, limit - 1)
    return codes.to(torch.int8)


def expand_codes(x: torch.Tensor, table) -> torch.Tensor:
    """The codes of x [N, I] in ``table`` (a :class:`kanlib.quant.BasisTable`) as the int8 matrix
    [N, I * (G+k)] (8-bit codes shifted by -128)."""
    k = table.spline_order
    n_in = x.shape[1]
    grid_size = table.grid.shape[1] - 2 * k - 1
    n_basis = grid_size + k
    span, codes = table.window_codes(x)
    start = window_start(span, grid_size, k)
    window = align_window(codes.to(torch.int16), span, start, k)
    shift = TABLE_SHIFT if table.table_bits == 8 else 0
    expanded = torch.full((x.shape[0], n_in, n_basis), -shift, dtype=torch.int16, device=x.device)
    expanded.scatter_(-1, start.unsqueeze(-1) + torch.arange(k + 1, device=x.device), window - shift)
    return expanded.view(x.shape[0], n_in * n_basis).to(torch.int8)
