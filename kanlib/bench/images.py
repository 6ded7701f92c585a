"""Epoch time at equal test accuracy: the B-spline KAN against the MLP on images, each at several hidden widths.

For each family (``"mlp"``: ``MLP([P, width, 10])``; ``"bspline"``: ``KAN([P, width, 10], layer="bspline")``), each
hidden width of that family and each seed, one model is trained with ``fit(opt="adam", lr=1e-2, seed=seed)`` for
``epochs`` epochs of ``batch_size`` on the flattened images (P pixels), evaluated once per epoch. Runs go seed by
seed, the two families' widths alternating.

A run's epoch time is its median optimizer step times the steps per epoch: the steps that also update a KAN's grid
(fit's pykan schedule, early in training) are few and left out by the median. Per family and width, the median of
the seeds' epoch times and the mean of their last test accuracies. The accuracy level is the lower of the two
families' best mean accuracies less ``tolerance``; each family's cheapest width reaching it is chosen.

The two chosen models are then trained again, seed by seed, their steps taken in turn (``fit_steps``), so that a
slow minute of the machine slows both alike; their epoch times from these paired runs make the comparison. (In the
sweep the two widths may have run minutes apart.)

Rows (``kind``), in this order: ``"run"`` (family, width, seed, parameters, epoch_seconds, test_accuracy),
``"paired"`` (the same fields, of the paired runs), ``"width"`` (family, width, parameters, epoch_seconds and its
quartiles over seeds, test_accuracy, reaches_level) and, last, one ``"summary"`` (dataset, accuracy_level, each
family's cheapest width, its epoch time (the median over the paired runs; ``{family}_sweep_epoch_seconds`` the
sweep's), accuracy and parameters, ``time_ratio``: the B-spline KAN's epoch time over the MLP's, and the quartiles
of that ratio over the seeds' paired runs, ``time_ratio_q25`` and ``time_ratio_q75``).
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch

from ..checks import check_int, resolve_device
from ..layers.mlp import MLP
from ..models import KAN, count_parameters
from ..training import History, fit, fit_steps
from .targets import target_entry

__all__ = ["FAMILIES", "FAMILY_TITLES", "DEFAULTS", "QUICK", "TARGETS", "TABLE_COLUMNS", "run_images_benchmark",
           "equal_accuracy", "with_paired_times", "target_report"]

FAMILIES = ("mlp", "bspline")
FAMILY_TITLES = {"mlp": "MLP", "bspline": "B-spline KAN (kanlib)"}
DEFAULTS = {"widths": {"mlp": (16, 32, 64, 128, 256, 512, 1024), "bspline": (4, 8, 16, 32, 64, 128)},
            "seeds": (0, 1, 2), "epochs": 10, "batch_size": 128, "tolerance": 0.005}
QUICK = {**DEFAULTS, "widths": {"mlp": (16, 32, 64, 128, 256, 512), "bspline": (4, 8, 16, 32)}, "epochs": 6}
# (name, device type, goal): the B-spline KAN's epoch time over the MLP's at equal test accuracy
TARGETS = (("epoch time at equal test accuracy, B-spline KAN / MLP, CPU", "cpu", 2.0),
           ("epoch time at equal test accuracy, B-spline KAN / MLP, CUDA", "cuda", 1.5))
LEARNING_RATE = 1e-2
TABLE_COLUMNS = ("family", "width", "parameters", "seeds", "epoch_seconds", "epoch_seconds_q25", "epoch_seconds_q75",
                 "test_accuracy", "reaches_level")


def _model(family: str, n_inputs: int, width: int, n_classes: int, seed: int) -> torch.nn.Module:
    if family == "mlp":
        torch.manual_seed(seed)
        return MLP([n_inputs, width, n_classes])
    return KAN([n_inputs, width, n_classes], layer="bspline", seed=seed)


def _check_widths(widths: dict) -> dict[str, tuple[int, ...]]:
    if not isinstance(widths, dict) or set(widths) != set(FAMILIES):
        raise ValueError(f"widths: expected a dict with the keys {FAMILIES}, got {widths!r}")
    checked = {}
    for family in FAMILIES:
        values = widths[family]
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise ValueError(f"widths[{family!r}]: expected a non-empty list of hidden widths, got {values!r}")
        for index, width in enumerate(values):
            check_int(f"widths[{family!r}][{index}]", width, 1)
        checked[family] = tuple(values)
    return checked


def _check_data(data: dict) -> None:
    keys = ("train_input", "train_label", "test_input", "test_label")
    if not isinstance(data, dict) or any(key not in data for key in keys):
        raise ValueError(f"data: expected a dict with the keys {keys}, got "
                         f"{sorted(data) if isinstance(data, dict) else type(data).__name__}")
    for key in ("train_input", "test_input"):
        if data[key].dim() != 2:
            raise ValueError(f"data[{key!r}]: expected flattened images [N, P], got shape {tuple(data[key].shape)}")


def run_images_benchmark(device: str | torch.device, data: dict, *, dataset: str, widths: dict | None = None,
                         seeds: Sequence[int] = DEFAULTS["seeds"], epochs: int = DEFAULTS["epochs"],
                         batch_size: int = DEFAULTS["batch_size"],
                         tolerance: float = DEFAULTS["tolerance"]) -> list[dict]:
    """Train every (family, width, seed) on ``data`` (train_input [N, P], train_label [N] class indices,
    test_input, test_label) and return the "run", "width" and "summary" rows (module docstring)."""
    device = resolve_device(device)
    _check_data(data)
    widths = _check_widths(widths if widths is not None else DEFAULTS["widths"])
    check_int("epochs", epochs, 1)
    check_int("batch_size", batch_size, 1)
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence) or not seeds:
        raise ValueError(f"seeds: expected a non-empty list of seeds, got {seeds!r}")
    if not 0.0 <= tolerance < 1.0:
        raise ValueError(f"tolerance: expected an accuracy difference in [0, 1), got {tolerance!r}")
    data = {key: value.to(device) for key, value in data.items()}
    n_inputs, n_classes = data["train_input"].shape[1], int(data["train_label"].max()) + 1
    steps_per_epoch = math.ceil(len(data["train_input"]) / batch_size)
    order = [(family, width) for pair in _alternating(widths) for family, width in pair]
    options = {"epochs": epochs, "batch_size": batch_size, "opt": "adam", "lr": LEARNING_RATE,
               "eval_every": steps_per_epoch, "progress": False}
    runs = []
    for seed in seeds:
        for family, width in order:
            model = _model(family, n_inputs, width, n_classes, seed).to(device)
            history = fit(model, data, seed=seed, **options)
            runs.append(_run_row("run", family, width, seed, model, history, steps_per_epoch))
    compared = equal_accuracy(runs, dataset=dataset, tolerance=tolerance, device_type=device.type)
    chosen = {family: compared[-1][f"{family}_width"] for family in FAMILIES}
    paired = []
    for index, seed in enumerate(seeds):
        families = FAMILIES if index % 2 == 0 else FAMILIES[::-1]  # which one steps first, in turn
        models = {family: _model(family, n_inputs, chosen[family], n_classes, seed).to(device) for family in families}
        trainings = [fit_steps(model, data, seed=seed, **options) for model in models.values()]
        for histories in itertools.zip_longest(*trainings):
            last = dict(zip(models, histories))
        paired += [_run_row("paired", family, chosen[family], seed, models[family], last[family], steps_per_epoch)
                   for family in FAMILIES]
    return runs + paired + with_paired_times(compared, paired)


def _run_row(kind: str, family: str, width: int, seed: int, model: torch.nn.Module, history: History,
             steps_per_epoch: int) -> dict:
    return {"kind": kind, "family": family, "width": width, "seed": seed, "parameters": count_parameters(model),
            "epoch_seconds": float(np.median(history.seconds_per_step) * steps_per_epoch),
            "test_accuracy": float(history.test_metric[-1])}


def _alternating(widths: dict[str, tuple[int, ...]]) -> list[list[tuple[str, int]]]:
    """[(mlp, w0), (bspline, w0')], [(mlp, w1), (bspline, w1')], ...: the families' widths in turn."""
    longest = max(len(values) for values in widths.values())
    return [[(family, widths[family][index]) for family in FAMILIES if index < len(widths[family])]
            for index in range(longest)]


