"""The lookup-table KAN product in integers: table codes times weight codes, one scale per output.

With symmetric weights quantized per tensor or per output channel, a layer's output factors as

    y[n, o] = table.scale * spline_scale[o] * sum_{i, j} A[n, i, j] * Ws[i, j, o]
            + act_scale   * base_scale[o]   * sum_i   a[n, i]    * Wb[i, o]

where ``A`` holds the table codes of each input's k + 1 nonzero bases (all other entries 0), ``a`` the 8-bit
codes of the base activation and ``Ws``, ``Wb`` the int8 weight codes: two integer matrix products with int32
accumulation (``torch._int_mm``), then one float scale per output. 8-bit table codes (up to 255) do not fit
int8; they are shifted by -128 and ``128 * sum_j Ws[j, o]`` is added back, exactly, in int32.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..basis import _align, _window_start
from ..spline_linear import BASE_ACTIVATIONS
from .table import TABLE_SHIFT, BasisTable
from .tensor import QuantizedTensor

__all__ = ["IntegerWeights", "LUT_METHODS", "lut_linear", "quantize_activation", "expand_codes"]

LUT_METHODS = ("auto", "torch", "cpu", "triton")


@dataclass
class IntegerWeights:
    """int8 weight codes with one float scale per output.

    ``spline_codes`` [I * (G+k), O] (row ``i * (G+k) + j``), ``spline_scale`` [O]; ``base_codes`` [I, O],
    ``base_scale`` [O]; ``spline_column_sums`` [O] int32, used to undo the shift of 8-bit table codes.
    """

    spline_codes: torch.Tensor
    spline_scale: torch.Tensor
    base_codes: torch.Tensor
    base_scale: torch.Tensor

    def __post_init__(self):
        self.spline_column_sums = self.spline_codes.sum(0, dtype=torch.int32)

    @classmethod
    def from_quantized(cls, spline: QuantizedTensor, base: QuantizedTensor) -> "IntegerWeights":
        """From symmetric 5..8-bit or packed codes with one scale per tensor or per output channel:
        spline weights [I, O, G+k] and base weights [I, O]."""
        n_out = base.shape[1]
        return cls(spline.codes().permute(0, 2, 1).reshape(-1, n_out).to(torch.int8).contiguous(),
                   spline.scale.expand(1, n_out, 1).reshape(n_out).float(),
                   base.codes().to(torch.int8).contiguous(), base.scale.expand(1, n_out).reshape(n_out).float())


def quantize_activation(values: torch.Tensor, scale: float | torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Symmetric ``bits``-bit codes of values (NaN -> 0): int8, same shape."""
    limit = 2 ** (bits - 1)
    codes = torch.nan_to_num(torch.round(values / scale), nan=0.0).clamp_(-limit, limit - 1)
    return codes.to(torch.int8)


def expand_codes(x: torch.Tensor, table: BasisTable) -> torch.Tensor:
    """The table codes of x [N, I] as the int8 matrix [N, I * (G+k)] (8-bit codes shifted by -128)."""
    k = table.spline_order
    n_in = x.shape[1]
    grid_size = table.grid.shape[1] - 2 * k - 1
    n_basis = grid_size + k
    span, codes = table.window_codes(x)
    start = _window_start(span, grid_size, k)
    window = _align(codes.to(torch.int16), span, start, k)
    shift = TABLE_SHIFT if table.table_bits == 8 else 0
    expanded = torch.full((x.shape[0], n_in, n_basis), -shift, dtype=torch.int16, device=x.device)
    expanded.scatter_(-1, start.unsqueeze(-1) + torch.arange(k + 1, device=x.device), window - shift)
    return expanded.view(x.shape[0], n_in * n_basis).to(torch.int8)


def _row_major(t: torch.Tensor) -> torch.Tensor:
    """t with plain row-major strides. ``torch._int_mm`` on the CPU reads the stride of a size-1 dimension
    (a [K, 1] matrix with stride (1, 2) counts as contiguous yet gives wrong products)."""
    if t.stride() == (t.shape[1], 1):
        return t
    return t.new_empty(t.shape).copy_(t)


def _int_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """int8 [M, K] @ int8 [K, N] -> int32 [M, N]; on CUDA padded to the sizes ``torch._int_mm`` needs."""
    a, b = _row_major(a), _row_major(b)
    if a.device.type != "cuda":
        return torch._int_mm(a, b)
    m, kdim = a.shape
    n = b.shape[1]
    pad_m, pad_k, pad_n = max(0, 17 - m), (-kdim) % 8, (-n) % 8
    a = torch.nn.functional.pad(a, (0, pad_k, 0, pad_m))
    b = torch.nn.functional.pad(b, (0, pad_n, 0, pad_k))
    return torch._int_mm(a, b)[:m, :n]


def _expand_cpu(x: torch.Tensor, table: BasisTable, act_scale: float, activation: str, act_bits: int):
    """The numba kernel's (spline codes [N, I*(G+k)], base codes [N, I]) for a float32/float64 CPU x."""
    from ..kernels import bspline_cpu, lut_cpu

    grid = table.grid.to(x.dtype).contiguous()
    n_in, n_knots = grid.shape
    n_basis = n_knots - table.spline_order - 1
    inv_steps = ((n_knots - 1) / (grid[:, -1] - grid[:, 0]).double()).to(x.dtype)
    spline = torch.empty(x.shape[0], n_in * n_basis, dtype=torch.int8)
    base = torch.empty(x.shape[0], n_in, dtype=torch.int8)
    lut_cpu.expand_codes(x.detach().contiguous().numpy(), grid.numpy(), inv_steps.numpy(), table.uniform,
                         table.spline_order, table.n_positions, table.codes.view(-1, table.spline_order + 1).numpy(),
                         TABLE_SHIFT if table.table_bits == 8 else 0, bspline_cpu.ACTIVATION_IDS[activation],
                         float(act_scale), 2 ** (act_bits - 1), spline.numpy(), base.numpy())
    return spline, base


def lut_linear(x: torch.Tensor, table: BasisTable, weights: IntegerWeights, act_scale: float,
               activation: str = "silu", act_bits: int = 8, method: str = "auto") -> torch.Tensor:
    """x [N, I] -> float32 [N, O] through the table and integer products (see the module docstring).

    ``method``: ``"torch"`` (any device), ``"cpu"`` (the numba kernel, float32/float64 CPU inputs),
    ``"triton"`` (CUDA; on the CPU only under the Triton interpreter) or ``"auto"``.
    """
    if method not in LUT_METHODS:
        raise ValueError(f"method must be one of {LUT_METHODS}, got {method!r}")
    if method == "auto":
        on_cpu = x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
        method = "cpu" if on_cpu else "triton" if x.device.type == "cuda" else "torch"
    if method == "triton":
        from ..kernels.lut_linear_triton import lut_linear_triton

        return lut_linear_triton(x, table, weights, act_scale, activation, act_bits)
    if method == "cpu":
        if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"method='cpu' needs a float32 or float64 CPU input, got {x.dtype} on {x.device}")
        spline_codes, base_codes = _expand_cpu(x, table, act_scale, activation, act_bits)
    else:
        spline_codes = expand_codes(x, table)
        base_codes = quantize_activation(BASE_ACTIVATIONS[activation][0](x.float()), act_scale, act_bits)
    spline = _int_matmul(spline_codes, weights.spline_codes)
    if table.table_bits == 8:
        spline = spline + TABLE_SHIFT * weights.spline_column_sums
    base = _int_matmul(base_codes, weights.base_codes)
    return spline.float() * (table.scale * weights.spline_scale) + base.float() * (act_scale * weights.base_scale)
