"""Attribution scores of a sum-only KAN's nodes and edges (pykan's ``attribute``), from per-sample statistics."""
from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["Attribution", "sample_std", "attribution"]

# pykan's guard against a node whose output does not vary.
NODE_STD_EPS = 1e-4


class Attribution(NamedTuple):
    """``node_scores``: L+1 tensors [widths[l]] (inputs first); ``edge_scores``: L tensors [I, O]."""

    node_scores: list[torch.Tensor]
    edge_scores: list[torch.Tensor]


def sample_std(values: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """The unbiased standard deviation over ``dim`` (as pykan; torch's gradient is zero where the values do not
    vary). At least 2 samples are needed: with one, pykan's scores are NaN."""
    n = values.shape[dim]
    if n < 2:
        raise ValueError(f"a standard deviation over samples needs at least 2 samples, got {n}")
    return values.std(dim)


def attribution(edge_stds: list[torch.Tensor], output_stds: list[torch.Tensor]) -> Attribution:
    """Scores propagated from the outputs back to the inputs.

    edge_stds: per layer [I, O], the std over samples of each edge's output; output_stds: per layer [O], the std of
    each output node. The outputs score 1 / n_outputs each (pykan's mean over one query per output); an edge scores
    ``edge_std * score(its output) / (output_std + 1e-4)``; a node scores the sum of its outgoing edges' scores.
    """
    n_out = output_stds[-1].shape[0]
    node = torch.full((n_out,), 1.0 / n_out, dtype=edge_stds[-1].dtype, device=edge_stds[-1].device)
    nodes, edges = [node], []
    for edge_std, output_std in zip(reversed(edge_stds), reversed(output_stds)):
        edge = edge_std * (node / (output_std + NODE_STD_EPS))
        node = edge.sum(1)
        edges.append(edge)
        nodes.append(node)
    return Attribution(nodes[::-1], edges[::-1])
