"""Pictures of a trained KAN: the whole network with every edge's learned function, and one edge alone.

    fig = plot_model(model, x)                  # nodes per layer, one small plot per edge, as pykan's plot()
    fig = plot_activation(model, l, i, j, x)    # phi_{l,i,j} over its input range with the samples it saw

Edge (l, i, j) is layer l's edge from input i to output j. An edge's line and plot are drawn with opacity
``tanh(beta * score)`` from its attribution score; switched-off (pruned) edges are faded and dashed; edges fixed
to a symbolic function are drawn in another colour with the function's name. Both functions return a matplotlib
Figure that pyplot does not keep open (Jupyter shows it once, as a cell's value; nothing calls ``plt.show``),
and ``path=`` saves it as png, svg or pdf.
matplotlib is imported inside the functions, so ``import kanlib`` does not load it.
"""
from __future__ import annotations

import math
import os
import pathlib
from collections.abc import Sequence
from typing import NamedTuple

import torch

from .checks import check_choice, check_int, check_real

__all__ = ["plot_model", "plot_activation", "edge_style", "EdgeStyle", "SAVE_FORMATS", "METRICS", "PRUNED_ALPHA",
           "COLORS"]

SAVE_FORMATS = ("png", "svg", "pdf")
# "backward": the model's attribution scores (pykan's default); "forward_u": the spread (std) of the edge's
# output over the samples; "forward_n": that spread over the input's spread + 0.1, as pykan.
METRICS = ("backward", "forward_u", "forward_n")
PRUNED_ALPHA = 0.12
COLORS = {"spline": "black", "symbolic": "tab:red", "both": "tab:purple", "pruned": "0.55"}
ZERO_FUNCTION = "0"

# The network picture's geometry, in inches at scale 1.
_EDGE_SLOT = 0.6        # width per edge in the widest layer
_NODE_SLOT = 0.45       # width per node in the widest layer
_MIN_WIDTH, _MAX_WIDTH = 3.5, 15.0
_MAX_INSET = 0.9        # side of an edge's plot when there is room
_INSET_FILL = 0.8       # share of its slot an edge's plot takes, so neighbours never touch
_MAX_ASPECT = 1.5       # height over width of an edge's plot in a crowded layer
_LEAD = 0.45            # vertical room for the lines between a node row and the edge plots
_MARGIN = 0.3
_NODE_RADIUS = 0.07
_LABEL_ROOM = 0.45      # for in_vars / out_vars
_TITLE_ROOM = 0.5


class EdgeStyle(NamedTuple):
    """How edge (l, i, j) is drawn: ``kind`` is "spline", "symbolic", "both" (a symbolic function on top of a live
    spline) or "pruned"; ``name`` the symbolic function's name or None; ``alpha`` its opacity in [0, 1]."""
    kind: str
    name: str | None
    alpha: float

    @property
    def color(self) -> str:
        return COLORS[self.kind]


def _check_model(model, function: str):
    """The model's layers, once it looks like a kanlib KAN whose layers can give their activations."""
    if not all(hasattr(model, name) for name in ("widths", "layers", "samples", "layer_inputs")):
        raise TypeError(f"{function} expects a kanlib.KAN (with widths, layers, samples and layer_inputs), "
                        f"got {type(model).__name__}")
    layers = list(model.layers)
    for index, layer in enumerate(layers):
        if not callable(getattr(layer, "activations", None)):
            raise TypeError(f"{function} needs every layer to give its edges' activations; layer {index} "
                            f"({type(layer).__name__}) has no activations method")
    return layers


def _check_path(path) -> tuple[pathlib.Path, str] | None:
    if path is None:
        return None
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike ending in one of {['.' + f for f in SAVE_FORMATS]}, "
                        f"got {type(path).__name__}")
    path = pathlib.Path(path)
    extension = path.suffix.lower().lstrip(".")
    if extension not in SAVE_FORMATS:
        raise ValueError(f"path must end in one of {['.' + f for f in SAVE_FORMATS]}, got {str(path)!r}")
    if not path.parent.is_dir():
        raise ValueError(f"path: the folder {str(path.parent)!r} of {str(path)!r} does not exist")
    return path, extension


def _new_figure(**kwargs):
    """A Figure that pyplot does not keep: Jupyter shows it once, as the value a cell returns. It is made through
    pyplot so that the active backend is loaded (Jupyter's inline backend then registers how figures display)."""
    import matplotlib.pyplot as plt

    figure = plt.figure(**kwargs)
    plt.close(figure)
    return figure


def _save(figure, target) -> None:
    if target is not None:
        path, extension = target
        figure.savefig(path, format=extension, bbox_inches="tight")


