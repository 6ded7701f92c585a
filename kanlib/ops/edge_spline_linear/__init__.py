"""The edge-sparse B-spline KAN product: only the live edges of a pruned layer are stored and computed.

Edges are sorted by input, then output (CSR by input): ``edge_inputs`` [E], ``edge_outputs`` [E] (int64) and
``input_offsets`` [I+1] (edges of input i: ``input_offsets[i] .. input_offsets[i+1] - 1``). Per edge:
``coef`` [E, G+k], ``scale_base`` [E], ``scale_sp`` [E]. For x [N, I]:

    y[n, o] = sum over edges e = (i, o) of scale_base[e] * b(x[n, i]) + scale_sp[e] * sum_j coef[e, j] B_j(x[n, i])

Backends (``backend``):

- ``"eager"``: :mod:`.reference`'s plain PyTorch formula, autograd through it (any device).
- ``"cpu"``: numba kernels (:mod:`.cpu`), float32 and float64, forward and backward.
- ``"triton"``: CUDA kernels (:mod:`.triton`) on the gathered live edges; on the CPU only under the Triton
  interpreter (tests).
- ``"auto"``: triton for CUDA tensors it supports, cpu for CPU float32/float64 tensors (outside CPU autocast),
  eager otherwise and under torch.func and torch.export (which cannot look into the kernels; the explicit ``"cpu"``
  and ``"triton"`` raise there). Under torch.compile the kernels run as torch.library operators (:mod:`.compiled`).

With ``create_graph=True`` the fused backends' backward recomputes the gradients through the reference, so they
can be differentiated again.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

from ...activations import get_activation
from ...basis import uniform_basis_matrix
from ...checks import check_choice
from ..spline_linear import CPU_KERNEL_DTYPES, grid_constants, numpy_of, under_transform
from ..spline_linear.compiled import compiling_with_kernels, grid_is_uniform
from ..spline_linear.support import autocast_operands
from .compiled import check_operator_backend, edge_spline_product, edge_spline_product_backward
from .reference import edge_spline_linear_reference
from .support import (EDGE_BACKENDS, EDGE_TRITON_DTYPES, EDGE_TRITON_SPLINE_ORDERS, differentiable_gradients,
                      edge_triton_supports, edge_weights, mark_dead_edge_nans)

__all__ = ["edge_spline_linear", "EDGE_BACKENDS", "EDGE_TRITON_DTYPES", "EDGE_TRITON_SPLINE_ORDERS",
           "CpuEdgeSplineLinear", "edge_triton_supports", "resolve_edge_backend", "cpu_forward", "cpu_gradients"]


def resolve_edge_backend(backend: str, x: torch.Tensor, spline_order: int) -> str:
    """The backend ``"auto"`` stands for on x (others are returned as they are)."""
    if backend != "auto":
        return backend
    if edge_triton_supports(x, spline_order):
        return "triton"
    if x.device.type == "cpu" and x.dtype in CPU_KERNEL_DTYPES and not torch.is_autocast_enabled("cpu"):
        return "cpu"
    return "eager"


@functools.cache
def _basis_matrix(spline_order: int, dtype: np.dtype) -> np.ndarray:
    """The uniform grid's basis matrix (:func:`kanlib.basis.uniform_basis_matrix`) in dtype, built once (the kernels
    only read it)."""
    return uniform_basis_matrix(spline_order).numpy().astype(dtype)


class _CpuArgs:
    """What the CPU kernels share: the knots and their constants, the base activation's registry entry."""

    def __init__(self, grid, spline_order, activation):
        from . import cpu

        self.kernels = cpu
        self.grid_np, _, self.inv_steps, _, _ = grid_constants(grid, int(spline_order))
        self.matrix = _basis_matrix(int(spline_order), self.grid_np.dtype)
        self.activation = get_activation(activation)

    def activation_arguments(self, dtype):
        """(the base activation's kernel id, ``bits_like``, ``constants``) for the forward kernel on arrays of dtype."""
        from ..spline_linear import cpu

        _, bits_like, constants = cpu.dense_arguments(dtype)
        return self.activation.kernel_id, bits_like, constants

    def knots(self, uniform):
        return self.grid_np, self.inv_steps, bool(uniform), self.matrix

    def transposed(self, t, rows=None):
        """t [N, C] transposed to a new [C, rows] (rows >= N, N by default), the columns past N zero."""
        rows = t.shape[0] if rows is None else rows
        if rows < t.shape[0]:
            raise ValueError(f"transposed: rows must hold the {t.shape[0]} rows of t, got {rows}")
        target = t.new_empty(t.shape[1], rows)
        self.kernels.transpose_rows(numpy_of(t), target.numpy())
        return target


