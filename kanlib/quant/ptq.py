"""Post-training quantization of whole models: every B-spline KAN layer becomes a `QuantizedBSplineKAN`.

What is quantized, per layer:

- the spline weights ``scale_sp * mask * coef`` [I, O, G+k] (the per-edge scale folded in, as hardware would
  store them) to ``bits``, and the base weights ``scale_base * mask`` [I, O] to ``base_bits``;
- the layer input, per tensor, to ``input_bits`` (calibrated on the layer's inputs over ``calib``);
- with ``table_bits``, the B-spline basis: a `BasisTable` of ``table_bits``-bit values at
  ``2**position_bits`` positions per knot interval replaces its evaluation, and the base activation is
  quantized to 8 bits. Then, when the weights are symmetric per tensor or per channel, the layer runs in
  integers (:mod:`kanlib.ops.lut_linear`); per-edge or affine weights run the same function with the
  dequantized weights in float.

Without ``table_bits`` the layer runs the float product of :mod:`kanlib.ops.spline_linear` on the dequantized
weights (weight-only quantization, plus the quantized input).
"""
from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping

import torch
from torch import nn

from ..activations import get_activation
from ..checks import check_choice
from ..layers.bspline import BSplineKAN, assemble_weight_matrix
from ..ops.derived import derived
from ..ops.lut_linear import IntegerWeights, lut_linear, quantize_activation
from ..ops.spline_linear import spline_linear
from ..ops.spline_linear.reference import window_expanded_input
from .qat import effective_scale, no_bspline_error
from .table import ACTIVATION_BITS, BasisTable
from .tensor import QuantizedTensor, QuantSpec, calibrate, fake_quantize

__all__ = ["QuantizedBSplineKAN", "quantize", "ACTIVATION_BITS", "QUANTIZED_BACKENDS", "check_quantized_backend"]

QUANTIZED_BACKENDS = ("auto", "eager", "cpu", "triton")


def check_quantized_backend(backend: str) -> str:
    """backend if a quantized layer runs on it; the deprecated "torch" becomes "auto" with a DeprecationWarning."""
    if backend == "torch":
        warnings.warn("backend='torch' is deprecated and will be removed in the next release; use backend='auto' "
                      "(or 'eager', 'cpu')", DeprecationWarning, stacklevel=3)
        return "auto"
    check_choice("backend", backend, QUANTIZED_BACKENDS)
    return backend


