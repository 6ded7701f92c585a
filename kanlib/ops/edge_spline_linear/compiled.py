"""The edge-sparse product as torch.library operators, so that ``torch.compile`` keeps its kernels.

Under ``torch.compile`` (not ``torch.export``, ``torch.func`` or tracing: see
:func:`kanlib.ops.spline_linear.compiled.compiling_with_kernels`),
:func:`kanlib.ops.edge_spline_linear.edge_spline_linear` calls ``torch.ops.kanlib.edge_spline_product`` on the
live edges (layout: :mod:`kanlib.ops.edge_spline_linear`); its gradient is
``kanlib::edge_spline_product_backward``. As for the dense layer's operators (:mod:`kanlib.ops.spline_linear.compiled`),
this module holds what the compiler reads and :mod:`kanlib.ops.edge_spline_linear` registers the kernels (numba's,
or Triton's for ``backend="triton"``); they read the grid's uniformity when they run.
"""
from __future__ import annotations

import torch

from ..spline_linear.compiled import no_kernel
from .support import EDGE_BACKENDS, differentiable_gradients

__all__ = ["edge_spline_product", "edge_spline_product_backward", "OPERATOR_BACKENDS", "check_operator_backend"]

# "cpu": the numba kernels; "triton": the Triton kernels on the gathered edges
OPERATOR_BACKENDS = tuple(name for name in EDGE_BACKENDS if name not in ("auto", "eager"))


def check_operator_backend(backend: str) -> None:
    """Raise unless ``backend`` is one of OPERATOR_BACKENDS."""
    if backend not in OPERATOR_BACKENDS:
        raise ValueError(f"kanlib::edge_spline_product runs backend {OPERATOR_BACKENDS}, got {backend!r}")


# The forward read back from the device whether any base activation was non-finite (the dense masked layer's NaN
# rows), which CUDA graphs cannot record, so the operator says so and torch.compile's CUDA graphs leave it out. It
# now marks them on the device (:func:`.support.mark_dead_edge_nans`); the tag stays until a GPU run shows the
# operator inside CUDA graphs training as the eager model does.
_NOT_IN_CUDA_GRAPHS = tuple(getattr(torch.Tag, name) for name in ("cudagraph_unsafe",) if hasattr(torch.Tag, name))


@torch.library.custom_op("kanlib::edge_spline_product", mutates_args=(), tags=_NOT_IN_CUDA_GRAPHS)
def edge_spline_product(x: torch.Tensor, coef: torch.Tensor, scale_base: torch.Tensor, scale_sp: torch.Tensor,
                        grid: torch.Tensor, edge_inputs: torch.Tensor, edge_outputs: torch.Tensor,
                        input_offsets: torch.Tensor, n_out: int, spline_order: int, activation: str,
                        backend: str) -> torch.Tensor:
    """x [N, I] -> [N, n_out] over the live edges (coef [E, G+k], scale_base and scale_sp [E]) by ``backend``."""
    no_kernel("edge_spline_product", x.device)


@edge_spline_product.register_fake
def _(x, coef, scale_base, scale_sp, grid, edge_inputs, edge_outputs, input_offsets, n_out, spline_order, activation,
      backend):
    return x.new_empty(x.shape[0], n_out)


@torch.library.custom_op("kanlib::edge_spline_product_backward", mutates_args=())
def edge_spline_product_backward(grad_out: torch.Tensor, x: torch.Tensor, coef: torch.Tensor,
                                 scale_base: torch.Tensor, scale_sp: torch.Tensor, grid: torch.Tensor,
                                 edge_inputs: torch.Tensor, edge_outputs: torch.Tensor, input_offsets: torch.Tensor,
                                 n_out: int, spline_order: int, activation: str, backend: str, need_x: bool,
                                 need_coef: bool, need_scale_base: bool, need_scale_sp: bool
                                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_x, grad_coef, grad_scale_base, grad_scale_sp) of :func:`edge_spline_product`; an empty [0] tensor for
    each one not needed."""
    no_kernel("edge_spline_product_backward", x.device)


@edge_spline_product_backward.register_fake
def _(grad_out, x, coef, scale_base, scale_sp, grid, edge_inputs, edge_outputs, input_offsets, n_out, spline_order,
      activation, backend, need_x, need_coef, need_scale_base, need_scale_sp):
    needs = (need_x, need_coef, need_scale_base, need_scale_sp)
    return tuple(torch.empty_like(t) if need else t.new_empty(0)
                 for t, need in zip((x, coef, scale_base, scale_sp), needs))


def _save_inputs(ctx, inputs, output):
    *tensors, n_out, spline_order, activation, backend = inputs
    ctx.save_for_backward(*tensors)
    ctx.config = (n_out, spline_order, activation, backend)


def _backward(ctx, grad_out):
    x, coef, scale_base, scale_sp, grid, edge_inputs, edge_outputs, input_offsets = ctx.saved_tensors
    n_out, spline_order, activation, backend = ctx.config
    needs = tuple(ctx.needs_input_grad[:4])
    if torch.is_grad_enabled():
        # create_graph=True: the gradients must themselves be differentiable, which the kernels' are not. The
        # reference computes the same function on every grid; uniformity only picks its basis evaluation.
        grads = differentiable_gradients((x, coef, scale_base, scale_sp), grad_out, needs,
                                         (grid, edge_inputs, edge_outputs, n_out, spline_order, False, activation))
    else:
        grads = edge_spline_product_backward(grad_out, x, coef, scale_base, scale_sp, grid, edge_inputs,
                                             edge_outputs, input_offsets, n_out, spline_order, activation, backend,
                                             *needs)
        grads = tuple(grad if need else None for grad, need in zip(grads, needs))
    return (*grads, *([None] * 8))


edge_spline_product.register_autograd(_backward, setup_context=_save_inputs)