def cpu_forward(x, coef, scale_base, scale_sp, grid, edge_inputs, edge_outputs, input_offsets, n_out, spline_order,
                uniform, activation) -> torch.Tensor:
    """out [N, n_out] from x [N, I] (contiguous) through the numba forward kernel, outside autograd: the forward of
    :class:`CpuEdgeSplineLinear`, and the whole call when no gradient is wanted."""
    args = _CpuArgs(grid, spline_order, activation)
    out = x.new_empty(x.shape[0], n_out)
    x = x.detach()
    x_array = x.numpy()
    nonfinite_blocks = args.kernels.forward_kernel(spline_order, coef.shape[1] + 1)(
        x_array, *args.activation_arguments(x_array.dtype), *args.knots(uniform),
        numpy_of(coef), numpy_of(scale_base), numpy_of(scale_sp), numpy_of(edge_outputs),
        numpy_of(input_offsets), out.numpy())
    if nonfinite_blocks:  # the dense layer's NaN from dead edges (rare: only for non-finite base activations)
        return mark_dead_edge_nans(out, args.activation.function(x), edge_inputs, edge_outputs)
    return out


class CpuEdgeSplineLinear(torch.autograd.Function):
    """The product through the numba kernels, gradients for x, coef, scale_base and scale_sp."""

    @staticmethod
    def forward(ctx, x, coef, scale_base, scale_sp, grid, edge_inputs, edge_outputs, input_offsets, n_out,
                spline_order, uniform, activation):
        ctx.save_for_backward(x, coef, scale_base, scale_sp, grid, edge_inputs, edge_outputs, input_offsets)
        ctx.config = (n_out, spline_order, uniform, activation)
        return cpu_forward(x, coef, scale_base, scale_sp, grid, edge_inputs, edge_outputs, input_offsets, n_out,
                           spline_order, uniform, activation)

    @staticmethod
    def backward(ctx, grad_out):
        x, coef, scale_base, scale_sp, grid, edge_inputs, edge_outputs, input_offsets = ctx.saved_tensors
        n_out, spline_order, uniform, activation = ctx.config
        needs = ctx.needs_input_grad[:4]
        if torch.is_grad_enabled():
            grads = differentiable_gradients((x, coef, scale_base, scale_sp), grad_out, needs,
                                             (grid, edge_inputs, edge_outputs, n_out, spline_order, uniform,
                                              activation))
            return (*grads, *([None] * 8))
        return (*cpu_gradients(x, coef, scale_base, scale_sp, grid, edge_outputs, input_offsets, spline_order, uniform,
                               activation, grad_out, needs), *([None] * 8))


def cpu_gradients(x, coef, scale_base, scale_sp, grid, edge_outputs, input_offsets, spline_order, uniform, activation,
                  grad_out, needs) -> tuple:
    """(grad_x, grad_coef, grad_scale_base, grad_scale_sp), None where ``needs`` (four bools) says no, by the numba
    backward kernel."""
    args = _CpuArgs(grid, spline_order, activation)
    x_t = args.transposed(x)
    coef, scale_base, scale_sp = (t.detach() for t in (coef, scale_base, scale_sp))
    weights = edge_weights(coef, scale_base, scale_sp).contiguous()
    n_rows = x.shape[0]
    padded = args.kernels.padded_rows(n_rows, x.element_size())  # whole stretches of rows for the kernel's vectors
    grad_out_t = args.transposed(grad_out, padded)
    grad_x_t = x_t.new_empty(x_t.shape[0], padded)
    grad_weights = torch.empty_like(weights)
    x_array = x_t.numpy()
    args.kernels.backward_kernel(spline_order, weights.shape[1])(
        x_array, *args.activation_arguments(x_array.dtype), *args.knots(uniform), weights.numpy(),
        numpy_of(edge_outputs), numpy_of(input_offsets), grad_out_t.numpy(), bool(needs[0]), grad_x_t.numpy(),
        grad_weights.numpy())
    grad_x = grad_x_t[:, :n_rows].t() if needs[0] else None
    grad_coef = scale_sp.unsqueeze(-1) * grad_weights[:, 1:] if needs[1] else None
    grad_scale_base = grad_weights[:, 0].clone() if needs[2] else None
    grad_scale_sp = (grad_weights[:, 1:] * coef).sum(-1) if needs[3] else None
    return grad_x, grad_coef, grad_scale_base, grad_scale_sp


