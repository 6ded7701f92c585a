"""Post-training quantization of models: outputs within the quantization error, real storage, BitOps, errors."""
import math

import pytest
import torch
from torch import nn

from kanlib import KAN, MLP
from kanlib.layers import BSplineKAN
from kanlib.quant.cost import FLOAT_BITS, bitops, model_size_bytes
from kanlib.ops.lut_linear import IntegerWeights, lut_linear
from kanlib.quant.ptq import QuantizedBSplineKAN, quantize
from kanlib.quant.table import BasisTable
from kanlib.quant.tensor import QuantSpec
from kanlib.activations import get_activation


def _layer(n_in, n_out, grid_size=5, spline_order=3, seed=0, dtype=torch.float32, **kwargs):
    torch.manual_seed(seed)
    layer = BSplineKAN(n_in, n_out, grid_size, spline_order, dtype=dtype, **kwargs)
    with torch.no_grad():
        layer.coef.normal_()
    return layer


def _inputs(n, n_in, seed=1, dtype=torch.float32):
    """Values inside and outside the grid range (-1, 1) and its extension."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, n_in, generator=g, dtype=torch.float64) * 4 - 2).to(dtype)


@pytest.mark.parametrize("bits", [8, 4, 3, 2])
@pytest.mark.parametrize("granularity", ["tensor", "channel", "edge"])
def test_weight_only_error_within_half_a_step(bits, granularity):
    layer = _layer(33, 17, grid_size=7)
    x = _inputs(130, 33)
    q = quantize(layer, bits=bits, calib=x, input_bits=None, granularity=granularity)
    with torch.no_grad():
        error = (q(x) - layer(x)).abs().double()
    # Bases are nonnegative and sum to at most 1, so the spline part moves by at most half a spline step per
    # input; the base part by |silu(x_i)| times half a base step.
    spline_step = q.spline_weight.scale.double().expand(33, 17, 1).amax(-1)  # [I, O]
    base_step = q.base_weight.scale.double().expand(33, 17)
    silu = get_activation("silu").function(x.double()).abs()
    bound = 0.5 * spline_step.sum(0) + 0.5 * silu @ base_step + 1e-5
    assert torch.all(error <= bound)
    assert error.max() > 0  # quantization did change the weights


@pytest.mark.parametrize("table_bits", [8, 3])
@pytest.mark.parametrize("uniform", [True, False])
def test_integer_table_path_matches_float_table_path(table_bits, uniform, monkeypatch):
    layer = _layer(33, 17, grid_size=5)
    if not uniform:
        layer.update_grid(torch.randn(256, 33) * 0.6)
    x = _inputs(130, 33)
    x[3, 5] = float("nan")
    q = quantize(layer, bits=8, table_bits=table_bits, calib=x, position_bits=6)
    assert q.integer and q.uniform == uniform
    with torch.no_grad():
        integer = q(x)
    monkeypatch.setattr(QuantizedBSplineKAN, "integer", property(lambda self: False))
    q._refresh()
    with torch.no_grad():
        floating = q(x)
    assert torch.isnan(integer[3]).all() and torch.isnan(floating[3]).all()
    keep = torch.ones(130, dtype=torch.bool)
    keep[3] = False
    assert not torch.isnan(integer[keep]).any()
    torch.testing.assert_close(integer[keep], floating[keep], rtol=1e-5, atol=1e-4)


def test_table_path_error_bounded_by_table_and_weights():
    layer = _layer(9, 5, grid_size=5)
    x = _inputs(200, 9)
    q = quantize(layer, bits=8, table_bits=8, position_bits=8, calib=x, input_bits=None)
    with torch.no_grad():
        error = (q(x) - layer(x)).abs()
    table = q.table
    # per basis: half a table step plus the largest cubic B-spline slope (3/4 per interval) over half a position
    basis_error = 0.75 * 0.5 / table.n_positions + table.scale / 2
    w = layer.spline_weight().detach().abs().amax(-1)  # [I, O]
    spline_step = q.spline_weight.scale.expand(9, 5, 1).amax(-1)
    base_step = q.base_weight.scale.expand(9, 5)
    silu = get_activation("silu").function(x).abs()
    bound = ((4 * basis_error * w + 0.5 * spline_step).sum(0) + 0.5 * silu @ base_step
             + q.act_scale / 2 * layer.base_weight().detach().abs().sum(0) + 1e-4)
    assert torch.all(error <= bound)


@pytest.mark.parametrize("backend", ["eager", "cpu"])
@pytest.mark.parametrize("n,n_in,n_out,grid_size,spline_order", [(1, 3, 1, 1, 1), (7, 33, 17, 5, 3), (130, 3, 17, 13, 2)])
def test_lut_linear_backends_agree(backend, n, n_in, n_out, grid_size, spline_order):
    layer = _layer(n_in, n_out, grid_size, spline_order)
    x = _inputs(n, n_in)
    q = quantize(layer, bits=8, table_bits=8, calib=x, input_bits=None)
    weights, table, act = q._integer_weights, q.table, float(q.act_scale)
    got = lut_linear(x, table, weights, act, backend=backend)
    # reference by hand: tabulated bases times dequantized weights, base codes times base weights
    local = table.local_basis(x.double())
    dense = local.to_dense(grid_size + spline_order)
    spline = torch.einsum("nij,ioj->no", dense, q.spline_weight.dequantize().double())
    codes = torch.round(get_activation("silu").function(x.double()) / act).clamp(-128, 127)
    base = (codes * act) @ q.base_weight.dequantize().double()
    torch.testing.assert_close(got.double(), spline + base, rtol=1e-5, atol=1e-5)


def test_real_low_bit_storage_and_size():
    model = KAN([64, 32, 10], grid_size=5, seed=0)
    x = _inputs(100, 64)
    float_bytes = model_size_bytes(model)
    q8, q4 = quantize(model, bits=8, calib=x), quantize(model, bits=4, calib=x)
    layer8, layer4 = q8.layers[0], q4.layers[0]
    assert layer8.spline_codes.dtype == torch.int8 and layer8.spline_codes.shape == (64, 32, 8)
    assert layer4.spline_codes.dtype == torch.uint8 and layer4.spline_codes.numel() == math.ceil(64 * 32 * 8 / 2)
    assert "grid" not in layer8.state_dict()  # a uniform grid is stored as first knot and step
    assert float_bytes / model_size_bytes(q8) >= 4
    assert float_bytes / model_size_bytes(q4) >= 7
    expected = sum(t.numel() * t.element_size() for t in q4.state_dict().values())
    assert model_size_bytes(q4) == expected


def test_state_dict_round_trip_and_device_move():
    model = KAN([5, 7, 2], grid_size=4, seed=0)
    x = _inputs(64, 5)
    q = quantize(model, bits=4, table_bits=3, calib=x)
    other = quantize(KAN([5, 7, 2], grid_size=4, seed=1), bits=4, table_bits=3, calib=x)
    other.load_state_dict(q.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(other(x), q(x), rtol=0, atol=0)
        moved = q.to(torch.float32)(x)
    torch.testing.assert_close(moved, other(x), rtol=0, atol=0)


def test_quantize_leaves_the_model_alone_and_keeps_the_rest():
    model = nn.Sequential(nn.Linear(3, 4), KAN([4, 6, 2], seed=0))
    x = _inputs(50, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = quantize(model, bits=8, calib=x)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(q[0], nn.Linear) and q[0] is not model[0]
    assert all(isinstance(layer, QuantizedBSplineKAN) for layer in q[1].layers)
    assert not q.training
    single = quantize(model[1].layers[0], bits=8, calib=torch.rand(10, 4))
    assert isinstance(single, QuantizedBSplineKAN)


def test_nan_rows_empty_batch_leading_dims_float64():
    layer = _layer(4, 3, dtype=torch.float64)
    x = _inputs(20, 4, dtype=torch.float64)
    for table_bits in (None, 4):
        q = quantize(layer, bits=8, table_bits=table_bits, calib=x)
        y = x.clone()
        y[2, 1] = float("nan")
        with torch.no_grad():
            out = q(y)
            assert out.dtype == torch.float64
            assert torch.isnan(out[2]).all() and not torch.isnan(out[torch.arange(20) != 2]).any()
            assert q(torch.empty(0, 4, dtype=torch.float64)).shape == (0, 3)
            assert q(x.view(4, 5, 4)).shape == (4, 5, 3)


def test_constant_weights_quantize_without_dividing_by_zero():
    layer = _layer(3, 2)
    with torch.no_grad():
        layer.coef.zero_()
        layer.scale_base.fill_(0.25)
    x = _inputs(30, 3)
    q = quantize(layer, bits=2, calib=x, granularity="channel", input_bits=None)
    with torch.no_grad():
        torch.testing.assert_close(q(x), layer(x))


def test_bitops_counting():
    layer = BSplineKAN(6, 5, grid_size=5, spline_order=3)
    k = 3
    per_input = 1 + 2 + k * (k + 1) + k * (k + 1) // 2
    expected_float = 6 * per_input * 32 * 32 + 6 * 5 * ((k + 1) * 32 * 32 + 32 * 32)
    assert bitops(layer) == expected_float
    x = _inputs(40, 6)
    q = quantize(layer, bits=4, table_bits=3, input_bits=8, calib=x)
    expected_table = 6 * (1 + 2) * 8 * 8 + 6 * 5 * ((k + 1) * 3 * 4 + 8 * 4)
    assert bitops(q) == expected_table
    assert bitops(MLP([6, 5])) == 6 * 5 * FLOAT_BITS ** 2
    with pytest.raises(ValueError, match="no nn.Linear or KAN layers"):
        bitops(nn.ReLU())


def test_bad_input():
    model = KAN([3, 2], seed=0)
    x = _inputs(10, 3)
    with pytest.raises(ValueError, match="bits must be an int in 2..8, got 9"):
        quantize(model, bits=9, calib=x)
    with pytest.raises(ValueError, match="bits must be an int in 2..8, got 1"):
        quantize(model, bits=8, base_bits=1, calib=x)
    with pytest.raises(ValueError, match="needs calibration data"):
        quantize(model, bits=8)
    with pytest.raises(ValueError, match="granularity must be one of"):
        quantize(model, bits=8, calib=x, granularity="row")
    with pytest.raises(ValueError, match="quantize found no kanlib B-spline layers.*a Sequential"):
        quantize(nn.Sequential(nn.Linear(3, 2)), bits=8, calib=x)
    with pytest.raises(ValueError, match="table_bits must be an int in 2..8"):
        quantize(model, bits=8, table_bits=1, calib=x)
    with pytest.raises(ValueError, match="'train_input'"):
        quantize(model, bits=8, calib={"x": x})
    with pytest.raises(ValueError, match="empty"):
        quantize(model, bits=8, calib=torch.empty(0, 3))
    q = quantize(model, bits=8, calib={"train_input": x})
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 3\)"):
        q(torch.zeros(2, 4))
    with pytest.raises(TypeError, match="floating-point"):
        q(torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="backend must be one of"):
        lut_linear(x, BasisTable(model.layers[0].grid, 3), IntegerWeights(
            torch.zeros(24, 2, dtype=torch.int8), torch.ones(2), torch.zeros(3, 2, dtype=torch.int8), torch.ones(2)),
            0.1, backend="gpu")


@pytest.mark.parametrize("table_bits,input_bits", [(None, 8), (4, 8), (4, None)])
def test_all_non_finite_calibration_data_says_it_has_no_finite_values(table_bits, input_bits):
    model = KAN([3, 2], seed=0)
    match = (r"calibration data has no finite values: all 12 element\(s\) of calib \(shape \(4, 3\)\) are NaN or "
             r"infinite \(8 NaN, 4 inf\); expected model inputs with finite values")
    calib = torch.tensor([float("nan"), float("nan"), float("inf")] * 4).reshape(4, 3)
    for data in (calib, {"train_input": calib}):
        with pytest.raises(ValueError, match=match):
            quantize(model, bits=8, table_bits=table_bits, input_bits=input_bits, calib=data)


def test_calibration_rows_that_all_hold_nan_or_inf_say_no_row_is_finite():
    nan, inf = float("nan"), float("inf")
    calib = torch.tensor([[nan, 1.0, 2.0], [3.0, -inf, 1.0]])
    match = (r"calibration samples have no finite row: each of the 2 row\(s\) of this layer's input holds a NaN "
             r"or infinite value; expected at least one row of 3 finite values")
    with pytest.raises(ValueError, match=match):
        quantize(KAN([3, 2], seed=0), bits=8, calib=calib)
    with pytest.raises(ValueError, match=match):
        QuantizedBSplineKAN(_layer(3, 2), QuantSpec(8), QuantSpec(8), QuantSpec(8), samples=calib)
    with pytest.raises(ValueError, match=match):
        QuantizedBSplineKAN(_layer(3, 2), QuantSpec(8), QuantSpec(8), samples=calib, table_bits=4)


def test_integer_product_with_a_strided_single_column():
    from kanlib.ops.lut_linear import int_matmul

    a = torch.randint(-128, 128, (3, 6), dtype=torch.int8)
    column = torch.randint(-128, 128, (3, 1, 2), dtype=torch.int8).permute(0, 2, 1).reshape(6, 1)
    assert column.stride() == (1, 2) and column.is_contiguous()
    torch.testing.assert_close(int_matmul(a, column).long(), a.long() @ column.long(), rtol=0, atol=0)


@pytest.mark.parametrize("table_bits", [None, 8, 3])
def test_triton_backend_matches_the_torch_backend(table_bits, monkeypatch):
    """Under the Triton interpreter on the CPU; on CUDA the same kernels run compiled."""
    pytest.importorskip("triton")
    from kanlib.ops.spline_linear import triton as spline_linear_triton
    device = "cuda" if torch.cuda.is_available() else "cpu"
    layer = _layer(7, 5, grid_size=5).to(device)
    x = _inputs(33, 7).to(device)
    x[4, 2] = float("nan")
    quantized = {backend: quantize(layer, bits=8, table_bits=table_bits, calib=x, backend=backend)
                 for backend in ("eager", "triton")}
    with torch.no_grad():
        got, expected = quantized["triton"](x), quantized["eager"](x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5, equal_nan=True)
    assert torch.isnan(got[4]).all()
    if x.device.type == "cpu":  # the triton layer really goes through a Triton kernel
        monkeypatch.setattr(spline_linear_triton, "INTERPRET", False)
        with pytest.raises(ValueError, match="needs CUDA tensors"):
            quantized["triton"](x)


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend must be one of"):
        quantize(_layer(3, 2), bits=8, calib=_inputs(10, 3), backend="cuda")


def test_quantize_keeps_the_scales_learned_by_qat():
    from kanlib import QATConfig, fit, symbolic_dataset

    data = symbolic_dataset("exp_sin_sq", n_train=200, n_test=100, seed=0)
    model = KAN([2, 3, 1], grid_size=4, seed=0)
    fit(model, data, steps=5, opt="adam", progress=False, seed=0, qat=QATConfig(bits=4, input_bits=8))
    first = model.layers[0]
    q = quantize(model, bits=4, input_bits=8, calib=data["train_input"])
    layer = q.layers[0]
    # a step trained below zero acts as its absolute value, in QAT and in the quantized model
    torch.testing.assert_close(layer.spline_weight.scale, first.spline_quant.scale.detach().abs())
    torch.testing.assert_close(layer.base_weight.scale, first.base_quant.scale.detach().abs())
    torch.testing.assert_close(layer.input_scale, first.input_quant.scale.detach().abs().reshape(()))
    # the quantized model computes what the QAT model computed in training
    with torch.no_grad():
        torch.testing.assert_close(q(data["test_input"]), model(data["test_input"]), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="trained with QAT specs"):
        quantize(model, bits=8, calib=data["train_input"])
