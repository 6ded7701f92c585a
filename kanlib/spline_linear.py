"""The KAN layer's product: basis expansion followed by one matrix product, recomputed in backward.

For inputs x [N, I] the expanded matrix A [N, I, S] (S = G + k + 1) holds, per input, the base
activation in slot 0 and the G + k B-spline bases in slots 1..G+k. The layer is ``A.view(N, I*S) @ W``
with W [I*S, O]. Forward keeps only x; backward rebuilds what it needs from the local (k + 1 wide) basis.

Four implementations compute the same function (``method``):

- ``"eager"``: PyTorch operations on the local basis (any device); the basis window is materialized.
- ``"dense"``: CPU only: a fused kernel writes A, BLAS does the products; backward turns the gradient of
  A into dx and recomputes A over it in one kernel pass, so it holds one [N, I*S] buffer.
- ``"sparse"``: CPU only: fused kernels touch only the k + 2 nonzero slots of each input (local support),
  so the work does not grow with G.
- ``"triton"``: CUDA: fused Triton kernels build A in registers (:mod:`kanlib.kernels.spline_linear_triton`);
  float32, bfloat16 and float16, spline orders 1 to 5; under autocast it runs in the autocast dtype. On the
  CPU only under the Triton interpreter (tests).

Under autocast, ``"eager"``'s products (forward and backward) run in the autocast dtype, as autocast
runs a matmul; ``"dense"`` and ``"sparse"`` compute in the dtype of x and weight.

``"auto"`` picks ``"triton"`` for CUDA tensors it supports (:func:`triton_supports`), ``"eager"`` for other
non-CPU tensors and, on the CPU, ``"sparse"`` when an input's slots are mostly zeros
(:func:`prefers_sparse`), else ``"dense"``.
"""
from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F

from .basis import LocalBasis, extend_grid, find_span, local_basis, uniform_basis_matrix

__all__ = ["spline_linear", "BASE_ACTIVATIONS", "expanded_input", "METHODS", "prefers_sparse", "triton_supports",
           "torch_method"]

METHODS = ("auto", "eager", "dense", "sparse", "triton")
CPU_KERNEL_DTYPES = (torch.float32, torch.float64)
TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
TRITON_SPLINE_ORDERS = (1, 2, 3, 4, 5)
# On the CPU the sparse kernels do about this many times less useful work per second than BLAS; past
# the break-even density of nonzero slots they win.
SPARSE_SLOWDOWN = 7.0


def _silu_grad(x):
    s = torch.sigmoid(x)
    return s * (1 + x * (1 - s))


# name -> (function, derivative)
BASE_ACTIVATIONS = {
    "silu": (F.silu, _silu_grad),
    "tanh": (torch.tanh, lambda x: 1 - torch.tanh(x) ** 2),
    "relu": (F.relu, lambda x: (x > 0).to(x.dtype)),
    "identity": (lambda x: x, torch.ones_like),
}


def prefers_sparse(n_slots: int, spline_order: int) -> bool:
    """Whether the local-support kernels beat a dense product for S slots per input, k + 2 of them nonzero."""
    return (spline_order + 2) * SPARSE_SLOWDOWN < n_slots


def triton_supports(x: torch.Tensor, spline_order: int) -> bool:
    """Whether ``method="auto"`` sends x to the Triton kernels: a CUDA tensor of a dtype and order they run."""
    return x.device.type == "cuda" and x.dtype in TRITON_DTYPES and spline_order in TRITON_SPLINE_ORDERS


