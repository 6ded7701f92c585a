"""The B-spline KAN product written out in plain PyTorch: what every fast path is tested and timed against.

For inputs x [N, I] the expanded matrix A [N, I, S] (S = G + k + 1) holds, per input, the base activation in
slot 0 and the G + k B-spline bases in slots 1..G+k; the product is ``A.view(N, I*S) @ W`` with W [I*S, O].
Autograd keeps the whole basis for backward, which is what the fused paths avoid.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...activations import get_activation
from ...basis import LocalBasis, cox_de_boor

__all__ = ["spline_linear_reference", "expanded_input", "window_expanded_input", "window_columns", "unfused_kan",
           "differentiable_backward", "differentiable_layer_backward", "assemble_weight_matrix", "layer_weight_matrix"]


def expanded_input(x: torch.Tensor, grid: torch.Tensor, spline_order: int, activation: str = "silu") -> torch.Tensor:
    """A [N, I, S] from the Cox-de Boor recursion: base activation in slot 0, the G + k bases after it."""
    bases = cox_de_boor(x, grid, spline_order)
    return torch.cat([get_activation(activation).function(x).unsqueeze(-1), bases], dim=-1)


def spline_linear_reference(x: torch.Tensor, weight: torch.Tensor, grid: torch.Tensor, spline_order: int,
                            activation: str = "silu") -> torch.Tensor:
    """x [N, I], weight [I*(G+k+1), O], grid [I, G+2k+1] -> [N, O], every gradient by autograd."""
    return expanded_input(x, grid, spline_order, activation).reshape(x.shape[0], -1) @ weight


def assemble_weight_matrix(base_weight: torch.Tensor, spline_weight: torch.Tensor) -> torch.Tensor:
    """base [I, O] and spline [I, O, G+k] weights -> the product's [I * (G+k+1), O] matrix (base row first)."""
    rows = torch.cat([base_weight.unsqueeze(1), spline_weight.transpose(1, 2)], dim=1)
    return rows.reshape(-1, base_weight.shape[1])


def layer_weight_matrix(scale_base: torch.Tensor, scale_sp: torch.Tensor, mask: torch.Tensor,
                        coef: torch.Tensor) -> torch.Tensor:
    """A B-spline layer's [I * (G+k+1), O] matrix from its parameters: base rows ``scale_base * mask``, spline rows
    ``scale_sp * mask * coef`` (scale_base, scale_sp, mask [I, O], coef [I, O, G+k])."""
    return assemble_weight_matrix(scale_base * mask, (scale_sp * mask).unsqueeze(-1) * coef)


def window_columns(local: LocalBasis) -> torch.Tensor:
    """Slot index (within an input's S slots) of each window entry of a local basis: [N, I, k+1]."""
    width = local.values.shape[-1]
    return local.start.unsqueeze(-1) + torch.arange(1, width + 1, device=local.start.device)


def window_expanded_input(x: torch.Tensor, local: LocalBasis, activation: str, n_slots: int) -> torch.Tensor:
    """A [N, I, S] from a local basis (only its k + 1 window entries are scattered in)."""
    expanded = x.new_zeros(*x.shape, n_slots)
    expanded.scatter_(-1, window_columns(local), local.values)
    expanded[..., 0] = get_activation(activation).function(x)
    return expanded


def unfused_kan(x: torch.Tensor, grid: torch.Tensor, spline_order: int, base_weight: torch.Tensor,
                spline_weight: torch.Tensor) -> torch.Tensor:
    """efficient-kan's forward: x [B, I], grid [I, G+2k+1], base_weight [O, I], spline_weight [O, I, G+k] -> [B, O].

    The basis [B, I, G+k] comes from the Cox-de Boor recursion and autograd keeps it for backward.
    """
    u = x.unsqueeze(-1)
    basis = ((u >= grid[:, :-1]) & (u < grid[:, 1:])).to(x.dtype)
    for d in range(1, spline_order + 1):
        rising = (u - grid[:, : -(d + 1)]) / (grid[:, d:-1] - grid[:, : -(d + 1)])
        falling = (grid[:, d + 1:] - u) / (grid[:, d + 1:] - grid[:, 1:-d])
        basis = rising * basis[..., :-1] + falling * basis[..., 1:]
    spline = F.linear(basis.reshape(x.shape[0], -1), spline_weight.reshape(spline_weight.shape[0], -1))
    return F.linear(F.silu(x), base_weight) + spline


def differentiable_backward(x, weight, grid, spline_order, activation, grad_out, need_x: bool, need_w: bool):
    """(grad_x, grad_w) as functions of x, weight and grad_out that autograd can differentiate again: the
    backward of a fused path when the caller asked for ``create_graph=True``."""
    inputs = [t for t, need in ((x, need_x), (weight, need_w)) if need]
    with torch.enable_grad():
        out = spline_linear_reference(x, weight, grid, spline_order, activation)
        grads = iter(torch.autograd.grad(out, inputs, grad_out, create_graph=True, allow_unused=True))
    return (next(grads) if need_x else None), (next(grads) if need_w else None)


def differentiable_layer_backward(x, scale_base, scale_sp, mask, coef, grid, spline_order, activation, grad_out,
                                  needs: tuple[bool, bool, bool, bool]) -> list:
    """[grad_x, grad_scale_base, grad_scale_sp, grad_coef] (None where ``needs`` says no) of a B-spline layer's
    product as functions autograd can differentiate again (a create_graph backward), through the plain formula."""
    tensors = (x, scale_base, scale_sp, coef)
    wanted = [i for i, need in enumerate(needs) if need]
    with torch.enable_grad():
        weight = layer_weight_matrix(scale_base, scale_sp, mask, coef)
        out = spline_linear_reference(x, weight, grid, spline_order, activation)
        grads = torch.autograd.grad(out, [tensors[i] for i in wanted], grad_out, create_graph=True,
                                    allow_unused=True)
    result = [None] * 4
    for i, grad in zip(wanted, grads):
        result[i] = grad
    return result
