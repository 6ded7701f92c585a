"""The edge-sparse B-spline KAN product in Triton, on the gathered live edges.

Same function and layout as :func:`kanlib.ops.edge_spline_linear.edge_spline_linear` (the ``"eager"`` backend,
:mod:`.reference`, is what it is tested against). A program takes a block of rows and a block of live edges:
it gathers ``x[rows, edge_inputs[edges]]``, finds each value's knot span by counting the knots at or below it,
evaluates the k + 1 bases of the span's window together by the triangular de Boor scheme on the 2k knots around
the span (uniform or not; Piegl and Tiller, *The NURBS Book*, algorithm A2.2), gathers the coefficients under the
window and adds each edge's activation into ``y[rows, edge_outputs[edges]]`` with atomics (edges that share an
output meet there).

- forward: y [N, O] (float32 accumulator, cast to x's dtype).
- backward: one kernel for grad x (atomics into [N, I]), grad coef (atomics into the window's coefficients),
  grad scale_base and grad scale_sp (summed over the program's rows, then one atomic per edge).

float32, bfloat16 and float16 x and parameters; everything is computed in float32. Spline orders 1 to 5 (a
compile-time constant). Outputs that a dead edge would make NaN in the dense masked layer (a non-finite base
activation times its zero weight) are set to NaN afterwards, without a host synchronization. Under
``TRITON_INTERPRET=1`` (set before triton is imported) the kernels run on the CPU, for tests.
"""
from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from ...activations import get_activation
from ..spline_linear.triton import (ACTIVATION_IDS, INTERPRET, activation, activation_derivative, check_devices,
                                    reciprocal_or_zero)
from ..spline_linear.support import autocast_operands
from ..triton_tuning import FP_FUSION, ceil_div
from .support import EDGE_TRITON_DTYPES, EDGE_TRITON_SPLINE_ORDERS, differentiable_gradients, mark_dead_edge_nans

__all__ = ["edge_spline_linear_triton", "TritonEdgeSplineLinear", "BLOCK_ROWS", "BLOCK_EDGES", "NUM_WARPS",
           "triton_forward", "triton_gradients", "triton_operands"]

# A program's tile of rows by edges and its warps: on a GPU 4 (row, edge) pairs a thread, so that the window's knots
# and bases stay in registers up to order 5 (compiled for an H100, 8 or more pairs a thread spilled them)
BLOCK_ROWS = 16 if INTERPRET else 32
BLOCK_EDGES = 16 if INTERPRET else 32
NUM_WARPS = 8


@triton.jit
def _window_knots(knot_rows, span, ok, n_knots, K: tl.constexpr):
    """The knots t_{span-k+1} .. t_{span+k} of each value's span (a tuple of 2k tiles; 0 outside the grid's row)."""
    knots = ()
    for q in tl.static_range(2 * K):
        index = span - K + 1 + q
        knots = knots + (tl.load(knot_rows + index, mask=ok & (index >= 0) & (index < n_knots), other=0.0),)
    return knots


@triton.jit
def _window_bases(x, knots, K: tl.constexpr):
    """(the bases span-k .. span of order k at x, those span-k+1 .. span of order k-1): two tuples of tiles, from
    the window's knots (:func:`_window_knots`), by the triangular scheme. Near the grid's ends the window holds
    bases m < 0 or m >= G + k, whose missing knots make them garbage; they feed none of the real ones, and the
    caller masks them."""
    values = (tl.full(x.shape, 1.0, tl.float32),)
    lower = values
    for d in tl.static_range(1, K + 1):
        lower = values
        saved = tl.zeros(x.shape, tl.float32)
        higher = ()
        for r in tl.static_range(d):
            # lower[r] is basis m = span-d+1+r of order d-1, on [t_m, t_{m+d}]
            right = knots[K + r] - x
            left = x - knots[K - d + r]
            share = lower[r] * reciprocal_or_zero(knots[K + r] - knots[K - d + r])
            higher = higher + (saved + right * share,)
            saved = left * share
        values = higher + (saved,)
    return values, lower


@triton.jit
def _window_slope(lower, knots, r: tl.constexpr, K: tl.constexpr):
    """d/dx of basis m = span-k+r: k (B_{m,k-1} / (t_{m+k} - t_m) - B_{m+1,k-1} / (t_{m+k+1} - t_{m+1}))."""
    slope = tl.zeros(knots[0].shape, tl.float32)
    if r >= 1:
        slope += lower[r - 1] * reciprocal_or_zero(knots[K - 1 + r] - knots[r - 1])
    if r <= K - 1:
        slope -= lower[r] * reciprocal_or_zero(knots[K + r] - knots[r])
    return K * slope