class QuantizedBSplineKAN(nn.Module):
    """A `BSplineKAN` with low-bit weights (and optionally inputs and a lookup-table basis); inference only.

    Input ``[..., in_features]``, output ``[..., out_features]`` in the float layer's dtype. Build it with
    :func:`quantize`, or from one layer: ``QuantizedBSplineKAN(layer, spline_spec, base_spec, input_spec,
    samples, table_bits, position_bits)`` where ``samples`` [N, I] are inputs the layer sees; the scales that
    follow (symmetric weight scales, input (scale, zero point), base activation scale) are QAT's learned ones,
    None to calibrate them.
    The state dict holds what is stored: packed codes, scales, the grid, the table and the bias.
    """

    def __init__(self, layer: BSplineKAN, spline_spec: QuantSpec, base_spec: QuantSpec,
                 input_spec: QuantSpec | None = None, samples: torch.Tensor | None = None,
                 table_bits: int | None = None, position_bits: int = 8,
                 spline_scale: torch.Tensor | None = None, base_scale: torch.Tensor | None = None,
                 input_qparams: tuple[torch.Tensor, torch.Tensor] | None = None,
                 act_scale: torch.Tensor | None = None, backend: str = "auto"):
        super().__init__()
        self.backend = check_quantized_backend(backend)
        if not isinstance(layer, BSplineKAN):
            raise TypeError(f"expected a kanlib BSplineKAN layer, got {type(layer).__name__}")
        needs_samples = input_spec is not None or table_bits is not None
        if needs_samples and samples is None:
            raise ValueError("calibrating the input or the base activation needs samples of the layer's input; "
                             "got samples=None")
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.spline_order, self.base_activation = layer.spline_order, layer.base_activation
        self.spline_spec, self.base_spec, self.input_spec = spline_spec, base_spec, input_spec
        self.dtype = layer.coef.dtype
        with torch.no_grad():
            spline = QuantizedTensor.quantize(layer.spline_weight().detach(), spline_spec, "coef",
                                              _symmetric_qparams(spline_scale))
            base = QuantizedTensor.quantize(layer.base_weight().detach(), base_spec, "weight",
                                            _symmetric_qparams(base_scale))
        self._register_quantized("spline", spline)
        self._register_quantized("base", base)
        self.uniform = layer.is_uniform()
        grid = layer.grid.detach().clone()
        # A uniform grid is stored as its first knot and step per input; the full grid is rebuilt from them.
        self.register_buffer("grid", grid, persistent=not self.uniform)
        if self.uniform:
            self.register_buffer("grid_first", grid[:, 0].clone())
            self.register_buffer("grid_step", (grid[:, -1] - grid[:, 0]) / (grid.shape[1] - 1))
            self._rebuild_grid()
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().clone())
        if samples is not None:
            samples = samples.detach().reshape(-1, self.in_features).to(self.dtype)
            finite_rows = torch.isfinite(samples).all(-1)
            if needs_samples and not finite_rows.any():
                raise ValueError(f"calibration samples have no finite row: each of the {samples.shape[0]} row(s) "
                                 f"of this layer's input holds a NaN or infinite value; expected at least one row "
                                 f"of {self.in_features} finite values (rows with NaN or inf are skipped)")
            samples = samples[finite_rows]
        if input_spec is not None:
            scale, zero_point = input_qparams if input_qparams is not None else calibrate(samples, input_spec)
            self.register_buffer("input_scale", scale.reshape(()).clone())
            self.register_buffer("input_zero_point", zero_point.reshape(()).clone())
            samples = self._quantize_input(samples)
        self.table = None
        if table_bits is not None:
            self.table = BasisTable(self.grid, self.spline_order, position_bits, table_bits, uniform=self.uniform)
            self.register_buffer("table_codes", self.table.packed)
            if act_scale is None:
                act_scale, _ = calibrate(get_activation(self.base_activation).function(samples), QuantSpec(ACTIVATION_BITS))
            self.register_buffer("act_scale", act_scale.detach().reshape(()).float().clone())
        self._refresh()

    def _register_quantized(self, name: str, q: QuantizedTensor) -> None:
        self.register_buffer(f"{name}_codes", q.data)
        self.register_buffer(f"{name}_scale", q.scale)
        self.register_buffer(f"{name}_zero_point", q._zero_point)
        setattr(self, f"_{name}_shape", q.shape)

    def _quantized(self, name: str) -> QuantizedTensor:
        spec = self.spline_spec if name == "spline" else self.base_spec
        return QuantizedTensor(getattr(self, f"{name}_codes"), getattr(self, f"{name}_scale"),
                               getattr(self, f"{name}_zero_point"), getattr(self, f"_{name}_shape"), self.dtype, spec)

    @property
    def spline_weight(self) -> QuantizedTensor:
        """The quantized ``scale_sp * mask * coef`` [I, O, G+k]."""
        return self._quantized("spline")

    @property
    def base_weight(self) -> QuantizedTensor:
        """The quantized ``scale_base * mask`` [I, O]."""
        return self._quantized("base")

    @property
    def integer(self) -> bool:
        """Whether the lookup-table path runs in integers (symmetric weights per tensor or per channel)."""
        return self.table is not None and all(s.scheme == "symmetric" and s.granularity in ("tensor", "channel")
                                              for s in (self.spline_spec, self.base_spec))

    def _refresh(self) -> None:
        """Rebuild the run-time copies (dequantized weights, unpacked int8 codes) from the stored codes."""
        spline, base = self.spline_weight, self.base_weight
        self._weight = assemble_weight_matrix(base.dequantize(), spline.dequantize()).contiguous()
        self._integer_weights = None
        if self.integer:
            self._integer_weights = IntegerWeights.from_quantized(spline, base)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if self.uniform:
            self._rebuild_grid()
        self._apply(lambda t: t)

    def _rebuild_grid(self) -> None:
        steps = torch.arange(self.grid.shape[1], device=self.grid.device, dtype=self.grid.dtype)
        self.grid.copy_(self.grid_first.unsqueeze(1) + self.grid_step.unsqueeze(1) * steps)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        if self.table is not None:
            self.table = BasisTable(self.grid, self.spline_order, self.table.position_bits, self.table.table_bits,
                                    uniform=self.uniform)
            self.table_codes = self.table.packed
        self._refresh()
        return self

    def _quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        return fake_quantize(x, self.input_spec, self.input_scale, self.input_zero_point)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., I] -> [..., O]."""
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"input must be a floating-point torch.Tensor, got "
                            f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}")
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"input must have shape (..., {self.in_features}), got {tuple(x.shape)}")
        if x.device != self.grid.device:
            raise ValueError(f"input is on {x.device} but the layer is on {self.grid.device}")
        flat = x.reshape(-1, self.in_features).to(self.dtype)
        if self.input_spec is not None:
            flat = torch.where(torch.isnan(flat), flat, self._quantize_input(flat))
        if self.table is None:
            out = spline_linear(flat, self._weight, self.grid, self.spline_order, self.uniform, self.base_activation,
                                self.backend)
        else:
            out = self._table_forward(flat)
            out = torch.where(torch.isnan(flat).any(-1, keepdim=True), float("nan"), out)
        if self.bias is not None:
            out = out + self.bias
        return out.view(*x.shape[:-1], self.out_features)

    def _table_forward(self, flat: torch.Tensor) -> torch.Tensor:
        if self.integer:
            # the scale as a Python number, read from the buffer once per change of it rather than on every call
            act_scale = derived(_ACT_SCALES, self.act_scale, lambda: float(self.act_scale))
            return lut_linear(flat, self.table, self._integer_weights, act_scale, self.base_activation,
                              ACTIVATION_BITS, self.backend).to(self.dtype)
        local = self.table.local_basis(flat)
        n_slots = self._weight.shape[0] // self.in_features
        expanded = window_expanded_input(flat, local, self.base_activation, n_slots)
        codes = quantize_activation(expanded[..., 0], self.act_scale, ACTIVATION_BITS)
        expanded[..., 0] = codes.to(expanded.dtype) * self.act_scale
        return expanded.view(flat.shape[0], -1) @ self._weight

    def extra_repr(self) -> str:
        table = (f", table_bits={self.table.table_bits}, position_bits={self.table.position_bits}"
                 if self.table is not None else "")
        inputs = f", input_bits={self.input_spec.bits}" if self.input_spec is not None else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.spline_spec.bits}, "
                f"base_bits={self.base_spec.bits}, scheme={self.spline_spec.scheme!r}, "
                f"granularity={self.spline_spec.granularity!r}{inputs}{table}")


_ACT_SCALES: dict = {}


def _symmetric_qparams(scale: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(scale, zero point 0) for a given (learned) symmetric scale; None lets the tensor be calibrated."""
    return None if scale is None else (scale, torch.zeros_like(scale))


