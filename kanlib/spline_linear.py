"""The KAN layer's product: basis expansion followed by one matrix product, recomputed in backward.

For inputs x [N, I] the expanded matrix A [N, I, S] (S = G + k + 1) holds, per input, the base
activation in slot 0 and the G + k B-spline bases in slots 1..G+k. The layer is ``A.view(N, I*S) @ W``
with W [I*S, O]. Forward keeps only x; backward rebuilds what it needs from the local (k + 1 wide) basis.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .basis import LocalBasis, find_span, local_basis

__all__ = ["spline_linear", "BASE_ACTIVATIONS", "expanded_input"]


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


class _SplineLinear(torch.autograd.Function):
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
        if need_w:
            grad_w = expanded_input(x, local, activation, n_slots).view(x.shape[0], weight.shape[0]).t() @ grad_out
        if need_x:
            grad_expanded = (grad_out @ weight.t()).view(*x.shape, n_slots)
            grad_x = BASE_ACTIVATIONS[activation][1](x) * grad_expanded[..., 0]
            grad_window = grad_expanded.gather(-1, _window_columns(local))
            grad_x = grad_x + (grad_window * local.derivatives).sum(-1)
        return grad_x, grad_w, None, None, None, None


def spline_linear(x: torch.Tensor, weight: torch.Tensor, grid: torch.Tensor, spline_order: int,
                  uniform: bool, activation: str = "silu") -> torch.Tensor:
    """x [N, I], weight [I*(G+k+1), O], grid [I, G+2k+1] -> [N, O]; the basis is never kept for backward."""
    return _SplineLinear.apply(x, weight, grid, spline_order, uniform, activation)