def check_arguments(x, coef, scale_base, scale_sp, grid, edge_inputs, edge_outputs, input_offsets,
                    spline_order) -> None:
    """Raise with what was expected and what came unless the shapes and index dtypes fit together (the
    indices' values are not read: the layer builds them)."""
    n_edges = edge_inputs.shape[0] if edge_inputs.dim() == 1 else -1
    n_basis = grid.shape[-1] - spline_order - 1
    if (grid.dim() == 2 and n_edges >= 0 and n_basis >= 1 and x.dim() == 2 and x.shape[1] == grid.shape[0]
            and coef.shape == (n_edges, n_basis) and scale_base.shape == scale_sp.shape == edge_outputs.shape
            == (n_edges,) and input_offsets.shape == (grid.shape[0] + 1,)
            and edge_inputs.dtype == edge_outputs.dtype == input_offsets.dtype == torch.int64):
        return  # everything fits: the tables below only name what does not
    expected = {"x": (x.shape[0] if x.dim() == 2 else -1, grid.shape[0]), "coef": (n_edges, n_basis),
                "scale_base": (n_edges,), "scale_sp": (n_edges,), "edge_outputs": (n_edges,),
                "input_offsets": (grid.shape[0] + 1,)}
    given = {"x": x, "coef": coef, "scale_base": scale_base, "scale_sp": scale_sp, "edge_outputs": edge_outputs,
             "input_offsets": input_offsets}
    wrong = [f"{name} {tuple(given[name].shape)} (expected {shape})" for name, shape in expected.items()
             if tuple(given[name].shape) != shape]
    if grid.dim() != 2 or edge_inputs.dim() != 1 or n_basis < 1 or wrong:
        raise ValueError(f"expected x [N, I], coef [E, G+k], scale_base, scale_sp, edge_inputs and edge_outputs [E], "
                         f"input_offsets [I+1] for grid [I, G+2k+1] = {tuple(grid.shape)} and spline_order "
                         f"{spline_order}, E = {n_edges}; got " + (", ".join(wrong) or
                                                                    f"edge_inputs {tuple(edge_inputs.shape)}"))
    indices = {"edge_inputs": edge_inputs, "edge_outputs": edge_outputs, "input_offsets": input_offsets}
    odd = [f"{name} {t.dtype}" for name, t in indices.items() if t.dtype != torch.int64]
    if odd:
        raise TypeError(f"edge_inputs, edge_outputs and input_offsets must be int64, got {', '.join(odd)}")