def _check_edge(widths: Sequence[int], l, i, j) -> tuple[int, int, int]:
    n_layers = len(widths) - 1
    l = check_int("l", l, 0, n_layers - 1, expected=f"a layer index in 0..{n_layers - 1} (widths {list(widths)})")
    i = check_int("i", i, 0, widths[l] - 1, expected=f"an input index of layer {l} in 0..{widths[l] - 1}")
    j = check_int("j", j, 0, widths[l + 1] - 1, expected=f"an output index of layer {l} in 0..{widths[l + 1] - 1}")
    return l, i, j


def _check_names(name: str, names, count: int) -> list[str] | None:
    if names is None:
        return None
    if isinstance(names, (str, bytes)) or not isinstance(names, Sequence) or len(names) != count:
        raise ValueError(f"{name} must be a sequence of {count} names (str, LaTeX allowed, or sympy symbols), "
                         f"got {names!r}")
    return [_as_text(value) for value in names]


def _as_text(value) -> str:
    if isinstance(value, str):
        return value
    if type(value).__module__.startswith("sympy"):
        import sympy

        return f"${sympy.latex(value)}$"
    return str(value)


def edge_style(layer, i: int, j: int, score: float = 1.0, beta: float = 3.0) -> EdgeStyle:
    """How edge (i, j) of ``layer`` is drawn given its attribution ``score``: opacity ``tanh(beta * score)`` for
    a live edge (clipped to [0, 1]; a NaN score counts as 0), ``PRUNED_ALPHA`` for a switched-off one (spline
    masked off and no symbolic function, or the zero function ``"0"``)."""
    mask = getattr(layer, "mask", None)  # layer families without a mask have every edge on
    numeric = mask is None or bool(mask[i, j] != 0)
    symbolic_branch = getattr(layer, "symbolic", None)
    name = symbolic_branch.name(i, j) if symbolic_branch is not None and bool(symbolic_branch.mask[i, j] != 0) \
        else None
    if name == ZERO_FUNCTION:  # what auto_symbolic fixes switched-off edges to: still drawn as switched off
        name = None
    kind = ("both" if numeric else "symbolic") if name is not None else ("spline" if numeric else "pruned")
    if kind == "pruned":
        return EdgeStyle(kind, None, PRUNED_ALPHA)
    alpha = math.tanh(beta * score) if math.isfinite(score) else (1.0 if score > 0 else 0.0)
    return EdgeStyle(kind, name, min(max(alpha, 0.0), 1.0))


def _edge_scores(model, x: torch.Tensor, metric: str, layer_inputs: list[torch.Tensor],
                activations: list[torch.Tensor]) -> list[torch.Tensor]:
    """Every layer's edge scores [I, O] for ``metric`` (see ``METRICS``), from samples x [N, widths[0]], each
    layer's inputs [N, I] and its activations [N, I, O]."""
    if metric == "backward":
        if not callable(getattr(model, "attribute", None)):
            raise TypeError(f"metric='backward' needs the model's attribute(x); {type(model).__name__} has none, "
                            f"use metric='forward_u' or 'forward_n'")
        return [score.detach().to("cpu", torch.float64) for score in model.attribute(x).edge_scores]
    spreads = [phi.std(dim=0) for phi in activations]
    if metric == "forward_u":
        return spreads
    return [spread / (inputs.std(dim=0).unsqueeze(-1) + 0.1) for spread, inputs in zip(spreads, layer_inputs)]


def _samples_and_activations(model, layers, x):
    """Each layer's inputs [N, I] and activations [N, I, O], as float64 on the CPU."""
    with torch.no_grad():
        inputs = model.layer_inputs(x)
        phis = [layer.activations(values) for layer, values in zip(layers, inputs)]
    return [t.detach().to("cpu", torch.float64) for t in inputs], [t.detach().to("cpu", torch.float64) for t in phis]


