"""Which nodes and edges pruning keeps, from attribution scores (pykan's ``prune_node`` and ``prune_edge`` rules)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..checks import check_real
from .scores import Attribution

__all__ = ["kept_nodes", "kept_edges", "removed_node_means", "add_to_bias", "mask_edges"]


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


@torch.no_grad()
def removed_node_means(layers: Sequence[nn.Module], kept: Sequence[torch.Tensor], layer_inputs: Sequence[torch.Tensor]
                       ) -> list[torch.Tensor | None]:
    """Per layer l, what the hidden nodes of layer l's input that ``kept`` (:func:`kept_nodes`) leaves out add to
    its kept outputs, averaged over the samples: ``mean_n sum_j phi_{j,o}(h_nj)`` [len(kept[l + 1])], or None
    where no node is left out (always for l = 0, whose inputs stay). ``layer_inputs``: the layers' inputs on the
    samples, [N, I_l] each (``model.layer_inputs(x)``). A removed node whose output is constant adds exactly
    this at every sample."""
    added = [None]
    for l in range(1, len(layers)):
        removed = torch.ones(layers[l].in_features, dtype=torch.bool, device=kept[l].device)
        removed[kept[l]] = False
        if not removed.any():
            added.append(None)
            continue
        values = layers[l].activations(layer_inputs[l])[:, removed.to(layer_inputs[l].device)]
        added.append(values.sum(dim=1).mean(dim=0)[kept[l + 1].to(values.device)])
    return added


def add_to_bias(layer: nn.Module, extra: torch.Tensor) -> None:
    """layer.bias += extra [O]; a layer without a bias gets extra as its bias (a Parameter of the mask's dtype)."""
    with torch.no_grad():
        if layer.bias is None:
            layer.bias = nn.Parameter(extra.detach().to(layer.mask).clone())
        else:
            layer.bias.add_(extra.to(layer.bias))


@torch.no_grad()
def mask_edges(layer: nn.Module, keep: torch.Tensor, layer_input: torch.Tensor | None = None) -> None:
    """layer.mask *= keep [I, O] (1 keeps an edge, 0 switches it off). Given ``layer_input`` [N, I], the layer's
    input on samples, what the edges switched off added to their outputs, averaged over the samples, goes into the
    layer's bias (:func:`add_to_bias`); an edge's symbolic branch, which the mask does not switch off, stays."""
    keep = keep.to(layer.mask)
    if layer_input is None or not bool((layer.mask * (1 - keep)).any()):
        layer.mask.mul_(keep)
        return
    before = layer.activations(layer_input)
    layer.mask.mul_(keep)
    add_to_bias(layer, (before - layer.activations(layer_input)).sum(dim=1).mean(dim=0))
