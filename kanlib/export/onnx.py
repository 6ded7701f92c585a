"""``to_onnx``: a kanlib model as an ONNX file that ONNX Runtime (native or web) runs.

The model is not changed: a copy is exported, in eval mode, whose B-spline and basis layers run their eager
PyTorch path (the one ``torch.export`` traces into plain operators) and whose quantized layers are replaced by
:class:`~kanlib.export.quantized.OnnxQuantizedBSplineKAN`. ``torch.onnx.export`` (the ``torch.export`` based
exporter) translates the traced graph. The file has one input ``"input"`` float32 ["batch", in_features]
(["batch", C, H, W] for convolutional models) and the output ``"output"`` float32 ["batch", out_features];
with ``edges=True`` also ``"edges_l"`` ["batch", I_l, O_l], every edge's activation in layer l.
"""
from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import logging
import os
import pathlib
import warnings
from importlib import metadata

import torch
from torch import nn

from ..activations import ACTIVATIONS
from ..layers.basis_kan import BasisKAN
from ..layers.bspline import BSplineKAN
from ..layers.conv import KANConv2d
from ..layers.mlp import MLP
from ..layers.sparse_bspline import SparseBSplineKAN
from ..models import KAN, CNNWithKANHead, ConvKAN
from ..quant.ptq import QuantizedBSplineKAN
from .quantized import TRANSLATIONS, OnnxQuantizedBSplineKAN

__all__ = ["to_onnx", "OPSET", "SUPPORTED_OPSETS", "INPUT_NAME", "OUTPUT_NAME"]

# ONNX Runtime 1.14 and later (native and web) run opset 18, the exporter's own; 19..21 are converted to.
OPSET = 18
SUPPORTED_OPSETS = range(18, 22)
INPUT_NAME, OUTPUT_NAME = "input", "output"

_KANLIB_MODULES = (KAN, MLP, BSplineKAN, SparseBSplineKAN, BasisKAN, QuantizedBSplineKAN, KANConv2d, ConvKAN,
                   CNNWithKANHead)
_TORCH_MODULES = (nn.ModuleList, nn.Sequential, nn.Linear, nn.Conv2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.Flatten,
                  nn.LayerNorm, *{a.module for a in ACTIVATIONS.values()})


def to_onnx(model: nn.Module, path: str | os.PathLike, example_input: torch.Tensor, *, edges: bool = False,
            opset: int = OPSET) -> pathlib.Path:
    """Write ``model`` to ``path`` as ONNX and return the path.

    ``model``: a :class:`~kanlib.KAN` (any layer family), :class:`~kanlib.MLP`, a single kanlib layer, a model
    quantized with :func:`kanlib.quantize`, or a convolutional model (``KANConv2d``, ``ConvKAN``,
    ``CNNWithKANHead``). An edge-sparse layer (``SparseBSplineKAN``) is written as the masked B-spline layer it
    converts to (``to_dense``), which computes the same function: ONNX Runtime has no kernel that skips edges.
    ``example_input``: float32 [N, in_features] ([N, C, H, W] for convolutional models), used for tracing only;
    the batch dimension of the file is dynamic. ``edges=True`` (float B-spline KANs only)
    adds the outputs ``edges_0``, ``edges_1``, ...: [batch, I_l, O_l], what ``model.layers[l].activations``
    gives for layer l's input. ``opset``: the ONNX opset the file declares (18..21).
    """
    onnx = _require_onnx()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a kanlib model (an nn.Module), got {type(model).__name__}")
    if not isinstance(edges, bool):
        raise TypeError(f"edges must be True or False, got {edges!r}")
    if isinstance(opset, bool) or not isinstance(opset, int) or opset not in SUPPORTED_OPSETS:
        raise ValueError(f"opset must be an int in {SUPPORTED_OPSETS.start}..{SUPPORTED_OPSETS.stop - 1}, "
                         f"got {opset!r}")
    path = _check_path(path)
    _check_modules(model)
    _check_dtype(model)
    _check_example(model, example_input)
    exported = _export_copy(model)
    output_names = [OUTPUT_NAME]
    if edges:
        layers = _edge_layers(model, exported)
        exported = _WithEdges(layers).eval()
        output_names += [f"edges_{index}" for index in range(len(layers))]
    example = example_input.detach().cpu()
    if example.shape[0] < 2:  # a dynamic dimension is traced on at least 2 samples
        example = example.expand(2, *example.shape[1:]).clone()
    with _quiet_exporter():
        program = torch.onnx.export(exported, (example,), dynamo=True, input_names=[INPUT_NAME],
                                    output_names=output_names, dynamic_shapes=({0: torch.export.Dim("batch")},),
                                    opset_version=opset, custom_translation_table=TRANSLATIONS, verbose=False)
    proto = program.model_proto
    declared = {entry.domain: entry.version for entry in proto.opset_import}.get("")
    if declared != opset:
        raise RuntimeError(f"torch.onnx.export wrote opset {declared} where opset {opset} was asked for")
    _strip_trace_metadata(proto)
    _describe(proto, model, edges)
    onnx.checker.check_model(proto)
    onnx.save_model(proto, str(path))
    return path