def plot_model(model, x: torch.Tensor | None = None, beta: float = 3.0, metric: str = "backward",
               in_vars: Sequence | None = None, out_vars: Sequence | None = None, title: str | None = None,
               scale: float = 1.0, ax=None, path: str | os.PathLike | None = None):
    """The network as pykan's ``plot()`` draws it: a row of nodes per layer (inputs at the bottom), and for each
    edge (l, i, j) a small plot of its function phi_{l,i,j} against the sorted samples of input i, set between
    its two nodes, the lines to it drawn with opacity ``tanh(beta * score)`` (see ``edge_style``).

    x [N, widths[0]]: samples (None: the model's last input, ``model.samples``). ``metric``: the edge score, one
    of ``METRICS``. ``in_vars`` / ``out_vars``: names under the inputs / above the outputs (str, LaTeX such as
    ``"$x_1$"``, or sympy symbols). ``scale`` multiplies every size. ``ax``: draw on this Axes instead of a new
    figure. ``path``: also save to this .png, .svg or .pdf file. Returns the Figure; each edge's plot is an inset
    Axes of the main one with label ``"edge l,i,j"``, and its two lines carry gid ``"edge l,i,j"``.
    """
    layers = _check_model(model, "plot_model")
    widths = list(model.widths)
    beta = check_real("beta", beta, 0.0)
    check_choice("metric", metric, METRICS)
    scale = check_real("scale", scale, positive=True)
    in_names = _check_names("in_vars", in_vars, widths[0])
    out_names = _check_names("out_vars", out_vars, widths[-1])
    target = _check_path(path)
    x = model.samples(x, "plot")
    layer_inputs, activations = _samples_and_activations(model, layers, x)
    scores = _edge_scores(model, x, metric, layer_inputs, activations)

    n_edges = [n_in * n_out for n_in, n_out in zip(widths[:-1], widths[1:])]
    inner = min(max(max(n_edges) * _EDGE_SLOT, max(widths) * _NODE_SLOT, _MIN_WIDTH), _MAX_WIDTH)
    slots = [inner / count for count in n_edges]
    # An edge's plot fills most of its slot; where slots are narrow it may be taller than wide.
    inset_widths = [min(_INSET_FILL * slot, _MAX_INSET) for slot in slots]
    inset_heights = [min(_MAX_ASPECT * side, _MAX_INSET) for side in inset_widths]
    bands = [side + 2 * _LEAD for side in inset_heights]
    bottom = _MARGIN + (_LABEL_ROOM if in_names else 0.0)
    top_room = _MARGIN + (_LABEL_ROOM if out_names else 0.0) + (_TITLE_ROOM if title else 0.0)
    width = inner + 2 * _MARGIN
    height = bottom + sum(bands) + top_room
    if ax is None:
        figure = _new_figure(figsize=(width * scale, height * scale))
        ax = figure.add_axes((0, 0, 1, 1))
    else:
        figure = ax.figure
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.set_aspect("equal")
    ax.set_axis_off()

    def node_x(count: int, index: int) -> float:
        return _MARGIN + (index + 0.5) * inner / count

    def row_y(row: int) -> float:
        return bottom + sum(bands[:row])

    marker = 2 * _NODE_RADIUS * 72 * scale
    for row, count in enumerate(widths):
        ax.plot([node_x(count, n) for n in range(count)], [row_y(row)] * count, "o", color="black",
                markersize=marker, zorder=3, gid=f"nodes {row}")
    font = 11 * scale
    for index, name in enumerate(in_names or []):
        ax.text(node_x(widths[0], index), row_y(0) - _LABEL_ROOM / 2 - _NODE_RADIUS, name, fontsize=font,
                ha="center", va="center")
    for index, name in enumerate(out_names or []):
        ax.text(node_x(widths[-1], index), row_y(len(layers)) + _LABEL_ROOM / 2 + _NODE_RADIUS, name,
                fontsize=font, ha="center", va="center")
    if title:
        ax.text(width / 2, height - _MARGIN - _TITLE_ROOM / 2, title, fontsize=1.2 * font, ha="center",
                va="center")

    for l, layer in enumerate(layers):
        n_in, n_out = widths[l], widths[l + 1]
        slot, side, tall = slots[l], inset_widths[l], inset_heights[l]
        middle = row_y(l) + bands[l] / 2
        order = [torch.argsort(layer_inputs[l][:, i]) for i in range(n_in)]
        for i in range(n_in):
            for j in range(n_out):
                style = edge_style(layer, i, j, float(scores[l][i, j]), beta)
                center = _MARGIN + (i * n_out + j + 0.5) * slot
                dashes = "--" if style.kind == "pruned" else "-"
                line_width = (0.6 + 1.4 * style.alpha) * scale
                label = f"edge {l},{i},{j}"
                ax.plot([node_x(n_in, i), center], [row_y(l) + _NODE_RADIUS, middle - tall / 2], dashes,
                        color=style.color, alpha=style.alpha, linewidth=line_width, gid=label)
                ax.plot([center, node_x(n_out, j)], [middle + tall / 2, row_y(l + 1) - _NODE_RADIUS], dashes,
                        color=style.color, alpha=style.alpha, linewidth=line_width, gid=label)
                inset = ax.inset_axes((center - side / 2, middle - tall / 2, side, tall), transform=ax.transData)
                _draw_edge_inset(inset, style, layer_inputs[l][order[i], i], activations[l][order[i], i, j], scale,
                                 side)
                inset.set_label(label)
                if style.name:
                    ax.text(center, middle + tall / 2, style.name, fontsize=(8 if side >= 0.4 else 6) * scale,
                            color=style.color, ha="center", va="bottom", zorder=4, gid=f"name {l},{i},{j}",
                            bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none",
                                  "alpha": 0.85})
    _save(figure, target)
    return figure


