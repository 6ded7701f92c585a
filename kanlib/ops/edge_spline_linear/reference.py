"""The edge-sparse B-spline KAN product written out in plain PyTorch: what the fast paths are tested against.

Live edges e = (edge_inputs[e], edge_outputs[e]) carry coef [E, G+k], scale_base [E] and scale_sp [E]:

    y[n, o] = sum over edges e into o of scale_base[e] * b(x[n, i_e]) + scale_sp[e] * sum_j coef[e, j] B_j(x[n, i_e])

The k + 1 local bases of each input come from :func:`kanlib.basis.local_basis`; each edge gathers its input's
window and its coefficients under it, and the products are summed into the outputs with ``index_add``.
Autograd keeps the gathered [N, E, k+1] tensors for backward: simple, not fast.

A non-finite base activation b(x[n, i]) (NaN or infinite input) makes y[n, o] NaN for every output o that input i
has no live edge to, as in the dense masked layer, whose zero-masked weights multiply it (0 * inf and 0 * NaN are
NaN); its live edges carry it as any value. The gradients pass through those NaN outputs as through the dense
layer's: the gradient of y[n, o] still reaches the row's other inputs and the parameters of their edges.
"""
from __future__ import annotations

import torch

from ...activations import get_activation
from ...basis import local_basis

__all__ = ["edge_spline_linear_reference", "dead_edge_nans"]


def dead_edge_nans(base: torch.Tensor, edge_inputs: torch.Tensor, edge_outputs: torch.Tensor,
                   n_out: int) -> torch.Tensor:
    """Where a dead edge meets a non-finite base activation: bool [N, n_out], True where some input i with a
    non-finite base[n, i] (base [N, I]) has no live edge to output o, i.e. where row n has more non-finite
    inputs than non-finite inputs with a live edge to o."""
    bad = (~torch.isfinite(base)).to(base.dtype)
    bad_with_edge = bad.new_zeros(base.shape[0], n_out).index_add(1, edge_outputs, bad[:, edge_inputs])
    return bad.sum(-1, keepdim=True) > bad_with_edge


def edge_spline_linear_reference(x: torch.Tensor, coef: torch.Tensor, scale_base: torch.Tensor,
                                 scale_sp: torch.Tensor, grid: torch.Tensor, edge_inputs: torch.Tensor,
                                 edge_outputs: torch.Tensor, n_out: int, spline_order: int, uniform: bool,
                                 activation: str = "silu") -> torch.Tensor:
    """x [N, I], coef [E, G+k], scale_base and scale_sp [E], grid [I, G+2k+1], edge_inputs and edge_outputs
    [E] (int64) -> [N, n_out]; every gradient by autograd."""
    n_rows = x.shape[0]
    local = local_basis(x, grid, spline_order, uniform)
    values = local.values[:, edge_inputs]  # [N, E, k+1]
    columns = local.start[:, edge_inputs].unsqueeze(-1) + torch.arange(spline_order + 1, device=x.device)
    under_window = coef.unsqueeze(0).expand(n_rows, -1, -1).gather(-1, columns)  # coef[e, start + r]
    spline = (values * under_window).sum(-1)  # [N, E]
    base = get_activation(activation).function(x)
    per_edge = scale_base * base[:, edge_inputs] + scale_sp * spline
    out = x.new_zeros(n_rows, n_out).index_add(1, edge_outputs, per_edge)
    # added rather than filled in: a fill would also cut the gradient of out[n, o] to the row's other inputs, which
    # the dense layer passes on
    nans = x.new_zeros(n_rows, n_out).masked_fill_(dead_edge_nans(base.detach(), edge_inputs, edge_outputs, n_out),
                                                   float("nan"))
    return out + nans
