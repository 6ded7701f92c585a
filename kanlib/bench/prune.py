"""Pruning benchmark: accuracy and inference time against edge sparsity, three forms of each pruned model, one run.

Two kinds of rows (``kind``):

- ``"model"``, one per (task, sparsity): a KAN is trained dense on the task, then a copy is trained to the
  sparsity with :func:`kanlib.prune_to_sparsity` (pykan's sparsity penalty, attribution scores, Zhu and Gupta's
  cubic schedule, then fine-tuning; sparsity 0 is the dense model itself). Tasks: ``digits``, scikit-learn's 8x8
  digits with a [64, H, 10] KAN (H = ``digits_hidden``, 64 by default; metric: test accuracy in percent), and
  ``symbolic``, pykan's Example 1 f(x, y) = exp(sin(pi x) + y^2) with a [2, H, 1] KAN (H = ``symbolic_hidden``;
  metric: test RMSE). Each row: the dense and the pruned metric, the edges and live edges, and the inference time
  on the task's test inputs (median and quartiles, interleaved in one run) of the dense model and of three forms
  of the pruned one: ``masked`` (the KAN as pruned, dead edges masked), ``compact`` (``model.compact()``, dead
  hidden nodes removed; when pruning left the network a constant, which compaction refuses to build,
  ``compactable`` is False and the compact fields are None) and ``sparse`` (``model.to_sparse()``, only the
  live edges stored). ``*_speedup`` is the dense model's median time over the form's; ``compact_max_diff`` and
  ``sparse_max_diff`` are the largest absolute differences of the form's outputs from the masked model's on the
  test inputs, and ``rounding_bound`` what float rounding allows (:func:`rounding_bound`).
- ``"layer"``, one per sparsity: one ``BSplineKAN(width, width, grid_size)`` layer whose mask switches off a
  random scattered set of exactly ``round(sparsity * width**2)`` edges, forward on a batch of ``layer_batch``
  inputs uniform in [-1.1, 1.1] (inside and just outside the grid): the masked dense layer against the
  ``SparseBSplineKAN`` built from it, timed interleaved; ``speedup`` is dense over sparse. Then the two layers'
  training steps, interleaved too (``dense_step_*``, ``sparse_step_*``): forward, then the gradients of the output
  against the input and every trainable parameter for a fixed random output gradient (as fine-tuning pays them);
  ``step_speedup`` is dense over sparse. Scattered masks leave every node with live edges, so compaction removes
  nothing there: only an edge-sparse layer can gain.

Why H = 64 for digits: with pykan's [64, 16, 10] the first layer has 1,024 edges and a forward pass on the 360
test digits is so short that the call overheads dominate it; a hidden width of 64 gives a first layer of 4,096
edges whose product dominates, so the question whether fewer edges make it faster has an answer in the timing.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch

from ..checks import resolve_device
from ..data import load_digits, symbolic_dataset
from ..layers import BSplineKAN, SparseBSplineKAN
from ..models import KAN
from ..prune.compact import live_edges
from ..prune.schedule import prune_to_sparsity
from ..training import fit, metric_on_test_set
from .candidates import module_candidate, training_step
from .targets import target_entry
from .timing import time_interleaved

__all__ = ["DEFAULTS", "QUICK", "TASKS", "TARGETS", "TABLE_COLUMNS", "FORMS", "rounding_bound", "run_prune_benchmark",
           "target_report"]

DEFAULTS = {"sparsities": (0.0, 0.5, 0.75, 0.9, 0.95), "digits_hidden": 64, "symbolic_hidden": 16,
            "grid_size": 5, "train_steps": 400, "rounds": 5, "prune_steps": 50, "finetune_steps": 100,
            "lamb": 0.01, "layer_width": 256, "layer_grid": 5, "layer_batch": 1024}
QUICK = {**DEFAULTS, "sparsities": (0.0, 0.5, 0.9), "digits_hidden": 32, "symbolic_hidden": 8,
         "train_steps": 60, "rounds": 2, "prune_steps": 10, "finetune_steps": 20, "layer_width": 96,
         "layer_batch": 256}
TASKS = {"digits": {"metric": "accuracy"}, "symbolic": {"metric": "rmse", "formula": "exp_sin_sq"}}
FORMS = ("dense", "masked", "compact", "sparse")
TABLE_COLUMNS = ("kind", "task", "sparsity", "achieved_sparsity", "edges", "live_edges", "compact_edges", "metric",
                 "dense_value", "value", "dense_median_ms", "masked_median_ms", "compact_median_ms",
                 "sparse_median_ms", "compact_speedup", "sparse_speedup", "compact_max_diff", "sparse_max_diff",
                 "rounding_bound", "width", "grid_size", "batch", "speedup", "max_diff", "dense_step_median_ms",
                 "sparse_step_median_ms", "step_speedup")
GOAL_SPARSITY = 0.9
TARGETS = (
    "layer at 90% edge sparsity: dense time / edge-sparse time >= 4",
    "digits accuracy lost at 90% edge sparsity, fine-tuned <= 1 point",
    "compacted model: max abs difference / float32 rounding bound <= 1",
    "edge-sparse model: max abs difference / float32 rounding bound <= 1",
)
SYMBOLIC_SAMPLES = 1000
# LBFGS steps are each worth several Adam steps (a line search of up to 20 evaluations): the symbolic task takes
# this fraction of the step counts.
LBFGS_STEP_FRACTION = 0.125


def rounding_bound(layers: Sequence[torch.nn.Module], output: torch.Tensor) -> float:
    """How far two float computations of ``output`` by a stack of B-spline ``layers`` (a KAN's ``layers``) that sum
    the same terms in another order may differ.

    ``K * u * (1 + max |output|)``, with K the longest contraction of the layers (I * (G + k + 1) of the widest)
    and u the unit roundoff of the output's dtype (2^-24 for float32). A sum of n terms computed in two orders
    differs by at most about 2 n u times the sum of the terms' magnitudes (Higham, Accuracy and Stability of
    Numerical Algorithms, 2nd ed., section 4.2); here the output's magnitude stands in for the terms', and the
    factor 2 is dropped because rounding errors of long sums grow like sqrt(n) u in practice, far below n u.
    The compacted and the edge-sparse models sum the masked model's nonzero terms (a dead edge contributes an
    exact 0) in another order, so their difference from it must stay below this.
    """
    contraction = max(layer.in_features * (layer.grid_size + layer.spline_order + 1) for layer in layers)
    unit_roundoff = torch.finfo(output.dtype).eps / 2
    return contraction * unit_roundoff * (1.0 + float(output.detach().abs().max()))


def _data(task: str, seed: int, device: torch.device) -> dict:
    if task == "symbolic":
        return symbolic_dataset(TASKS[task]["formula"], n_train=SYMBOLIC_SAMPLES, n_test=SYMBOLIC_SAMPLES, seed=seed,
                                device=device)
    return load_digits(seed=seed, device=device)


def _widths(task: str, settings: dict) -> list[int]:
    if task == "symbolic":
        return [2, settings["symbolic_hidden"], 1]
    return [64, settings["digits_hidden"], 10]


def _optimizer(task: str, steps: int) -> dict:
    """fit's optimizer arguments and step count for a task: LBFGS on the formula, Adam minibatches on digits."""
    if task == "symbolic":
        return {"opt": "lbfgs", "steps": max(1, round(steps * LBFGS_STEP_FRACTION))}
    return {"opt": "adam", "lr": 1e-2, "batch_size": 256, "steps": steps}