def torch_method(x: torch.Tensor, weight: torch.Tensor, spline_order: int) -> str:
    """The PyTorch-side method ``"auto"`` stands for when Triton is not used: eager, dense or sparse."""
    if x.device.type != "cpu" or x.dtype not in CPU_KERNEL_DTYPES:
        return "eager"
    return "sparse" if prefers_sparse(weight.shape[0] // x.shape[1], spline_order) else "dense"


def _window_columns(local: LocalBasis) -> torch.Tensor:
    """Slot index (within an input's S slots) of each window entry: [N, I, k+1]."""
    width = local.values.shape[-1]
    return local.start.unsqueeze(-1) + torch.arange(1, width + 1, device=local.start.device)


def expanded_input(x: torch.Tensor, local: LocalBasis, activation: str, n_slots: int) -> torch.Tensor:
    """The dense expanded input A [N, I, S]: base activation in slot 0, bases after it."""
    expanded = x.new_zeros(*x.shape, n_slots)
    expanded.scatter_(-1, _window_columns(local), local.values)
    expanded[..., 0] = BASE_ACTIVATIONS[activation][0](x)
    return expanded


class _Eager(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, grid, spline_order, uniform, activation):
        n_slots = weight.shape[0] // x.shape[1]
        span = find_span(x, grid, uniform, spline_order)
        local = local_basis(x, grid, spline_order, uniform, span=span)
        out = expanded_input(x, local, activation, n_slots).view(x.shape[0], weight.shape[0]) @ weight
        # Only the knot span (int32, [N, I]) is kept; backward rebuilds the basis from it.
        ctx.save_for_backward(x, weight, grid, span.int())
        ctx.config = (spline_order, uniform, activation, n_slots)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, grid, span = ctx.saved_tensors
        spline_order, uniform, activation, n_slots = ctx.config
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        local = local_basis(x, grid, spline_order, uniform, derivatives=need_x, span=span.long())
        grad_x = grad_w = None
        # Under autocast the forward product ran in grad_out's dtype; the backward products do too.
        dtype = grad_out.dtype
        if need_w:
            expanded = expanded_input(x, local, activation, n_slots).view(x.shape[0], weight.shape[0])
            grad_w = expanded.to(dtype).t() @ grad_out
        if need_x:
            grad_expanded = (grad_out @ weight.to(dtype).t()).view(*x.shape, n_slots)
            grad_x = BASE_ACTIVATIONS[activation][1](x) * grad_expanded[..., 0]
            grad_window = grad_expanded.gather(-1, _window_columns(local))
            grad_x = grad_x + (grad_window * local.derivatives).sum(-1)
        return grad_x, grad_w, None, None, None, None


# id(grid) -> (weak reference to the grid, its version and the spline order, numpy constants derived from it)
_GRID_CONSTANTS: dict[int, tuple] = {}


def _grid_constants(grid: torch.Tensor, spline_order: int) -> tuple:
    """(grid, padded grid, inv_steps, basis matrix) as numpy arrays, rebuilt only when the grid changes."""
    key = id(grid)
    cached = _GRID_CONSTANTS.get(key)
    if cached is not None and cached[0]() is grid and cached[1] == (grid._version, spline_order):
        return cached[2]
    inv_steps = (grid.shape[1] - 1) / (grid[:, -1] - grid[:, 0]).double()
    constants = (grid.numpy(), extend_grid(grid, spline_order).numpy(), inv_steps.numpy(),
                 uniform_basis_matrix(spline_order).numpy())
    reference = weakref.ref(grid, lambda _: _GRID_CONSTANTS.pop(key, None))
    _GRID_CONSTANTS[key] = (reference, (grid._version, spline_order), constants)
    return constants


class _CpuKernelArgs:
    """The numpy views and constants the CPU kernels take; the grid's are cached while it is unchanged.

    ``prefix``: the leading arguments of the sparse kernels; ``x``, ``knots`` (grid, padded grid, inv_steps,
    uniform) and ``matrix``: those of the dense kernel.
    """

    def __init__(self, x, grid, spline_order, uniform, activation):
        from .kernels import bspline_cpu

        self.kernels = bspline_cpu
        grid_np, padded, inv_steps, self.matrix = _grid_constants(grid, int(spline_order))
        self.x = x.detach().numpy()
        self.knots = (grid_np, padded, inv_steps, bool(uniform))
        self.prefix = (self.x, *self.knots, int(spline_order), self.matrix, bspline_cpu.ACTIVATION_IDS[activation])


def _dense_expand(x, grid, spline_order, uniform, activation, n_slots, grad_expanded=None, expanded=True):
    """The dense path's kernel on x [N, I]: (A [N, I*S] or None, grad_x [N, I] or None).

    grad_x is computed when grad_expanded (the gradient of A) is given; A when ``expanded``. When both are,
    A is written over grad_expanded: one [N, I*S] buffer instead of two.
    """
    args = _CpuKernelArgs(x, grid, spline_order, uniform, activation)
    function, derivative = BASE_ACTIVATIONS[activation]
    with_grad = grad_expanded is not None
    empty = x.new_empty(0, 0)
    if not expanded:
        out = empty
    else:
        out = grad_expanded if with_grad else x.new_empty(x.shape[0], x.shape[1] * n_slots)
    grad_x = torch.empty_like(x) if with_grad else empty
    base = function(x) if expanded else empty
    base_grad = derivative(x) if with_grad else empty
    args.kernels.dense_kernel(spline_order)(
        args.x, *args.knots, args.matrix, base.numpy(), base_grad.numpy(),
        (grad_expanded if with_grad else empty).numpy(), out.numpy(), grad_x.numpy(), expanded, with_grad)
    return (out if expanded else None), (grad_x if with_grad else None)


class _Fused(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, grid, spline_order, uniform, activation, sparse):
        x, weight, grid = x.contiguous(), weight.contiguous(), grid.contiguous()
        n_slots = weight.shape[0] // x.shape[1]
        if sparse:
            args = _CpuKernelArgs(x, grid, spline_order, uniform, activation)
            out = x.new_empty(x.shape[0], weight.shape[1])
            args.kernels.sparse_forward(*args.prefix, weight.detach().numpy(), out.numpy())
        else:
            expanded, _ = _dense_expand(x, grid, spline_order, uniform, activation, n_slots)
            out = expanded @ weight.detach()
        ctx.save_for_backward(x, weight, grid)
        ctx.config = (spline_order, uniform, activation, sparse)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, grid = ctx.saved_tensors
        spline_order, uniform, activation, sparse = ctx.config
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_out = grad_out.contiguous()
        grad_x = grad_w = None
        if sparse:
            args = _CpuKernelArgs(x, grid, spline_order, uniform, activation)
            if need_w:
                grad_w = torch.empty_like(weight)
                args.kernels.sparse_grad_weight(*args.prefix, grad_out.numpy(), grad_w.numpy())
            if need_x:
                grad_x = torch.empty_like(x)
                args.kernels.sparse_grad_input(*args.prefix, weight.numpy(), grad_out.numpy(), grad_x.numpy())
            return grad_x, grad_w, None, None, None, None, None
        # One pass turns the gradient of A into grad_x and rebuilds A (for the weight gradient) in its place.
        grad_expanded = grad_out @ weight.t() if need_x else None
        expanded, grad_x = _dense_expand(x, grid, spline_order, uniform, activation, weight.shape[0] // x.shape[1],
                                         grad_expanded, expanded=need_w)
        if need_w:
            grad_w = expanded.t() @ grad_out
        return grad_x, grad_w, None, None, None, None, None


def spline_linear(x: torch.Tensor, weight: torch.Tensor, grid: torch.Tensor, spline_order: int,
                  uniform: bool, activation: str = "silu", method: str = "auto") -> torch.Tensor:
    """x [N, I], weight [I*(G+k+1), O], grid [I, G+2k+1] -> [N, O]; the basis is never kept for backward."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    kernels_apply = x.device.type == "cpu" and x.dtype in CPU_KERNEL_DTYPES
    if method == "auto":
        method = "triton" if triton_supports(x, spline_order) else torch_method(x, weight, spline_order)
    if method == "triton":
        from .kernels.spline_linear_triton import spline_linear_triton

        return spline_linear_triton(x, weight, grid, spline_order, uniform, activation)
    if method == "eager":
        return _Eager.apply(x, weight, grid, spline_order, uniform, activation)
    if torch.is_autocast_enabled(x.device.type):
        # The CPU kernels compute in float32 or float64: their products stay out of autocast.
        with torch.autocast(x.device.type, enabled=False):
            return spline_linear(x, weight, grid, spline_order, uniform, activation, method)
    if not kernels_apply:
        raise ValueError(f"method={method!r} runs on the CPU in float32 or float64, "
                         f"got {x.dtype} tensors on {x.device}")
    return _Fused.apply(x, weight, grid, spline_order, uniform, activation, method == "sparse")