def _calibration_input(calib) -> torch.Tensor:
    if calib is None:
        raise ValueError("quantize needs calibration data: pass calib= a tensor of model inputs [N, in_features] "
                         "or a dataset dict with 'train_input'; got None")
    if isinstance(calib, Mapping):
        if "train_input" not in calib:
            raise ValueError(f"a calibration dict needs the key 'train_input', got keys {sorted(calib)}")
        calib = calib["train_input"]
    if not isinstance(calib, torch.Tensor) or not calib.is_floating_point():
        raise TypeError(f"calib must be a floating-point tensor of model inputs, got "
                        f"{calib.dtype if isinstance(calib, torch.Tensor) else type(calib).__name__}")
    if calib.numel() == 0:
        raise ValueError(f"calibration data is empty: shape {tuple(calib.shape)}")
    if not torch.isfinite(calib).any():
        nan = int(torch.isnan(calib).sum())
        raise ValueError(f"calibration data has no finite values: all {calib.numel()} element(s) of calib (shape "
                         f"{tuple(calib.shape)}) are NaN or infinite ({nan} NaN, {calib.numel() - nan} inf); "
                         f"expected model inputs with finite values")
    return calib


def _layer_inputs(model: nn.Module, layers: list[BSplineKAN], calib: torch.Tensor) -> dict[int, torch.Tensor]:
    """Each layer's input when the float model runs on calib, keyed by id(layer)."""
    seen: dict[int, torch.Tensor] = {}
    hooks = [layer.register_forward_pre_hook(lambda module, args: seen.__setitem__(id(module), args[0].detach()))
             for layer in layers]
    try:
        with torch.no_grad():
            model(calib)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def quantize(model: nn.Module, bits: int = 8, table_bits: int | None = None, calib=None, *,
             base_bits: int | None = None, input_bits: int | None = 8, position_bits: int = 8,
             scheme: str = "symmetric", granularity: str = "channel", calibration: str = "minmax",
             percentile: float = 99.9, backend: str = "auto") -> nn.Module:
    """A quantized copy of ``model`` in eval mode: every `BSplineKAN` becomes a `QuantizedBSplineKAN`.

    ``bits`` (2..8) for the spline weights, ``base_bits`` (default ``bits``) for the base weights, ``input_bits``
    (None: float inputs) for each layer's input, ``table_bits`` (None: no table) and ``position_bits`` for the
    lookup-table basis. ``scheme``, ``granularity`` ("tensor", "channel" or "edge"; base weights use
    "channel" when it is "edge"), ``calibration`` and ``percentile`` as in `QuantSpec`. ``calib``: model
    inputs [N, in_features] (or a dataset dict with ``train_input``), run through the float model to
    calibrate each layer's input. Layers trained with QAT (`QATBSplineKAN`) keep their learned scales.
    ``backend``: where the layers run (:data:`QUANTIZED_BACKENDS`): ``"auto"`` (Triton on CUDA, the numba kernels
    on the CPU), ``"eager"`` (PyTorch operations), ``"cpu"`` (the numba kernels) or ``"triton"`` (on the CPU only
    under the Triton interpreter, for tests). The old ``"torch"`` is deprecated: it now means ``"auto"``.
    The original model is not changed.
    """
    spline_spec = QuantSpec(bits, scheme, granularity, calibration, percentile)
    base_spec = QuantSpec(bits if base_bits is None else base_bits, scheme,
                          "channel" if granularity == "edge" else granularity, calibration, percentile)
    input_spec = None if input_bits is None else QuantSpec(input_bits, scheme, "tensor", calibration, percentile)
    layers = [m for m in model.modules() if isinstance(m, BSplineKAN)]
    if not layers:
        raise no_bspline_error(model, "quantize")
    calib = _calibration_input(calib)
    inputs = _layer_inputs(model, layers, calib)
    quantized = {id(layer): QuantizedBSplineKAN(
        layer, spline_spec, base_spec, input_spec, inputs.get(id(layer)), table_bits, position_bits,
        *_learned_scales(layer, spline_spec, base_spec, input_spec, table_bits, position_bits), backend=backend)
        for layer in layers}
    memo = {id(layer): quantized[id(layer)] for layer in layers}
    result = memo[id(model)] if id(model) in memo else copy.deepcopy(model, memo)
    return result.eval()