def _live_edge_count(model) -> int:
    return sum(int(live_edges(layer).sum()) for layer in model.layers)


def _max_diff(model, reference: torch.Tensor, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x) - reference).abs().max())


def _prune(model, data, task: str, sparsity: float, settings: dict, seed: int):
    """A copy of ``model`` trained to ``sparsity`` (the model itself, copied, at sparsity 0)."""
    pruned = copy.deepcopy(model)
    if sparsity == 0.0:
        return pruned
    prune_options = _optimizer(task, settings["prune_steps"])
    finetune_steps = _optimizer(task, settings["finetune_steps"])["steps"]
    steps = prune_options.pop("steps")
    prune_to_sparsity(pruned, data, sparsity, rounds=settings["rounds"], steps=steps, finetune_steps=finetune_steps,
                      lamb=settings["lamb"], seed=seed, **prune_options)
    return pruned


def _compact(model):
    """``model.compact()``, or None when pruning left a hidden layer without a node that is both fed and feeds
    (the network computes a constant, which compaction refuses to build: its only ValueError)."""
    try:
        return model.compact().eval()
    except ValueError:
        return None


def _call(module, x: torch.Tensor):
    def run():
        with torch.no_grad():
            module(x)
    return run


def _model_rows(task: str, settings: dict, seed: int, device: torch.device, repeat: int, warmup: int) -> list[dict]:
    metric = TASKS[task]["metric"]
    data = _data(task, seed, device)
    model = KAN(_widths(task, settings), grid_size=settings["grid_size"], seed=seed).to(device)
    fit(model, data, seed=seed, progress=False, **_optimizer(task, settings["train_steps"]))
    model.eval()
    dense_value = metric_on_test_set(model, data, metric)
    x = data["test_input"]
    rows = []
    for sparsity in settings["sparsities"]:
        pruned = _prune(model, data, task, sparsity, settings, seed).eval()
        with torch.no_grad():
            reference = pruned(x)
        forms = {"dense": model, "masked": pruned}
        compacted = _compact(pruned)
        if compacted is not None:
            forms["compact"] = compacted
        forms["sparse"] = pruned.to_sparse().eval()
        timings = time_interleaved({name: _call(form, x) for name, form in forms.items()}, device=device,
                                   warmup=warmup, repeat=repeat)
        edges = sum(layer.mask.numel() for layer in pruned.layers)
        live = _live_edge_count(pruned)
        row = {"kind": "model", "task": task, "sparsity": sparsity, "achieved_sparsity": 1.0 - live / edges,
               "widths": "-".join(map(str, pruned.widths)), "compactable": compacted is not None,
               "compact_widths": compacted and "-".join(map(str, compacted.widths)),
               "edges": edges, "live_edges": live,
               "compact_edges": compacted and sum(layer.mask.numel() for layer in compacted.layers),
               "batch": int(x.shape[0]), "metric": metric, "dense_value": dense_value,
               "value": metric_on_test_set(pruned, data, metric), "rounding_bound": rounding_bound(pruned.layers, reference),
               "compact_max_diff": compacted and _max_diff(compacted, reference, x),
               "sparse_max_diff": _max_diff(forms["sparse"], reference, x)}
        dense_ms = timings["dense"].median_ms
        for name in FORMS:
            if name in timings:
                row.update(timings[name].as_dict(f"{name}_"))
                if name != "dense":
                    row[f"{name}_speedup"] = dense_ms / timings[name].median_ms
            elif name != "dense":
                row[f"{name}_speedup"] = None
        rows.append(row)
    return rows