@triton.jit
def _spans(x, knot_rows, n_knots, valid):
    """Knot span j of each x (t_j <= x < t_{j+1}) by counting knots; -1 below the grid and for NaN."""
    count = tl.zeros(x.shape, tl.int32)
    for j in range(0, n_knots):
        knot = tl.load(knot_rows + j, mask=valid, other=float("inf"))
        count += tl.where(x >= knot, 1, 0)
    return count - 1


@triton.jit
def _tile(x_ptr, inputs_ptr, outputs_ptr, n_rows, n_edges, stride_xn, stride_xi, BLOCK_M: tl.constexpr,
          BLOCK_E: tl.constexpr):
    """This program's rows [BLOCK_M] and edges [BLOCK_E], which edges exist, their inputs and outputs, which
    (row, edge) pairs exist [BLOCK_M, BLOCK_E], and x at each pair's input (float32)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    edges = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
    edge_ok = edges < n_edges
    ins = tl.load(inputs_ptr + edges, mask=edge_ok, other=0)
    outs = tl.load(outputs_ptr + edges, mask=edge_ok, other=0)
    ok = (rows < n_rows)[:, None] & edge_ok[None, :]
    x = tl.load(x_ptr + rows.to(tl.int64)[:, None] * stride_xn + ins[None, :] * stride_xi, mask=ok,
                other=0.0).to(tl.float32)
    return rows, edges, edge_ok, ins, outs, ok, x


@triton.jit
def _forward_kernel(x_ptr, coef_ptr, scale_base_ptr, scale_sp_ptr, grid_ptr, inputs_ptr, outputs_ptr, out_ptr,
                    n_rows, n_edges, n_out, n_knots, n_basis, stride_xn, stride_xi,
                    K: tl.constexpr, ACT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_E: tl.constexpr):
    rows, edges, edge_ok, ins, outs, ok, x = _tile(x_ptr, inputs_ptr, outputs_ptr, n_rows, n_edges, stride_xn,
                                                   stride_xi, BLOCK_M, BLOCK_E)
    knot_rows = (grid_ptr + ins.to(tl.int64) * n_knots)[None, :]
    span = _spans(x, knot_rows, n_knots, ok)
    bases, _ = _window_bases(x, _window_knots(knot_rows, span, ok, n_knots, K), K)
    coef_rows = (coef_ptr + edges.to(tl.int64) * n_basis)[None, :]
    spline = tl.zeros((BLOCK_M, BLOCK_E), tl.float32)
    for r in tl.static_range(K + 1):
        m = span - K + r
        valid = ok & (m >= 0) & (m < n_basis)
        coefficient = tl.load(coef_rows + m, mask=valid, other=0.0).to(tl.float32)
        spline += coefficient * tl.where(valid, bases[r], 0.0)
    scale_base = tl.load(scale_base_ptr + edges, mask=edge_ok, other=0.0).to(tl.float32)[None, :]
    scale_sp = tl.load(scale_sp_ptr + edges, mask=edge_ok, other=0.0).to(tl.float32)[None, :]
    value = scale_base * activation(x, ACT) + scale_sp * spline
    tl.atomic_add(out_ptr + rows.to(tl.int64)[:, None] * n_out + outs[None, :], value, mask=ok)


@triton.jit
def _backward_kernel(x_ptr, coef_ptr, scale_base_ptr, scale_sp_ptr, grid_ptr, inputs_ptr, outputs_ptr, go_ptr,
                     gx_ptr, gcoef_ptr, gbase_ptr, gsp_ptr,
                     n_rows, n_edges, n_in, n_out, n_knots, n_basis, stride_xn, stride_xi, stride_gn, stride_go,
                     K: tl.constexpr, ACT: tl.constexpr, NEED_X: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_E: tl.constexpr):
    rows, edges, edge_ok, ins, outs, ok, x = _tile(x_ptr, inputs_ptr, outputs_ptr, n_rows, n_edges, stride_xn,
                                                   stride_xi, BLOCK_M, BLOCK_E)
    g = tl.load(go_ptr + rows.to(tl.int64)[:, None] * stride_gn + outs[None, :] * stride_go, mask=ok,
                other=0.0).to(tl.float32)
    scale_base = tl.load(scale_base_ptr + edges, mask=edge_ok, other=0.0).to(tl.float32)[None, :]
    scale_sp = tl.load(scale_sp_ptr + edges, mask=edge_ok, other=0.0).to(tl.float32)[None, :]
    knot_rows = (grid_ptr + ins.to(tl.int64) * n_knots)[None, :]
    span = _spans(x, knot_rows, n_knots, ok)
    knots = _window_knots(knot_rows, span, ok, n_knots, K)
    bases, lower = _window_bases(x, knots, K)
    coef_offsets = (edges.to(tl.int64) * n_basis)[None, :]
    spline = tl.zeros((BLOCK_M, BLOCK_E), tl.float32)
    slope = tl.zeros((BLOCK_M, BLOCK_E), tl.float32)
    for r in tl.static_range(K + 1):
        m = span - K + r
        valid = ok & (m >= 0) & (m < n_basis)
        coefficient = tl.load(coef_ptr + coef_offsets + m, mask=valid, other=0.0).to(tl.float32)
        basis = tl.where(valid, bases[r], 0.0)
        spline += coefficient * basis
        tl.atomic_add(gcoef_ptr + coef_offsets + m, g * scale_sp * basis, mask=valid)
        if NEED_X:
            slope += coefficient * tl.where(valid, _window_slope(lower, knots, r, K), 0.0)
    tl.atomic_add(gbase_ptr + edges, tl.sum(tl.where(ok, g * activation(x, ACT), 0.0), axis=0), mask=edge_ok)
    tl.atomic_add(gsp_ptr + edges, tl.sum(g * spline, axis=0), mask=edge_ok)
    if NEED_X:
        grad = g * (scale_base * activation_derivative(x, ACT) + scale_sp * slope)
        tl.atomic_add(gx_ptr + rows.to(tl.int64)[:, None] * n_in + ins[None, :], grad, mask=ok)


def _launch_grid(n_rows: int, n_edges: int):
    return ceil_div(n_rows, BLOCK_ROWS), ceil_div(n_edges, BLOCK_EDGES)


def triton_forward(x, coef, scale_base, scale_sp, grid, edge_inputs, edge_outputs, n_out: int, spline_order: int,
                   activation_name: str) -> torch.Tensor:
    """y [N, n_out] in x's dtype by the forward kernel (arguments as :func:`edge_spline_linear_triton` passes them)."""
    grid32 = grid.detach().float().contiguous()
    out = torch.zeros(x.shape[0], n_out, device=x.device, dtype=torch.float32)
    n_rows, n_edges = x.shape[0], edge_inputs.shape[0]
    if n_rows and n_edges:
        with torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext():
            _forward_kernel[_launch_grid(n_rows, n_edges)](
                x, coef, scale_base, scale_sp, grid32, edge_inputs, edge_outputs, out,
                n_rows, n_edges, n_out, grid.shape[1], coef.shape[1], *x.stride(),
                K=spline_order, ACT=ACTIVATION_IDS[activation_name], BLOCK_M=BLOCK_ROWS, BLOCK_E=BLOCK_EDGES,
                num_warps=NUM_WARPS, **FP_FUSION)
    base = get_activation(activation_name).function(x.detach().float())
    return mark_dead_edge_nans(out, base, edge_inputs, edge_outputs).to(x.dtype)


