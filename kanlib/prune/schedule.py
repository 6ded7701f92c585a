"""Training to a target sparsity: rounds of ``fit`` with the sparsity penalty, each followed by switching off
the lowest-scoring edges until the dead fraction reaches the round's target, then fine-tuning.

The targets follow Zhu and Gupta's gradual pruning schedule (cubic; "To prune, or not to prune", 2017), or a
linear one. An edge is dead when its ``mask`` entry is 0 and it is not fixed to a symbolic function other than
``auto_symbolic``'s zero for switched-off edges (:func:`~kanlib.prune.compact.live_edges`); edges fixed to symbolic
functions count as live and are never pruned, and a dead edge never comes back.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..checks import check_bool, check_choice, check_int, check_real, is_real
from ..training import History, check_data, fit
from .compact import give_every_layer_a_bias_if_one_has, live_edges
from .prune import mask_edges
from .scores import sample_std

__all__ = ["SCHEDULES", "SCORES", "PruningRound", "SparsityResult", "sparsity_targets", "edge_scores",
           "prune_to_sparsity"]

SCHEDULES = ("cubic", "linear")
SCORES = ("attribution", "magnitude")
EXPECTED_MODEL = "a KAN of B-spline layers (each with an edge mask [in, out])"
# fit's arguments that prune_to_sparsity sets itself, round by round.
DRIVER_ARGUMENTS = ("steps", "epochs", "opt", "lr", "batch_size", "lamb", "update_grid", "update_grid_every",
                    "stop_grid_update_step", "seed", "progress")


@dataclass
class PruningRound:
    """One round: ``lamb`` used, the dead-edge fraction aimed at (``target``) and reached (``sparsity``,
    ``dead_edges`` of the model's edges), and train/test loss and metric of the model right after its edges
    were switched off (the next fit's evaluation before its first step). ``history`` is the round's fit,
    whose ``final`` is the model before the pruning."""

    round: int
    lamb: float
    target: float
    sparsity: float
    dead_edges: int
    train_loss: float
    test_loss: float
    train_metric: float
    test_metric: float
    history: History = field(repr=False)


@dataclass
class SparsityResult:
    """What ``prune_to_sparsity`` did: ``rounds`` (one ``PruningRound`` each), ``history`` the fine-tuning's
    History (its first evaluation is the model right after the last pruning, its last the returned model),
    ``edges`` the model's edge count, ``sparsity`` the final dead fraction."""

    rounds: list[PruningRound]
    history: History
    edges: int
    sparsity: float


def sparsity_targets(start: float, final: float, rounds: int, schedule: str = "cubic") -> list[float]:
    """The dead fraction to reach after rounds t = 1..rounds, from ``start`` (already dead) to ``final``.

    cubic: ``s_t = s_f + (s_0 - s_f) (1 - t / rounds)^3`` (Zhu and Gupta 2017: prune fast while many edges are
    redundant, slowly near the end); linear: ``s_t = s_0 + (s_f - s_0) t / rounds``. The last is ``final``.
    """
    start = check_real("start", start, 0.0)
    final = check_real("final", final, 0.0)
    for name, value in (("start", start), ("final", final)):
        if value >= 1.0:
            raise ValueError(f"{name} must be a fraction of the edges in [0, 1), got {value!r}")
    rounds = check_int("rounds", rounds, 1)
    check_choice("schedule", schedule, SCHEDULES)
    if schedule == "cubic":
        return [final + (start - final) * (1 - t / rounds) ** 3 for t in range(1, rounds + 1)]
    return [start + (final - start) * t / rounds for t in range(1, rounds + 1)]


@torch.no_grad()
def edge_scores(model: nn.Module, x: torch.Tensor, score: str = "attribution") -> list[torch.Tensor]:
    """Per layer [I, O], how much each edge matters on samples x [N, widths[0]] (N >= 2).

    "attribution": pykan's attribution edge scores (``model.attribute(x).edge_scores``), which credit an edge
    by what it contributes to the outputs, so edges into a node that feeds nothing score 0; "magnitude": the
    std over the samples of each edge's activation ``phi_{i,o}(x_i)`` at its layer's inputs.
    """
    check_choice("score", score, SCORES)
    _check_model(model)
    if score == "attribution":
        return list(model.attribute(x).edge_scores)
    inputs = model.layer_inputs(model.samples(x, "edge_scores"))
    return [sample_std(layer.activations(layer_input)) for layer, layer_input in zip(model.layers, inputs)]


def prune_to_sparsity(model: nn.Module, data: Mapping[str, torch.Tensor], sparsity: float, *, rounds: int = 5,
                      steps: int = 50, finetune_steps: int = 50,
                      lamb: float | tuple[float, float] | Callable[[int], float] = 0.01, opt: str = "adam",
                      lr: float | None = None, batch_size: int | None = None, seed: int | None = None,
                      schedule: str = "cubic", score: str = "attribution", update_grid: bool = True,
                      keep_means: bool = False, progress: bool = False,
                      fit_kwargs: Mapping[str, object] | None = None) -> SparsityResult:
    """Train ``model`` (a KAN of B-spline layers) in place until the fraction ``sparsity`` of its edges, counted
    over all layers, is switched off; returns a ``SparsityResult``.

    Each round t = 1..rounds trains ``steps`` steps with ``fit(..., lamb=lamb_t)`` (pykan's sparsity penalty),
    then masks off the lowest-scoring live edges (``edge_scores`` on ``data["train_input"]``, ties broken by
    position: layer, then input, then output) until exactly ``round(s_t * E)`` of the E edges are dead (Python's
    round), s_t following ``schedule`` (see ``sparsity_targets``) from the fraction already dead. Then
    ``finetune_steps`` steps of fit without the penalty. With ``keep_means``, what the edges switched off in a
    round added to their outputs, averaged over the training inputs, goes into their layer's bias (as
    ``KAN.prune_edge`` does), so that pruning moves the model less; every layer then has a bias (a new Parameter
    where it had none, which the next fit trains). Off by default: the model right after each pruning is closer to
    the one before, but after fine-tuning neither way was better in the runs measured, and on pykan's Example 1
    with LBFGS, biases new to a bias-free model slowed the fine-tuning in some. Edges fixed to symbolic functions
    count as live and are never pruned; dead edges stay dead. A path of live edges from an input to an output
    always stays (without one the output is a constant): each round keeps the path whose weakest edge scores
    highest, among those with the fewest prunable edges, and the next edges in the ranking go in the place of its
    edges.

    lamb: a number for every round; a pair (start, end), ramped linearly from round 1 to round ``rounds`` (a
        single round takes start); or a callable round -> lamb (rounds numbered from 1).
    opt, lr, batch_size: fit's, for every fit. seed: fit's seed is seed + t - 1 in round t and seed + rounds
        for the fine-tuning (None: unseeded).
    update_grid: pykan's grid schedule in the first round's fit, and only when no edge is dead yet. Later
        rounds and the fine-tuning keep the grids: a grid update refits every spline to its inputs, moving the
        functions the scores have just judged, and after pruning a hidden node's inputs change with the edges
        switched off.
    progress: fit's progress bars and a line per round. fit_kwargs: further arguments for every fit (e.g.
        lamb_l1, lamb_entropy, loss, eval_every, device), not those set here.

    TypeError for a model that is not a KAN of B-spline layers, or arguments of the wrong type; ValueError for
    sparsity outside [0, 1), rounds < 1, unknown schedule or score names, a model with more edges dead than
    ``sparsity`` asks, or one whose symbolic edges, or the path of live edges that stays, leave too few to
    prune.
    """
    layers = _check_model(model)
    x = check_data(data).train_input
    if not is_real(sparsity):
        raise TypeError(f"sparsity must be a number in [0, 1) (the fraction of edges switched off), got "
                        f"{type(sparsity).__name__} {sparsity!r}")
    sparsity = float(sparsity)
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1) (the fraction of edges switched off), got {sparsity!r}")
    rounds = check_int("rounds", rounds, 1)
    steps = check_int("steps", steps, 1)
    finetune_steps = check_int("finetune_steps", finetune_steps, 1)
    check_choice("schedule", schedule, SCHEDULES)
    check_choice("score", score, SCORES)
    check_bool("update_grid", update_grid)
    check_bool("keep_means", keep_means)
    lambs = _lamb_schedule(lamb, rounds)
    extra = _check_fit_kwargs(fit_kwargs)
    if seed is not None:
        seed = check_int("seed", seed, expected="an int or None")

    edges = sum(layer.mask.numel() for layer in layers)
    dead = _dead_count(layers)
    final_dead = round(sparsity * edges)
    if dead > final_dead:
        raise ValueError(f"the model already has {dead} of its {edges} edges dead (fraction {dead / edges:.4g}), "
                         f"more than sparsity={sparsity} asks ({final_dead}); dead edges are never revived")
    prunable = sum(int(_prunable(layer).sum()) for layer in layers)
    if final_dead - dead > prunable:
        raise ValueError(f"sparsity={sparsity} needs {final_dead} of the {edges} edges dead, but {dead} are and "
                         f"only {prunable} more can be pruned (edges fixed to symbolic functions are never pruned)")
    kept = _fewest_prunable_on_a_path(layers)
    if final_dead > dead and kept is None:
        raise ValueError("the model has no path of live edges from an input to an output (its output is a "
                         "constant), so no edge can be ranked for pruning")
    removable = prunable - (kept or 0)
    if final_dead - dead > removable:
        raise ValueError(f"sparsity={sparsity} needs {final_dead} of the {edges} edges dead, but {dead} are and "
                         f"only {removable} more can be pruned while a path of live edges from an input to an "
                         f"output stays (without one the output is a constant; it takes {kept} prunable edges): "
                         f"at most {dead + removable} of {edges} (sparsity {(dead + removable) / edges:.4g})")
    targets = sparsity_targets(dead / edges, sparsity, rounds, schedule)

    def run_fit(steps: int, lamb: float, grid: bool, seed: int | None) -> History:
        return fit(model, data, steps=steps, opt=opt, lr=lr, batch_size=batch_size, lamb=lamb,
                   update_grid=grid, seed=seed, progress=progress, **extra)

    records: list[dict] = []
    histories: list[History] = []
    for t, (lamb_t, target) in enumerate(zip(lambs, targets), start=1):
        grid = update_grid and t == 1 and dead == 0
        history = run_fit(steps, lamb_t, grid, None if seed is None else seed + t - 1)
        samples = x.to(layers[0].mask.device)
        scores = edge_scores(model, samples, score)
        with torch.no_grad():
            inputs = model.layer_inputs(samples) if keep_means else None
        _mask_lowest(layers, scores, round(target * edges) - _dead_count(layers), inputs)
        dead_now = _dead_count(layers)
        records.append(dict(round=t, lamb=lamb_t, target=target, sparsity=dead_now / edges, dead_edges=dead_now))
        histories.append(history)
        if progress:
            print(f"round {t}/{rounds}: lamb {lamb_t:.3g}, {dead_now} of {edges} edges dead "
                  f"({dead_now / edges:.3f}, target {target:.3f}), train loss before pruning "
                  f"{history.train_loss[-1]:.4g}")
    finetune = run_fit(finetune_steps, 0.0, False, None if seed is None else seed + rounds)

    # The model right after round t's pruning is the next fit's evaluation at step 0.
    following = histories[1:] + [finetune]
    result_rounds = [PruningRound(**record, train_loss=after.train_loss[0], test_loss=after.test_loss[0],
                                  train_metric=after.train_metric[0], test_metric=after.test_metric[0],
                                  history=history)
                     for record, history, after in zip(records, histories, following)]
    return SparsityResult(rounds=result_rounds, history=finetune, edges=edges, sparsity=_dead_count(layers) / edges)


def _check_model(model: object) -> list[nn.Module]:
    """The model's layers, after checking that it is a KAN whose layers have an edge mask and activations."""
    layers = getattr(model, "layers", None)
    if (not isinstance(model, nn.Module) or not isinstance(layers, nn.ModuleList) or len(layers) == 0
            or not all(callable(getattr(model, name, None)) for name in ("attribute", "layer_inputs", "samples"))):
        raise TypeError(f"prune_to_sparsity expects {EXPECTED_MODEL}, got {type(model).__name__}")
    for index, layer in enumerate(layers):
        mask = getattr(layer, "mask", None)
        if not (isinstance(mask, torch.Tensor) and mask.shape == (layer.in_features, layer.out_features)
                and callable(getattr(layer, "activations", None))):
            raise TypeError(f"prune_to_sparsity expects {EXPECTED_MODEL}; layer {index} is "
                            f"{type(layer).__name__}, which has no edge mask")
    return list(layers)


def _lamb_schedule(lamb: object, rounds: int) -> list[float]:
    """The penalty weight of every round from a number, a (start, end) pair or a callable round -> lamb."""
    if is_real(lamb):
        return [check_real("lamb", lamb, 0.0)] * rounds
    if callable(lamb):
        return [check_real(f"lamb({t})", lamb(t), 0.0) for t in range(1, rounds + 1)]
    if isinstance(lamb, Sequence) and not isinstance(lamb, (str, bytes)):
        if len(lamb) != 2:
            raise ValueError(f"lamb as a sequence must be a (start, end) pair, got {len(lamb)} values {lamb!r}")
        start, end = (check_real(f"lamb[{k}]", value, 0.0) for k, value in enumerate(lamb))
        if rounds == 1:
            return [start]
        return [start + (end - start) * (t - 1) / (rounds - 1) for t in range(1, rounds + 1)]
    raise TypeError(f"lamb must be a number >= 0, a (start, end) pair or a callable round -> lamb, got "
                    f"{type(lamb).__name__} {lamb!r}")


def _check_fit_kwargs(fit_kwargs: object) -> dict:
    if fit_kwargs is None:
        return {}
    if not isinstance(fit_kwargs, Mapping):
        raise TypeError(f"fit_kwargs must be a dict of fit's arguments or None, got {type(fit_kwargs).__name__}")
    taken = sorted(set(fit_kwargs) & set(DRIVER_ARGUMENTS))
    if taken:
        raise TypeError(f"fit_kwargs must not hold {taken}: prune_to_sparsity sets {list(DRIVER_ARGUMENTS)} "
                        f"itself (pass its own arguments of those names)")
    return dict(fit_kwargs)


def _prunable(layer: nn.Module) -> torch.Tensor:
    """[I, O] bool: live edges that pruning may switch off (a nonzero mask entry, not fixed to a symbolic one)."""
    symbolic = getattr(layer, "symbolic", None)
    fixed = symbolic.mask != 0 if symbolic is not None else torch.zeros_like(layer.mask, dtype=torch.bool)
    return (layer.mask != 0) & ~fixed


def _dead_count(layers: list[nn.Module]) -> int:
    return sum(int((~live_edges(layer)).sum()) for layer in layers)


def _path_costs(layers: list[nn.Module]) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Per layer, the [I, O] cost of each edge on a path (1 prunable, 0 fixed to a symbolic function, inf dead);
    per node layer, the fewest prunable edges on a live path from an input to each node (forward) and from
    each node to an output (backward), inf where there is none. Float64 on the CPU."""
    costs = []
    for layer in layers:
        cost = torch.where(live_edges(layer).cpu(), 0.0, torch.inf).double()
        costs.append(torch.where(_prunable(layer).cpu(), 1.0, cost))
    forward = [torch.zeros(costs[0].shape[0], dtype=torch.float64)]
    for cost in costs:
        forward.append((forward[-1][:, None] + cost).min(dim=0).values)
    backward = [torch.zeros(costs[-1].shape[1], dtype=torch.float64)]
    for cost in reversed(costs):
        backward.insert(0, (cost + backward[0][None, :]).min(dim=1).values)
    return costs, forward, backward


def _fewest_prunable_on_a_path(layers: list[nn.Module]) -> int | None:
    """The fewest prunable edges on a path of live edges from an input to an output; None when there is none."""
    fewest = float(_path_costs(layers)[1][-1].min())
    return None if fewest == float("inf") else int(fewest)


def _kept_path(layers: list[nn.Module], scores: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per layer, the [I, O] bool mask of the path that pruning keeps: among the live paths from an input to an
    output with the fewest prunable edges, the one whose weakest prunable edge scores highest (the first by
    position among equals). All False where the model has no live path."""
    costs, forward, backward = _path_costs(layers)
    fewest = forward[-1].min()
    masks = [torch.zeros(cost.shape, dtype=torch.bool) for cost in costs]
    if fewest == torch.inf:
        return masks
    strength = torch.full((costs[0].shape[0],), torch.inf, dtype=torch.float64)
    sources = []
    for l, cost in enumerate(costs):
        on_fewest = forward[l][:, None] + cost + backward[l + 1][None, :] == fewest
        score = torch.where(cost == 1.0, scores[l].detach().double().cpu(), torch.inf)
        through = torch.where(on_fewest, torch.minimum(strength[:, None], score), -torch.inf)
        strength, source = through.max(dim=0)
        sources.append(source)
    node = int(strength.argmax())
    for l in range(len(costs) - 1, -1, -1):
        previous = int(sources[l][node])
        masks[l][previous, node] = True
        node = previous
    return masks


@torch.no_grad()
def _mask_lowest(layers: list[nn.Module], scores: list[torch.Tensor], count: int,
                 layer_inputs: list[torch.Tensor] | None = None) -> None:
    """Switch off the ``count`` prunable edges with the lowest scores, ties in (layer, input, output) order, but
    never an edge of the path that stays (:func:`_kept_path`): the next edges in the ranking go in their place.
    Given the layers' inputs on samples, the switched-off edges' means go into the biases (:func:`mask_edges`)."""
    if count <= 0:
        return
    prunable = [_prunable(layer).cpu() for layer in layers]
    ranked = [score.detach().double().cpu() for score in scores]
    if not all(bool(torch.isfinite(score[mask]).all()) for score, mask in zip(ranked, prunable)):
        raise FloatingPointError("edge scores are NaN or inf, so no edge can be ranked; the model's activations "
                                 "on the training input are not finite")
    kept = _kept_path(layers, scores)
    candidates = [(l, (mask & ~kept[l]).flatten().nonzero().flatten()) for l, mask in enumerate(prunable)]
    values = torch.cat([ranked[l].flatten()[index] for l, index in candidates])
    owners = torch.cat([torch.full((len(index),), l) for l, index in candidates])
    positions = torch.cat([index for _, index in candidates])
    chosen = torch.sort(values, stable=True).indices[:count]
    for l, layer in enumerate(layers):
        flat = positions[chosen[owners[chosen] == l]].to(layer.mask.device)
        keep = torch.ones_like(layer.mask)
        keep[flat // layer.out_features, flat % layer.out_features] = 0
        mask_edges(layer, keep, None if layer_inputs is None else layer_inputs[l])
    if layer_inputs is not None:
        give_every_layer_a_bias_if_one_has(layers)