def _scattered_mask(width: int, sparsity: float, generator: torch.Generator) -> torch.Tensor:
    """[width, width] of 0/1 with exactly round(sparsity * width**2) zeros at random positions."""
    dead = round(sparsity * width * width)
    mask = torch.ones(width * width)
    mask[torch.randperm(width * width, generator=generator)[:dead]] = 0.0
    return mask.view(width, width)


def _layer_rows(settings: dict, seed: int, device: torch.device, repeat: int, warmup: int) -> list[dict]:
    width, grid, batch = settings["layer_width"], settings["layer_grid"], settings["layer_batch"]
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    layer = BSplineKAN(width, width, grid_size=grid).to(device)
    x = (torch.rand(batch, width, generator=generator) * 2.2 - 1.1).to(device)
    # drawn apart from the masks' generator, which then draws the masks it drew before the training steps were timed
    grad_out = torch.randn(batch, width, generator=torch.Generator().manual_seed(seed + 1)).to(device)
    x_leaf = x.clone().requires_grad_()
    rows = []
    for sparsity in settings["sparsities"]:
        masked = copy.deepcopy(layer)
        with torch.no_grad():
            masked.mask.copy_(_scattered_mask(width, sparsity, generator).to(device))
        row = {"kind": "layer", "sparsity": sparsity, "width": width, "grid_size": grid, "batch": batch,
               "edges": width * width, "live_edges": int((masked.mask != 0).sum())}
        sparse_layer = SparseBSplineKAN.from_dense(masked).to(device)
        timings = time_interleaved({"dense": _call(masked, x), "sparse": _call(sparse_layer, x)}, device=device,
                                   warmup=warmup, repeat=repeat)
        with torch.no_grad():
            reference = masked(x)
        row.update(timings["dense"].as_dict("dense_"))
        row.update(timings["sparse"].as_dict("sparse_"))
        row["speedup"] = timings["dense"].median_ms / timings["sparse"].median_ms
        steps = time_interleaved({name: training_step(module_candidate(name, form, x_leaf), grad_out)
                                  for name, form in (("dense", masked), ("sparse", sparse_layer))},
                                 device=device, warmup=warmup, repeat=repeat)
        row.update(steps["dense"].as_dict("dense_step_"))
        row.update(steps["sparse"].as_dict("sparse_step_"))
        row["step_speedup"] = steps["dense"].median_ms / steps["sparse"].median_ms
        row["max_diff"] = _max_diff(sparse_layer, reference, x)
        row["rounding_bound"] = rounding_bound([masked], reference)
        rows.append(row)
    return rows