def edge_spline_linear(x: torch.Tensor, coef: torch.Tensor, scale_base: torch.Tensor, scale_sp: torch.Tensor,
                       grid: torch.Tensor, edge_inputs: torch.Tensor, edge_outputs: torch.Tensor,
                       input_offsets: torch.Tensor, n_out: int, spline_order: int, uniform: bool,
                       activation: str = "silu", backend: str = "auto") -> torch.Tensor:
    """x [N, I] -> [N, n_out] over the live edges (see the module docstring for the layout).

    ``uniform`` says whether every row of grid [I, G+2k+1] is evenly spaced (then the closed-form basis is used).
    """
    check_choice("backend", backend, EDGE_BACKENDS)
    check_arguments(x, coef, scale_base, scale_sp, grid, edge_inputs, edge_outputs, input_offsets, spline_order)
    compiled = False
    if under_transform(x, coef, scale_base, scale_sp, grid):
        compiled = compiling_with_kernels()
        if not compiled and backend not in ("auto", "eager"):
            raise RuntimeError(f"backend={backend!r} runs fused kernels, which torch.func and torch.export cannot "
                               f"look into; use backend='auto' or 'eager' (plain PyTorch there)")
        backend = backend if compiled else "eager"
    backend = resolve_edge_backend(backend, x, spline_order)
    if backend == "eager":
        return edge_spline_linear_reference(x, coef, scale_base, scale_sp, grid, edge_inputs, edge_outputs, n_out,
                                            spline_order, uniform, activation)
    if backend == "triton":
        if compiled:
            x, coef, scale_base, scale_sp = autocast_operands(x, coef, scale_base, scale_sp)
            return edge_spline_product(x, coef, scale_base, scale_sp, grid, edge_inputs, edge_outputs, input_offsets,
                                       n_out, spline_order, activation, "triton")
        from .triton import edge_spline_linear_triton

        return edge_spline_linear_triton(x, coef, scale_base, scale_sp, grid, edge_inputs, edge_outputs,
                                         input_offsets, n_out, spline_order, uniform, activation)
    if torch.is_autocast_enabled(x.device.type):
        with torch.autocast(x.device.type, enabled=False):
            return edge_spline_linear(x, coef, scale_base, scale_sp, grid, edge_inputs, edge_outputs, input_offsets,
                                      n_out, spline_order, uniform, activation, backend)
    tensors = {"x": x, "coef": coef, "scale_base": scale_base, "scale_sp": scale_sp, "grid": grid}
    if not all(t.is_cpu and t.dtype == x.dtype for t in tensors.values()) or x.dtype not in CPU_KERNEL_DTYPES:
        got = ", ".join(f"{name} {t.dtype} on {t.device}" for name, t in tensors.items())
        raise ValueError(f"backend='cpu' runs on CPU tensors of one dtype, float32 or float64; got {got}")
    if compiled:
        return edge_spline_product(x, coef, scale_base, scale_sp, grid, edge_inputs, edge_outputs, input_offsets, n_out,
                                   spline_order, activation, "cpu")
    inputs = (x.contiguous(), coef, scale_base, scale_sp, grid, edge_inputs, edge_outputs, input_offsets, n_out,
              spline_order, bool(uniform), activation)
    if torch.is_grad_enabled() and (x.requires_grad or coef.requires_grad or scale_base.requires_grad
                                    or scale_sp.requires_grad):
        return CpuEdgeSplineLinear.apply(*inputs)
    return cpu_forward(*inputs)  # no graph to record: the autograd function's own cost is left out


# The kernels behind :mod:`.compiled`'s operators (the same on both devices: the backend argument picks them).
@edge_spline_product.register_kernel(("cpu", "cuda"))
def _product_kernels(x, coef, scale_base, scale_sp, grid, edge_inputs, edge_outputs, input_offsets, n_out,
                     spline_order, activation, backend):
    check_operator_backend(backend)
    if backend == "triton":
        from .triton import triton_forward, triton_operands

        x, coef, scale_base, scale_sp = triton_operands(x, coef, scale_base, scale_sp, grid, edge_inputs,
                                                        spline_order, activation)
        return triton_forward(x, coef, scale_base, scale_sp, grid, edge_inputs.contiguous(),
                              edge_outputs.contiguous(), n_out, spline_order, activation)
    return cpu_forward(x.contiguous(), coef, scale_base, scale_sp, grid, edge_inputs, edge_outputs, input_offsets,
                       n_out, spline_order, grid_is_uniform(grid), activation)


@edge_spline_product_backward.register_kernel(("cpu", "cuda"))
def _gradient_kernels(grad_out, x, coef, scale_base, scale_sp, grid, edge_inputs, edge_outputs, input_offsets, n_out,
                      spline_order, activation, backend, need_x, need_coef, need_scale_base, need_scale_sp):
    check_operator_backend(backend)
    needs = (need_x, need_coef, need_scale_base, need_scale_sp)
    if backend == "triton":
        from .triton import triton_gradients

        grads = triton_gradients(x, coef.contiguous(), scale_base.contiguous(), scale_sp.contiguous(), grid,
                                 edge_inputs.contiguous(), edge_outputs.contiguous(), n_out, spline_order, activation,
                                 grad_out, needs)
    else:
        grads = cpu_gradients(x.contiguous(), coef, scale_base, scale_sp, grid, edge_outputs, input_offsets,
                              spline_order, grid_is_uniform(grid), activation, grad_out, needs)
    return tuple(t.new_empty(0) if grad is None else grad.contiguous()
                 for t, grad in zip((x, coef, scale_base, scale_sp), grads))
