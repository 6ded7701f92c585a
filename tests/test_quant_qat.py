"""Quantization-aware training: FakeQuantize (forward, STE and LSQ gradients), QATBSplineKAN, prepare_qat, fit."""
import copy
import zlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kanlib
from kanlib.layers.bspline import BSplineKAN
from kanlib.quant import QuantizedTensor, QuantSpec, calibrate
from kanlib.quant.qat import (FakeQuantize, QATBSplineKAN, QATCallback, QATConfig, calibrate_inputs,
                              prepare_qat)
from kanlib.training import FitCallback

SCHEMES = ["symmetric", "affine"]
# (shape, axis_layout, granularities that apply to it)
LAYOUTS = [((3, 4, 7), "coef", ["tensor", "channel", "edge"]), ((5, 6), "weight", ["tensor", "channel"])]
CASES = [(shape, layout, g) for shape, layout, gs in LAYOUTS for g in gs]


def _generator(*key) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


def _float_kan(widths, seed=0, **kwargs) -> kanlib.KAN:
    return kanlib.KAN(widths, seed=seed, **kwargs)


def _quantizers(model):
    return [(name, m) for name, m in model.named_modules() if isinstance(m, FakeQuantize)]


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("shape,layout,granularity", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fake_quantize_equals_quantized_tensor_at_init(bits, scheme, shape, layout, granularity, dtype):
    x = (torch.randn(*shape, generator=_generator(bits, scheme, shape, granularity), dtype=torch.float64) * 2
         + 0.3).to(dtype)
    spec = QuantSpec(bits, scheme, granularity)
    fq = FakeQuantize(spec, layout)
    assert not fq.initialized
    y = fq(x)
    q = QuantizedTensor.quantize(x, spec, layout)
    assert fq.initialized and y.dtype == x.dtype
    assert torch.equal(y, q.dequantize())
    assert torch.equal(fq.scale.detach().reshape(q.scale.shape), q.scale)
    assert torch.equal(fq.zero_point.detach().reshape(q.scale.shape), q.zero_point)
    if granularity == "tensor":
        assert fq.scale.dim() == 0
    # the scale stays fixed after the first tensor: a wider one is clamped to the calibrated range
    wide = fq(3 * x)
    assert torch.equal(fq.scale.detach().reshape(q.scale.shape), q.scale)
    lo = (spec.qmin - q.zero_point) * q.scale
    hi = (spec.qmax - q.zero_point) * q.scale
    assert (wide >= lo - 1e-6).all() and (wide <= hi + 1e-6).all() and (wide == hi).any()


def test_explicit_initialize_and_symmetric_zero_point_is_zero():
    x = torch.randn(4, 3, 6, generator=_generator("init"))
    fq = FakeQuantize(QuantSpec(4, "symmetric", "channel"), "coef")
    fq.initialize(x)
    assert fq.scale.shape == (1, 3, 1) and torch.equal(fq.zero_point, torch.zeros(1, 3, 1))
    assert torch.equal(fq(x), QuantizedTensor.quantize(x, fq.spec).dequantize())
    with pytest.raises(ValueError, match="coef"):
        FakeQuantize(QuantSpec(4), "coef").initialize(torch.randn(3, 4))
    with pytest.raises(TypeError, match="QuantSpec"):
        FakeQuantize(4)


def test_ste_gradient_is_one_inside_the_code_range_and_zero_outside():
    fq = FakeQuantize(QuantSpec(3, "symmetric", "tensor"))  # codes -4..3
    x = torch.tensor([-3.0, -2.1, -1.3, 0.2, 1.4, 1.8, 5.0], requires_grad=True)
    fq.initialize(x)
    with torch.no_grad():
        fq.scale.fill_(0.5)  # representable [-2, 1.5]; codes round(x / 0.5) = -6, -4, -3, 0, 3, 4, 10
    y = fq(x)
    assert y.tolist() == [-2.0, -2.0, -1.5, 0.0, 1.5, 1.5, 1.5]
    upstream = torch.arange(1.0, 8.0)
    y.backward(upstream)
    assert x.grad.tolist() == [0.0, 2.0, 3.0, 4.0, 5.0, 0.0, 0.0]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_ste_gradient_on_random_data(scheme):
    x = torch.randn(6, 5, 4, generator=_generator("ste", scheme), dtype=torch.float64, requires_grad=True)
    fq = FakeQuantize(QuantSpec(3, scheme, "channel"), "coef")
    fq.initialize(x)
    with torch.no_grad():
        fq.scale.mul_(0.6)
    fq(x).backward(torch.ones_like(x))
    codes = torch.round(x.detach() / fq.scale.detach() + fq.zero_point.detach())
    inside = (codes >= fq.spec.qmin) & (codes <= fq.spec.qmax)
    assert inside.any() and (~inside).any()
    assert torch.equal(x.grad, inside.double())


def _lsq_reference(x, s, z, spec, upstream):
    """Closed-form LSQ (and LSQ+ zero point) gradients, float64, summed to the scale's shape."""
    x, s, z, upstream = (t.detach().double() for t in (x, s, z, upstream))
    u = x / s + z
    codes = torch.round(u)
    below, above = codes < spec.qmin, codes > spec.qmax
    d_scale = torch.where(below, spec.qmin - z, torch.where(above, spec.qmax - z, codes - u))
    d_zero = torch.where(below | above, -s, torch.zeros_like(u))
    n = x.numel() // s.numel()
    g = 1.0 / (n * spec.qmax) ** 0.5
    return (g * (upstream * d_scale).sum_to_size(s.shape), g * (upstream * d_zero).sum_to_size(s.shape),
            below.any() and above.any())


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
@pytest.mark.parametrize("bits", [3, 8])
def test_lsq_scale_gradient_matches_closed_form(scheme, granularity, bits):
    gen = _generator("lsq", scheme, granularity, bits)
    x = torch.randn(7, 5, 6, generator=gen, dtype=torch.float64)
    spec = QuantSpec(bits, scheme, granularity)
    fq = FakeQuantize(spec, "coef")
    fq.initialize(x)
    with torch.no_grad():
        fq.scale.mul_(0.5)  # some elements clamp at each end
    upstream = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    fq(x).backward(upstream)
    d_scale, d_zero, clamps_both_ends = _lsq_reference(x, fq.scale, fq.zero_point, spec, upstream)
    assert clamps_both_ends
    assert fq.scale.grad.shape == fq.scale.shape
    torch.testing.assert_close(fq.scale.grad, d_scale, rtol=1e-12, atol=1e-14)
    if scheme == "affine":
        torch.testing.assert_close(fq.zero_point.grad, d_zero, rtol=1e-12, atol=1e-14)
    else:
        assert not fq.zero_point.requires_grad and fq.zero_point.grad is None


def test_fixed_scales_are_buffers_without_gradient():
    x = torch.randn(4, 3, 5, generator=_generator("fixed"), requires_grad=True)
    for scheme in SCHEMES:
        fq = FakeQuantize(QuantSpec(4, scheme, "channel"), "coef", learn_scale=False)
        fq(x).sum().backward()
        assert list(fq.parameters()) == []
        assert set(dict(fq.named_buffers())) == {"scale", "zero_point"}
        assert not fq.scale.requires_grad and fq.scale.grad is None
        assert x.grad is not None
    layer = QATBSplineKAN.from_float(_float_kan([3, 2]).layers[0], QATConfig(learn_scale=False))
    assert {name for name, _ in layer.named_parameters()} == {"coef", "scale_base", "scale_sp"}


def test_negative_scale_acts_as_its_absolute_value():
    x = torch.randn(20, generator=_generator("neg"))
    outputs, grads = {}, {}
    for value in (0.1, -0.1):
        fq = FakeQuantize(QuantSpec(4))
        fq.initialize(x)
        with torch.no_grad():
            fq.scale.fill_(value)
        y = fq(x)
        (y - x).pow(2).sum().backward()
        outputs[value], grads[value] = y.detach(), fq.scale.grad.clone()
    torch.testing.assert_close(outputs[-0.1], outputs[0.1], rtol=0, atol=0)
    torch.testing.assert_close(grads[-0.1], -grads[0.1])  # d f(|s|) / ds = sign(s) f'(|s|)
    assert grads[0.1] != 0


def test_zero_scale_stays_finite_and_gets_a_gradient():
    x = torch.randn(20, generator=_generator("zero"))
    fq = FakeQuantize(QuantSpec(4))
    fq.initialize(x)
    with torch.no_grad():
        fq.scale.zero_()
    y = fq(x)
    assert torch.isfinite(y).all() and y.abs().max() < 1e-30
    (y - x).pow(2).sum().backward()
    assert torch.isfinite(fq.scale.grad) and fq.scale.grad < 0  # gradient descent raises the scale again


@pytest.mark.parametrize("scheme", SCHEMES)
def test_state_dict_loads_into_an_uninitialized_quantizer(scheme):
    x = torch.randn(3, 4, 5, generator=_generator("state", scheme))
    trained = FakeQuantize(QuantSpec(4, scheme, "edge"), "coef")
    trained.initialize(x)
    with torch.no_grad():
        trained.scale.mul_(1.3)
    fresh = FakeQuantize(QuantSpec(4, scheme, "edge"), "coef")
    assert fresh.scale.shape == (0,)
    fresh.load_state_dict(trained.state_dict())
    assert fresh.initialized and fresh.scale.shape == (3, 4, 1)
    assert torch.equal(fresh(x), trained(x))
    assert isinstance(fresh.scale, nn.Parameter)


def test_qat_model_state_dict_round_trip():
    data = kanlib.symbolic_dataset("exp_sin_sq", n_train=64, n_test=64)
    model = prepare_qat(_float_kan([2, 5, 1], seed=0), QATConfig(bits=4, scheme="affine"))
    calibrate_inputs(model, data["train_input"])
    other = prepare_qat(_float_kan([2, 5, 1], seed=1), QATConfig(bits=4, scheme="affine"))
    other.load_state_dict(model.state_dict())
    assert torch.equal(other(data["test_input"]), model(data["test_input"]))


def test_config_validation_and_specs():
    config = QATConfig(bits=4, base_bits=6, input_bits=None, scheme="affine", granularity="edge")
    assert config.weight_spec() == QuantSpec(4, "affine", "edge")
    assert config.base_spec() == QuantSpec(6, "affine", "channel")
    assert config.input_spec() is None
    assert QATConfig().input_spec() == QuantSpec(8, "symmetric", "tensor")
    assert QATConfig(bits=3).base_spec().bits == 3
    for kwargs, match in [({"bits": 9}, "bits"), ({"base_bits": 1}, "bits"), ({"input_bits": 9}, "bits"),
                          ({"scheme": "asym"}, "scheme"), ({"granularity": "row"}, "granularity")]:
        with pytest.raises(ValueError, match=match):
            QATConfig(**kwargs)
    with pytest.raises(TypeError, match="learn_scale"):
        QATConfig(learn_scale="yes")


def _silu_row_bound(layer: QATBSplineKAN, x: torch.Tensor) -> torch.Tensor:
    """max |y_qat - y_float| over outputs [N, O] with float inputs: each weight moves by at most half its step;
    the base row multiplies b(x_i) and the B-spline rows sum to at most 1 (partition of unity)."""
    base_step = layer.base_quant.scale.detach().reshape(1, -1)
    spline_step = layer.spline_quant.scale.detach().reshape(1, -1)
    return 0.5 * (F.silu(x).abs().sum(1, keepdim=True) * base_step + x.shape[1] * spline_step)


def test_from_float_at_8_bits_is_close_to_the_float_layer():
    float_layer = _float_kan([3, 4], seed=0).layers[0]
    qat = QATBSplineKAN.from_float(float_layer, QATConfig(bits=8, input_bits=None))
    x = torch.rand(200, 3, generator=_generator("close")) * 2 - 1
    with torch.no_grad():
        error = (qat(x) - float_layer(x)).abs()
        bound = _silu_row_bound(qat, x)
    assert error.max() > 0
    assert (error <= bound * (1 + 1e-4) + 1e-6).all()


def test_qat_layer_computes_the_float_layer_on_quantized_input_and_weights():
    config = QATConfig(bits=4, base_bits=5, input_bits=6, scheme="affine", granularity="edge")
    float_layer = _float_kan([3, 4], seed=2, bias=True).layers[0]
    with torch.no_grad():
        float_layer.bias.uniform_(-1, 1, generator=_generator("bias"))
        float_layer.mask[1, 2] = 0
    qat = QATBSplineKAN.from_float(float_layer, config)
    x = torch.rand(50, 3, generator=_generator("wiring")) * 2 - 1
    y = qat(x)
    reference = copy.deepcopy(float_layer)
    with torch.no_grad():
        reference.scale_base.copy_(QuantizedTensor.quantize(float_layer.base_weight(), config.base_spec()).dequantize())
        reference.coef.copy_(QuantizedTensor.quantize(float_layer.spline_weight(), config.weight_spec()).dequantize())
        reference.scale_sp.fill_(1.0)
        reference.mask.fill_(1.0)
        x_hat = QuantizedTensor.quantize(x, config.input_spec()).dequantize()
        expected = reference(x_hat)
    torch.testing.assert_close(y, expected, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(y, float_layer(x), atol=1e-3)


def test_from_float_shares_parameters_and_gradients_reach_everything():
    float_layer = _float_kan([3, 4], seed=1).layers[0]
    qat = QATBSplineKAN.from_float(float_layer, QATConfig(bits=6))
    for name, parameter in float_layer.named_parameters():
        assert getattr(qat, name) is parameter
    for name, buffer in float_layer.named_buffers():
        assert getattr(qat, name) is buffer
    x = torch.rand(64, 3, generator=_generator("shared")) * 2 - 1
    before = qat(x).detach()
    optimizer = torch.optim.SGD([float_layer.coef], lr=1.0)
    float_layer(x).pow(2).sum().backward()
    optimizer.step()
    assert not torch.equal(qat(x).detach(), before)

    qat.zero_grad()
    qat(x).pow(2).sum().backward()
    for tensor in (qat.coef, qat.scale_base, qat.scale_sp, qat.input_quant.scale, qat.base_quant.scale,
                   qat.spline_quant.scale):
        assert tensor.grad is not None and tensor.grad.abs().sum() > 0
    assert len(list(qat.parameters())) == 6


def test_inherited_methods_keep_working_and_grid_changes_recalibrate():
    layer = prepare_qat(_float_kan([2, 3], seed=0).layers[0], QATConfig(bits=4))
    x = torch.rand(100, 2, generator=_generator("grid")) * 1.6 - 0.8
    scale = layer.spline_quant.scale
    layer.update_grid(x)
    assert layer.spline_quant.scale is scale
    assert torch.equal(scale.detach(), calibrate(layer.spline_weight().detach(), layer.spline_quant.spec, "coef")[0])
    layer.refine(8)
    assert layer.coef.shape == (2, 3, 11)
    assert torch.equal(scale.detach(), calibrate(layer.spline_weight().detach(), layer.spline_quant.spec, "coef")[0])
    assert layer(x).shape == (100, 3) and layer.activations(x).shape == (100, 2, 3)
    assert layer.regularization_loss(x).isfinite()


def test_qat_layer_can_be_built_directly():
    model = kanlib.KAN([2, 3, 1], layer=QATBSplineKAN, seed=0, qat_config=QATConfig(bits=4, input_bits=None))
    assert all(layer.input_quant is None and layer.spline_quant.spec.bits == 4 for layer in model.layers)
    assert model(torch.zeros(5, 2)).shape == (5, 1)


def test_prepare_qat_replaces_every_layer_and_is_idempotent():
    model = _float_kan([2, 5, 1])
    floats = list(model.layers)
    x = torch.rand(30, 2, generator=_generator("prepare")) * 2 - 1
    assert prepare_qat(model, QATConfig()) is model
    assert all(type(layer) is QATBSplineKAN for layer in model.layers)
    assert all(new.coef is old.coef and new.grid is old.grid for new, old in zip(model.layers, floats))
    prepared = list(model.layers)
    y = model(x)
    assert prepare_qat(model, QATConfig(bits=3)) is model
    assert all(a is b for a, b in zip(model.layers, prepared))
    assert torch.equal(model(x), y)

    layer = floats[0]
    new = prepare_qat(layer, QATConfig())
    assert type(new) is QATBSplineKAN and prepare_qat(new, QATConfig()) is new

    shared = nn.Sequential(layer, nn.Tanh(), layer)
    prepare_qat(shared, QATConfig())
    assert isinstance(shared[0], QATBSplineKAN) and shared[0] is shared[2]


def test_prepare_qat_errors():
    with pytest.raises(ValueError, match="no kanlib B-spline layers.*Sequential"):
        prepare_qat(nn.Sequential(nn.Linear(2, 2)), QATConfig())
    with pytest.raises(TypeError, match="QATConfig"):
        prepare_qat(_float_kan([2, 1]), {"bits": 4})
    with pytest.raises(ValueError, match="prepare_qat"):
        calibrate_inputs(_float_kan([2, 1]), torch.zeros(3, 2))


def test_calibrate_inputs_uses_real_activations():
    model = prepare_qat(_float_kan([2, 5, 1]), QATConfig(input_bits=6))
    x = torch.rand(40, 2, generator=_generator("calibrate")) * 4 - 2
    assert not any(layer.input_quant.initialized for layer in model.layers)
    calibrate_inputs(model, x)
    assert model.training
    spec = model.layers[0].input_quant.spec
    first, second = model.layers
    with torch.no_grad():
        assert torch.equal(first.input_quant.scale, calibrate(x, spec)[0].reshape(()))
        assert torch.equal(second.input_quant.scale, calibrate(first(x), spec)[0].reshape(()))
        calibrate_inputs(model, x / 2)
        assert torch.equal(first.input_quant.scale, calibrate(x, spec)[0].reshape(()))
        calibrate_inputs(model, x / 2, recalibrate=True)
        assert torch.equal(first.input_quant.scale, calibrate(x / 2, spec)[0].reshape(()))


def test_fit_with_qat_trains_and_learns_the_scales():
    data = kanlib.symbolic_dataset("exp_sin_sq", n_train=200, n_test=200)
    model = _float_kan([2, 5, 1], seed=0)
    config = QATConfig(bits=3)
    reference = prepare_qat(copy.deepcopy(model), config)
    calibrate_inputs(reference, data["train_input"])
    history = kanlib.fit(model, data, steps=150, qat=config, seed=0, progress=False)
    assert all(isinstance(layer, QATBSplineKAN) for layer in model.layers)
    assert history.test_loss[-1] < 0.1 * history.test_loss[0]
    trained, initial = dict(_quantizers(model)), dict(_quantizers(reference))
    assert len(trained) == 6
    for name, quantizer in trained.items():
        assert not torch.allclose(quantizer.scale, initial[name].scale), name


def test_fit_with_fixed_scales_keeps_them():
    data = kanlib.symbolic_dataset("exp_sin_sq", n_train=100, n_test=100)
    model = prepare_qat(_float_kan([2, 3, 1], seed=0), QATConfig(bits=4, learn_scale=False))
    calibrate_inputs(model, data["train_input"])
    scales = {name: q.scale.clone() for name, q in _quantizers(model)}
    coef = model.layers[0].coef.detach().clone()
    kanlib.fit(model, data, steps=5, qat=QATConfig(bits=4, learn_scale=False), progress=False)
    assert all(torch.equal(q.scale, scales[name]) for name, q in _quantizers(model))
    assert not torch.equal(model.layers[0].coef, coef)


def test_fit_qat_argument_errors():
    data = kanlib.symbolic_dataset("exp_sin_sq", n_train=20, n_test=20)
    with pytest.raises(TypeError, match="QATConfig.*dict"):
        kanlib.fit(_float_kan([2, 1]), data, steps=1, qat={"bits": 4}, progress=False)
    with pytest.raises(ValueError, match="no kanlib B-spline layers"):
        kanlib.fit(nn.Sequential(nn.Linear(2, 1)), data, steps=1, qat=QATConfig(), progress=False)
    with pytest.raises(ValueError, match="prepare_qat"):
        kanlib.fit(BSplineKAN(2, 1), data, steps=1, qat=QATConfig(), progress=False)
    with pytest.raises(ValueError, match="bits"):
        QATConfig(bits=9)


def test_fit_qat_is_the_qat_callback():
    data = kanlib.symbolic_dataset("exp_sin_sq", n_train=100, n_test=100)
    model = _float_kan([2, 3, 1], seed=0)
    config = QATConfig(bits=4)
    runs = []
    for arguments in ({"qat": config}, {"callbacks": [QATCallback(config)]}):
        trained = copy.deepcopy(model)
        history = kanlib.fit(trained, data, steps=5, batch_size=32, seed=0, progress=False, **arguments)
        del history.seconds_per_step[:]
        runs.append((history, trained.state_dict()))
    (first, first_state), (second, second_state) = runs
    assert first == second
    assert first_state.keys() == second_state.keys()
    assert all(torch.equal(first_state[name], second_state[name]) for name in first_state)


def test_fit_runs_the_qat_callback_before_the_given_callbacks():
    data = kanlib.symbolic_dataset("exp_sin_sq", n_train=50, n_test=50)
    seen = []

    class Inspect(FitCallback):
        def on_fit_start(self, model, train_input):
            seen.extend((type(layer), layer.input_quant.initialized) for layer in model.layers)

    kanlib.fit(_float_kan([2, 3, 1]), data, steps=2, qat=QATConfig(bits=4), callbacks=[Inspect()],
               progress=False)
    assert seen == [(QATBSplineKAN, True), (QATBSplineKAN, True)]


def test_qat_callback_errors():
    with pytest.raises(TypeError, match=r"qat must be a kanlib.quant.QATConfig or None, got dict"):
        QATCallback({"bits": 4})
    callback = QATCallback(QATConfig())
    assert isinstance(callback, FitCallback)
    with pytest.raises(ValueError, match=r"fit\(qat=...\) found no kanlib B-spline layers"):
        callback.check_model(nn.Sequential(nn.Linear(2, 1)))
    with pytest.raises(ValueError, match="cannot swap a bare BSplineKAN"):
        callback.check_model(BSplineKAN(2, 1))
    callback.check_model(prepare_qat(BSplineKAN(2, 1), QATConfig()))


def test_table_config_validation():
    config = QATConfig(bits=8, table_bits=3, position_bits=6)
    assert config.activation_spec() == QuantSpec(8, "symmetric", "tensor")
    assert QATConfig().activation_spec() is None
    for kwargs, match in [({"table_bits": 1}, "table_bits must be an int in 2..8, got 1"),
                          ({"table_bits": 9}, "table_bits must be an int in 2..8, got 9"),
                          ({"table_bits": 3, "position_bits": 13}, "position_bits must be an int in 0..12, got 13")]:
        with pytest.raises(ValueError, match=match):
            QATConfig(**kwargs)
    with pytest.raises(TypeError, match="table_bits must be an int in 2..8, got 3.0"):
        QATConfig(table_bits=3.0)


def _table_layer(uniform: bool, seed: int = 0, **config) -> QATBSplineKAN:
    float_layer = _float_kan([3, 4], seed=seed, bias=True).layers[0]
    with torch.no_grad():
        float_layer.coef.normal_(generator=_generator("coef", seed))
        float_layer.bias.uniform_(-1, 1, generator=_generator("bias", seed))
        float_layer.mask[1, 2] = 0
    if not uniform:
        float_layer.update_grid(torch.randn(300, 3, generator=_generator("knots", seed)) * 0.6)
    return QATBSplineKAN.from_float(float_layer, QATConfig(**{"bits": 8, "table_bits": 3, **config}))


@pytest.mark.parametrize("uniform", [True, False])
def test_table_layer_uses_the_table_and_the_exact_basis_for_the_input_gradient(uniform):
    layer = _table_layer(uniform)
    assert layer.is_uniform() == uniform
    x = (torch.rand(90, 3, generator=_generator("table", uniform)) * 2.6 - 1.3).requires_grad_()  # beyond the grid
    out = layer(x)

    # forward: the table's basis, the fake-quantized input, activation and weights; grad of the weights exact
    x_hat = layer.input_quant(x.detach())
    local = layer.basis_table().local_basis(x_hat)
    expanded = kanlib.ops.spline_linear.reference.window_expanded_input(x_hat, local, "silu", 3 + 5 + 1)
    expanded[..., 0] = layer.activation_quant(F.silu(x_hat))
    weight = layer.weight_matrix()
    expected = expanded.view(90, -1) @ weight + layer.bias
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert (out - BSplineKAN.forward(layer, x)).abs().max() > 1e-3  # the table is not the exact basis
    grad_out = torch.randn(90, 4, generator=_generator("grad", uniform))
    names = ("coef", "scale_sp", "scale_base", "bias")
    got = torch.autograd.grad(out, [getattr(layer, n) for n in names], grad_out, retain_graph=True)
    want = torch.autograd.grad(expected, [getattr(layer, n) for n in names], grad_out)
    for name, g, w in zip(names, got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6, msg=name)

    # input: straight through, the gradient the same layer without a table has (no input or activation clamped)
    (grad_x,) = torch.autograd.grad(out, x, grad_out)
    exact = QATBSplineKAN.from_float(layer, QATConfig(bits=8))
    exact.input_quant.load_state_dict(layer.input_quant.state_dict())
    x_exact = x.detach().requires_grad_()
    (want_x,) = torch.autograd.grad(exact(x_exact), x_exact, grad_out)
    torch.testing.assert_close(grad_x, want_x, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("uniform", [True, False])
@pytest.mark.parametrize("granularity", ["channel", "edge"])
def test_quantize_computes_what_the_table_qat_layer_computed(uniform, granularity):
    layer = _table_layer(uniform, seed=1, granularity=granularity)
    x = torch.rand(120, 3, generator=_generator("ptq", uniform)) * 2.4 - 1.2
    with torch.no_grad():
        layer(x)  # calibrates the input and activation scales
        layer.activation_quant.scale.mul_(1.3)  # as training would move it
        expected = layer(x)
    quantized = kanlib.quantize(layer, bits=8, table_bits=3, calib=x, granularity=granularity)
    assert quantized.integer == (granularity == "channel")
    torch.testing.assert_close(quantized.act_scale, layer.activation_quant.scale.detach())
    torch.testing.assert_close(quantized(x), expected, rtol=1e-5, atol=1e-5)
    for kwargs in ({"table_bits": 8}, {"table_bits": None}, {"table_bits": 3, "position_bits": 6}):
        with pytest.raises(ValueError, match=r"lookup table with \(table_bits, position_bits\) = \(3, 8\)"):
            kanlib.quantize(layer, bits=8, calib=x, granularity=granularity, **kwargs)


def test_table_follows_grid_changes():
    layer = _table_layer(True)
    x = torch.rand(200, 3, generator=_generator("moving")) * 1.6 - 0.8
    first = layer.basis_table()
    assert layer.basis_table() is first
    layer.update_grid(x)
    second = layer.basis_table()
    assert second is not first and torch.equal(second.grid, layer.grid) and not second.uniform
    copied = copy.deepcopy(layer).double()
    assert copied.basis_table().grid.dtype == torch.float64
    with torch.no_grad():
        torch.testing.assert_close(copied(x.double()).float(), layer(x), rtol=1e-4, atol=1e-4)


def test_training_through_the_table_beats_training_without_it():
    """A 2-bit table on a symbolic formula: QAT through the table, then quantized with it, against QAT without
    the table quantized the same way (a fit to a smooth function feels the table's coarse basis)."""
    data = kanlib.symbolic_dataset("exp_sin_sq", n_train=500, n_test=500, seed=0)
    model = _float_kan([2, 5, 1], seed=0)
    kanlib.fit(model, data, steps=20, opt="lbfgs", seed=0, update_grid=False, first_layer_steps=0, progress=False)
    rmse = {}
    for table_bits in (None, 2):
        trained = copy.deepcopy(model)
        kanlib.fit(trained, data, steps=300, opt="adam", lr=3e-3, seed=0, progress=False,
                   qat=QATConfig(bits=8, table_bits=table_bits, position_bits=4))
        quantized = kanlib.quantize(trained, bits=8, table_bits=2, position_bits=4, calib=data["train_input"])
        with torch.no_grad():
            rmse[table_bits] = (quantized(data["test_input"]) - data["test_label"]).pow(2).mean().sqrt().item()
    assert rmse[2] < 0.85 * rmse[None], rmse
