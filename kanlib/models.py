"""Whole networks: the `KAN` stack, the `MLP` baseline, and their parameter and FLOP counts."""
from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Sequence
from contextlib import contextmanager

import torch
from torch import nn

from .activations import ACTIVATIONS, MLP_ACTIVATIONS
from .checks import check_bool, check_int, check_positive_int, is_real
from .layers.bspline import BSplineKAN
from .layers.basis_kan import BasisKAN
from .layers.conv import KANConv2d
from .layers.mlp import MLP, Stack, check_activation, check_widths
from .layers.sparse_bspline import SparseBSplineKAN
from .layers.registry import LAYERS, resolve_layer
from .ops.spline_linear import under_transform
from .prune import Attribution, attribution, compact_layers, kept_edges, kept_nodes, sample_std
from .prune.compact import give_every_layer_a_bias_if_one_has
from .prune.prune import add_to_bias, mask_edges, removed_node_means
from .symbolic import Candidate, EdgeChoice, get_function, rank_candidates, resolve_library, symbolic_formula
from .training import History, fit

__all__ = ["KAN", "MLP", "ConvKAN", "CNNWithKANHead", "LAYERS", "BASIS_FLOPS", "count_parameters", "forward_flops",
           "mlp_with_parameter_count"]

# pykan's MultKAN initializes its splines with this noise (its KANLayer's own default is 0.5).
MULTKAN_NOISE_SCALE = 0.3
FIT_OPTIONS = frozenset(list(inspect.signature(fit).parameters)[2:])  # after model and data
# Options of pykan's MultKAN.fit that kanlib's fit names differently, and what to use instead.
PYKAN_FIT_OPTIONS = {
    "batch": "batch_size (None trains on the full set, pykan's batch=-1)",
    "loss_fn": "loss",
    "log": "eval_every (and progress=False for no bar)",
    "grid_update_num": "stop_grid_update_step with update_grid_every (pykan's 10 updates over the first 50 steps "
                       "are the default)",
    "start_grid_update_step": "update_grid_every and stop_grid_update_step",
    "metrics": "the History fit returns (losses and the metric per evaluation)",
    "display_metrics": "progress",
}


@contextmanager
def _seeded(seed: int | None):
    """Inside, torch's RNG is seeded with seed (unless None); outside, the global RNG state is left as it was."""
    if seed is None:
        yield
        return
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__} ({seed!r})")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield


class KAN(Stack, nn.Module):
    """A stack of KAN layers: widths ``[2, 5, 1]`` gives ``layer(2, 5)`` then ``layer(5, 1)``.

    Input ``[..., widths[0]]``, output ``[..., widths[-1]]``. ``layer`` is a layer class or a name in
    ``LAYERS``; ``layer_kwargs`` go to every layer (e.g. grid_size, spline_order). An int ``seed`` makes the
    initial parameters reproducible and leaves the global RNG untouched. B-spline layers start as pykan's
    ``MultKAN`` starts them: ``noise_scale`` 0.3 unless given, so ``KAN(widths, seed=s)`` draws the same initial
    coefficients and scales as ``MultKAN(width=widths, seed=s)`` with the same grid size and order.
    """

    def __init__(self, widths: Sequence[int], layer=BSplineKAN, seed: int | None = None, **layer_kwargs):
        super().__init__()
        self.widths = check_widths(widths)
        layer_type = resolve_layer(layer)
        if isinstance(layer_type, type) and issubclass(layer_type, BSplineKAN):
            layer_kwargs.setdefault("noise_scale", MULTKAN_NOISE_SCALE)
        with _seeded(seed):
            self.layers = nn.ModuleList(layer_type(n_in, n_out, **layer_kwargs)
                                        for n_in, n_out in zip(self.widths[:-1], self.widths[1:]))

    def extra_repr(self) -> str:
        return f"widths={self.widths}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., widths[0]] -> [..., widths[-1]]. The input is kept (detached, not copied) as the samples that
        ``attribute``, ``prune``, ``plot`` and the symbolic fits use when they are given none, as pykan does."""
        if not under_transform(x):  # a traced or compiled forward has no samples to keep
            self._last_input = x.detach()
        for layer in self.layers:
            x = layer(x)
        return x

    def samples(self, x: torch.Tensor | None, method: str, checked: bool = True) -> torch.Tensor:
        """x [N, widths[0]], or when None the input of the last forward call, for ``method``'s error message;
        ``checked``: ValueError unless there are at least 2 samples, all finite (what scores and fits need)."""
        source = "x"
        if x is None:
            x = getattr(self, "_last_input", None)
            if x is None:
                raise ValueError(f"KAN.{method} needs samples: pass x=[N, {self.in_features}] or call model(x) "
                                 f"first, whose input is used")
            source = "the last forward call's input (pass x to use others)"
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"KAN.{method} needs samples x, a tensor [N, {self.in_features}], got {type(x).__name__}")
        x = x.reshape(-1, x.shape[-1]) if x.dim() > 2 else x
        if x.dim() != 2 or x.shape[-1] != self.in_features:
            raise ValueError(f"KAN.{method} needs samples of shape [N, {self.in_features}], got {tuple(x.shape)} "
                             f"in {source}")
        if checked and x.shape[0] < 2:
            raise ValueError(f"KAN.{method} needs at least 2 samples, got {x.shape[0]} in {source}")
        if checked and not bool(torch.isfinite(x).all()):
            raise ValueError(f"KAN.{method} needs finite samples; {source} has NaN or inf")
        return x

    def layer_inputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The input of every layer for samples x [N, widths[0]]: [x, layer0(x), ...], len(widths) - 1 tensors."""
        inputs = []
        for layer in self.layers:
            inputs.append(x)
            x = layer(x)
        return inputs

    @torch.no_grad()
    def update_grid(self, x: torch.Tensor | None = None) -> None:
        """Fit each layer's grid to the inputs it receives from samples x [N, widths[0]] (default: the last forward
        call's input, as ``refine``).

        Layer l sees x passed through layers 0..l-1 after their update, as pykan's ``update_grid_from_samples``.
        """
        self._require("update_grid")
        x = self.samples(x, "update_grid", checked=False)  # each layer checks its own
        saved = [{name: t.clone() for name, t in layer.state_dict().items()} for layer in self.layers]
        try:
            for index, layer in enumerate(self.layers):
                try:
                    layer.update_grid(x)
                except ValueError as error:
                    raise ValueError(f"KAN.update_grid: layer {index} ({layer.in_features} -> {layer.out_features}) "
                                     f"cannot take the grid of its inputs: {error}; no layer was changed") from error
                x = layer(x)
        except BaseException:
            for layer, state in zip(self.layers, saved):
                _restore(layer, state)
            raise

    @torch.no_grad()
    def refine(self, grid_size: int, x: torch.Tensor | None = None) -> "KAN":
        """Every layer keeps its function on ``grid_size`` intervals, refined in place; returns self, so pykan's
        ``model = model.refine(10)`` works too.

        As pykan's ``refine``, each layer's splines are fitted by least squares to the old ones at the inputs
        it receives from samples x [N, widths[0]] (default: the input of the last forward call, which after
        ``fit`` is the training input). Its new knots follow those inputs as in ``update_grid`` (pykan
        interpolates the old knots instead, which leaves a hidden layer's inputs that drifted since the last
        grid update outside its grid). The coefficient Parameters are replaced, so build the optimizer
        afterwards. On an error no layer is changed.
        """
        self._require("refine")
        check_int("grid_size", grid_size, 1)
        inputs = self.layer_inputs(self.samples(x, "refine", checked=False))  # each layer checks its own
        saved = [{name: t.clone() for name, t in layer.state_dict().items()} for layer in self.layers]
        try:
            for index, (layer, layer_input) in enumerate(zip(self.layers, inputs)):
                try:
                    layer.refine(grid_size, layer_input)
                except ValueError as error:
                    raise ValueError(f"KAN.refine: layer {index} ({layer.in_features} -> {layer.out_features}) "
                                     f"cannot take a grid from its inputs: {error}; no layer was changed") from error
        except BaseException:
            for layer, state in zip(self.layers, saved):
                _restore(layer, state)
            raise
        return self

    def fit(self, data: dict, **options) -> History:
        """Train this KAN in place on pykan's data dict (``train_input``, ``train_label``, ``test_input``,
        ``test_label``) and return the History: ``kanlib.fit(model, data, **options)``, whose options it takes, as
        pykan's ``model.fit(dataset, ...)``. As kanlib's fit, give ``steps`` or ``epochs``; ``opt`` is "adam" unless
        given (pykan's default is "LBFGS"). A pykan option kanlib names differently raises a TypeError naming
        kanlib's."""
        for name in sorted(options.keys() - FIT_OPTIONS):  # the first unknown name, the same in every run
            instead = f"pykan's {name!r} is kanlib's {PYKAN_FIT_OPTIONS[name]}" if name in PYKAN_FIT_OPTIONS \
                else f"kanlib.fit takes {', '.join(sorted(FIT_OPTIONS))}"
            raise TypeError(f"KAN.fit got an unexpected option {name!r}: {instead}")
        return fit(self, data, **options)

    def regularization_loss(self, x: torch.Tensor, l1: float = 1.0, entropy: float = 2.0, coef: float = 0.0,
                            coefdiff: float = 0.0) -> torch.Tensor:
        """pykan's sparsity penalty on the batch x [N, widths[0]] (N >= 2): the sum over layers of
        ``layer.regularization_loss(layer input, ...)``, differentiable through the layer inputs as pykan's."""
        self._require("regularization_loss")
        x = self.samples(x, "regularization_loss", checked=False)  # a training step's batch
        total = 0
        for layer in self.layers:
            total = total + layer.regularization_loss(x, l1=l1, entropy=entropy, coef=coef, coefdiff=coefdiff)
            x = layer(x)
        return total

    @classmethod
    def from_pykan(cls, multkan) -> "KAN":
        """The KAN of BSplineKAN layers computing what a pykan ``MultKAN`` computes (sum nodes only).

        pykan's node and subnode biases become the layers' bias (every layer's, zero where pykan's are, once one
        layer has a nonzero one, as a KAN built with ``bias=True``); multiplication nodes, node or subnode scales
        other than 1, fixed symbolic functions and pruned inputs (``input_id``) are refused with a ValueError.
        """
        if not all(hasattr(multkan, name) for name in ("act_fun", "width", "symbolic_fun", "node_scale")):
            raise TypeError(f"KAN.from_pykan expects a pykan MultKAN, got {type(multkan).__name__}")
        widths = [int(sum(w)) if isinstance(w, (list, tuple)) else int(w) for w in multkan.width]
        mult = [index for index, w in enumerate(multkan.width) if isinstance(w, (list, tuple)) and w[1]]
        if mult:
            raise ValueError(f"KAN.from_pykan converts sum nodes only; layers {mult} of width {multkan.width} "
                             f"have multiplication nodes")
        input_id = torch.as_tensor(multkan.input_id).cpu().long()
        if not torch.equal(input_id, torch.arange(widths[0])):
            raise ValueError(f"KAN.from_pykan needs a model that reads all its inputs in order; input_id is "
                             f"{input_id.tolist()} (after prune_input), expected {list(range(widths[0]))}")
        layers = []
        for index, (numeric, symbolic) in enumerate(zip(multkan.act_fun, multkan.symbolic_fun)):
            fixed = symbolic.mask.nonzero().tolist()
            if fixed:
                raise ValueError(f"KAN.from_pykan cannot convert fixed symbolic functions; layer {index} has "
                                 f"symbolic (output, input) edges {fixed}")
            for name in ("node_scale", "subnode_scale"):
                scale = getattr(multkan, name)[index].detach()
                if not bool((scale == 1).all()):
                    raise ValueError(f"KAN.from_pykan needs {name} = 1 (it changes pykan's attribution, so it is "
                                     f"not folded in); layer {index} has {scale.tolist()}")
            layer = BSplineKAN.from_pykan(numeric)
            bias = (multkan.subnode_bias[index] + multkan.node_bias[index]).detach().to(layer.coef)
            if bool((bias != 0).any()):
                layer.bias = nn.Parameter(bias.clone())
            layers.append(layer)
        give_every_layer_a_bias_if_one_has(layers)
        model = cls.__new__(cls)
        nn.Module.__init__(model)
        model.widths = check_widths(widths)
        model.layers = nn.ModuleList(layers)
        return model

    def to_pykan(self):
        """pykan's ``MultKAN`` with these layers (each layer's bias as pykan's node_bias). The global RNG states
        (torch, numpy, random), which pykan's constructor reseeds, are left as they were."""
        import random

        import numpy as np
        from kan import MultKAN

        for index, layer in enumerate(self.layers):
            if type(layer) is not BSplineKAN:
                raise TypeError(f"KAN.to_pykan needs plain BSplineKAN layers; layer {index} is "
                                f"{type(layer).__name__}")
            if getattr(layer, "symbolic", None) is not None and bool(layer.symbolic.mask.any()):
                raise ValueError(f"KAN.to_pykan cannot convert fixed symbolic functions (layer {index})")
        first = self.layers[0]
        grids = [layer.grid_size for layer in self.layers]
        orders = [layer.spline_order for layer in self.layers]
        base = first.base_activation if first.base_activation in ("silu", "identity") \
            else ACTIVATIONS[first.base_activation].module()
        device = str(first.coef.device)
        python_state, numpy_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                model = MultKAN(width=list(self.widths), grid=grids if len(set(grids)) > 1 else grids[0],
                                k=orders if len(set(orders)) > 1 else orders[0], base_fun=base,
                                grid_eps=first.grid_eps, auto_save=False, device=device)
                for index, layer in enumerate(self.layers):
                    plain = layer
                    if layer.bias is not None:
                        plain = copy.deepcopy(layer)
                        plain.bias = None
                    model.act_fun[index] = plain.to_pykan()
                    for name in ("node_bias", "node_scale", "subnode_bias", "subnode_scale"):
                        getattr(model, name)[index].data = getattr(model, name)[index].data.to(layer.coef)
                    if layer.bias is not None:
                        model.node_bias[index].data = layer.bias.detach().clone()
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)
        return model

    def plot(self, x: torch.Tensor | None = None, beta: float = 3.0, metric: str = "backward", in_vars=None,
             out_vars=None, title: str | None = None, scale: float = 1.0, ax=None, path=None):
        """The network with every edge's learned function, as pykan's ``plot()``; see
        :func:`kanlib.plot.plot_model`. x [N, widths[0]] (None: the last input). Returns a matplotlib Figure."""
        from .plot import plot_model

        return plot_model(self, x, beta=beta, metric=metric, in_vars=in_vars, out_vars=out_vars, title=title,
                          scale=scale, ax=ax, path=path)

    def plot_activation(self, l: int, i: int, j: int, x: torch.Tensor | None = None, ax=None, path=None):
        """Edge (l, i, j)'s function with the samples it saw; see :func:`kanlib.plot.plot_activation`.
        Returns a matplotlib Figure."""
        from .plot import plot_activation

        return plot_activation(self, l, i, j, x, ax=ax, path=path)

    @torch.no_grad()
    def attribute(self, x: torch.Tensor | None = None) -> Attribution:
        """pykan's ``attribute()`` scores from samples x [N, widths[0]], N >= 2 (default: the last forward's input).

        Each edge's std over the samples (symbolic edges included) and each node's output std feed
        :func:`kanlib.prune.attribution`: ``node_scores`` [widths[l]] per node layer, ``edge_scores`` [I, O].
        """
        self._require_bspline("attribute")
        x = self.samples(x, "attribute")
        inputs = self.layer_inputs(x)
        edge_stds = [sample_std(layer.activations(inp)) for layer, inp in zip(self.layers, inputs)]
        output_stds = [sample_std(layer(inp)) for layer, inp in zip(self.layers, inputs)]
        return attribution(edge_stds, output_stds)

    def prune_node(self, threshold: float = 1e-2, x: torch.Tensor | None = None, keep_means: bool = True) -> "KAN":
        """A new, narrower KAN without the hidden nodes whose attribution score (on x, see ``attribute``) is at
        most ``threshold``, with the edges into and out of them (pykan's ``prune_node``). Inputs and outputs stay.
        With ``keep_means``, what a removed node added to the next layer, averaged over x, goes into that layer's
        bias (a removed node of constant output then changes nothing); every layer then has a bias. pykan drops it
        (``keep_means=False``), and the output moves by it. ValueError when a hidden layer would lose every node.
        The model itself is left as it is."""
        self._require_bspline("prune_node")
        check_bool("keep_means", keep_means)
        x = self.samples(x, "prune_node")
        kept = kept_nodes(self.attribute(x), threshold)
        layers = [layer.select(kept[l], kept[l + 1]) for l, layer in enumerate(self.layers)]
        if keep_means:
            added = removed_node_means(list(self.layers), kept, self.layer_inputs(x))
            for layer, extra in zip(layers, added):
                if extra is not None:
                    add_to_bias(layer, extra)
            give_every_layer_a_bias_if_one_has(layers)
        return self._with_layers(layers)

    def prune_edge(self, threshold: float = 3e-2, x: torch.Tensor | None = None, keep_means: bool = True) -> "KAN":
        """A copy whose edges scoring at most ``threshold`` (on x, see ``attribute``) are masked off (pykan's
        ``prune_edge``: only the spline mask; edges fixed to symbolic functions stay). With ``keep_means``, what a
        masked edge added to its output, averaged over x, goes into its layer's bias, and every layer then has a
        bias; pykan drops it (``keep_means=False``). The model is left as it is."""
        self._require_bspline("prune_edge")
        check_bool("keep_means", keep_means)
        x = self.samples(x, "prune_edge")
        masks = kept_edges(self.attribute(x), threshold)
        with torch.no_grad():
            inputs = self.layer_inputs(x) if keep_means else [None] * len(self.layers)
        model = copy.deepcopy(self)
        for layer, keep, layer_input in zip(model.layers, masks, inputs):
            mask_edges(layer, keep, layer_input)
        give_every_layer_a_bias_if_one_has(list(model.layers))
        return model

    def prune(self, node_th: float = 1e-2, edge_th: float = 3e-2, x: torch.Tensor | None = None,
              keep_means: bool = True) -> "KAN":
        """``prune_node(node_th)``, then on that model, scored again on the same samples, ``prune_edge(edge_th)``
        (pykan's ``prune``), both with ``keep_means``. Returns a new KAN; the model is left as it is."""
        self._require_bspline("prune")
        x = self.samples(x, "prune")
        return self.prune_node(node_th, x, keep_means).prune_edge(edge_th, x, keep_means)

    def compact(self, inputs=None) -> "KAN":
        """A new, smaller KAN without the dead hidden nodes, computing the same outputs (on ``x[:, inputs]`` when
        inputs are given); see :func:`kanlib.prune.compact`. The model is left as it is."""
        layers, kept_inputs = compact_layers(self, inputs)
        model = self._with_layers(layers)
        if inputs is not None and getattr(model, "_last_input", None) is not None:
            model._last_input = model._last_input[..., kept_inputs]
        return model

    def remove_edge(self, l: int, i: int, j: int) -> None:
        """Switch edge (l, i, j) off in place: ``layers[l].mask[i, j] = 0`` (pykan's ``remove_edge``), and an edge
        fixed to a symbolic function is unfixed too (pykan leaves that part on, so the edge would go on computing)."""
        self._require_bspline("remove_edge")
        check_int("l", l, 0, len(self.layers) - 1)
        check_int("i", i, 0, self.widths[l] - 1)
        check_int("j", j, 0, self.widths[l + 1] - 1)
        layer = self.layers[l]
        with torch.no_grad():
            layer.mask[i, j] = 0
        if layer.symbolic is not None:
            layer.symbolic.clear_edge(i, j)

    def suggest_symbolic(self, l: int, i: int, j: int, lib=None, topk: int = 5, x: torch.Tensor | None = None,
                         a_range=(-10.0, 10.0), b_range=(-10.0, 10.0), weight_simple: float = 0.8) -> list[Candidate]:
        """The ``topk`` library functions that best fit edge (l, i, j), best first (pykan's ``suggest_symbolic``).

        Each function of ``lib`` (names; None: the whole library, see ``kanlib.symbolic.FUNCTION_NAMES``) is fitted
        as ``c * f(a * x + b) + d`` to the edge's values at the layer-l inputs of samples x [N, widths[0]] (default:
        the last forward call's input) and scored ``weight_simple * complexity + (1 - weight_simple) *
        log2(1 + 1e-5 - r2)`` (lower is better). Returns ``Candidate`` tuples (name, r2, complexity, score, a, b,
        c, d); ``pandas.DataFrame(...)`` shows them as a table. The model is not changed.
        """
        layer = self._symbolic_edge(l, i, j, "suggest_symbolic")
        with torch.no_grad():
            inputs = self.layer_inputs(self.samples(x, "suggest_symbolic"))[l]
            values = layer.activations(inputs)[:, i, j]
        return rank_candidates(inputs[:, i], values, lib, topk, a_range, b_range, weight_simple)

    def fix_symbolic(self, l: int, i: int, j: int, name: str, fit_params: bool = True, x: torch.Tensor | None = None,
                     a_range=(-10.0, 10.0), b_range=(-10.0, 10.0)) -> float | None:
        """Fix edge (l, i, j) to the library function ``name`` (pykan's ``fix_symbolic``); returns the fit's R^2.

        With ``fit_params`` the constants of ``c * f(a * x + b) + d`` are fitted to the edge's values at the
        layer-l inputs of samples x [N, widths[0]] (default: the last forward call's input); otherwise
        a = c = 1, b = d = 0 and None is returned. The edge's spline is switched off (``layers[l].mask[i, j] = 0``)
        and (a, b, c, d) are trainable parameters of ``layers[l].symbolic``.
        """
        layer = self._symbolic_edge(l, i, j, "fix_symbolic")
        if not fit_params:
            return layer.fix_symbolic(i, j, name, fit_params=False)
        get_function(name)
        with torch.no_grad():
            inputs = self.layer_inputs(self.samples(x, "fix_symbolic"))[l]
        return layer.fix_symbolic(i, j, name, inputs, True, a_range, b_range)

    def unfix_symbolic(self, l: int, i: int, j: int) -> None:
        """Edge (l, i, j) is a spline again (pykan's ``unfix_symbolic``: its mask is set to 1)."""
        self._symbolic_edge(l, i, j, "unfix_symbolic").unfix_symbolic(i, j)

    def auto_symbolic(self, lib=None, r2_threshold: float = 0.0, weight_simple: float = 0.8,
                      x: torch.Tensor | None = None, a_range=(-10.0, 10.0), b_range=(-10.0, 10.0),
                      verbose: int = 1) -> list[EdgeChoice]:
        """Fix every edge to its best library function (pykan's ``auto_symbolic``); returns an ``EdgeChoice``
        per edge.

        Edges already fixed are skipped; switched-off edges get ``"0"``; every other edge gets the best
        candidate of ``suggest_symbolic(lib=lib, weight_simple=weight_simple)`` when its R^2 is at least
        ``r2_threshold`` and stays a spline otherwise. As pykan, every layer's samples are the layer inputs of
        x [N, widths[0]] (default: the last forward call's input) computed once, before any edge is fixed.
        ``verbose`` >= 1 prints a line per edge.
        """
        self._require_bspline("auto_symbolic")
        if not is_real(r2_threshold):
            raise TypeError(f"r2_threshold must be a number, got {r2_threshold!r}")
        if math.isnan(r2_threshold):
            raise ValueError("r2_threshold must be a number an R^2 can be compared with (an edge is fixed when "
                             "its fit's R^2 is at least r2_threshold), got nan")
        check_int("verbose", int(verbose) if isinstance(verbose, bool) else verbose, 0)
        resolve_library(lib)
        with torch.no_grad():
            inputs = self.layer_inputs(self.samples(x, "auto_symbolic"))
            values = [layer.activations(layer_input) for layer, layer_input in zip(self.layers, inputs)]
        choices = []
        for l, layer in enumerate(self.layers):
            for i in range(layer.in_features):
                for j in range(layer.out_features):
                    fixed = layer.symbolic is not None and bool(layer.symbolic.mask[i, j])
                    if fixed and not bool(layer.mask[i, j]):
                        choice = EdgeChoice(l, i, j, None, None, False)
                        message = f"skipping ({l},{i},{j}): already fixed to {layer.symbolic.name(i, j)}"
                    elif not fixed and not bool(layer.mask[i, j]):
                        layer.set_symbolic(i, j, "0")
                        choice = EdgeChoice(l, i, j, "0", None, True)
                        message = f"fixing ({l},{i},{j}) with 0 (the edge is switched off)"
                    else:
                        best = rank_candidates(inputs[l][:, i], values[l][:, i, j], lib, 1, a_range, b_range,
                                               weight_simple)[0]
                        keep = best.r2 >= r2_threshold
                        if keep:
                            layer.set_symbolic(i, j, best.name, (best.a, best.b, best.c, best.d))
                            message = f"fixing ({l},{i},{j}) with {best.name}, r2={best.r2:.6g}, c={best.complexity}"
                        else:
                            message = (f"({l},{i},{j}) stays a spline: its best fit {best.name} has r2={best.r2:.6g} "
                                       f"< r2_threshold={r2_threshold}")
                        choice = EdgeChoice(l, i, j, best.name, best.r2, keep)
                    choices.append(choice)
                    if verbose >= 1:
                        print(message)
        return choices

    def symbolic_formula(self, var=None, digits: int | None = None) -> list:
        """One sympy expression per output, composed through the layers from the fixed edges' ``c * f(a x + b) + d``
        (a node is the sum of its incoming edges, plus the layer's bias if any). ``var``: input names or sympy
        symbols (default x_1, x_2, ...); ``digits`` rounds the constants. Needs every live edge fixed
        (``auto_symbolic()`` or ``fix_symbolic``): otherwise a ValueError lists the edges still splines.
        """
        self._require_bspline("symbolic_formula")
        return symbolic_formula(self.layers, var, digits)

    def _symbolic_edge(self, l: int, i: int, j: int, method: str) -> BSplineKAN:
        """Layer l after checking that edge (l, i, j) exists."""
        self._require_bspline(method)
        depth = len(self.layers)
        check_int("l", l, 0, depth - 1, expected=f"a layer index in 0..{depth - 1}")
        layer = self.layers[l]
        for name, value, size, what in (("i", i, layer.in_features, "inputs"), ("j", j, layer.out_features, "outputs")):
            check_int(name, value, 0, size - 1, expected=f"in 0..{size - 1} (layer {l} has {size} {what})")
        return layer

    def to_sparse(self) -> "KAN":
        """A new KAN whose BSplineKAN layers are :class:`~kanlib.layers.sparse_bspline.SparseBSplineKAN` (only the
        live edges, mask != 0, are stored and computed), computing the same outputs; the model is left as it is.
        Layers already sparse are copied; layers of other families raise."""
        layers = []
        for index, layer in enumerate(self.layers):
            if isinstance(layer, SparseBSplineKAN):
                layers.append(copy.deepcopy(layer))
            elif isinstance(layer, BSplineKAN):
                try:
                    layers.append(SparseBSplineKAN.from_dense(layer))
                except (TypeError, ValueError) as error:
                    raise type(error)(f"KAN.to_sparse: layer {index}: {error}") from error
            else:
                raise TypeError(f"KAN.to_sparse converts BSplineKAN layers; layer {index} is "
                                f"{type(layer).__name__}")
        return self._with_layers(layers)

    def to_dense(self) -> "KAN":
        """A new KAN whose SparseBSplineKAN layers are masked BSplineKAN layers again (the inverse of
        :meth:`to_sparse`); other layers are copied. The model is left as it is."""
        layers = [layer.to_dense() if isinstance(layer, SparseBSplineKAN) else copy.deepcopy(layer)
                  for layer in self.layers]
        return self._with_layers(layers)

    def _with_layers(self, layers: list[BSplineKAN]) -> "KAN":
        """A copy of this model (its last input included) whose layers are ``layers``."""
        container = nn.ModuleList(layers)
        container.training = self.layers.training  # the layers keep their own modes
        model = copy.deepcopy(self, memo={id(self.layers): container})
        model.widths = [layers[0].in_features] + [layer.out_features for layer in layers]
        return model

    def _require_bspline(self, method: str) -> None:
        for index, layer in enumerate(self.layers):
            if not isinstance(layer, BSplineKAN):
                raise TypeError(f"KAN.{method} needs BSplineKAN layers; layer {index} is {type(layer).__name__}")

    def _require(self, method: str) -> None:
        for index, layer in enumerate(self.layers):
            if not callable(getattr(layer, method, None)):
                raise TypeError(f"KAN.{method} needs every layer to have a {method} method; "
                                f"layer {index} ({type(layer).__name__}) has none")


