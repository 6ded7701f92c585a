"""The fused products as torch.library operators, so that ``torch.compile`` keeps the kernels.

Under ``torch.compile`` (not ``torch.export``, ``torch.func`` or tracing, which get the plain formula),
:func:`kanlib.ops.spline_linear.spline_linear` calls ``torch.ops.kanlib.spline_product`` (x and an assembled weight;
the numba or Triton kernels) and a B-spline layer on the CPU calls ``torch.ops.kanlib.spline_layer`` (x and the
layer's parameters; :class:`kanlib.ops.spline_linear.FusedSplineLayer`'s kernels). The compiler sees one operator
whose output shape its fake implementation gives, runs the kernels behind it as they are, and compiles what lies
around it (on CUDA the layer's weight assembly, its bias, the next layer's activation). Each one's gradient is one
more operator (``kanlib::spline_product_backward``, ``kanlib::spline_layer_backward``), computed as the eager path
computes it from what the forward kept (the layer operator's local-support windows are outputs of its own; the
dense path's weight and expansion are rebuilt). Under CUDA graphs (``mode="reduce-overhead"``) the operators are
replayed with the graph, without Python.

This module holds what the compiler reads (each operator's schema, its fake implementation, its autograd formula);
the kernels that run are registered for the CPU and CUDA by :mod:`kanlib.ops.spline_linear`, which owns them.
Tracing cannot read the grid's values, so the operators take no uniformity flag: they look at the grid when they
run, once per grid version (:func:`grid_is_uniform`).
"""
from __future__ import annotations

import torch

from ...basis import is_uniform
from ..derived import derived
from .reference import differentiable_backward, differentiable_layer_backward
from .support import KERNEL_FAMILIES

__all__ = ["spline_product", "spline_product_backward", "spline_layer", "spline_layer_backward",
           "compiling_with_kernels", "grid_is_uniform", "check_operator_backend", "window_shapes", "no_kernel",
           "OPERATOR_BACKENDS"]

# "cpu" and "sparse": the numba kernels (dense, local support); "triton": the Triton kernels, of the family that
# ``kernels`` names (one of KERNEL_FAMILIES, as in :func:`.triton_local.spline_linear_triton_any`)
OPERATOR_BACKENDS = ("cpu", "sparse", "triton")

_UNIFORM: dict = {}  # id(grid) -> whether it is uniform (:func:`kanlib.ops.derived.derived`)


def grid_is_uniform(grid: torch.Tensor) -> bool:
    """:func:`kanlib.basis.is_uniform` of grid [I, G+2k+1], read once per grid version and storage."""
    return derived(_UNIFORM, grid, lambda: is_uniform(grid.detach()))


def compiling_with_kernels() -> bool:
    """Whether torch.compile is tracing the call (and not torch.export, whose graphs hold only PyTorch's own
    operators, nor torch.jit's tracer): then the fused backends run as these operators."""
    if not torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    return not torch.compiler.is_exporting()


def check_operator_backend(backend: str, kernels: str) -> None:
    """Raise unless ``backend`` is one of OPERATOR_BACKENDS and ``kernels`` one of KERNEL_FAMILIES."""
    if backend not in OPERATOR_BACKENDS:
        raise ValueError(f"kanlib::spline_product runs backend {OPERATOR_BACKENDS}, got {backend!r}")
    if kernels not in KERNEL_FAMILIES:
        raise ValueError(f"kanlib::spline_product's kernels must be one of {KERNEL_FAMILIES}, got {kernels!r}")


def no_kernel(name: str, device: torch.device):
    """Raise for an operator called on a device its kernels were not registered for (its default body)."""
    raise NotImplementedError(f"kanlib::{name} runs on the CPU and CUDA, got tensors on {device}")


@torch.library.custom_op("kanlib::spline_product", mutates_args=())
def spline_product(x: torch.Tensor, weight: torch.Tensor, grid: torch.Tensor, spline_order: int, activation: str,
                   backend: str, kernels: str) -> torch.Tensor:
    """x [N, I] @ the product's weight [I*S, O] (grid [I, G+2k+1]) -> [N, O] through ``backend``'s kernels."""
    no_kernel("spline_product", x.device)


@spline_product.register_fake
def _(x, weight, grid, spline_order, activation, backend, kernels):
    return x.new_empty(x.shape[0], weight.shape[1])


