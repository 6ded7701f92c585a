"""A B-spline layer's product from its parameters through the Triton kernels, in one autograd node.

The layer's W [I*S, O] is assembled by :mod:`.triton_weight`'s kernel and multiplied by :mod:`.triton`'s or
:mod:`.triton_local`'s product kernels (picked as ``kernels="auto"`` picks them); backward runs the product's
gradient kernels and folds the weight gradient back onto scale_base, scale_sp and coef. The same kernels run as two
autograd Functions (the weight's, then the product's) where a layer's weight is not its own (quantization-aware
training) or under torch.compile; one node instead of two saves on a GPU the host time of a node each way (a
training step of a small layer is a few dozen microseconds of kernels, and the host's Python decides its time).
"""
from __future__ import annotations

import torch

from .reference import differentiable_layer_backward
from .triton import LaunchPlan, check_inputs
from .triton_local import product_function
from .triton_weight import assemble_weight, weight_gradients

__all__ = ["TritonSplineLayer", "triton_spline_layer"]


class TritonSplineLayer(torch.autograd.Function):
    """(x [N, I], scale_base, scale_sp, mask [I, O], coef [I, O, G+k], grid [I, G+2k+1]) -> [N, O], as
    ``spline_linear(x, layer_weight_matrix(...), grid, ...)``; mask takes no gradient. ``dtype``: the dtype the
    kernels compute in (the autocast dtype; None: x's), in which W is written, x cast and the output returned.
    W is kept for backward only when x takes a gradient (grad_x needs it; the parameters' gradients do not)."""

    @staticmethod
    def forward(ctx, x, scale_base, scale_sp, mask, coef, grid, spline_order, uniform, activation, dtype):
        weight = assemble_weight(scale_base, scale_sp, mask, coef, dtype)
        operand = x.to(weight.dtype)
        check_inputs(operand, weight, grid, spline_order, activation)
        plan = LaunchPlan(operand, weight, grid, spline_order, uniform, activation)
        launchers = product_function(grid, spline_order, operand.dtype, "auto").launchers
        # x for a create_graph backward, the operand (x itself unless autocast cast it) for the kernels'
        ctx.save_for_backward(x, scale_base, scale_sp, mask, coef, grid, operand,
                              *((weight,) if ctx.needs_input_grad[0] else ()))
        ctx.plan, ctx.launchers = plan, launchers
        ctx.config = (spline_order, activation, weight.dtype, weight.shape)
        return launchers[0](operand, weight, plan)

    @staticmethod
    def backward(ctx, grad_out):
        x, scale_base, scale_sp, mask, coef, grid, operand, *kept = ctx.saved_tensors
        spline_order, activation, dtype, weight_shape = ctx.config
        need_x, need_base, need_sp, _, need_coef = ctx.needs_input_grad[:5]
        none = (None,) * 5
        if torch.is_grad_enabled():
            # create_graph=True: differentiable gradients, through the plain formula (in the parameters' dtype).
            grad_x, grad_base, grad_sp, grad_coef = differentiable_layer_backward(
                x, scale_base, scale_sp, mask, coef, grid, spline_order, activation, grad_out,
                (need_x, need_base, need_sp, need_coef))
            return grad_x, grad_base, grad_sp, None, grad_coef, *none
        _, grad_x_of, grad_weight_of = ctx.launchers
        operand, grad_out = operand.detach(), grad_out.detach().to(dtype)
        grad_x = grad_x_of(operand, kept[0], grad_out, ctx.plan) if need_x else None
        grad_base = grad_sp = grad_coef = None
        if need_base or need_sp or need_coef:
            # the launcher reads only the weight's shape, dtype and device: a stand-in without memory where W is
            # not kept
            weight = kept[0] if kept else grad_out.new_empty(()).expand(weight_shape)
            grad_weight = grad_weight_of(operand, weight, grad_out, ctx.plan)
            grad_base, grad_sp, grad_coef = weight_gradients(scale_sp.detach(), mask.detach(), coef.detach(),
                                                             grad_weight, (need_base, need_sp, need_coef))
        return grad_x, grad_base, grad_sp, None, grad_coef, *none


def triton_spline_layer(x: torch.Tensor, scale_base: torch.Tensor, scale_sp: torch.Tensor, mask: torch.Tensor,
                        coef: torch.Tensor, grid: torch.Tensor, spline_order: int, uniform: bool,
                        activation: str = "silu") -> torch.Tensor:
    """x [N, I] -> [N, O] by :class:`TritonSplineLayer`; under torch.autocast the kernels compute in the autocast
    dtype (W written in it, x cast to it) and the output has that dtype, as autocast's own matmul gives."""
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
    return TritonSplineLayer.apply(x, scale_base, scale_sp, mask, coef, grid, spline_order, bool(uniform),
                                   activation, dtype)