def equal_accuracy(runs: Sequence[dict], *, dataset: str, tolerance: float, device_type: str) -> list[dict]:
    """The "width" rows and the "summary" row of the "run" rows ``runs``."""
    per_width = []
    for family in FAMILIES:
        for width in dict.fromkeys(run["width"] for run in runs if run["family"] == family):
            chosen = [run for run in runs if run["family"] == family and run["width"] == width]
            seconds = np.array([run["epoch_seconds"] for run in chosen])
            per_width.append({"kind": "width", "family": family, "width": width,
                              "parameters": chosen[0]["parameters"], "seeds": len(chosen),
                              "epoch_seconds": float(np.median(seconds)),
                              "epoch_seconds_q25": float(np.quantile(seconds, 0.25)),
                              "epoch_seconds_q75": float(np.quantile(seconds, 0.75)),
                              "test_accuracy": float(np.mean([run["test_accuracy"] for run in chosen]))})
    if not per_width or {row["family"] for row in per_width} != set(FAMILIES):
        raise ValueError(f"runs: expected runs of both families {FAMILIES}, got "
                         f"{sorted({row['family'] for row in per_width})}")
    level = min(max(row["test_accuracy"] for row in per_width if row["family"] == family)
                for family in FAMILIES) - tolerance
    for row in per_width:
        row["reaches_level"] = row["test_accuracy"] >= level
    summary = {"kind": "summary", "dataset": dataset, "device_type": device_type, "accuracy_level": level,
               "tolerance": tolerance}
    for family in FAMILIES:
        cheapest = min((row for row in per_width if row["family"] == family and row["reaches_level"]),
                       key=lambda row: row["epoch_seconds"])
        summary.update({f"{family}_width": cheapest["width"], f"{family}_epoch_seconds": cheapest["epoch_seconds"],
                        f"{family}_test_accuracy": cheapest["test_accuracy"],
                        f"{family}_parameters": cheapest["parameters"]})
    summary["time_ratio"] = summary["bspline_epoch_seconds"] / summary["mlp_epoch_seconds"]
    return per_width + [summary]