def _draw_edge_inset(inset, style: EdgeStyle, inputs: torch.Tensor, values: torch.Tensor, scale: float,
                     side: float) -> None:
    inset.set_xticks([])
    inset.set_yticks([])
    inset.patch.set_alpha(0.0)
    for spine in inset.spines.values():
        spine.set_color(style.color)
        spine.set_alpha(style.alpha)
        spine.set_linewidth(0.8 * scale)
        if style.kind == "pruned":
            spine.set_linestyle("--")
    if style.kind != "pruned":
        inset.plot(inputs.numpy(), values.numpy(), color=style.color, alpha=style.alpha,
                   linewidth=max(0.6, 1.8 * min(side / _MAX_INSET, 1.0)) * scale)


def _symbolic_form(branch, l: int, i: int, j: int, name: str) -> str:
    """A fixed edge's ``c * f(a x + b) + d`` as mathtext, constants to 3 significant digits; the function's name
    alone where the branch has no affine parameters, sympy is missing or matplotlib cannot typeset the form."""
    affine = getattr(branch, "affine", None)
    if affine is None:
        return name
    try:
        import sympy
    except ImportError:
        return name
    from matplotlib.mathtext import MathTextParser

    from .symbolic.library import get_function

    a, b, c, d = (float(value) for value in affine[i, j].detach())
    expression = c * get_function(name).sympy(a * sympy.Symbol(f"x_{{{l},{i}}}") + b) + d

    def rounded(number):
        value = float(f"{float(number):.3g}")
        return sympy.Integer(int(value)) if value == int(value) else sympy.Float(value)

    expression = expression.xreplace({number: rounded(number) for number in expression.atoms(sympy.Float)})
    form = f"${sympy.latex(expression)}$"
    try:
        MathTextParser("path").parse(form)
    except ValueError:
        return name
    return form


def plot_activation(model, l: int, i: int, j: int, x: torch.Tensor | None = None, ax=None,
                    path: str | os.PathLike | None = None):
    """Edge (l, i, j)'s function phi_{l,i,j} as a line over its input range (the samples' span joined with the
    grid's), and the samples it saw as points (input value, activation value). x [N, widths[0]]: samples (None:
    the model's last input). The title names the edge and, when fixed, its symbolic function. ``ax``: draw there
    instead of a new figure; ``path``: also save as .png, .svg or .pdf. Returns the Figure."""
    layers = _check_model(model, "plot_activation")
    l, i, j = _check_edge(list(model.widths), l, i, j)
    target = _check_path(path)
    x = model.samples(x, "plot_activation")
    layer = layers[l]
    with torch.no_grad():
        inputs = model.layer_inputs(x)[l]
        seen = inputs[:, i].detach().to("cpu", torch.float64)
        values = layer.activations(inputs)[:, i, j].detach().to("cpu", torch.float64)
        low, high = float(seen.min()), float(seen.max())
        grid = getattr(layer, "grid", None)
        if grid is not None and hasattr(layer, "spline_order"):
            k = layer.spline_order
            low, high = min(low, float(grid[i, k])), max(high, float(grid[i, grid.shape[1] - k - 1]))
        if not low < high:
            low, high = low - 1.0, high + 1.0
        line = torch.linspace(low, high, 401, dtype=inputs.dtype, device=inputs.device)
        curve = layer.activations(line.unsqueeze(-1).repeat(1, layer.in_features))[:, i, j]
        curve = curve.detach().to("cpu", torch.float64)
    style = edge_style(layer, i, j)

    figure = ax.figure if ax is not None else _new_figure(figsize=(4.5, 3.4), layout="constrained")
    ax = ax if ax is not None else figure.add_subplot()
    ax.plot(line.detach().to("cpu", torch.float64).numpy(), curve.numpy(), color=style.color, linewidth=1.8,
            linestyle="--" if style.kind == "pruned" else "-", label=r"$\phi$", gid="function", zorder=3)
    ax.scatter(seen.numpy(), values.numpy(), s=10, color="tab:blue", alpha=0.5, label="samples", zorder=2,
               gid="samples")
    form = _symbolic_form(layer.symbolic, l, i, j, style.name) if style.name else ""
    described = {"spline": "", "pruned": " (switched off)", "symbolic": f"\n{form}",
                 "both": f"\n{form} + spline"}[style.kind]
    ax.set_title(f"edge (l, i, j) = ({l}, {i}, {j}){described}", color=style.color if style.name else "black")
    ax.set_xlabel(f"input $x_{{{l},{i}}}$ (layer {l}, input {i})")
    ax.set_ylabel(rf"$\phi_{{{l},{i},{j}}}(x_{{{l},{i}}})$")
    ax.legend(fontsize="small", loc="best")
    _save(figure, target)
    return figure
