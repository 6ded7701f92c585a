"""kanlib.export.to_onnx: ONNX Runtime runs the written files and gives what the PyTorch models give.

Float models: within 1e-5 of the output's scale (ONNX Runtime sums the products in its own order and its Sigmoid
is its own approximation). Quantized models on the integer lookup-table path: bit-exact, see
``test_integer_path_is_bit_exact_in_onnx_runtime``. Each model is exported once (module-scoped fixtures where
several tests read it); each export takes a few seconds.
"""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from kanlib import KAN, MLP, BSplineKAN, CNNWithKANHead, ConvKAN, RBFKAN, quantize
from kanlib.export import OPSET, to_onnx
from kanlib.export.quantized import OnnxQuantizedBSplineKAN
from kanlib.quant import QATConfig, prepare_qat

FAMILIES = ("bspline", "rbf", "rswaf", "relu", "chebyshev")


def inputs(n_in: int, n: int, seed: int, scale: float = 2.0) -> torch.Tensor:
    """x [n, n_in]: normal with std ``scale``, so about half the values lie outside the default grid [-1, 1]."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, n_in, generator=generator) * scale


def with_nan(x: torch.Tensor) -> torch.Tensor:
    """x with one value of row 1 and all of the last row NaN."""
    x = x.clone()
    x[1, 0] = float("nan")
    x[-1] = float("nan")
    return x


def run_onnx(path, x: torch.Tensor) -> list[torch.Tensor]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [torch.from_numpy(out) for out in session.run(None, {"input": x.numpy()})]


def assert_near(got: torch.Tensor, want: torch.Tensor, rtol: float = 1e-5) -> None:
    """Equal within rtol of the largest magnitude of want (NaN where want is NaN)."""
    assert got.shape == want.shape and got.dtype == want.dtype
    assert torch.equal(torch.isnan(got), torch.isnan(want))
    scale = want.nan_to_num().abs().max().clamp_min(1e-30)
    torch.testing.assert_close(got.nan_to_num(), want.nan_to_num(), rtol=0, atol=float(rtol * scale))


def assert_identical(got: torch.Tensor, want: torch.Tensor) -> None:
    """Bit-equal, NaN where want is NaN."""
    assert got.shape == want.shape and got.dtype == want.dtype
    assert torch.equal(torch.isnan(got), torch.isnan(want))
    assert torch.equal(got.nan_to_num(), want.nan_to_num()), f"largest difference {(got - want).abs().nanmax()}"


# --- float models -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_runs_in_onnx_runtime(family, tmp_path):
    model = KAN([5, 7, 3], layer=family, seed=0)
    path = to_onnx(model, tmp_path / f"{family}.onnx", inputs(5, 4, 0))
    for n in (1, 33):
        x = inputs(5, n, n)
        with torch.no_grad():
            assert_near(run_onnx(path, x)[0], model(x))
    assert [layer.backend for layer in model.layers] == ["auto"] * 2  # the model itself is not changed


@pytest.fixture(scope="module")
def grid_updated(tmp_path_factory):
    """A B-spline KAN after update_grid (per-input knots), edges pruned, with a bias, exported with edges."""
    model = KAN([5, 7, 3], seed=1)
    model.update_grid(inputs(5, 200, 1, scale=1.5))
    with torch.no_grad():
        model.layers[0].mask[0, 1] = 0.0
        model.layers[1].mask[2, :] = 0.0
        model.layers[1].bias = nn.Parameter(torch.randn(3) * 0.1)
    path = to_onnx(model, tmp_path_factory.mktemp("edges") / "edges.onnx", inputs(5, 4, 2), edges=True)
    return model, path


def test_edges_are_each_layers_activations(grid_updated):
    model, path = grid_updated
    assert not model.layers[0].is_uniform()
    x = inputs(5, 37, 3)
    output, *edges = run_onnx(path, x)
    with torch.no_grad():
        assert_near(output, model(x))
        layer_inputs = model.layer_inputs(x)
        assert len(edges) == 2
        for layer, layer_input, got in zip(model.layers, layer_inputs, edges):
            want = layer.activations(layer_input)
            assert got.shape == (37, layer.in_features, layer.out_features)
            assert_near(got, want)
    assert bool((edges[0][:, 0, 1] == 0).all()) and bool((edges[1][:, 2, :] == 0).all())  # pruned edges


def test_file_names_its_inputs_outputs_opset_and_producer(grid_updated):
    model, path = grid_updated
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)

    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    assert [(v.name, dims(v)) for v in proto.graph.input] == [("input", ["batch", 5])]
    assert [(v.name, dims(v)) for v in proto.graph.output] == [
        ("output", ["batch", 3]), ("edges_0", ["batch", 5, 7]), ("edges_1", ["batch", 7, 3])]
    assert all(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for v in [*proto.graph.input,
                                                                                *proto.graph.output])
    assert {entry.domain: entry.version for entry in proto.opset_import}[""] == OPSET
    assert proto.producer_name == "kanlib"
    properties = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(properties["kanlib.widths"]) == [5, 7, 3]
    assert json.loads(properties["kanlib.edges"]) is True
    assert not any(node.metadata_props for node in proto.graph.node)  # no source paths of this machine


def test_a_single_layer_exports_with_its_edges_and_a_one_sample_example(tmp_path):
    layer = BSplineKAN(3, 4, grid_size=7, spline_order=2, base_activation="tanh", bias=True)
    path = to_onnx(layer, tmp_path / "layer.onnx", inputs(3, 1, 4), edges=True)
    x = inputs(3, 9, 5)
    output, edges = run_onnx(path, x)
    with torch.no_grad():
        assert_near(output, layer(x))
        assert_near(edges, layer.activations(x))


def test_an_mlp_and_a_basis_layer_export(tmp_path):
    for model, width in ((MLP([6, 9, 2]), 6), (RBFKAN(4, 3, grid_size=6), 4)):
        path = to_onnx(model, tmp_path / "model.onnx", inputs(width, 3, 6))
        x = inputs(width, 11, 7)
        with torch.no_grad():
            assert_near(run_onnx(path, x)[0], model(x))


def test_an_edge_sparse_model_and_layer_export_as_their_masked_dense_twins(tmp_path):
    model = KAN([5, 7, 3], grid_size=6, bias=True, seed=2)
    with torch.no_grad():
        for layer in model.layers:
            layer.mask.copy_(torch.rand(layer.mask.shape, generator=torch.Generator().manual_seed(3)) < 0.3)
    sparse = model.to_sparse()
    for exported, name in ((sparse, "model"), (sparse.layers[0], "layer")):
        path = to_onnx(exported, tmp_path / f"{name}.onnx", inputs(5, 2, 8))
        x = inputs(5, 13, 9)
        with torch.no_grad():
            assert_near(run_onnx(path, x)[0], exported(x))
        assert "SparseBSplineKAN" in {p.key: p.value for p in onnx.load(path).metadata_props}["kanlib.layers"]
    assert type(sparse.layers[0]).__name__ == "SparseBSplineKAN"  # the model itself is left as it is


@pytest.mark.parametrize("kind", [ConvKAN, CNNWithKANHead])
def test_convolutional_models_export_with_a_dynamic_batch(kind, tmp_path):
    model = kind(1, 4, channels=(3,), seed=0, grid_size=4)
    generator = torch.Generator().manual_seed(8)
    path = to_onnx(model, tmp_path / "conv.onnx", torch.rand(2, 1, 7, 7, generator=generator))
    for n in (1, 5):
        x = torch.rand(n, 1, 7, 7, generator=generator) * 2 - 0.5
        with torch.no_grad():
            assert_near(run_onnx(path, x)[0], model(x))
    with pytest.raises(ValueError, match=r"float32 tensor \[N, 1, H, W\] with N >= 1, got torch.float32 \[2, 49\]"):
        to_onnx(model, tmp_path / "conv.onnx", torch.rand(2, 49))


def test_torch_export_of_a_kan_with_the_default_backend_gives_its_output():
    model = KAN([4, 6, 2], seed=3)
    model.update_grid(inputs(4, 100, 9))
    x = inputs(4, 13, 10)
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        assert_near(program.module()(x), model(x))
    assert all(layer.backend == "auto" for layer in model.layers)


# --- quantized models ---------------------------------------------------------------------------------------------

QUANTIZED_CASES = {  # name: (update_grid, quantize keyword arguments, spline order, kind of every layer)
    "uniform-table8-channel": (False, {"table_bits": 8}, 3, "integer"),
    "knots-table4-tensor": (True, {"table_bits": 4, "granularity": "tensor"}, 3, "integer"),
    "uniform-order0-table8": (False, {"table_bits": 8, "position_bits": 3}, 0, "integer"),
    "knots-order1-no-input-bits": (True, {"table_bits": 8, "input_bits": None}, 1, "integer"),
    "uniform-table8-edge": (False, {"table_bits": 8, "granularity": "edge"}, 3, "table"),
    "knots-table6-affine": (True, {"table_bits": 6, "scheme": "affine"}, 2, "table"),
    "uniform-weights-only": (False, {"bits": 4}, 3, "float"),
    "knots-weights-only-no-input-bits": (True, {"input_bits": None}, 2, "float"),
}


def quantized_model(update_grid: bool, options: dict, spline_order: int, seed: int = 0) -> nn.Module:
    model = KAN([5, 7, 3], seed=seed, spline_order=spline_order, grid_size=6)
    calib = inputs(5, 256, seed + 100, scale=1.0)
    if update_grid:
        model.update_grid(calib)
    return quantize(model, calib=calib, backend="eager", **options)


@pytest.mark.parametrize("case", sorted(QUANTIZED_CASES))
def test_the_export_module_computes_the_quantized_layer_exactly(case):
    """The operations the export traces give bit for bit what QuantizedBSplineKAN's eager forward gives."""
    update_grid, options, spline_order, kind = QUANTIZED_CASES[case]
    model = quantized_model(update_grid, options, spline_order)
    x = with_nan(inputs(5, 41, 11))
    with torch.no_grad():
        for layer in model.layers:
            exported = OnnxQuantizedBSplineKAN(layer)
            assert exported.kind == kind
            want = layer(x)
            if kind == "float":  # the same formula as the eager product, through the Cox-de Boor basis
                assert_near(exported(x), want)
            else:
                assert_identical(exported(x), want)
            x = want


