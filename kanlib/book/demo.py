"""The files of the live demo page (book/demo.md): three ONNX models and the manifest the page's script reads.

    export_demo(DEMO_DIR, digits_float=model, digits_quantized=quantize(model, 8, table_bits=8, calib=data),
                example=example1_model, digits=data)

writes, through :func:`kanlib.export.to_onnx`, ``digits-float.onnx`` and ``digits-int8.onnx`` (input
[batch, 64] pixel intensities in [0, 1], output [batch, 10] logits), ``example1.onnx`` (input [batch, 2],
output [batch, 1] and every edge's activation, ``edges_l`` [batch, I_l, O_l]) and ``demo.json``:

    {"schema": 1,
     "models": {"float" | "int8" | "example1": {"file", "bytes", "widths", ...}},
     "digits": {"classes": 10, "image_size": 8, "max_count": 16,
                "samples": [{"index", "label", "pixels": [64], "logits": {"float", "int8"},
                             "prediction": {"float", "int8"}}]},
     "example1": {"formula", "inputs", "range", "widths",
                  "layers": [{"x": [I][P], "phi": [I][O][P], "bias": [O] or null}]}}

Each layer's curves are sampled over the values its inputs take while the first layer's inputs sweep the range.
The page (``_static/kanlib-demo.js``) finds these files under ``_static/demo/`` of the built site.
"""
from __future__ import annotations

import copy
import json
import math
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..checks import check_int, check_output_dir, is_real
from ..export import to_onnx
from ..layers.bspline import BSplineKAN
from ..quant import QuantizedBSplineKAN

__all__ = ["export_demo", "DEMO_FILES", "MANIFEST", "SCHEMA"]

DEMO_FILES = {"float": "digits-float.onnx", "int8": "digits-int8.onnx", "example1": "example1.onnx"}
MANIFEST = "demo.json"
SCHEMA = 1
PIXELS, CLASSES, MAX_COUNT = 64, 10, 16
EXAMPLE1_FORMULA = "exp(sin(π x1) + x2²)"  # as the page shows it
CURVE_POINTS = 101   # samples per edge curve
SWEEP_POINTS = 65    # per input of the first layer, when finding the range of a later layer's inputs
DIGITS = 6           # significant digits of the curves in the manifest


