"""Quantization-aware training (QAT) of B-spline KAN layers with learned step sizes (LSQ).

:class:`FakeQuantize` rounds a tensor to the grid of a :class:`~kanlib.quant.tensor.QuantSpec` in the forward
pass, ``x_hat = (clamp(round(x / s + z), qmin, qmax) - z) * s``, exactly as
``QuantizedTensor.quantize(x, spec).dequantize()`` does for the same scale, and lets gradients through.
With ``u = x / s + z``, an element is inside when ``round(u)`` lies in ``[qmin, qmax]`` (the clamp leaves it
alone), else clamped to ``q = qmin`` or ``qmax``:

- ``d x_hat / d x`` (straight-through estimator): 1 inside, 0 clamped;
- ``d x_hat / d s`` (LSQ, Esser et al. 2020): ``round(u) - u`` inside, ``q - z`` clamped;
- ``d x_hat / d z`` (affine only, as LSQ+; ``z`` is in code units): 0 inside, ``-s`` clamped;

the last two summed over the elements sharing a scale and multiplied by LSQ's ``g = 1 / sqrt(n * qmax)``,
``n`` being how many elements share it. A scale that training pushes below zero acts as its absolute value
(a step of 0 as the smallest positive float), its gradient taken through the absolute value, so a step that
overshoots zero, as an optimizer's first steps can, is not lost.

:func:`prepare_qat` swaps every :class:`~kanlib.layers.bspline.BSplineKAN` of a model for a
:class:`QATBSplineKAN`, which fake-quantizes its input, base weights and spline weights;
:func:`calibrate_inputs` sets the input scales from real activations. ``fit(..., qat=QATConfig())`` does both,
through the fit callback :class:`QATCallback`.

With ``QATConfig(table_bits=...)`` the layer trains through the lookup-table basis that ``quantize(...,
table_bits=...)`` will use (:class:`~kanlib.quant.table.BasisTable`), its base activation fake-quantized to
8 bits as there. A table is piecewise constant in x, so the gradient w.r.t. x is straight-through: the exact
basis' derivative; the weights get the exact gradient of the tabulated product.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..activations import get_activation
from ..checks import check_choice
from ..layers.bspline import BSplineKAN, assemble_weight_matrix
from ..ops.spline_linear import spline_linear
from ..ops.spline_linear.reference import window_expanded_input
from .table import ACTIVATION_BITS, BasisTable, check_table_bits
from .tensor import AXIS_LAYOUTS, QuantSpec, calibrate

__all__ = ["QATConfig", "FakeQuantize", "QATBSplineKAN", "prepare_qat", "calibrate_inputs", "effective_scale",
           "QATCallback"]


@dataclass(frozen=True)
class QATConfig:
    """What QAT quantizes, and how.

    ``bits``: spline weights ``spline_weight()`` [I, O, G+k]; ``base_bits``: base weights ``base_weight()`` [I, O]
    (None: ``bits``); ``input_bits``: each layer's input, always per tensor (None: inputs stay float).
    ``scheme`` and ``granularity`` are QuantSpec's and apply to the weights; ``"edge"`` gives the spline weights
    one scale per edge and the base weights, one number per edge already, one per channel.
    ``learn_scale``: LSQ (scales, and affine zero points, are trained); False keeps the calibrated scales fixed.
    ``table_bits`` (None: the exact basis) and ``position_bits``: train through the lookup-table basis that
    ``quantize(..., table_bits=, position_bits=)`` uses, with the base activation fake-quantized to 8 bits.
    """

    bits: int = 8
    base_bits: int | None = None
    input_bits: int | None = 8
    scheme: str = "symmetric"
    granularity: str = "channel"
    learn_scale: bool = True
    table_bits: int | None = None
    position_bits: int = 8

    def __post_init__(self):
        if not isinstance(self.learn_scale, bool):
            raise TypeError(f"learn_scale must be a bool, got {type(self.learn_scale).__name__} "
                            f"({self.learn_scale!r})")
        if self.table_bits is not None:
            check_table_bits(self.table_bits, self.position_bits)
        self.weight_spec()
        self.base_spec()
        self.input_spec()

    def weight_spec(self) -> QuantSpec:
        """The spline weights' spec."""
        return QuantSpec(self.bits, self.scheme, self.granularity)

    def base_spec(self) -> QuantSpec:
        """The base weights' spec (per channel where the spline weights are per edge)."""
        bits = self.bits if self.base_bits is None else self.base_bits
        return QuantSpec(bits, self.scheme, "channel" if self.granularity == "edge" else self.granularity)

    def input_spec(self) -> QuantSpec | None:
        """The inputs' spec (per tensor), or None when inputs are not quantized."""
        return None if self.input_bits is None else QuantSpec(self.input_bits, self.scheme, "tensor")

    def activation_spec(self) -> QuantSpec | None:
        """The base activation's spec on the lookup-table path (8 bits, symmetric, per tensor), or None."""
        return None if self.table_bits is None else QuantSpec(ACTIVATION_BITS)


