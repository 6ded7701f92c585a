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

import warnings
from dataclasses import dataclass

import torch

from ...activations import get_activation
from ...checks import check_choice
from .reference import TABLE_SHIFT, expand_codes, quantize_activation

__all__ = ["IntegerWeights", "BACKENDS", "lut_linear", "quantize_activation", "expand_codes", "TABLE_SHIFT",
           "int_matmul"]

BACKENDS = ("auto", "eager", "cpu", "triton")
# The words of the old ``method=`` argument, kept for one release: "torch" is now "eager".
_METHOD_TO_BACKEND = {"auto": "auto", "torch": "eager", "cpu": "cpu", "triton": "triton"}


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
    def from_quantized(cls, spline, base) -> "IntegerWeights":
        """From :class:`kanlib.quant.QuantizedTensor` s: symmetric 5..8-bit or packed codes with one scale per
        tensor or per output channel:
        spline weights [I, O, G+k] and base weights [I, O]."""
        n_out = base.shape[1]
        return cls(spline.codes().permute(0, 2, 1).reshape(-1, n_out).to(torch.int8).contiguous(),
                   spline.scale.expand(1, n_out, 1).reshape(n_out).float(),
                   base.codes().to(torch.int8).contiguous(), base.scale.expand(1, n_out).reshape(n_out).float())


def _row_major(t: torch.Tensor) -> torch.Tensor:
    """t with plain row-major strides. ``torch._int_mm`` on the CPU reads the stride of a size-1 dimension
    (a [K, 1] matrix with stride (1, 2) counts as contiguous yet gives wrong products)."""
    if t.stride() == (t.shape[1], 1):
        return t
    return t.new_empty(t.shape).copy_(t)


def int_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
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


def lut_linear(x: torch.Tensor, table, weights: IntegerWeights, act_scale: float, activation: str = "silu",
               act_bits: int = 8, backend: str = "auto", *, method: str | None = None) -> torch.Tensor:
    """x [N, I] -> float32 [N, O] through ``table`` (a :class:`kanlib.quant.BasisTable`) and integer products
    (see the module docstring).

    ``backend``: ``"eager"`` (PyTorch operations, any device), ``"cpu"`` (the numba kernel, float32/float64 CPU
    inputs), ``"triton"`` (CUDA; on the CPU only under the Triton interpreter) or ``"auto"``. ``method`` is its
    deprecated name ("torch" is now "eager").
    """
    if method is not None:
        if method not in _METHOD_TO_BACKEND:
            raise ValueError(f"method (deprecated; use backend=) must be one of {tuple(_METHOD_TO_BACKEND)}, "
                             f"got {method!r}")
        backend = _METHOD_TO_BACKEND[method]
        warnings.warn(f"method={method!r} is deprecated and will be removed in the next release; "
                      f"use backend={backend!r}", DeprecationWarning, stacklevel=2)
    check_choice("backend", backend, BACKENDS)
    if backend == "auto":
        on_cpu = x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
        backend = "cpu" if on_cpu else "triton" if x.device.type == "cuda" else "eager"
    if backend == "triton":
        from .triton import lut_linear_triton

        return lut_linear_triton(x, table, weights, act_scale, activation, act_bits)
    if backend == "cpu":
        if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"backend='cpu' needs a float32 or float64 CPU input, got {x.dtype} on {x.device}")
        from .cpu import expand_codes_cpu

        spline_codes, base_codes = expand_codes_cpu(x, table, act_scale, activation, act_bits)
    else:
        spline_codes = expand_codes(x, table)
        base_codes = quantize_activation(get_activation(activation).function(x.float()), act_scale, act_bits)
    spline = int_matmul(spline_codes, weights.spline_codes)
    if table.table_bits == 8:
        spline = spline + TABLE_SHIFT * weights.spline_column_sums
    base = int_matmul(base_codes, weights.base_codes)
    return spline.float() * (table.scale * weights.spline_scale) + base.float() * (act_scale * weights.base_scale)