def _check_image_model(in_channels, n_classes, channels) -> tuple[int, ...]:
    check_positive_int("in_channels", in_channels)
    check_positive_int("n_classes", n_classes)
    if isinstance(channels, (str, bytes)) or not isinstance(channels, Sequence) or not channels:
        raise ValueError(f"channels must be a non-empty sequence of positive ints, got {channels!r}")
    return tuple(check_positive_int(f"channels[{index}]", c) for index, c in enumerate(channels))


class ConvKAN(nn.Module):
    """A convolutional KAN for images: per entry of ``channels`` a ``KANConv2d`` (``kernel_size``, padding
    "same", ``layer`` and ``layer_kwargs``) and a 2x2 max pool, then a global average pool and a KAN head
    ``[channels[-1], *head_hidden, n_classes]``. Input [N, in_channels, H, W] -> logits [N, n_classes]."""

    def __init__(self, in_channels: int, n_classes: int, channels: Sequence[int] = (8, 16), kernel_size: int = 3,
                 head_hidden: Sequence[int] = (), layer="bspline", seed: int | None = None, **layer_kwargs):
        super().__init__()
        channels = _check_image_model(in_channels, n_classes, channels)
        with _seeded(seed):
            blocks = []
            for c_in, c_out in zip((in_channels, *channels[:-1]), channels):
                blocks += [KANConv2d(c_in, c_out, kernel_size, padding="same", layer=layer, **layer_kwargs),
                           nn.MaxPool2d(2, ceil_mode=True)]
            self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.head = KAN([channels[-1], *head_hidden, n_classes], layer=layer, **layer_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, C, H, W] -> [N, n_classes]."""
        return self.head(self.features(x))


class CNNWithKANHead(nn.Module):
    """A plain CNN (per entry of ``channels``: Conv2d ``kernel_size`` padding "same", ReLU, 2x2 max pool), a global
    average pool and a KAN head ``[channels[-1], *head_hidden, n_classes]`` of family ``layer``.
    Input [N, in_channels, H, W] -> logits [N, n_classes]."""

    def __init__(self, in_channels: int, n_classes: int, channels: Sequence[int] = (16, 32), kernel_size: int = 3,
                 head_hidden: Sequence[int] = (16,), layer="bspline", seed: int | None = None, **layer_kwargs):
        super().__init__()
        channels = _check_image_model(in_channels, n_classes, channels)
        with _seeded(seed):
            blocks = []
            for c_in, c_out in zip((in_channels, *channels[:-1]), channels):
                blocks += [nn.Conv2d(c_in, c_out, kernel_size, padding="same"), nn.ReLU(),
                           nn.MaxPool2d(2, ceil_mode=True)]
            self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.head = KAN([channels[-1], *head_hidden, n_classes], layer=layer, **layer_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, C, H, W] -> [N, n_classes]."""
        return self.head(self.features(x))