@pytest.fixture(scope="module")
def exported_quantized(tmp_path_factory):
    """case name -> (quantized model, ONNX file written from a batch of 4)."""
    folder = tmp_path_factory.mktemp("quantized")
    cases = ("uniform-table8-channel", "knots-table4-tensor", "uniform-table8-edge", "knots-weights-only-no-input-bits")
    written = {}
    for case in cases:
        update_grid, options, spline_order, _ = QUANTIZED_CASES[case]
        model = quantized_model(update_grid, options, spline_order)
        written[case] = model, to_onnx(model, folder / f"{case}.onnx", inputs(5, 4, 12))
    return written


@pytest.mark.parametrize("case", ["uniform-table8-channel", "knots-table4-tensor"])
def test_integer_path_is_bit_exact_in_onnx_runtime(case, exported_quantized):
    """Integer codes, int32 products and then the same float operations in the same order: bit-exact. The one
    float function ONNX Runtime evaluates differently is the base activation (its Sigmoid differs from torch's
    silu in the last bits); with quantized inputs (256 values per layer) no 8-bit activation code lies close
    enough to a rounding boundary for that to change a code in these models."""
    model, path = exported_quantized[case]
    proto = onnx.load(str(path))
    assert sum(node.op_type == "MatMulInteger" for node in proto.graph.node) == 4
    for n in (1, 33, 37):
        x = with_nan(inputs(5, n, 13 + n)) if n > 2 else inputs(5, n, 13 + n)
        with torch.no_grad():
            assert_identical(run_onnx(path, x)[0], model(x))