def export_demo(folder: str | os.PathLike[str], *, digits_float: nn.Module, digits_quantized: nn.Module,
                example: nn.Module, digits: Mapping[str, torch.Tensor], samples: int = 12,
                example_range: tuple[float, float] | None = None) -> dict[str, Any]:
    """Write the demo's models and manifest into `folder`; returns the manifest.

    digits_float: a float KAN [64, ..., 10]; digits_quantized: ``kanlib.quantize(digits_float, table_bits=...)``;
    example: a float B-spline KAN [2, H, 1] trained on Example 1 over `example_range` (default (-1, 1));
    digits: the dict of ``kanlib.load_digits``, whose test set gives `samples` images (at least one per class).
    """
    low, high = _check_range(example_range)
    in_f, out_f = _features(digits_float, "digits_float")
    if (in_f, out_f) != (PIXELS, CLASSES):
        raise ValueError(f"digits_float: expected a model from {PIXELS} pixels to {CLASSES} classes, "
                         f"got {in_f} -> {out_f}")
    if _quantized_layers(digits_float):
        raise ValueError("digits_float: expected the float model, got one with QuantizedBSplineKAN layers "
                         "(pass that one as digits_quantized)")
    in_q, out_q = _features(digits_quantized, "digits_quantized")
    if (in_q, out_q) != (PIXELS, CLASSES):
        raise ValueError(f"digits_quantized: expected a model from {PIXELS} pixels to {CLASSES} classes, "
                         f"got {in_q} -> {out_q}")
    tables = [layer.table for layer in _quantized_layers(digits_quantized)]
    if not tables or any(table is None for table in tables):
        raise ValueError("digits_quantized: expected kanlib.quantize(model, table_bits=...) (every layer a "
                         f"QuantizedBSplineKAN with a lookup table), got {_describe_layers(digits_quantized)}")
    widths = _example_widths(example)
    test_input, test_label = _check_digits(digits)
    check_int("samples", samples, CLASSES, test_input.shape[0],
              expected=f"an int in {CLASSES}..{test_input.shape[0]} (an image per class, at most the test set)")
    folder = check_output_dir(folder, "folder")
    folder.mkdir(parents=True, exist_ok=True)

    picked = _pick_samples(test_label, samples)
    sample_input = test_input[picked]
    example_input = torch.tensor([[low, high], [high, low]], dtype=torch.float32)
    for key, model, example_x, edges in (("float", digits_float, sample_input, False),
                                         ("int8", digits_quantized, sample_input, False),
                                         ("example1", example, example_input, True)):
        to_onnx(model, folder / DEMO_FILES[key], example_x, edges=edges)

    logits = {key: _run(model, sample_input) for key, model in (("float", digits_float), ("int8", digits_quantized))}
    accuracy = {key: float((_run(model, test_input).argmax(-1) == test_label).float().mean())
                for key, model in (("float", digits_float), ("int8", digits_quantized))}
    quantized = _quantized_layers(digits_quantized)[0]
    manifest = {
        "schema": SCHEMA,
        "models": {
            "float": {"file": DEMO_FILES["float"], "bytes": _size(folder, "float"), "widths": _widths(digits_float),
                      "test_accuracy": accuracy["float"]},
            "int8": {"file": DEMO_FILES["int8"], "bytes": _size(folder, "int8"), "widths": _widths(digits_quantized),
                     "test_accuracy": accuracy["int8"], "bits": quantized.spline_spec.bits,
                     "table_bits": quantized.table.table_bits, "position_bits": quantized.table.position_bits},
            "example1": {"file": DEMO_FILES["example1"], "bytes": _size(folder, "example1"), "widths": widths},
        },
        "digits": {
            "classes": CLASSES, "image_size": int(math.isqrt(PIXELS)), "max_count": MAX_COUNT,
            "test_size": int(test_input.shape[0]),
            "samples": [{"index": int(index), "label": int(test_label[index]),
                         "pixels": [float(v) for v in test_input[index]],
                         "logits": {key: [float(v) for v in logits[key][row]] for key in logits},
                         "prediction": {key: int(logits[key][row].argmax()) for key in logits}}
                        for row, index in enumerate(picked.tolist())],
        },
        "example1": {"formula": EXAMPLE1_FORMULA, "inputs": ["x1", "x2"], "range": [low, high], "widths": widths,
                     "layers": _edge_curves(example, low, high)},
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest


def _check_range(example_range) -> tuple[float, float]:
    if example_range is None:
        return -1.0, 1.0
    if (not isinstance(example_range, (tuple, list)) or len(example_range) != 2
            or not all(is_real(v) and math.isfinite(v) for v in example_range)
            or not example_range[0] < example_range[1]):
        raise ValueError(f"example_range: expected (low, high), two finite numbers with low < high, "
                         f"got {example_range!r}")
    return float(example_range[0]), float(example_range[1])


def _features(model: object, name: str) -> tuple[int, int]:
    """(inputs, outputs) of a kanlib KAN stack (``widths``) or layer (``in_features``, ``out_features``)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name}: expected a kanlib KAN model (torch.nn.Module), got {type(model).__name__}")
    if getattr(model, "widths", None) is None and not (hasattr(model, "in_features")
                                                        and hasattr(model, "out_features")):
        raise TypeError(f"{name}: expected a kanlib KAN stack or layer (with widths or in_features/out_features), "
                        f"got {type(model).__name__}")
    widths = _widths(model)
    return widths[0], widths[-1]


def _widths(model: nn.Module) -> list[int]:
    """A KAN stack's widths, or [in_features, out_features] of a layer."""
    widths = getattr(model, "widths", None)
    return [int(w) for w in widths] if widths is not None else [int(model.in_features), int(model.out_features)]


def _quantized_layers(model: nn.Module) -> list[QuantizedBSplineKAN]:
    return [m for m in model.modules() if isinstance(m, QuantizedBSplineKAN)]


def _describe_layers(model: nn.Module) -> str:
    """'QuantizedBSplineKAN without a table, BSplineKAN': the kinds of the model's layers."""
    def describe(layer: nn.Module) -> str:
        bare = isinstance(layer, QuantizedBSplineKAN) and layer.table is None
        return f"{type(layer).__name__}{' without a table' if bare else ''}"

    return ", ".join(describe(layer) for layer in getattr(model, "layers", [model]))


def _example_widths(example: object) -> list[int]:
    """[2, H, 1] of a float B-spline KAN stack, else an error naming what came."""
    if not isinstance(example, nn.Module) or getattr(example, "widths", None) is None:
        raise TypeError(f"example: expected a kanlib KAN stack of BSplineKAN layers, got {type(example).__name__}")
    widths = [int(w) for w in example.widths]
    if len(widths) != 3 or widths[0] != 2 or widths[2] != 1:
        raise ValueError(f"example: expected widths [2, H, 1] (Example 1: two inputs, one hidden layer, one output), "
                         f"got {widths}")
    kinds = [type(layer).__name__ for layer in example.layers]
    if not all(type(layer) is BSplineKAN for layer in example.layers):
        raise ValueError(f"example: expected float BSplineKAN layers (their edges are exported), got {kinds}")
    return widths


def _check_digits(digits: object) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(digits, Mapping) or not {"test_input", "test_label"} <= set(digits):
        keys = sorted(digits) if isinstance(digits, Mapping) else type(digits).__name__
        raise ValueError(f"digits: expected the dict of kanlib.load_digits (test_input, test_label), got {keys}")
    x, y = digits["test_input"], digits["test_label"]
    if not (isinstance(x, torch.Tensor) and x.is_floating_point() and x.dim() == 2 and x.shape[1] == PIXELS):
        raise ValueError(f"digits['test_input']: expected a float tensor [n, {PIXELS}], got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if not (isinstance(y, torch.Tensor) and y.dim() == 1 and y.shape[0] == x.shape[0]
            and not y.is_floating_point()):
        raise ValueError(f"digits['test_label']: expected integer class indices [{x.shape[0]}], got "
                         f"{(y.dtype, tuple(y.shape)) if isinstance(y, torch.Tensor) else type(y).__name__}")
    missing = sorted(set(range(CLASSES)) - set(y.tolist()))
    if missing:
        raise ValueError(f"digits['test_label']: expected every class 0..{CLASSES - 1} in the test set, "
                         f"missing {missing}")
    if x.min() < 0 or x.max() > 1:
        raise ValueError(f"digits['test_input']: expected intensities in [0, 1] (load_digits(normalize=True)), "
                         f"got values in [{float(x.min())}, {float(x.max())}]")
    return x.detach().cpu().float(), y.detach().cpu()


def _pick_samples(labels: torch.Tensor, count: int) -> torch.Tensor:
    """Test indices cycling through the classes 0, 1, ..., 9, 0, ...: the first images of each class in turn."""
    by_class = [torch.nonzero(labels == c).flatten().tolist() for c in range(CLASSES)]
    picked, rank = [], 0
    while len(picked) < count:
        for members in by_class:
            if rank < len(members) and len(picked) < count:
                picked.append(members[rank])
        rank += 1
    return torch.tensor(picked)


def _run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """model(x) in eval mode, run on a copy: the caller's model keeps its mode and the samples it remembers."""
    with torch.no_grad():
        return copy.deepcopy(model).eval()(x).float()


def _size(folder: pathlib.Path, key: str) -> int:
    return (folder / DEMO_FILES[key]).stat().st_size


def _rounded(values: torch.Tensor) -> list:
    return [float(f"{v:.{DIGITS}g}") for v in values.tolist()]


def _edge_curves(model: nn.Module, low: float, high: float) -> list[dict[str, list]]:
    """Per layer l, x [I][P], phi [I][O][P] and its bias [O] (or None): each edge's activation over the values
    its input takes while the first layer's inputs sweep [low, high] together (a SWEEP_POINTS grid per input)."""
    model = copy.deepcopy(model).eval()
    sweep = torch.linspace(low, high, SWEEP_POINTS)
    grid = torch.cartesian_prod(*[sweep] * model.widths[0])
    curves = []
    with torch.no_grad():
        for layer in model.layers:
            lo, hi = grid.min(0).values, grid.max(0).values
            hi = torch.where(hi > lo, hi, lo + 1e-6)  # an input that never moves still gets a drawable range
            steps = torch.linspace(0, 1, CURVE_POINTS).unsqueeze(1)
            x = lo + steps * (hi - lo)                                       # [P, I]
            phi = layer.activations(x)                                       # [P, I, O]
            curves.append({"x": [_rounded(x[:, i]) for i in range(layer.in_features)],
                           "phi": [[_rounded(phi[:, i, o]) for o in range(layer.out_features)]
                                   for i in range(layer.in_features)],
                           "bias": None if layer.bias is None else [float(v) for v in layer.bias]})
            grid = layer(grid)
    return curves