def triton_gradients(x, coef, scale_base, scale_sp, grid, edge_inputs, edge_outputs, n_out: int, spline_order: int,
                     activation_name: str, grad_out, needs) -> tuple:
    """(grad_x, grad_coef, grad_scale_base, grad_scale_sp), None where ``needs`` (four bools) says no, by the
    backward kernel."""
    grad_out = grad_out.contiguous()
    float32 = {"device": x.device, "dtype": torch.float32}
    grad_x = torch.zeros(x.shape, **float32)
    grad_coef = torch.zeros(coef.shape, **float32)
    grad_base, grad_sp = torch.zeros(scale_base.shape, **float32), torch.zeros(scale_sp.shape, **float32)
    n_rows, n_edges = x.shape[0], edge_inputs.shape[0]
    if n_rows and n_edges:
        with torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext():
            _backward_kernel[_launch_grid(n_rows, n_edges)](
                x, coef, scale_base, scale_sp, grid.detach().float().contiguous(), edge_inputs, edge_outputs,
                grad_out, grad_x, grad_coef, grad_base, grad_sp,
                n_rows, n_edges, x.shape[1], n_out, grid.shape[1], coef.shape[1], *x.stride(), *grad_out.stride(),
                K=spline_order, ACT=ACTIVATION_IDS[activation_name], NEED_X=bool(needs[0]),
                BLOCK_M=BLOCK_ROWS, BLOCK_E=BLOCK_EDGES, num_warps=NUM_WARPS, **FP_FUSION)
    grads = (grad_x.to(x.dtype), grad_coef.to(coef.dtype), grad_base.to(scale_base.dtype),
             grad_sp.to(scale_sp.dtype))
    return tuple(grad if need else None for grad, need in zip(grads, needs))