# Estimated FLOPs of one basis value of each family: RBF (subtract, scale, square, exp), RSWAF (subtract, scale,
# tanh, square, subtract), ReLU bumps (two differences, two max, product, scale, square), Chebyshev (the
# three-term recurrence, its tanh shared by the input's bases).
BASIS_FLOPS = {"rbf": 6, "rswaf": 8, "relu": 7, "chebyshev": 3}
LAYERNORM_FLOPS = 8  # per input value: mean, variance, normalize, scale and shift


def count_parameters(model: nn.Module) -> int:
    """The number of trainable (requires_grad) parameter elements, each shared tensor counted once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def bspline_basis_flops(spline_order: int) -> int:
    """Estimated FLOPs to evaluate the B-spline basis at one input value: (k+1)^2 + 10."""
    return (spline_order + 1) ** 2 + 10


def forward_flops(model: nn.Module, batch_size: int = 1) -> int:
    """Estimated FLOPs of one forward pass on ``batch_size`` samples, a multiply-add counting as 2.

    Per sample: ``nn.Linear`` 2*I*O (+O for a bias); ``BSplineKAN`` 2*I*(G+k+1)*O for its matrix product plus,
    per input, ``bspline_basis_flops(k)`` for the basis and the activation's ``flops`` (:mod:`kanlib.activations`)
    for the base activation (+O for a bias); ``SparseBSplineKAN`` 2*E*(k+2) for its E live edges (each edge's k+1
    basis values in its window and its base term) plus the same per input; the other KAN families 2*I*S*O plus
    ``BASIS_FLOPS`` per basis value (and their layer norm, base branch and bias); an activation module in an
    ``nn.Sequential`` (so in an MLP) the activation's ``flops`` per element. Parameter-free modules such as dropout
    count 0; a convolution, a module of another kind with parameters, or an activation whose input size is unknown,
    raises ValueError.
    """
    check_positive_int("batch_size", batch_size)
    return batch_size * _per_sample_flops(model)


def _has_parameters(module: nn.Module, recurse: bool = True) -> bool:
    return next(module.parameters(recurse=recurse), None) is not None


def _activation_name(module: nn.Module) -> str | None:
    return next((name for name in MLP_ACTIVATIONS if isinstance(module, ACTIVATIONS[name].module)), None)


def _per_sample_flops(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        bias = module.out_features if module.bias is not None else 0
        return 2 * module.in_features * module.out_features + bias
    if isinstance(module, (BSplineKAN, SparseBSplineKAN)):
        n_in, n_out, k = module.in_features, module.out_features, module.spline_order
        if isinstance(module, SparseBSplineKAN):
            product = 2 * module.n_edges * (k + 2)
        else:
            product = 2 * n_in * (module.grid_size + k + 1) * n_out
        per_input = bspline_basis_flops(k) + ACTIVATIONS[module.base_activation].flops
        bias = n_out if module.bias is not None else 0
        return product + n_in * per_input + bias
    if isinstance(module, BasisKAN):
        n_in, n_out, n_basis = module.in_features, module.out_features, module.n_basis
        product = 2 * n_in * n_basis * n_out
        base = (2 * n_in * n_out + n_in * ACTIVATIONS[module.base_activation].flops
                if module.base_weight is not None else 0)
        norm = LAYERNORM_FLOPS * n_in if module.layernorm is not None else 0
        bias = n_out if module.bias is not None else 0
        return product + n_in * n_basis * BASIS_FLOPS[module.spec().kind] + base + norm + bias
    if isinstance(module, (KANConv2d, nn.Conv2d)):
        raise ValueError(f"forward_flops counts per sample without the image size; a {type(module).__name__} "
                         f"costs its layer's FLOPs times the output pixels, which depend on the input")
    if isinstance(module, nn.Sequential):
        return _sequential_flops(module)
    if _activation_name(module) is not None:
        raise ValueError(f"forward_flops cannot size the input of {type(module).__name__} outside an nn.Sequential")
    if _has_parameters(module, recurse=False):
        raise ValueError(f"forward_flops has no FLOP model for {type(module).__name__}; "
                         f"it knows nn.Linear, the KAN layers and activations {sorted(MLP_ACTIVATIONS)}")
    return sum(_per_sample_flops(child) for child in module.children())


def _sequential_flops(sequence: nn.Sequential) -> int:
    """Counts each activation at the width left by the modules before it."""
    total, width = 0, None
    for child in sequence:
        activation = _activation_name(child)
        if activation is not None:
            if width is None:
                raise ValueError(f"forward_flops cannot size the input of {type(child).__name__}: "
                                 f"no module before it in the nn.Sequential gives its out_features")
            total += ACTIVATIONS[activation].flops * width
            continue
        total += _per_sample_flops(child)
        if hasattr(child, "out_features"):
            width = child.out_features
        elif _has_parameters(child):
            width = None
    return total


def _mlp_parameter_count(widths: Sequence[int], bias: bool) -> int:
    return sum(n_in * n_out + (n_out if bias else 0) for n_in, n_out in zip(widths[:-1], widths[1:]))


def mlp_with_parameter_count(n_in: int, n_out: int, n_params: int, depth: int = 2, activation: str = "silu",
                             bias: bool = True) -> MLP:
    """The MLP [n_in, h, ..., h, n_out] with ``depth`` hidden layers whose width h makes its parameter count
    closest to ``n_params`` (the smaller h on a tie; h >= 1)."""
    for name, value in (("n_in", n_in), ("n_out", n_out), ("n_params", n_params), ("depth", depth)):
        check_positive_int(name, value)
    check_activation(activation)

    def parameters_at(hidden: int) -> int:
        return _mlp_parameter_count([n_in, *[hidden] * depth, n_out], bias)

    # The count grows with h and is at least h, so the smallest h reaching n_params lies in [1, n_params].
    low, high = 1, n_params
    while low < high:
        middle = (low + high) // 2
        if parameters_at(middle) >= n_params:
            high = middle
        else:
            low = middle + 1
    hidden = min((h for h in (low - 1, low) if h >= 1), key=lambda h: abs(parameters_at(h) - n_params))
    return MLP([n_in, *[hidden] * depth, n_out], activation=activation, bias=bias)


def _restore(layer: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Put back a layer's saved parameters and buffers, whose shapes a grid change may have altered."""
    for name, value in state.items():
        module_name, _, attribute = name.rpartition(".")
        module = layer.get_submodule(module_name) if module_name else layer
        current = getattr(module, attribute)
        if current is None:
            continue
        if current.shape == value.shape:
            with torch.no_grad():
                current.copy_(value)  # in place: an optimizer keeps its references
        elif isinstance(current, nn.Parameter):
            setattr(module, attribute, nn.Parameter(value, requires_grad=current.requires_grad))
        else:
            module._buffers[attribute] = value
