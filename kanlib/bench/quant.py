"""Quantization benchmark: accuracy against bits, model size, BitOps, inference and training time, one run.

Three kinds of rows (``kind``):

- ``"accuracy"``: a float KAN is trained on each task (``symbolic``: the seeds' f(x, y) = exp(sin(pi x) + y^2),
  metric test RMSE; ``digits``: scikit-learn's 8x8 digits, metric test accuracy in percent), then quantized
  with every bits x granularity x calibration x table_bits (``method="ptq"``), and fine-tuned with QAT
  then quantized (``method="qat"``, per-channel weights; with a table, QAT trains through that table). Each row: the metric, the float model's, the
  model size in bytes and BitOps per sample (:mod:`kanlib.quant.cost`) with their ratios to the float model.
  ``table_bits`` 0 means no table.
- ``"inference"``: one layer (I = O = ``width``, G = 5, batch ``batch``), forward only: the float BSplineKAN
  (its fastest path on the device), weight-only int8, and the lookup-table layer with 8- and 3-bit tables
  (8-bit weights, integer products), timed interleaved in one run; ``ratio_to_float`` is the float layer's
  median time over the candidate's (above 1: faster).
- ``"training"``: seconds per optimizer step on digits for an MLP, the float KAN and the QAT KAN, same
  steps and batch size (``step_*_ms`` from the fit history).
"""
from __future__ import annotations

import copy
from collections.abc import Sequence

import torch

from ..checks import resolve_device
from ..data import load_digits, symbolic_dataset
from ..layers import BSplineKAN
from ..models import KAN, MLP
from ..quant.cost import bitops, model_size_bytes
from ..quant.ptq import quantize
from ..quant.qat import QATConfig
from ..training import fit, metric_on_test_set
from .targets import target_entry
from .timing import Timing, time_interleaved

__all__ = ["DEFAULTS", "QUICK", "TARGETS", "TABLE_COLUMNS", "run_quant_benchmark", "target_report"]

DEFAULTS = {"bits": (8, 4, 3, 2), "granularities": ("tensor", "channel", "edge"), "calibrations": ("minmax", "percentile"),
            "table_bits": (0, 8, 3), "width": 256, "batch": 1024, "train_steps": 400, "qat_steps": 200}
QUICK = {**DEFAULTS, "granularities": ("tensor", "channel"), "calibrations": ("minmax",), "width": 128,
         "batch": 256, "train_steps": 120, "qat_steps": 40}
TASKS = {"symbolic": {"widths": [2, 5, 1], "metric": "rmse"}, "digits": {"widths": [64, 16, 10], "metric": "accuracy"}}
TABLE_COLUMNS = ("kind", "task", "method", "calibration", "granularity", "bits", "table_bits", "metric", "value",
                 "float_value", "size_ratio", "bitops_ratio", "candidate", "median_ms", "ratio_to_float", "model",
                 "step_median_ms")
# (name, what it checks) -> evaluated by target_report
TARGETS = (
    "digits accuracy loss, 3-bit table + 8-bit weights <= 0.5 points",
    "symbolic RMSE, 3-bit table + 8-bit weights <= 2x float",
    "digits model size ratio at 8 bits >= 4",
    "digits model size ratio at 4 bits (packed) >= 7",
    "lookup-table layer (8-bit table) faster than the float layer",
)


def _data(task: str, seed: int, device: torch.device) -> dict:
    if task == "symbolic":
        return symbolic_dataset("exp_sin_sq", n_train=1000, n_test=1000, seed=seed, device=device)
    return load_digits(seed=seed, device=device)


