"""What a model costs to store and to evaluate: bytes in its state dict, and BitOps per sample.

BitOps, as KANtize counts them: every multiplication costs the product of its operands' bit widths
(additions and table lookups are free); floats count as 32 bits. Per sample and layer:

- ``nn.Linear``: I * O multiplications of 32 x 32 bits.
- a B-spline KAN layer (float or quantized), per input: one multiplication to place x on the grid, then, unless
  the basis comes from a table, de Boor's triangular scheme for the k + 1 nonzero bases (k(k+1)
  multiplications and k(k+1)/2 divisions) and the base activation (2 for silu and tanh), all at the
  input's width; per edge: k + 1 multiplications of a basis value by a spline weight (only the nonzero bases:
  local support) and one of the base activation by a base weight.

A quantized layer's widths: input ``input_bits`` (32 when not quantized), basis ``table_bits`` with a table
(else 32), the base activation 8 bits with a table (else the input's width), weights ``bits``/``base_bits``.
"""
from __future__ import annotations

from torch import nn

from ..activations import ACTIVATIONS
from ..layers.bspline import BSplineKAN
from .ptq import ACTIVATION_BITS, QuantizedBSplineKAN

__all__ = ["FLOAT_BITS", "bitops", "model_size_bytes"]

FLOAT_BITS = 32


def model_size_bytes(model: nn.Module) -> int:
    """Bytes of everything in the state dict (parameters and buffers; a tensor shared twice counted once)."""
    seen, total = set(), 0
    for tensor in model.state_dict().values():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tensor.numel(), tensor.dtype)
        if key not in seen:
            seen.add(key)
            total += tensor.numel() * tensor.element_size()
    return total


def _basis_multiplications(spline_order: int) -> int:
    k = spline_order
    return k * (k + 1) + k * (k + 1) // 2


def _kan_bitops(n_in: int, n_out: int, spline_order: int, activation: str, input_bits: int, basis_bits: int,
                activation_bits: int, weight_bits: int, base_bits: int, table: bool) -> int:
    per_input = 1 + ACTIVATIONS[activation].multiplications + (0 if table else _basis_multiplications(spline_order))
    per_edge = (spline_order + 1) * basis_bits * weight_bits + activation_bits * base_bits
    return n_in * per_input * input_bits * input_bits + n_in * n_out * per_edge


def _layer_bitops(module: nn.Module) -> int | None:
    if isinstance(module, nn.Linear):
        return module.in_features * module.out_features * FLOAT_BITS * FLOAT_BITS
    if isinstance(module, BSplineKAN):
        return _kan_bitops(module.in_features, module.out_features, module.spline_order, module.base_activation,
                           FLOAT_BITS, FLOAT_BITS, FLOAT_BITS, FLOAT_BITS, FLOAT_BITS, table=False)
    if isinstance(module, QuantizedBSplineKAN):
        input_bits = module.input_spec.bits if module.input_spec is not None else FLOAT_BITS
        table = module.table is not None
        return _kan_bitops(module.in_features, module.out_features, module.spline_order, module.base_activation,
                           input_bits, module.table.table_bits if table else FLOAT_BITS,
                           ACTIVATION_BITS if table else input_bits, module.spline_spec.bits, module.base_spec.bits,
                           table)
    return None


def bitops(model: nn.Module) -> int:
    """BitOps of one forward pass on one sample (see the module docstring for the counting)."""
    total, counted = 0, False
    for module in model.modules():
        cost = _layer_bitops(module)
        if cost is not None:
            total += cost
            counted = True
    if not counted:
        raise ValueError(f"bitops found no nn.Linear or KAN layers in {type(model).__name__}")
    return total
