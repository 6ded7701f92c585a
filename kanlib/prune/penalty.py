"""pykan's sparsity penalty (``reg`` with reg_metric 'edge_forward_spline_n', its fit default) for one layer."""
from __future__ import annotations

import torch

from .scores import sample_std

__all__ = ["INPUT_STD_OFFSET", "sparsity_penalty"]

# pykan divides each edge's output std by its input's std plus this.
INPUT_STD_OFFSET = 0.1


def _entropy(p: torch.Tensor, dim: int) -> torch.Tensor:
    """-sum p log2(p + 1e-4) over ``dim``, as pykan."""
    return -(p * torch.log2(p + 1e-4)).sum(dim)


def sparsity_penalty(edge_values: torch.Tensor, x: torch.Tensor, coef: torch.Tensor, l1: float = 1.0,
                     entropy: float = 2.0, coef_l1: float = 0.0, coefdiff_l1: float = 0.0) -> torch.Tensor:
    """A scalar: ``l1 * sum(s) + entropy * (H_in + H_out) + coef_l1 * C + coefdiff_l1 * D``.

    edge_values [N, I, O]: the numerical edges' outputs phi_{i,o}(x_i) at the samples x [N, I]; coef [I, O, S].
    ``s = std_N(edge_values) / (std_N(x) + 0.1)`` [I, O]. H_in: for each output, the entropy of its column of s
    divided by (column sum + 1), averaged over outputs; H_out the same per input over its row (log2).
    C = sum |coef| / O and D = sum |coef[..., j+1] - coef[..., j]| / O (pykan averages these over the outputs).
    """
    strength = sample_std(edge_values) / (sample_std(x).unsqueeze(-1) + INPUT_STD_OFFSET)
    per_output = strength / (strength.sum(0, keepdim=True) + 1)
    per_input = strength / (strength.sum(1, keepdim=True) + 1)
    spread = _entropy(per_output, 0).mean() + _entropy(per_input, 1).mean()
    total = l1 * strength.sum() + entropy * spread
    if coef_l1:
        total = total + coef_l1 * coef.abs().mean(1).sum()
    if coefdiff_l1:
        total = total + coefdiff_l1 * coef.diff(dim=-1).abs().mean(1).sum()
    return total