def _train(model, data, task: str, steps: int, seed: int, **kwargs):
    """fit on the task's settings with a fixed grid: pykan's grid updates would give every input its own
    non-uniform grid, and a lookup-table layer one table per input (far larger than the weights it replaces)."""
    kwargs.setdefault("update_grid", False)
    if task == "symbolic":
        return fit(model, data, steps=max(1, steps // 8), opt="lbfgs", seed=seed, progress=False, **kwargs)
    return fit(model, data, steps=steps, opt="adam", lr=1e-2, batch_size=256, seed=seed, progress=False, **kwargs)


def _accuracy_rows(task: str, settings: dict, seed: int, device: torch.device) -> tuple[list[dict], dict]:
    spec = TASKS[task]
    data = _data(task, seed, device)
    model = KAN(spec["widths"], grid_size=5, seed=seed).to(device)
    history = _train(model, data, task, settings["train_steps"], seed)
    float_value, float_size, float_bitops = metric_on_test_set(model, data, spec["metric"]), model_size_bytes(model), bitops(model)
    base = {"kind": "accuracy", "task": task, "metric": spec["metric"], "float_value": float_value,
            "float_size_bytes": float_size, "float_bitops": float_bitops}

    def row(quantized, **fields) -> dict:
        size, ops = model_size_bytes(quantized), bitops(quantized)
        return {**base, **fields, "value": metric_on_test_set(quantized, data, spec["metric"]), "size_bytes": size,
                "bitops": ops, "size_ratio": float_size / size, "bitops_ratio": float_bitops / ops}

    rows = [{**base, "method": "float", "bits": 32, "table_bits": 0, "value": float_value, "size_bytes": float_size,
             "bitops": float_bitops, "size_ratio": 1.0, "bitops_ratio": 1.0}]
    calib = data["train_input"]
    for bits in settings["bits"]:
        for granularity in settings["granularities"]:
            for calibration in settings["calibrations"]:
                for table_bits in settings["table_bits"]:
                    quantized = quantize(model, bits=bits, table_bits=table_bits or None, calib=calib,
                                         granularity=granularity, calibration=calibration)
                    rows.append(row(quantized, method="ptq", bits=bits, granularity=granularity,
                                    calibration=calibration, table_bits=table_bits))
    qat_models = {}
    for bits in settings["bits"]:
        for table_bits in settings["table_bits"]:
            trained = copy.deepcopy(model)
            qat_history = _train(trained, data, task, settings["qat_steps"], seed,
                                 qat=QATConfig(bits=bits, table_bits=table_bits or None))
            if not table_bits:
                qat_models[bits] = qat_history
            quantized = quantize(trained, bits=bits, table_bits=table_bits or None, calib=calib, granularity="channel")
            rows.append(row(quantized, method="qat", bits=bits, granularity="channel", calibration="lsq",
                            table_bits=table_bits))
    return rows, {"float": history, "qat": qat_models}


def _step_timing(history) -> Timing:
    seconds = history.seconds_per_step[1:] or history.seconds_per_step
    return Timing.from_samples([1e3 * s for s in seconds])


def _training_rows(settings: dict, seed: int, device: torch.device, kan_history, qat_history) -> list[dict]:
    data = _data("digits", seed, device)
    mlp = MLP([64, 64, 10]).to(device)
    mlp_history = _train(mlp, data, "digits", settings["qat_steps"], seed)
    rows = []
    for name, history in (("mlp", mlp_history), ("kan_float", kan_history), ("kan_qat", qat_history)):
        rows.append({"kind": "training", "task": "digits", "model": name, **_step_timing(history).as_dict("step_")})
    return rows


def _inference_rows(settings: dict, seed: int, device: torch.device, repeat: int, warmup: int) -> list[dict]:
    width, batch = settings["width"], settings["batch"]
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    layer = BSplineKAN(width, width, grid_size=5).to(device)
    x = (torch.rand(batch, width, generator=generator) * 2.2 - 1.1).to(device)
    candidates = {"float": layer,
                  "int8_weights": quantize(layer, bits=8, calib=x, input_bits=None),
                  "table8": quantize(layer, bits=8, table_bits=8, calib=x),
                  "table3": quantize(layer, bits=8, table_bits=3, calib=x)}

    def call(module):
        def run():
            with torch.no_grad():
                module(x)
        return run

    timings = time_interleaved({name: call(m) for name, m in candidates.items()}, device=device, warmup=warmup,
                               repeat=repeat)
    float_ms = timings["float"].median_ms
    return [{"kind": "inference", "candidate": name, "width": width, "batch": batch, "grid_size": 5,
             **timing.as_dict(), "ratio_to_float": float_ms / timing.median_ms} for name, timing in timings.items()]


def run_quant_benchmark(device: str | torch.device = "cpu", quick: bool = False, seed: int = 0, repeat: int = 20,
                        warmup: int = 3, tasks: Sequence[str] = tuple(TASKS), **overrides) -> list[dict]:
    """All rows of one run (see the module docstring); ``quick`` uses the smaller QUICK settings."""
    device = resolve_device(device)
    settings = {**(QUICK if quick else DEFAULTS), **overrides}
    unknown = sorted(set(overrides) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown settings {unknown}; known: {sorted(DEFAULTS)}")
    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks:
        raise ValueError(f"tasks must be a non-empty subset of {sorted(TASKS)}, got {list(tasks)}")
    rows = []
    histories = {}
    for task in tasks:
        task_rows, histories[task] = _accuracy_rows(task, settings, seed, device)
        rows += task_rows
    if "digits" in histories:
        qat_bits = settings["bits"][-1]
        rows += _training_rows(settings, seed, device, histories["digits"]["float"],
                               histories["digits"]["qat"][qat_bits])
    rows += _inference_rows(settings, seed, device, repeat, warmup)
    return rows


def _pick(rows, **fields) -> dict | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in fields.items())), None)


def target_report(rows: Sequence[dict]) -> list[dict]:
    """The goals (TARGETS) on these rows: one :func:`~kanlib.bench.targets.target_entry` per target."""
    digits = _pick(rows, kind="accuracy", task="digits", method="ptq", bits=8, table_bits=3, granularity="channel",
                   calibration="minmax")
    symbolic = _pick(rows, kind="accuracy", task="symbolic", method="ptq", bits=8, table_bits=3,
                     granularity="channel", calibration="minmax")
    size8 = _pick(rows, kind="accuracy", task="digits", method="ptq", bits=8, table_bits=0, granularity="channel")
    size4 = _pick(rows, kind="accuracy", task="digits", method="ptq", bits=4, table_bits=0, granularity="channel")
    table8 = _pick(rows, kind="inference", candidate="table8")
    checks = (
        (digits and digits["float_value"] - digits["value"], "<=", 0.5),
        (symbolic and symbolic["value"] / symbolic["float_value"], "<=", 2.0),
        (size8 and size8["size_ratio"], ">=", 4.0),
        (size4 and size4["size_ratio"], ">=", 7.0),
        (table8 and table8["ratio_to_float"], ">", 1.0),
    )
    return [target_entry(name, value, direction, goal) for name, (value, direction, goal) in zip(TARGETS, checks)]