def effective_scale(scale: torch.Tensor) -> torch.Tensor:
    """The step a learned scale stands for: its absolute value, at least the smallest positive float."""
    return scale.abs().clamp_min(torch.finfo(scale.dtype).tiny)


class _LSQFunction(torch.autograd.Function):
    """x_hat = (clamp(round(x / s + z), qmin, qmax) - z) * s, with STE and LSQ gradients scaled by g."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax, g):
        s = effective_scale(scale)
        q = torch.round(x / s + zero_point).clamp_(qmin, qmax)
        ctx.save_for_backward(x, s, zero_point, torch.where(scale < 0, -1.0, 1.0).to(s.dtype))
        ctx.bounds, ctx.g = (qmin, qmax), g
        return (q - zero_point) * s

    @staticmethod
    def backward(ctx, grad):
        x, s, zero_point, sign = ctx.saved_tensors
        qmin, qmax = ctx.bounds
        v = x / s
        u = v + zero_point
        rounded = torch.round(u)
        inside = (rounded >= qmin) & (rounded <= qmax)
        q = rounded.clamp_(qmin, qmax)
        grad_x = grad_s = grad_z = None
        if ctx.needs_input_grad[0]:
            grad_x = grad * inside
        if ctx.needs_input_grad[1]:
            # inside: round(u) - u; clamped: q - z
            grad_s = (grad * (q - zero_point - torch.where(inside, v, 0.0)) * ctx.g).sum_to_size(s.shape) * sign
        if ctx.needs_input_grad[2]:
            grad_z = (grad * torch.where(inside, 0.0, -s) * ctx.g).sum_to_size(zero_point.shape)
        return grad_x, grad_s, grad_z, None, None, None


class FakeQuantize(nn.Module):
    """Quantize-dequantize a tensor with ``spec`` in the forward pass, keeping it differentiable.

    ``scale`` and ``zero_point`` (zeros for symmetric) come from ``calibrate(x, spec, axis_layout)`` on the first
    tensor seen, or on ``initialize(x)``; their shape is calibrate's (singleton reduced dims), except per tensor,
    where they are 0-dim so that inputs of any rank broadcast. With ``learn_scale`` the scale, and the affine
    zero point, are Parameters trained by LSQ; otherwise buffers. Before initialization both are empty tensors
    of shape [0]; loading a state_dict gives them the stored shapes, so an uninitialized module loads a trained
    one's state. Build the optimizer after initialization: a change of shape replaces the Parameters.
    """

    def __init__(self, spec: QuantSpec, axis_layout: str = "auto", learn_scale: bool = True):
        super().__init__()
        if not isinstance(spec, QuantSpec):
            raise TypeError(f"spec must be a QuantSpec, got {type(spec).__name__}")
        check_choice("axis_layout", axis_layout, AXIS_LAYOUTS)
        if not isinstance(learn_scale, bool):
            raise TypeError(f"learn_scale must be a bool, got {type(learn_scale).__name__} ({learn_scale!r})")
        self.spec, self.axis_layout, self.learn_scale = spec, axis_layout, learn_scale
        self._learned = {"scale": learn_scale, "zero_point": learn_scale and spec.scheme == "affine"}
        self._recalibrate = False
        for name in ("scale", "zero_point"):
            self._store(name, torch.empty(0))

    @property
    def initialized(self) -> bool:
        return self.scale.numel() > 0

    def extra_repr(self) -> str:
        s = self.spec
        return (f"bits={s.bits}, scheme={s.scheme!r}, granularity={s.granularity!r}, "
                f"learn_scale={self.learn_scale}, initialized={self.initialized}")

    def _store(self, name: str, value: torch.Tensor) -> None:
        """Set scale or zero_point, in place when the shape, dtype and device match (optimizers keep it)."""
        current = getattr(self, name, None)
        if current is not None and (current.shape, current.dtype, current.device) == \
                (value.shape, value.dtype, value.device):
            with torch.no_grad():
                current.copy_(value)
        elif self._learned[name]:
            setattr(self, name, nn.Parameter(value))
        else:
            self.register_buffer(name, value)

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Calibrate scale and zero point on x (min-max, or the spec's calibration)."""
        scale, zero_point = calibrate(x, self.spec, self.axis_layout)
        if self.spec.granularity == "tensor":
            scale, zero_point = scale.reshape(()), zero_point.reshape(())
        self._store("scale", scale)
        self._store("zero_point", zero_point)
        self._recalibrate = False

    def recalibrate_next(self) -> None:
        """Calibrate again on the next tensor seen."""
        self._recalibrate = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x of any shape the scale broadcasts against -> x_hat, same shape and dtype."""
        if not self.initialized or self._recalibrate:
            self.initialize(x)
        dtype = torch.promote_types(x.dtype, self.scale.dtype)
        n = x.numel() // self.scale.numel()
        g = 1.0 / math.sqrt(max(n, 1) * self.spec.qmax)
        out = _LSQFunction.apply(x.to(dtype), self.scale.to(dtype), self.zero_point.to(dtype),
                                 self.spec.qmin, self.spec.qmax, g)
        return out.to(x.dtype)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        for name in ("scale", "zero_point"):
            incoming, current = state_dict.get(prefix + name), getattr(self, name)
            if isinstance(incoming, torch.Tensor) and incoming.shape != current.shape \
                    and 0 in (incoming.numel(), current.numel()):
                self._store(name, torch.empty(incoming.shape, dtype=incoming.dtype, device=current.device))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


class QATBSplineKAN(BSplineKAN):
    """A :class:`BSplineKAN` trained through fake quantization of its input and weights.

    ``input_quant`` (None when ``input_bits`` is None) quantizes x [..., I] per tensor; ``base_quant`` the base
    weights [I, O] and ``spline_quant`` the spline weights [I, O, G+k], so the product uses the weights that
    low-bit storage would hold. With ``table_bits``, the basis comes from :meth:`basis_table` and
    ``activation_quant`` quantizes the base activation (None otherwise). Built like a BSplineKAN plus ``qat_config``, or from a float layer by
    :meth:`from_float`. ``activations`` and ``regularization_loss`` read the float weights; ``update_grid`` and
    ``refine`` recalibrate the spline weight scales after refitting the coefficients.
    """

    def __init__(self, *args, qat_config: QATConfig | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._add_quantizers(QATConfig() if qat_config is None else qat_config)

    @classmethod
    def from_float(cls, layer: BSplineKAN, config: QATConfig) -> "QATBSplineKAN":
        """A QAT layer sharing ``layer``'s Parameters and buffers, its weight scales calibrated on them."""
        if not isinstance(layer, BSplineKAN):
            raise TypeError(f"from_float needs a BSplineKAN, got {type(layer).__name__}")
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        module_state = set(vars(new))
        for name, value in vars(layer).items():
            if name not in module_state:
                setattr(new, name, value)
        new._parameters.update(layer._parameters)
        new._buffers.update(layer._buffers)
        new._non_persistent_buffers_set.update(layer._non_persistent_buffers_set)
        new._modules.update(layer._modules)
        new.training = layer.training
        new._add_quantizers(config)
        return new

    def _add_quantizers(self, config: QATConfig) -> None:
        if not isinstance(config, QATConfig):
            raise TypeError(f"qat_config must be a QATConfig, got {type(config).__name__}")
        self.qat_config = config
        input_spec = config.input_spec()
        self.input_quant = None if input_spec is None else FakeQuantize(input_spec, "auto", config.learn_scale)
        self.base_quant = FakeQuantize(config.base_spec(), "weight", config.learn_scale)
        self.spline_quant = FakeQuantize(config.weight_spec(), "coef", config.learn_scale)
        self.base_quant.initialize(self.base_weight())
        self.spline_quant.initialize(self.spline_weight())
        activation_spec = config.activation_spec()
        self.activation_quant = (None if activation_spec is None
                                 else FakeQuantize(activation_spec, "auto", config.learn_scale))
        self._table = None

    def extra_repr(self) -> str:
        c = self.qat_config
        table = "" if c.table_bits is None else f", table_bits={c.table_bits}, position_bits={c.position_bits}"
        return (f"{super().extra_repr()}, bits={c.bits}, base_bits={c.base_bits}, input_bits={c.input_bits}, "
                f"scheme={c.scheme!r}, granularity={c.granularity!r}{table}")

    def basis_table(self) -> BasisTable | None:
        """The lookup table of the current grid (rebuilt when the grid changes), or None without table_bits."""
        c = self.qat_config
        if c.table_bits is None:
            return None
        grid = self.grid.detach()
        cached = None if self._table is None else self._table.grid
        if cached is None or (cached.shape, cached.dtype, cached.device) != (grid.shape, grid.dtype, grid.device) \
                or not torch.equal(cached, grid):
            self._table = BasisTable(grid.clone(), self.spline_order, c.position_bits, c.table_bits,
                                     uniform=self.is_uniform())
        return self._table

    def weight_matrix(self) -> torch.Tensor:
        """The fake-quantized [I * (G+k+1), O] matrix."""
        return assemble_weight_matrix(self.base_quant(self.base_weight()), self.spline_quant(self.spline_weight()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., I] -> [..., O], x fake-quantized first."""
        self._check_input(x)
        if self.input_quant is not None:
            x = self.input_quant(x)
        if self.activation_quant is None:
            return super().forward(x)
        flat = x.reshape(-1, self.in_features).to(self.coef.dtype)
        out = self._table_forward(flat, self.weight_matrix())
        if self.bias is not None:
            out = out + self.bias
        return out.view(*x.shape[:-1], self.out_features)

    def _table_forward(self, flat: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """flat [N, I], weight [I * S, O] -> [N, O]: the tabulated basis and the quantized base activation
        times weight; the spline part's gradient w.r.t. flat taken straight through the exact basis."""
        n_slots = weight.shape[0] // self.in_features
        with torch.no_grad():
            expanded = window_expanded_input(flat, self.basis_table().local_basis(flat), self.base_activation, n_slots)
        activation = self.activation_quant(get_activation(self.base_activation).function(flat)).to(expanded.dtype)
        expanded = torch.cat([activation.unsqueeze(-1), expanded[..., 1:]], dim=-1)
        out = expanded.view(flat.shape[0], -1) @ weight
        if flat.requires_grad:
            spline_rows = weight.detach().view(self.in_features, n_slots, -1).clone()
            spline_rows[:, 0] = 0.0
            spline_rows = spline_rows.view_as(weight)
            exact = spline_linear(flat, spline_rows, self.grid, self.spline_order, self.is_uniform(),
                                  self.base_activation, self.backend_for(flat, spline_rows))
            out = out + (exact - exact.detach())
        return out

    def _set_grid_and_fit(self, knots: torch.Tensor, samples: torch.Tensor, targets: torch.Tensor) -> None:
        super()._set_grid_and_fit(knots, samples, targets)
        self.spline_quant.initialize(self.spline_weight())


def _has_bspline(model: nn.Module) -> bool:
    return any(isinstance(m, BSplineKAN) for m in model.modules())


def no_bspline_error(model: nn.Module, function: str) -> ValueError:
    """The error for a model without BSplineKAN layers, ``function`` naming who found none."""
    return ValueError(f"{function} found no kanlib B-spline layers (BSplineKAN) in the model, a "
                      f"{type(model).__name__}; expected a model built from kanlib.layers.BSplineKAN (e.g. kanlib.KAN)")


def prepare_qat(model: nn.Module, config: QATConfig) -> nn.Module:
    """Swap, in place, every BSplineKAN in ``model`` for a :class:`QATBSplineKAN` sharing its weights.

    Returns ``model``, or the new layer when ``model`` is itself a BSplineKAN. Layers already prepared are left
    as they are (with their own config). Build the optimizer afterwards: the scales are new Parameters.
    """
    if not isinstance(config, QATConfig):
        raise TypeError(f"config must be a QATConfig, got {type(config).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(model, QATBSplineKAN):
        return model
    if isinstance(model, BSplineKAN):
        return QATBSplineKAN.from_float(model, config)
    if not _has_bspline(model):
        raise no_bspline_error(model, "prepare_qat")
    replaced: dict[int, QATBSplineKAN] = {}
    for module in list(model.modules()):
        for name, child in list(module._modules.items()):
            if isinstance(child, BSplineKAN) and not isinstance(child, QATBSplineKAN):
                if id(child) not in replaced:
                    replaced[id(child)] = QATBSplineKAN.from_float(child, config)
                setattr(module, name, replaced[id(child)])
    return model


@torch.no_grad()
def calibrate_inputs(model: nn.Module, x: torch.Tensor, recalibrate: bool = False) -> None:
    """Run ``model(x)`` once, in eval mode and without gradients, so that every input quantizer not yet
    initialized (all of them with ``recalibrate``) calibrates on the activations it receives."""
    layers = [m for m in model.modules() if isinstance(m, QATBSplineKAN)]
    if not layers:
        if not _has_bspline(model):
            raise no_bspline_error(model, "calibrate_inputs")
        raise ValueError(f"calibrate_inputs needs a model prepared by prepare_qat; the {type(model).__name__} "
                         f"has BSplineKAN layers but no QATBSplineKAN")
    if recalibrate:
        for layer in layers:
            if layer.input_quant is not None:
                layer.input_quant.recalibrate_next()
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        model.train(was_training)


class QATCallback:
    """The :class:`~kanlib.training.FitCallback` behind ``fit(..., qat=QATConfig(...))`` (it has the protocol's
    methods; kanlib.training imports this module lazily, so this one does not import it).

    Before training it swaps every BSplineKAN of the model for a :class:`QATBSplineKAN` (:func:`prepare_qat`;
    layers already prepared are kept) and calibrates the input scales not yet set on the training inputs
    (:func:`calibrate_inputs`); the optimizer fit builds afterwards trains the learned scales with the weights.
    """

    def __init__(self, qat: QATConfig):
        if not isinstance(qat, QATConfig):
            raise TypeError(f"qat must be a kanlib.quant.QATConfig or None, got {type(qat).__name__}")
        self.qat = qat

    def check_model(self, model: nn.Module) -> None:
        """Raise unless ``model`` holds BSplineKAN layers that can be swapped in place."""
        if not _has_bspline(model):
            raise no_bspline_error(model, "fit(qat=...)")
        if isinstance(model, BSplineKAN) and not isinstance(model, QATBSplineKAN):
            raise ValueError("fit(qat=...) cannot swap a bare BSplineKAN in place; "
                             "train model = kanlib.quant.prepare_qat(model, qat) instead")

    def on_fit_start(self, model: nn.Module, train_input: torch.Tensor) -> None:
        """Prepare ``model`` in place and calibrate its input quantizers on train_input [n, in]."""
        prepare_qat(model, self.qat)
        calibrate_inputs(model, train_input)
