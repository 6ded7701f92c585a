"""Pruning with pykan's semantics: attribution scores, the sparsity penalty, and which nodes and edges stay;
compaction, the smaller KAN that computes what a pruned one computes.

The KAN methods (``KAN.attribute``, ``prune_node``, ``prune_edge``, ``prune``, ``regularization_loss``,
``compact``) use these. Training to a target sparsity, ``prune_to_sparsity``, lives in
:mod:`kanlib.prune.schedule`, imported from there: it drives ``kanlib.training.fit``, and the layers, which
import this package for the sparsity penalty, must not depend on the training loop.
"""
from .compact import compact, compact_layers, live_edges, live_inputs
from .penalty import sparsity_penalty
from .prune import kept_edges, kept_nodes
from .scores import Attribution, attribution, sample_std

__all__ = ["Attribution", "attribution", "sample_std", "sparsity_penalty", "kept_nodes", "kept_edges",
           "compact", "compact_layers", "live_inputs", "live_edges"]