def _check_sparsities(sparsities: object) -> tuple[float, ...]:
    if isinstance(sparsities, (str, bytes)) or not isinstance(sparsities, Sequence) or not sparsities:
        raise ValueError(f"sparsities must be a non-empty sequence of fractions in [0, 1), got {sparsities!r}")
    values = []
    for index, value in enumerate(sparsities):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise ValueError(f"sparsities[{index}] must be a fraction in [0, 1), got {value!r}")
        values.append(float(value))
    if len(set(values)) != len(values):
        raise ValueError(f"sparsities must be distinct, got {list(sparsities)}")
    return tuple(values)


def run_prune_benchmark(device: str | torch.device = "cpu", quick: bool = False, seed: int = 0, repeat: int = 20,
                        warmup: int = 3, tasks: Sequence[str] = tuple(TASKS), layer: bool = True,
                        **overrides) -> list[dict]:
    """All rows of one run (see the module docstring): the "model" rows of each task, then the "layer" rows.

    ``quick`` uses the smaller QUICK settings; ``overrides`` replace single settings (keys of DEFAULTS).
    layer: whether to run the layer-level sweep.
    """
    device = resolve_device(device)
    unknown = sorted(set(overrides) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown settings {unknown}; known: {sorted(DEFAULTS)}")
    settings = {**(QUICK if quick else DEFAULTS), **overrides}
    settings["sparsities"] = _check_sparsities(settings["sparsities"])
    bad = [t for t in tasks if t not in TASKS] if not isinstance(tasks, str) else [tasks]
    if bad or isinstance(tasks, str) or len(set(tasks)) != len(tasks) or (not tasks and not layer):
        raise ValueError(f"tasks must be distinct names among {sorted(TASKS)} (none only with the layer sweep), "
                         f"got {tasks!r}")
    rows = []
    for task in tasks:
        rows += _model_rows(task, settings, seed, device, repeat, warmup)
    if layer:
        rows += _layer_rows(settings, seed, device, repeat, warmup)
    return rows


def _pick(rows: Sequence[dict], sparsity: float, **fields) -> dict | None:
    return next((row for row in rows if all(row.get(k) == v for k, v in fields.items())
                 and isinstance(row.get("sparsity"), (int, float)) and math.isclose(row["sparsity"], sparsity)), None)


def _worst_ratio(rows: Sequence[dict], column: str) -> float | None:
    """The largest column / rounding_bound over the model rows that have both, or None."""
    ratios = [row[column] / row["rounding_bound"] for row in rows
              if row.get("kind") == "model" and row.get(column) is not None and row.get("rounding_bound")]
    return max(ratios) if ratios else None


def target_report(rows: Sequence[dict]) -> list[dict]:
    """The goals (TARGETS) on these rows: one :func:`~kanlib.bench.targets.target_entry` per target; a value is
    None when the rows lack it."""
    layer = _pick(rows, GOAL_SPARSITY, kind="layer")
    digits = _pick(rows, GOAL_SPARSITY, kind="model", task="digits")
    checks = (
        (layer and layer.get("speedup"), ">=", 4.0),
        (digits and digits["dense_value"] - digits["value"], "<=", 1.0),
        (_worst_ratio(rows, "compact_max_diff"), "<=", 1.0),
        (_worst_ratio(rows, "sparse_max_diff"), "<=", 1.0),
    )
    return [target_entry(name, value, direction, goal) for name, (value, direction, goal) in zip(TARGETS, checks)]