def with_paired_times(rows: Sequence[dict], paired: Sequence[dict]) -> list[dict]:
    """``rows`` (equal_accuracy's) with the summary's epoch times and time_ratio taken from the "paired" rows of its
    chosen widths (the median over seeds), the sweep's epoch times kept as ``{family}_sweep_epoch_seconds``, and the
    quartiles over seeds of the paired runs' ratios as ``time_ratio_q25`` and ``time_ratio_q75``."""
    *per_width, summary = rows
    summary = dict(summary)
    seconds = {family: {row["seed"]: row["epoch_seconds"] for row in paired
                        if row["family"] == family and row["width"] == summary[f"{family}_width"]}
               for family in FAMILIES}  # family -> seed -> epoch seconds
    for family in FAMILIES:
        if not seconds[family]:
            raise ValueError(f"paired: expected runs of the {family} model of width {summary[f'{family}_width']}, "
                             f"got {sorted({(row['family'], row['width']) for row in paired})}")
        summary[f"{family}_sweep_epoch_seconds"] = summary[f"{family}_epoch_seconds"]
        summary[f"{family}_epoch_seconds"] = float(np.median(list(seconds[family].values())))
    summary["time_ratio"] = summary["bspline_epoch_seconds"] / summary["mlp_epoch_seconds"]
    ratios = [kan / seconds["mlp"][seed] for seed, kan in seconds["bspline"].items() if seed in seconds["mlp"]]
    summary["time_ratio_q25"], summary["time_ratio_q75"] = (float(np.quantile(ratios, q)) for q in (0.25, 0.75))
    return [*per_width, summary]


def target_report(rows: Sequence[dict], device_type: str | None = None) -> list[dict]:
    """The goals (TARGETS; those of ``device_type`` alone when given), each from the summary row of its device type;
    a value is None where there is none."""
    summaries = {row.get("device_type"): row for row in rows if row.get("kind") == "summary"}
    return [target_entry(name, summaries[kind]["time_ratio"] if kind in summaries else None, "<=", goal)
            for name, kind, goal in TARGETS if device_type in (None, kind)]
