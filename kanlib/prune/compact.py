"""Compaction: the smaller KAN that computes what a pruned one computes, without its dead nodes and inputs.

Pruning switches edges off (``mask`` zeros) but leaves every matrix its dense size. Here a hidden node that
feeds no live edge is dropped, and one that no live edge feeds (it outputs the constant ``c`` of its bias)
is folded into the next layer's bias, which gains ``phi_{j,o}(c)`` on every output o. The layers are narrowed
with their ``select``; the model is left as it is.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..checks import check_int
from ..symbolic.library import FUNCTION_NAMES

__all__ = ["compact", "compact_layers", "give_every_layer_a_bias_if_one_has", "live_inputs", "live_edges",
           "symbolic_edges"]

EXPECTED = "a KAN of BSplineKAN layers"


def live_edges(layer: nn.Module) -> torch.Tensor:
    """[I, O] bool: the edges of a B-spline layer that compute something, a nonzero ``mask`` entry or a live
    symbolic edge (:func:`symbolic_edges`)."""
    return (layer.mask != 0) | symbolic_edges(layer)


def symbolic_edges(layer: nn.Module) -> torch.Tensor:
    """[I, O] bool: the edges of a B-spline layer fixed to a symbolic function other than ``"0"`` with d = 0 (what
    ``auto_symbolic`` gives a switched-off edge: ``c * 0 + d``, zero for every finite input)."""
    symbolic = getattr(layer, "symbolic", None)
    if symbolic is None:
        return torch.zeros(layer.mask.shape, dtype=torch.bool, device=layer.mask.device)
    zero = (symbolic.function_index == FUNCTION_NAMES.index("0")) & (symbolic.affine.detach()[..., 3] == 0)
    return (symbolic.mask != 0) & ~zero


def compact(model: nn.Module, inputs=None) -> nn.Module:
    """A new KAN computing what ``model`` computes (to float rounding), without its dead hidden nodes.

    A hidden node whose outgoing edges are all dead is removed; one whose incoming edges are all dead outputs
    its bias entry c (0 without a bias): it is removed and ``phi_{j,o}(c)`` is added to the next layer's bias
    (created when missing; then every layer gets a bias, zero where nothing was folded, so that
    ``KAN(widths, bias=True, ...)`` rebuilds the result for its state dict). This repeats until nothing changes.
    Inputs and outputs stay unless ``inputs`` (a list of input indices, e.g. ``live_inputs(model)``) is given:
    then the result reads only those, in that order, and is called on ``x[:, inputs]``. Layer settings, backend,
    dtype and device are kept; the model's remembered samples are narrowed with its inputs. The same as
    ``model.compact(inputs)``.

    TypeError for a model that is not a KAN of plain BSplineKAN layers (other families, quantized or QAT layers);
    ValueError when every node of a hidden layer is dead (the output is a constant), for bad ``inputs``, and
    when ``inputs`` leaves out an input whose edges are live.
    """
    _bspline_layers(model, "compact")
    return model.compact(inputs)


def compact_layers(model: nn.Module, inputs=None) -> tuple[list[nn.Module], list[int]]:
    """The layers of ``compact(model, inputs)`` (new modules; the model's are left as they are) and the input
    indices they read; see :func:`compact`."""
    layers = _bspline_layers(model, "compact")
    kept, biases = _plan(layers, model.widths)
    if inputs is not None:
        kept[0] = _check_inputs(inputs, model.widths[0])
        _check_dropped(layers[0], kept, model.widths[0])
    new_layers = []
    for l, layer in enumerate(layers):
        new = layer.select(kept[l], kept[l + 1])
        if biases[l] is not None:
            values = biases[l][kept[l + 1]]
            if new.bias is None:
                new.bias = nn.Parameter(values.clone())
            else:
                with torch.no_grad():
                    new.bias.copy_(values)
        new_layers.append(new)
    give_every_layer_a_bias_if_one_has(new_layers)
    return new_layers, kept[0]


def give_every_layer_a_bias_if_one_has(layers: Sequence[nn.Module]) -> None:
    """Where some of the layers have a bias, a zero bias for each of the others (a trainable Parameter of the
    layer's dtype and device), so that a model of these layers has one bias setting for all its layers, as a KAN
    built with ``bias=True`` has."""
    if all(layer.bias is None for layer in layers):
        return
    for layer in layers:
        if layer.bias is None:
            like = layer.coef
            layer.bias = nn.Parameter(torch.zeros(layer.out_features, dtype=like.dtype, device=like.device))


def live_inputs(model: nn.Module) -> list[int]:
    """The input indices that ``compact(model)`` still reads: those with a live edge in layer 0 into a node that
    compaction keeps. ``compact(model, live_inputs(model))`` is the smallest model computing the same function
    on ``x[:, live_inputs(model)]``."""
    layers = _bspline_layers(model, "live_inputs")
    kept, _ = _plan(layers, model.widths)
    reads = live_edges(layers[0])[:, kept[1]].any(dim=1)
    return reads.nonzero().flatten().tolist()


def _bspline_layers(model: nn.Module, function: str) -> list[nn.Module]:
    """model's layers, after checking that it is a KAN of plain B-spline layers (with a mask and ``select``)."""
    layers = getattr(model, "layers", None)
    if (not isinstance(model, nn.Module) or not isinstance(layers, nn.ModuleList) or len(layers) == 0
            or not isinstance(getattr(model, "widths", None), list)):
        raise TypeError(f"{function} expects {EXPECTED}, got {type(model).__name__}")
    for index, layer in enumerate(layers):
        name = type(layer).__name__
        mask = getattr(layer, "mask", None)
        if not (isinstance(mask, torch.Tensor) and mask.shape == (layer.in_features, layer.out_features)
                and callable(getattr(layer, "select", None)) and callable(getattr(layer, "activations", None))):
            raise TypeError(f"{function} expects {EXPECTED}; layer {index} is {name}, which has no edge mask to "
                            f"compact (quantized layers neither: compact before quantizing)")
        try:
            layer.select([0], [0])
        except TypeError as error:
            raise TypeError(f"{function} expects {EXPECTED}; layer {index} is {name}: {error}. QAT and quantized "
                            f"layers cannot be compacted: compact before quantizing") from error
    return list(layers)


def _plan(layers: list[nn.Module], widths: list[int]) -> tuple[list[list[int]], list[torch.Tensor | None]]:
    """Per node layer the indices kept, and per layer its bias with the dead-in nodes' constants folded in
    (None for a layer without bias that gains nothing)."""
    live = [live_edges(layer) for layer in layers]
    alive = [torch.ones(width, dtype=torch.bool, device=live[0].device) for width in widths]
    biases = [None if layer.bias is None else layer.bias.detach().clone() for layer in layers]
    changed = True
    while changed:
        changed = False
        for n in range(1, len(widths) - 1):
            folded = []  # the dead-in nodes of layer n found in this pass, whose constants feed layer n's bias
            for j in alive[n].nonzero().flatten().tolist():
                feeds = bool(live[n][j][alive[n + 1]].any())
                fed = bool(live[n - 1][:, j][alive[n - 1]].any())
                if feeds and fed:
                    continue
                if int(alive[n].sum()) == 1:
                    raise ValueError(f"every node of hidden layer {n} (width {widths[n]}) is dead: each has no live "
                                     f"incoming or no live outgoing edge once the others are removed, so the "
                                     f"network's output is a constant; compact keeps at least one node per layer")
                if feeds:
                    folded.append(j)
                alive[n][j] = False
                changed = True
            if folded:
                constants = [0.0 if biases[n - 1] is None else biases[n - 1][j] for j in folded]
                values = _edge_values_at(layers[n], folded, constants)
                for j in folded:
                    biases[n] = values[j] if biases[n] is None else biases[n] + values[j]
    return [mask.nonzero().flatten().tolist() for mask in alive], biases


@torch.no_grad()
def _edge_values_at(layer: nn.Module, inputs: list[int], values: list) -> torch.Tensor:
    """[I, O] whose rows j in ``inputs`` are ``phi_{j,o}(values[k])`` for every output o of the layer (base,
    spline and symbolic parts), j = inputs[k]: one evaluation for them all, an edge reading its own input only."""
    point = torch.zeros(1, layer.in_features, dtype=layer.mask.dtype, device=layer.mask.device)
    for j, value in zip(inputs, values):
        point[0, j] = value
    return layer.activations(point)[0]


def _check_inputs(inputs, n_in: int) -> list[int]:
    """inputs (a sequence of ints or a 1-D integer tensor) as a list of distinct indices in 0..n_in-1."""
    if isinstance(inputs, torch.Tensor):
        if inputs.dim() != 1 or inputs.dtype.is_floating_point or inputs.dtype.is_complex \
                or inputs.dtype == torch.bool:
            raise ValueError(f"inputs must be a 1-D integer tensor or a sequence of ints, got a {inputs.dtype} "
                             f"tensor of shape {tuple(inputs.shape)}")
        values = inputs.tolist()
    elif isinstance(inputs, Sequence) and not isinstance(inputs, (str, bytes)):
        values = [check_int(f"inputs[{k}]", v) for k, v in enumerate(inputs)]
    else:
        raise TypeError(f"inputs must be None or a sequence of input indices, got {type(inputs).__name__}")
    if not values:
        raise ValueError(f"inputs must list at least one input index in 0..{n_in - 1}, got []")
    outside = [v for v in values if not 0 <= v < n_in]
    if outside:
        raise ValueError(f"inputs must be indices in 0..{n_in - 1} (the model has {n_in} inputs), got {values}")
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"inputs must be distinct indices, got {values} ({repeated} repeated)")
    return values


def _check_dropped(first: nn.Module, kept: list[list[int]], n_in: int) -> None:
    """ValueError when an input left out of kept[0] has a live edge into a node of layer 1 that is kept."""
    live = live_edges(first)
    chosen = set(kept[0])
    for i in range(n_in):
        if i in chosen:
            continue
        edges = [(0, i, o) for o in kept[1] if bool(live[i, o])]
        if edges:
            raise ValueError(f"inputs leaves out input {i}, whose edges {edges} (layer, input, output) are live: "
                             f"dropping it would change the function; keep it (live_inputs(model) lists the "
                             f"inputs that are read)")