@contextlib.contextmanager
def _quiet_exporter():
    """Hide what the exporter says about itself on every first call: that torchvision's operators are not
    registered (kanlib uses none) and a deprecation inside torch's own tree handling."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            yield
    finally:
        registration.setLevel(level)


def _require_onnx():
    missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(f"kanlib.export needs the packages onnx and onnxscript (pip install onnx onnxscript); "
                          f"missing: {', '.join(missing)}")
    import onnx

    return onnx


def _check_path(path) -> pathlib.Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or path-like file name, got {type(path).__name__}")
    path = pathlib.Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"path must be a file name, got {path}, which is a folder")
    folder = path.parent.resolve()
    if not folder.is_dir():
        raise FileNotFoundError(f"path must be a file in an existing folder, got {path}: the folder {folder} does "
                                f"not exist")
    return path


def _check_modules(model: nn.Module) -> None:
    """Raise for modules the export does not translate: unknown types, training-time or symbolic layers."""
    for name, module in model.named_modules():
        where = f"module {name!r}" if name else "the model"
        if isinstance(module, BSplineKAN) and type(module) is not BSplineKAN:
            raise TypeError(f"cannot export {where}, a {type(module).__name__}: export a BSplineKAN (for a layer "
                            f"trained with QAT, convert the model with kanlib.quantize first)")
        if isinstance(module, BSplineKAN) and module.symbolic is not None:
            fixed = module.symbolic.mask.nonzero().tolist()
            raise ValueError(f"{where} has fixed symbolic function(s) on its (input, output) edges {fixed}: ONNX "
                             f"export of symbolic branches is not supported; call unfix_symbolic on those edges "
                             f"or export before fix_symbolic")
        if not isinstance(module, _KANLIB_MODULES + _TORCH_MODULES):
            kinds = sorted({t.__name__ for t in _KANLIB_MODULES + _TORCH_MODULES})
            raise TypeError(f"cannot export {where} of type {type(module).__name__}: to_onnx translates the kanlib "
                            f"models and layers and these modules: {kinds}")


def _check_dtype(model: nn.Module) -> None:
    dtypes = {t.dtype for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()}
    if dtypes - {torch.float32}:
        raise TypeError(f"to_onnx exports float32 models, got parameters or buffers of dtype "
                        f"{sorted(str(d) for d in dtypes)}; convert a copy with model.float()")


def _expected_input(model: nn.Module) -> tuple[int, int]:
    """(number of dimensions, size of dim 1) of the input the model takes."""
    first = model
    while isinstance(first, (nn.Sequential, nn.ModuleList)) and len(first):
        first = first[0]
    if isinstance(first, (ConvKAN, CNNWithKANHead)):
        first = next(m for m in first.modules() if isinstance(m, (KANConv2d, nn.Conv2d)))
    if isinstance(first, (KANConv2d, nn.Conv2d)):
        return 4, first.in_channels
    if isinstance(getattr(first, "in_features", None), int):
        return 2, first.in_features
    raise TypeError(f"cannot tell the input width of a {type(model).__name__}; export a kanlib model or layer")


def _check_example(model: nn.Module, example_input) -> None:
    n_dims, size = _expected_input(model)
    shape = f"[N, {size}]" if n_dims == 2 else f"[N, {size}, H, W]"
    if not isinstance(example_input, torch.Tensor):
        raise TypeError(f"example_input must be a float32 torch.Tensor {shape}, got {type(example_input).__name__}")
    if (example_input.dtype != torch.float32 or example_input.dim() != n_dims or example_input.shape[1] != size
            or example_input.shape[0] < 1):
        raise ValueError(f"example_input must be a float32 tensor {shape} with N >= 1, got {example_input.dtype} "
                         f"{list(example_input.shape)}")


def _export_copy(model: nn.Module) -> nn.Module:
    """A CPU copy in eval mode whose layers run their eager paths and whose quantized layers are exportable."""
    exported = copy.deepcopy(model).cpu().eval()
    if isinstance(exported, QuantizedBSplineKAN):
        return OnnxQuantizedBSplineKAN(exported).eval()
    if isinstance(exported, SparseBSplineKAN):
        exported = exported.to_dense().eval()
    for name, module in list(exported.named_modules()):
        parent_name, _, child = name.rpartition(".")
        if isinstance(module, QuantizedBSplineKAN):
            setattr(exported.get_submodule(parent_name), child, OnnxQuantizedBSplineKAN(module).eval())
        elif isinstance(module, SparseBSplineKAN):
            dense = module.to_dense().eval()
            dense.backend = "eager"
            setattr(exported.get_submodule(parent_name), child, dense)
        elif isinstance(module, (BSplineKAN, BasisKAN)):
            module.backend = "eager"
    return exported


def _edge_layers(model: nn.Module, exported: nn.Module) -> list[BSplineKAN]:
    if type(model) is BSplineKAN:
        return [exported]
    if type(model) is KAN and all(type(layer) is BSplineKAN for layer in model.layers):
        return list(exported.layers)
    got = type(model).__name__
    if isinstance(getattr(model, "layers", None), nn.ModuleList):
        got += f" of {[type(layer).__name__ for layer in model.layers]}"
    raise ValueError(f"edges=True needs a float B-spline KAN (a kanlib.KAN of BSplineKAN layers, or one "
                     f"BSplineKAN), got a {got}")


class _WithEdges(nn.Module):
    """B-spline layers run in turn: x [N, I_0] -> (output [N, O_L], edges_0 [N, I_0, O_0], ...)."""

    def __init__(self, layers: list[BSplineKAN]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        edges = []
        for layer in self.layers:
            edges.append(layer.numerical_edges(x))
            x = layer(x)
        return (x, *edges)


def _strip_trace_metadata(proto) -> None:
    """Remove what the exporter records per node and value for debugging (source lines, local file paths): most
    of a small model's file, and different on every machine."""
    for item in (*proto.graph.node, *proto.graph.value_info, *proto.graph.input, *proto.graph.output,
                 *proto.graph.initializer):
        del item.metadata_props[:]
        item.doc_string = ""


def _describe(proto, model: nn.Module, edges: bool) -> None:
    """Producer and kanlib's metadata (model class, widths, layer kinds) written into the ModelProto."""
    import onnx

    try:
        version = metadata.version("kanlib")
    except metadata.PackageNotFoundError:  # run from a source tree that was not installed
        version = "unknown"
    proto.producer_name, proto.producer_version = "kanlib", version
    layers = [type(m).__name__ for m in model.modules()
              if isinstance(m, (BSplineKAN, SparseBSplineKAN, BasisKAN, QuantizedBSplineKAN, nn.Linear, nn.Conv2d))]
    properties = {"kanlib.model": type(model).__name__, "kanlib.layers": json.dumps(layers),
                  "kanlib.edges": json.dumps(edges)}
    widths = getattr(model, "widths", None)
    if widths is None and hasattr(model, "in_features") and hasattr(model, "out_features"):
        widths = [model.in_features, model.out_features]
    if widths is not None:
        properties["kanlib.widths"] = json.dumps(list(widths))
    onnx.helper.set_model_props(proto, properties)