class TritonEdgeSplineLinear(torch.autograd.Function):
    """The Triton product with gradients for x, coef, scale_base and scale_sp."""

    @staticmethod
    def forward(ctx, x, coef, scale_base, scale_sp, grid, edge_inputs, edge_outputs, n_out, spline_order,
                activation_name):
        ctx.save_for_backward(x, coef, scale_base, scale_sp, grid, edge_inputs, edge_outputs)
        ctx.config = (n_out, spline_order, activation_name)
        return triton_forward(x, coef, scale_base, scale_sp, grid, edge_inputs, edge_outputs, n_out, spline_order,
                              activation_name)

    @staticmethod
    def backward(ctx, grad_out):
        x, coef, scale_base, scale_sp, grid, edge_inputs, edge_outputs = ctx.saved_tensors
        n_out, spline_order, activation_name = ctx.config
        needs = ctx.needs_input_grad[:4]
        if torch.is_grad_enabled():
            grads = differentiable_gradients((x, coef, scale_base, scale_sp), grad_out, needs,
                                             (grid, edge_inputs, edge_outputs, n_out, spline_order, False,
                                              activation_name))
            return (*grads, *([None] * 6))
        return (*triton_gradients(x, coef, scale_base, scale_sp, grid, edge_inputs, edge_outputs, n_out, spline_order,
                                  activation_name, grad_out, needs), *([None] * 6))


def triton_operands(x, coef, scale_base, scale_sp, grid, edge_inputs, spline_order: int,
                    activation_name: str) -> tuple:
    """(x, coef, scale_base, scale_sp) as the kernels take them (in the autocast dtype under autocast, the
    parameters contiguous), once the arguments are checked; raises with what was expected and what came."""
    if isinstance(spline_order, bool) or spline_order not in EDGE_TRITON_SPLINE_ORDERS:
        raise ValueError(f"the triton backend supports spline_order {EDGE_TRITON_SPLINE_ORDERS[0]} to "
                         f"{EDGE_TRITON_SPLINE_ORDERS[-1]}, got {spline_order!r}")
    if activation_name not in ACTIVATION_IDS:
        raise ValueError(f"the triton backend supports base activations {sorted(ACTIVATION_IDS)}, "
                         f"got {activation_name!r}")
    x, coef, scale_base, scale_sp = autocast_operands(x, coef, scale_base, scale_sp)
    check_devices("the triton backend", {"x": x.device, "coef": coef.device, "grid": grid.device,
                                         "edge_inputs": edge_inputs.device})
    if x.dtype not in EDGE_TRITON_DTYPES or any(t.dtype != x.dtype for t in (coef, scale_base, scale_sp)):
        raise TypeError(f"the triton backend needs x, coef, scale_base and scale_sp of one dtype in "
                        f"{[str(d) for d in EDGE_TRITON_DTYPES]}, got {x.dtype}, {coef.dtype}, "
                        f"{scale_base.dtype}, {scale_sp.dtype}")
    return (x, *(t.contiguous() for t in (coef, scale_base, scale_sp)))


def edge_spline_linear_triton(x, coef, scale_base, scale_sp, grid, edge_inputs, edge_outputs, input_offsets,
                              n_out: int, spline_order: int, uniform: bool, activation_name: str = "silu"):
    """x [N, I] -> [N, n_out] on the live edges (layout: :mod:`kanlib.ops.edge_spline_linear`); ``uniform`` and
    ``input_offsets`` are not needed here (spans are found by counting knots, edges are taken in any order)."""
    x, coef, scale_base, scale_sp = triton_operands(x, coef, scale_base, scale_sp, grid, edge_inputs, spline_order,
                                                    activation_name)
    return TritonEdgeSplineLinear.apply(x, coef, scale_base, scale_sp, grid, edge_inputs.contiguous(),
                                        edge_outputs.contiguous(), n_out, spline_order, activation_name)