@pytest.mark.parametrize("case", ["uniform-table8-edge", "knots-weights-only-no-input-bits"])
def test_float_quantized_paths_match_onnx_runtime(case, exported_quantized):
    """Lookup table with per-edge weights, and weight-only quantization: the dequantized weights in a float
    product, whose sums ONNX Runtime adds in its own order."""
    model, path = exported_quantized[case]
    for n in (1, 37):
        x = with_nan(inputs(5, n, 20 + n)) if n > 2 else inputs(5, n, 20 + n)
        with torch.no_grad():
            assert_near(run_onnx(path, x)[0], model(x))


def test_a_single_quantized_layer_exports(tmp_path):
    model = quantized_model(False, {"table_bits": 8}, 3, seed=4)
    layer = model.layers[0]
    path = to_onnx(layer, tmp_path / "layer.onnx", inputs(5, 4, 30))
    x = with_nan(inputs(5, 17, 31))
    with torch.no_grad():
        assert_identical(run_onnx(path, x)[0], layer(x))


def test_an_int8_file_is_several_times_smaller_than_the_float_one(tmp_path):
    model = KAN([64, 24, 10], seed=5, grid_size=8)
    calib = torch.rand(300, 64, generator=torch.Generator().manual_seed(5))
    float_path = to_onnx(model, tmp_path / "float.onnx", calib[:4])
    quantized_path = to_onnx(quantize(model, bits=8, table_bits=8, calib=calib), tmp_path / "int8.onnx", calib[:4])
    assert quantized_path.stat().st_size * 3 < float_path.stat().st_size
    types = {i.name: i.data_type for i in onnx.load(str(quantized_path)).graph.initializer}
    # the int8 weight codes, stored as uint8 with zero point 128 (see WEIGHT_ZERO_POINT), and the table codes
    assert types["layers.0.spline_codes"] == types["layers.1.base_codes"] == onnx.TensorProto.UINT8
    assert any(kind == onnx.TensorProto.UINT8 for name, kind in types.items()
               if not name.endswith(("spline_codes", "base_codes")))


