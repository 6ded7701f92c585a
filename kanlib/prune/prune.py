"""Which nodes and edges pruning keeps, from attribution scores (pykan's ``prune_node`` and ``prune_edge`` rules)."""
from __future__ import annotations

import torch

from ..checks import check_real
from .scores import Attribution

__all__ = ["kept_nodes", "kept_edges"]


def kept_nodes(scores: Attribution, threshold: float) -> list[torch.Tensor]:
    """Per node layer l = 0..L, the indices kept: every input and output node, and the hidden nodes whose score
    exceeds ``threshold``. ValueError when a hidden layer would keep none (a KAN layer needs a node)."""
    check_real("threshold", threshold, minimum=0.0)
    nodes = scores.node_scores
    kept = [torch.arange(nodes[0].shape[0], device=nodes[0].device)]
    for layer, score in enumerate(nodes[1:-1], start=1):
        keep = (score > threshold).nonzero().flatten()
        if keep.numel() == 0:
            raise ValueError(f"prune_node(threshold={threshold:g}) would remove every node of hidden layer {layer} "
                             f"(its largest score is {score.max().item():.4g}); pass a threshold below that")
        kept.append(keep)
    kept.append(torch.arange(nodes[-1].shape[0], device=nodes[-1].device))
    return kept


def kept_edges(scores: Attribution, threshold: float) -> list[torch.Tensor]:
    """Per layer, the [I, O] mask (in the edge scores' dtype) of the edges whose score exceeds ``threshold``."""
    check_real("threshold", threshold, minimum=0.0)
    return [(score > threshold).to(score.dtype) for score in scores.edge_scores]
