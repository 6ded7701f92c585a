"""A `QuantizedBSplineKAN` written in operations ONNX has, so that ``torch.onnx.export`` can translate it.

:class:`OnnxQuantizedBSplineKAN` computes what the quantized layer's eager forward computes, in three forms:

- ``"integer"`` (symmetric weights per tensor or per channel with a lookup table, the layer's ``integer``
  path): the input's position codes look up uint8 table codes (a Gather from the table), which are spread
  over the [N, I * (G+k)] code matrix, multiplied with the int8 spline weight codes in int32
  (ONNX ``MatMulInteger``; the weight codes are stored shifted to uint8, see WEIGHT_ZERO_POINT); the base
  activation's 8-bit codes, offset by 128 to uint8 with zero point 128, go through a second ``MatMulInteger``;
  then one float scale per output, as :func:`kanlib.ops.lut_linear.lut_linear`.
- ``"table"`` (a lookup table with per-edge or affine weights): the same codes in float, times the
  dequantized weight matrix.
- ``"float"`` (no table, weight-only quantization): the float B-spline product on the dequantized weights.

Inputs are fake-quantized first when the layer quantizes them. The int8 product is the custom operator
:func:`matmul_integer`, which :data:`TRANSLATIONS` maps to ``MatMulInteger``.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..activations import get_activation
from ..basis import find_span
from ..layers.bspline import assemble_weight_matrix
from ..ops.lut_linear import IntegerWeights
from ..ops.spline_linear.reference import spline_linear_reference
from ..quant.ptq import ACTIVATION_BITS, QuantizedBSplineKAN
from ..quant.tensor import fake_quantize

__all__ = ["OnnxQuantizedBSplineKAN", "matmul_integer", "TRANSLATIONS"]

# The base activation's int8 codes enter MatMulInteger as uint8 with this zero point.
ACTIVATION_ZERO_POINT = 2 ** (ACTIVATION_BITS - 1)


# The int8 weight codes are stored shifted to uint8, with this zero point: ONNX Runtime's uint8 x int8 kernels on x86
# CPUs without VNNI add pairs of products in 16 bits and saturate there (uint8 x uint8 is widened first, and exact).
WEIGHT_ZERO_POINT = 128


@torch.library.custom_op("kanlib::matmul_integer", mutates_args=())
def matmul_integer(a: torch.Tensor, b: torch.Tensor, a_zero_point: int, b_zero_point: int) -> torch.Tensor:
    """``(a - a_zero_point) @ (b - b_zero_point)`` exactly: uint8 a [M, K], uint8 b [K, N] -> int32 [M, N] (ONNX's
    MatMulInteger)."""
    return ((a.to(torch.int64) - a_zero_point) @ (b.to(torch.int64) - b_zero_point)).to(torch.int32)


@matmul_integer.register_fake
def _(a: torch.Tensor, b: torch.Tensor, a_zero_point: int, b_zero_point: int) -> torch.Tensor:
    return a.new_empty(a.shape[0], b.shape[1], dtype=torch.int32)


def _matmul_integer_onnx(a, b, a_zero_point: int, b_zero_point: int):
    from onnxscript import opset18 as op

    return op.MatMulInteger(a, b, op.Constant(value=_uint8_scalar(a_zero_point, "a_zero_point")),
                            op.Constant(value=_uint8_scalar(b_zero_point, "b_zero_point")))


def _uint8_scalar(value: int, name: str):
    import onnx

    return onnx.numpy_helper.from_array(np.array(value, dtype=np.uint8), name)


def _as_uint8(codes: torch.Tensor, zero_point: int) -> torch.Tensor:
    """Signed 8-bit codes (any integer or float dtype) as uint8 codes with ``zero_point``."""
    return (codes.to(torch.int16) + zero_point).to(torch.uint8)


# torch.onnx.export's custom_translation_table for the graphs these modules trace.
TRANSLATIONS = {torch.ops.kanlib.matmul_integer.default: _matmul_integer_onnx}


class OnnxQuantizedBSplineKAN(nn.Module):
    """The function of ``layer`` (a :class:`~kanlib.quant.QuantizedBSplineKAN`, float32) in exportable
    operations: x [N, I] -> [N, O]. Integer weight codes are kept as uint8 buffers (shifted by WEIGHT_ZERO_POINT),
    table codes as uint8."""

    def __init__(self, layer: QuantizedBSplineKAN):
        super().__init__()
        if not isinstance(layer, QuantizedBSplineKAN):
            raise TypeError(f"expected a QuantizedBSplineKAN, got {type(layer).__name__}")
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.spline_order, self.base_activation = layer.spline_order, layer.base_activation
        self.input_spec = layer.input_spec
        if layer.input_spec is not None:
            self.register_buffer("input_scale", layer.input_scale.detach().clone())
            self.register_buffer("input_zero_point", layer.input_zero_point.detach().clone())
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().clone())
        self.register_buffer("grid", layer.grid.detach().clone())
        self.kind = "float" if layer.table is None else "integer" if layer.integer else "table"
        if self.kind == "float":
            self.register_buffer("weight", self._dequantized_weight(layer))
            return
        table = layer.table
        self.uniform, self.n_positions = table.uniform, table.n_positions
        self.register_buffer("table_codes", table.codes.reshape(-1, self.spline_order + 1).clone())
        self.register_buffer("act_scale", layer.act_scale.detach().float().clone())
        grid = self.grid
        if self.uniform:
            # what BasisTable.lookup computes from the grid, in the same dtype
            first = grid[:, 0]
            self.register_buffer("inv_steps", ((grid.shape[1] - 1) / (grid[:, -1] - first).double()).to(grid.dtype))
        if self.kind == "table":
            self.table_scale = table.scale
            self.register_buffer("weight", self._dequantized_weight(layer))
            return
        weights = IntegerWeights.from_quantized(layer.spline_weight, layer.base_weight)
        self.register_buffer("spline_codes", _as_uint8(weights.spline_codes, WEIGHT_ZERO_POINT))
        self.register_buffer("base_codes", _as_uint8(weights.base_codes, WEIGHT_ZERO_POINT))
        # the per-output factors exactly as lut_linear forms them
        self.register_buffer("spline_factor", table.scale * weights.spline_scale)
        self.register_buffer("base_factor", float(layer.act_scale) * weights.base_scale)

    @staticmethod
    def _dequantized_weight(layer: QuantizedBSplineKAN) -> torch.Tensor:
        """The [I * (G+k+1), O] matrix of the dequantized base and spline weights."""
        return assemble_weight_matrix(layer.base_weight.dequantize(), layer.spline_weight.dequantize()).contiguous()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, kind={self.kind!r}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, I] float32 -> [N, O]."""
        if self.input_spec is not None:
            x = torch.where(torch.isnan(x), x, fake_quantize(x, self.input_spec, self.input_scale,
                                                             self.input_zero_point))
        if self.kind == "float":
            out = spline_linear_reference(x, self.weight, self.grid, self.spline_order, self.base_activation)
        else:
            out = self._integer(x) if self.kind == "integer" else self._table(x)
            out = torch.where(torch.isnan(x).any(-1, keepdim=True), float("nan"), out)
        if self.bias is not None:
            out = out + self.bias
        return out

    def _integer(self, x: torch.Tensor) -> torch.Tensor:
        spline = matmul_integer(self.code_matrix(x), self.spline_codes, 0, WEIGHT_ZERO_POINT)
        shifted = _as_uint8(self.activation_codes(x), ACTIVATION_ZERO_POINT)
        base = matmul_integer(shifted, self.base_codes, ACTIVATION_ZERO_POINT, WEIGHT_ZERO_POINT)
        return spline.float() * self.spline_factor + base.float() * self.base_factor

    def _table(self, x: torch.Tensor) -> torch.Tensor:
        n, n_in = x.shape
        spline = self.code_matrix(x).to(x.dtype).view(n, n_in, -1) * self.table_scale
        base = self.activation_codes(x).unsqueeze(-1) * self.act_scale
        return torch.cat([base, spline], dim=-1).view(n, -1) @ self.weight

    def activation_codes(self, x: torch.Tensor) -> torch.Tensor:
        """The base activation's symmetric 8-bit codes (NaN -> 0) as floats in [-128, 127]: [N, I]."""
        limit = ACTIVATION_ZERO_POINT
        values = get_activation(self.base_activation).function(x) / self.act_scale
        return torch.where(torch.isnan(values), 0.0, torch.round(values)).clamp(-limit, limit - 1)

    def span(self, x: torch.Tensor) -> torch.Tensor:
        """The knot interval of each x [N, I] as :func:`kanlib.basis.find_span` finds it: int64 [N, I]."""
        if self.uniform:
            return find_span(x, self.grid, True, self.spline_order)
        # find_span's binary search (searchsorted) has no ONNX operator: count the knots <= x (0 for NaN)
        below = (x.unsqueeze(-1) >= self.grid).sum(-1)
        return (below - 1).clamp(0, self.grid.shape[1] - 2)

    def code_matrix(self, x: torch.Tensor) -> torch.Tensor:
        """The table codes of x [N, I] spread over every input's G+k bases: uint8 [N, I * (G+k)].

        As :meth:`kanlib.quant.BasisTable.lookup`: the knot interval, the position within it (``n_positions``
        per interval), zero codes outside the grid and for NaN; basis b of input i holds the code of window
        entry ``r = b - span + k`` when ``0 <= r <= k``.
        """
        k, n_knots = self.spline_order, self.grid.shape[1]
        span = self.span(x)
        row_offset = torch.arange(self.in_features, device=x.device) * n_knots
        flat_grid = self.grid.flatten()
        left = flat_grid[span + row_offset]
        if self.uniform:
            fraction = (x - left) * self.inv_steps
        else:
            width = flat_grid[span + 1 + row_offset] - left
            fraction = torch.where(width > 0, (x - left) / torch.where(width > 0, width, 1.0), 0.0)
        scaled = fraction * self.n_positions
        position = torch.where(torch.isnan(scaled), 0.0, scaled).floor().clamp(0, self.n_positions - 1).long()
        if self.uniform:
            row = position
        else:
            interval = span + torch.arange(self.in_features, device=x.device) * (n_knots - 1)
            row = interval * self.n_positions + position
        inside = (x >= self.grid[:, 0]) & (x < self.grid[:, -1])
        codes = self.table_codes[row]  # [N, I, k+1]
        codes = torch.where(inside.unsqueeze(-1), codes, torch.zeros_like(codes))
        n_basis = n_knots - k - 1
        entry = torch.arange(n_basis, device=x.device) - span.unsqueeze(-1) + k  # [N, I, G+k]
        in_window = (entry >= 0) & (entry <= k)
        spread = codes.gather(-1, entry.clamp(0, k))
        spread = torch.where(in_window, spread, torch.zeros_like(spread))
        return spread.reshape(x.shape[0], -1)