# --- what cannot be exported --------------------------------------------------------------------------------------

def test_a_fixed_symbolic_edge_is_refused(tmp_path):
    model = KAN([2, 3, 1], seed=0)
    model.layers[0].set_symbolic(1, 2, "sin")
    with pytest.raises(ValueError, match=r"layers\.0.*\[\[1, 2\]\].*unfix_symbolic"):
        to_onnx(model, tmp_path / "m.onnx", inputs(2, 4, 0))


def test_unknown_modules_are_named(tmp_path):
    class Doubler(nn.Module):
        def forward(self, x):
            return 2 * x

    model = nn.Sequential(BSplineKAN(3, 2), Doubler())
    with pytest.raises(TypeError, match=r"'1' of type Doubler"):
        to_onnx(model, tmp_path / "m.onnx", inputs(3, 4, 0))
    trained = prepare_qat(KAN([3, 2], seed=0), QATConfig(bits=8))
    with pytest.raises(TypeError, match=r"'layers\.0', a QATBSplineKAN: .*kanlib\.quantize"):
        to_onnx(trained, tmp_path / "m.onnx", inputs(3, 4, 0))
    with pytest.raises(TypeError, match=r"model must be .* got str"):
        to_onnx("model", tmp_path / "m.onnx", inputs(3, 4, 0))


@pytest.mark.parametrize("example, message", [
    (inputs(4, 3, 0), r"float32 tensor \[N, 3\] with N >= 1, got torch.float32 \[3, 4\]"),
    (inputs(3, 3, 0).double(), r"got torch.float64 \[3, 3\]"),
    (inputs(3, 3, 0)[0], r"got torch.float32 \[3\]"),
])
def test_a_wrong_example_input_is_refused(example, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        to_onnx(KAN([3, 2]), tmp_path / "m.onnx", example)
    with pytest.raises(TypeError, match=r"float32 torch.Tensor \[N, 3\], got ndarray"):
        to_onnx(KAN([3, 2]), tmp_path / "m.onnx", np.zeros((2, 3), np.float32))


def test_other_mistakes_are_refused(tmp_path):
    x = inputs(3, 4, 0)
    with pytest.raises(FileNotFoundError, match=r"folder .*missing does not exist"):
        to_onnx(KAN([3, 2]), tmp_path / "missing" / "m.onnx", x)
    with pytest.raises(IsADirectoryError, match="which is a folder"):
        to_onnx(KAN([3, 2]), tmp_path, x)
    with pytest.raises(ValueError, match=r"edges=True needs a float B-spline KAN .* got a KAN of \['RBFKAN'\]"):
        to_onnx(KAN([3, 2], layer="rbf"), tmp_path / "m.onnx", x, edges=True)
    with pytest.raises(ValueError, match=r"edges=True .* got a KAN of \['QuantizedBSplineKAN'\]"):
        to_onnx(quantize(KAN([3, 2]), table_bits=8, calib=x), tmp_path / "m.onnx", x, edges=True)
    with pytest.raises(TypeError, match=r"float32 models, got .*float64"):
        to_onnx(KAN([3, 2]).double(), tmp_path / "m.onnx", x)
    with pytest.raises(ValueError, match=r"opset must be an int in 18..21, got 17"):
        to_onnx(KAN([3, 2]), tmp_path / "m.onnx", x, opset=17)
    assert not list(tmp_path.iterdir())