@torch.library.custom_op("kanlib::spline_product_backward", mutates_args=())
def spline_product_backward(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, grid: torch.Tensor,
                            spline_order: int, activation: str, backend: str, kernels: str, need_x: bool,
                            need_weight: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_x [N, I], grad_weight [I*S, O]) of :func:`spline_product`; an empty [0] tensor for one not needed."""
    no_kernel("spline_product_backward", x.device)


@spline_product_backward.register_fake
def _(grad_out, x, weight, grid, spline_order, activation, backend, kernels, need_x, need_weight):
    return (torch.empty_like(x) if need_x else x.new_empty(0),
            torch.empty_like(weight) if need_weight else weight.new_empty(0))


def _save_product_inputs(ctx, inputs, output):
    x, weight, grid, *config = inputs
    ctx.save_for_backward(x, weight, grid)
    ctx.config = tuple(config)


def _product_backward(ctx, grad_out):
    x, weight, grid = ctx.saved_tensors
    spline_order, activation, backend, kernels = ctx.config
    need_x, need_weight = ctx.needs_input_grad[:2]
    if torch.is_grad_enabled():
        # create_graph=True: the gradients must themselves be differentiable, which the kernels' are not.
        grads = differentiable_backward(x, weight, grid, spline_order, activation, grad_out, need_x, need_weight)
    else:
        grad_x, grad_weight = spline_product_backward(grad_out, x, weight, grid, spline_order, activation, backend,
                                                      kernels, need_x, need_weight)
        grads = (grad_x if need_x else None, grad_weight if need_weight else None)
    return (*grads, None, None, None, None, None)


spline_product.register_autograd(_product_backward, setup_context=_save_product_inputs)


@torch.library.custom_op("kanlib::spline_layer", mutates_args=())
def spline_layer(x: torch.Tensor, scale_base: torch.Tensor, scale_sp: torch.Tensor, mask: torch.Tensor,
                 coef: torch.Tensor, grid: torch.Tensor, spline_order: int, activation: str, sparse: bool,
                 keep_windows: bool, with_slopes: bool, group_rows: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A B-spline layer's product [N, O] from x [N, I] and its parameters (scale_base, scale_sp, mask [I, O], coef
    [I, O, G+k]) through the CPU kernels, dense or local-support; then, for the local-support backward when
    ``keep_windows`` (else empty [0, 0, 0] tensors), the basis windows it found: values [I, k+2, N], slopes (the same
    in x's derivative, when ``with_slopes``), order [B, I, R] and offsets [B, I, G+1] (int32) for blocks of
    R = min(group_rows, N) rows (:class:`kanlib.ops.spline_linear._Windows`)."""
    no_kernel("spline_layer", x.device)


def window_shapes(n_rows, n_in: int, n_basis: int, spline_order: int, with_slopes: bool, group_rows: int):
    """The shapes of :func:`spline_layer`'s windows (values, slopes, order, offsets) for N = n_rows rows (an int or
    a symbolic size), G + k = n_basis bases."""
    block_rows = torch.sym_max(1, torch.sym_min(group_rows, n_rows))
    n_blocks = (n_rows + block_rows - 1) // block_rows
    values = (n_in, spline_order + 2, n_rows)
    return (values, values if with_slopes else (0, 0, 0), (n_blocks, n_in, block_rows),
            (n_blocks, n_in, n_basis - spline_order + 1))


@spline_layer.register_fake
def _(x, scale_base, scale_sp, mask, coef, grid, spline_order, activation, sparse, keep_windows, with_slopes,
      group_rows):
    out = x.new_empty(x.shape[0], coef.shape[1])
    if not (sparse and keep_windows):
        return out, *(x.new_empty(0, 0, 0, dtype=dtype) for dtype in (x.dtype, x.dtype, torch.int32, torch.int32))
    shapes = window_shapes(x.shape[0], x.shape[1], coef.shape[2], spline_order, with_slopes, group_rows)
    return out, *(x.new_empty(shape, dtype=dtype)
                  for shape, dtype in zip(shapes, (x.dtype, x.dtype, torch.int32, torch.int32)))


@torch.library.custom_op("kanlib::spline_layer_backward", mutates_args=())
def spline_layer_backward(grad_out: torch.Tensor, x: torch.Tensor, scale_base: torch.Tensor, scale_sp: torch.Tensor,
                          mask: torch.Tensor, coef: torch.Tensor, grid: torch.Tensor, values: torch.Tensor,
                          slopes: torch.Tensor, order: torch.Tensor, offsets: torch.Tensor, spline_order: int,
                          activation: str, sparse: bool, need_x: bool, need_parameters: bool
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_x, grad_scale_base, grad_scale_sp, grad_coef) of :func:`spline_layer`, from the windows it kept (or,
    where they are empty, found again); an empty [0] tensor for those not needed (the parameters' come together)."""
    no_kernel("spline_layer_backward", x.device)


@spline_layer_backward.register_fake
def _(grad_out, x, scale_base, scale_sp, mask, coef, grid, values, slopes, order, offsets, spline_order, activation,
      sparse, need_x, need_parameters):
    return (torch.empty_like(x) if need_x else x.new_empty(0),
            *(torch.empty_like(t) if need_parameters else x.new_empty(0) for t in (scale_base, scale_sp, coef)))


def _save_layer_inputs(ctx, inputs, output):
    *tensors, spline_order, activation, sparse, _, _, _ = inputs
    ctx.save_for_backward(*tensors, *output[1:])
    ctx.mark_non_differentiable(*output[1:])
    ctx.config = (spline_order, activation, sparse)


def _layer_backward(ctx, grad_out, *_):
    x, scale_base, scale_sp, mask, coef, grid, *windows = ctx.saved_tensors
    spline_order, activation, sparse = ctx.config
    need_x, need_base, need_sp, _, need_coef = ctx.needs_input_grad[:5]
    if torch.is_grad_enabled():
        grad_x, grad_base, grad_sp, grad_coef = differentiable_layer_backward(
            x, scale_base, scale_sp, mask, coef, grid, spline_order, activation, grad_out,
            (need_x, need_base, need_sp, need_coef))
    else:
        grad_x, grad_base, grad_sp, grad_coef = spline_layer_backward(
            grad_out, x, scale_base, scale_sp, mask, coef, grid, *windows, spline_order, activation, sparse, need_x,
            need_base or need_sp or need_coef)
    return (grad_x if need_x else None, grad_base if need_base else None, grad_sp if need_sp else None, None,
            grad_coef if need_coef else None, *[None] * 7)


spline_layer.register_autograd(_layer_backward, setup_context=_save_layer_inputs)