def _learned_scales(layer: BSplineKAN, spline_spec: QuantSpec, base_spec: QuantSpec, input_spec: QuantSpec | None,
                    table_bits: int | None, position_bits: int):
    """(spline scale, base scale, input (scale, zero point), base activation scale) learned by QAT where the
    layer has them; None for each it does not. Specs that differ from QAT's raise: the learned scales belong to
    those, and a layer trained through a lookup table belongs to that table."""
    spline_quant, base_quant = getattr(layer, "spline_quant", None), getattr(layer, "base_quant", None)
    if spline_quant is None or base_quant is None:
        return None, None, None, None
    trained_table = (layer.qat_config.table_bits, layer.qat_config.position_bits)
    if trained_table[0] is not None and trained_table != (table_bits, position_bits):
        raise ValueError(f"this layer was trained with QAT through a lookup table with (table_bits, position_bits) "
                         f"= {trained_table}; quantize it with the same table, got {(table_bits, position_bits)}")
    input_quant = getattr(layer, "input_quant", None)
    trained = [(spline_quant.spec, spline_spec), (base_quant.spec, base_spec)]
    if input_quant is not None and input_spec is not None:
        trained.append((input_quant.spec, input_spec))
    if any(learned != asked for learned, asked in trained) or spline_spec.scheme != "symmetric":
        raise ValueError(f"this layer was trained with QAT specs {[learned for learned, _ in trained]}; quantize "
                         f"it with the same bits, scheme and granularity, got {[asked for _, asked in trained]}")

    inputs = None
    if input_quant is not None and input_spec is not None:
        inputs = (effective_scale(input_quant.scale.detach()), input_quant.zero_point.detach())
    activation_quant = layer.activation_quant
    activation = (effective_scale(activation_quant.scale.detach())
                  if activation_quant is not None and activation_quant.initialized else None)
    return (effective_scale(spline_quant.scale.detach()), effective_scale(base_quant.scale.detach()), inputs,
            activation)
