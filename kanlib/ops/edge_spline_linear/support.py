"""What the backends of :func:`kanlib.ops.edge_spline_linear.edge_spline_linear` share: their names, what the
Triton kernels run, the per-edge weight rows, NaN rows, and differentiable gradients through the reference."""
from __future__ import annotations

import torch

from .reference import edge_spline_linear_reference

__all__ = ["EDGE_BACKENDS", "EDGE_TRITON_DTYPES", "EDGE_TRITON_SPLINE_ORDERS", "edge_triton_supports",
           "edge_weights", "mark_dead_edge_nans", "differentiable_gradients"]

EDGE_BACKENDS = ("auto", "eager", "cpu", "triton")
EDGE_TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
EDGE_TRITON_SPLINE_ORDERS = (1, 2, 3, 4, 5)


def edge_triton_supports(x: torch.Tensor, spline_order: int) -> bool:
    """Whether ``"auto"`` sends x to the Triton kernels: a CUDA tensor of a dtype and order they run."""
    return x.device.type == "cuda" and x.dtype in EDGE_TRITON_DTYPES and spline_order in EDGE_TRITON_SPLINE_ORDERS


def edge_weights(coef: torch.Tensor, scale_base: torch.Tensor, scale_sp: torch.Tensor) -> torch.Tensor:
    """Per edge its S = G+k+1 weights: ``scale_base`` then ``scale_sp * coef``: [E, S]."""
    return torch.cat([scale_base.unsqueeze(-1), scale_sp.unsqueeze(-1) * coef], dim=-1)


def mark_dead_edge_nans(out: torch.Tensor, base: torch.Tensor, edge_inputs: torch.Tensor,
                        edge_outputs: torch.Tensor) -> torch.Tensor:
    """out [N, O] (changed in place) with NaN where the dense masked layer has one: output o of row n when an
    input with a non-finite base activation base [N, I] has no live edge to o (see :mod:`.reference`).

    Without reading a value back to the host (a GPU stream keeps running and CUDA graphs can capture it): per row n
    and output o, the count of inputs with a non-finite base activation and no live edge to o, the product of the
    non-finite indicators [N, I] and the dead edges' 0/1 matrix [I, O], marked where it is not zero. The counts are
    whole numbers, exact in float32 (also in TF32 products; autocast, whose half types round counts past 256, is off
    for the product)."""
    bad = (~torch.isfinite(base)).float()
    dead = bad.new_ones(base.shape[1], out.shape[1]).index_put_((edge_inputs, edge_outputs), bad.new_zeros(()))
    with torch.autocast(out.device.type, enabled=False):
        dead_and_bad = bad @ dead
    return out.masked_fill_(dead_and_bad > 0, float("nan"))


def differentiable_gradients(inputs, grad_out, needs, config):
    """The gradients of the reference at ``inputs`` (x, coef, scale_base, scale_sp) for grad_out, themselves
    differentiable: the backward of a fused path under ``create_graph=True``. config: (grid, edge_inputs,
    edge_outputs, n_out, spline_order, uniform, activation)."""
    grid, edge_inputs, edge_outputs, n_out, spline_order, uniform, activation = config
    wanted = [t for t, need in zip(inputs, needs) if need]
    with torch.enable_grad():
        out = edge_spline_linear_reference(*inputs[:4], grid, edge_inputs, edge_outputs, n_out, spline_order,
                                           uniform, activation)
        grads = iter(torch.autograd.grad(out, wanted, grad_out, create_graph=True, allow_unused=True))
    return tuple(next(grads) if need else None for need in needs)
