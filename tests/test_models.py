"""KAN stacks, the MLP baseline, and parameter and FLOP counts."""
import pytest
import torch
from kan import MultKAN
from torch import nn

from kanlib import KAN, LAYERS, MLP, BSplineKAN, count_parameters, fit, forward_flops, mlp_with_parameter_count
from kanlib.activations import ACTIVATIONS, MLP_ACTIVATIONS
from kanlib.activations import BASE_ACTIVATIONS


@pytest.mark.parametrize("widths", [[1, 1], [2, 5, 1], (3, 4, 4, 2)])
@pytest.mark.parametrize("leading", [(), (7,), (2, 3)])
def test_kan_and_mlp_shapes(widths, leading):
    x = torch.randn(*leading, widths[0])
    for model in (KAN(widths), MLP(widths)):
        assert model(x).shape == (*leading, widths[-1])
        assert (model.in_features, model.out_features) == (widths[0], widths[-1])
    assert [(layer.in_features, layer.out_features) for layer in KAN(widths).layers] == list(zip(widths, widths[1:]))


def test_mlp_puts_the_activation_between_linear_layers_only():
    model = MLP([2, 16, 8, 1], activation="relu", bias=False)
    assert [type(m) for m in model.layers] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    assert all(m.bias is None for m in model.layers if isinstance(m, nn.Linear))
    x = torch.randn(5, 2)
    first, _, second, _, third = model.layers
    torch.testing.assert_close(model(x), third(second(first(x).relu()).relu()))


def test_seed_makes_the_initialisation_reproducible_and_leaves_the_global_rng_alone():
    x = torch.randn(9, 2)
    state = torch.random.get_rng_state()
    first, again, other = KAN([2, 5, 1], seed=3), KAN([2, 5, 1], seed=3), KAN([2, 5, 1], seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)
    for name, value in first.state_dict().items():
        assert torch.equal(value, again.state_dict()[name]), name
    torch.testing.assert_close(first(x), again(x), rtol=0, atol=0)
    assert not torch.equal(first.layers[0].coef, other.layers[0].coef)
    assert not torch.allclose(first(x), other(x))
    KAN([2, 5, 1])
    assert not torch.equal(torch.random.get_rng_state(), state), "without a seed, init draws from the global RNG"


def test_layer_by_name_is_the_layer_by_class():
    assert LAYERS["bspline"] is BSplineKAN
    by_name, by_class = KAN([3, 2], layer="bspline", seed=0), KAN([3, 2], layer=BSplineKAN, seed=0)
    assert type(by_name.layers[0]) is BSplineKAN
    for name, value in by_name.state_dict().items():
        assert torch.equal(value, by_class.state_dict()[name]), name


def test_layer_kwargs_reach_every_layer():
    model = KAN([2, 3, 4, 1], grid_size=7, spline_order=2, bias=True, dtype=torch.float64)
    for layer in model.layers:
        assert (layer.grid_size, layer.spline_order, layer.coef.dtype) == (7, 2, torch.float64)
        assert layer.bias is not None
    assert model(torch.randn(4, 2, dtype=torch.float64)).dtype == torch.float64
    assert [type(layer) for layer in KAN([2, 3, 1], layer=nn.Linear, bias=False).layers] == [nn.Linear] * 2


def test_update_grid_matches_pykan_for_the_whole_model():
    ref = MultKAN(width=[2, 3, 1], grid=5, k=3, seed=0, auto_save=False, symbolic_enabled=False)
    model = KAN([2, 3, 1])
    for index, pykan_layer in enumerate(ref.act_fun):
        with torch.no_grad():
            pykan_layer.coef.normal_()
        model.layers[index] = BSplineKAN.from_pykan(pykan_layer)
    samples = torch.rand(300, 2) * 2 - 1
    before = model(samples)
    torch.testing.assert_close(before, ref(samples), rtol=1e-5, atol=1e-5)
    ref.update_grid_from_samples(samples)
    model.update_grid(samples)
    for layer, pykan_layer in zip(model.layers, ref.act_fun):
        assert not layer.is_uniform()
        torch.testing.assert_close(layer.grid, pykan_layer.grid, rtol=1e-6, atol=1e-6)
    after = model(samples)
    torch.testing.assert_close(after, ref(samples), rtol=1e-5, atol=1e-5)
    assert (after - before).pow(2).mean().sqrt() / before.pow(2).mean().sqrt() < 0.05


def test_update_grid_fits_each_layer_to_the_outputs_of_the_updated_layers_before_it():
    model = KAN([2, 3, 1], seed=1, grid_eps=1.0, dtype=torch.float64)
    samples = torch.rand(300, 2, dtype=torch.float64) * 2 - 1
    old_hidden = model.layers[0](samples)
    model.update_grid(samples)
    k = 3
    for layer, inputs in zip(model.layers, (samples, model.layers[0](samples))):
        knots = layer.grid[:, k:-k]  # with grid_eps=1 the knots are uniform from the samples' min to max
        torch.testing.assert_close(knots[:, 0], inputs.min(0).values, rtol=0, atol=1e-12)
        torch.testing.assert_close(knots[:, -1], inputs.max(0).values, rtol=0, atol=1e-12)
    hidden_knots = model.layers[1].grid[:, k:-k]
    assert (hidden_knots[:, 0] - old_hidden.min(0).values).abs().max() > 1e-9, "fitted to the stale outputs"


def test_refine_sets_every_layer_grid_size():
    model = KAN([2, 3, 1], grid_size=5)
    x = torch.rand(200, 2) * 2 - 1
    before = model(x)
    model.refine(10)
    assert [layer.grid_size for layer in model.layers] == [10, 10]
    assert [layer.coef.shape[-1] for layer in model.layers] == [13, 13]
    assert (model(x) - before).abs().max() / before.abs().max() < 1e-3


@pytest.mark.parametrize("method,args", [("update_grid", (torch.randn(10, 2),)), ("refine", (8,)),
                                         ("regularization_loss", (torch.randn(10, 2),))])
def test_grid_methods_name_the_layer_that_lacks_them(method, args):
    model = KAN([2, 3, 1], layer=nn.Linear)
    with pytest.raises(TypeError, match=f"{method}.*layer 0 \\(Linear\\)"):
        getattr(model, method)(*args)


def test_regularization_loss_is_the_sum_over_layers_of_their_inputs_penalties():
    model = KAN([2, 3, 2, 1], seed=0)
    x = torch.randn(20, 2)
    weights = {"l1": 0.5, "entropy": 0.1, "coef": 0.2, "coefdiff": 0.3}
    loss = model.regularization_loss(x, **weights)
    expected = sum(layer.regularization_loss(inp, **weights) for layer, inp in zip(model.layers,
                                                                                    model.layer_inputs(x)))
    torch.testing.assert_close(loss, expected)
    assert not torch.allclose(loss, model.regularization_loss(x))
    loss.backward()
    assert all(layer.coef.grad.abs().sum() > 0 for layer in model.layers)


def _xor_like_data(seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(96, 2, generator=generator) * 2 - 1
    y = (x[:, :1] * x[:, 1:]).exp()
    return {"train_input": x[:64], "train_label": y[:64], "test_input": x[64:], "test_label": y[64:]}


@pytest.mark.parametrize("options", [{"opt": "LBFGS", "steps": 3, "lamb": 1e-3}, {"epochs": 2, "batch_size": 16}])
def test_model_fit_trains_as_kanlib_fit(options):
    data = _xor_like_data()
    by_method, by_function = KAN([2, 3, 1], seed=0), KAN([2, 3, 1], seed=0)
    history = by_method.fit(data, seed=1, progress=False, **options)
    expected = fit(by_function, data, seed=1, progress=False, **options)
    assert history.train_loss == expected.train_loss and history.train_loss[-1] < history.train_loss[0]
    for got, want in zip(by_method.state_dict().values(), by_function.state_dict().values()):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(by_method._last_input, data["train_input"], rtol=0, atol=0)


@pytest.mark.parametrize("name,words", [
    ("batch", "pykan's 'batch' is kanlib's batch_size"),
    ("loss_fn", "pykan's 'loss_fn' is kanlib's loss"),
    ("grid_update_num", "pykan's 'grid_update_num' is kanlib's stop_grid_update_step with update_grid_every"),
    ("learning_rate", "kanlib.fit takes amp, batch_size, .*update_grid_every"),
])
def test_model_fit_names_kanlibs_option_for_a_pykan_or_unknown_one(name, words):
    model = KAN([2, 3, 1], seed=0)
    before = [t.clone() for t in model.state_dict().values()]
    with pytest.raises(TypeError, match=f"KAN.fit got an unexpected option '{name}': {words}"):
        model.fit(_xor_like_data(), steps=1, **{name: 1})
    assert all(torch.equal(a, b) for a, b in zip(before, model.state_dict().values()))


def test_count_parameters_of_a_kan_and_an_mlp():
    # A BSplineKAN layer trains coef I*O*(G+k), scale_base I*O and scale_sp I*O; G=5, k=3.
    assert count_parameters(KAN([2, 3, 1])) == (2 * 3 * 8 + 2 * 2 * 3) + (3 * 1 * 8 + 2 * 3 * 1)
    assert count_parameters(KAN([2, 3, 1], bias=True)) == 90 + 3 + 1
    assert count_parameters(KAN([2, 3, 1], grid_size=10, spline_order=2)) == (2 * 3 * 14) + (3 * 1 * 14)
    frozen = KAN([2, 3, 1])
    frozen.layers[0].scale_base.requires_grad_(False)
    assert count_parameters(frozen) == 90 - 2 * 3
    assert count_parameters(MLP([2, 16, 16, 1])) == (2 * 16 + 16) + (16 * 16 + 16) + (16 * 1 + 1)
    assert count_parameters(MLP([2, 16, 16, 1], bias=False)) == 2 * 16 + 16 * 16 + 16 * 1


def test_forward_flops_of_an_mlp():
    linear = 2 * (2 * 16 + 16 * 16 + 16 * 1) + (16 + 16 + 1)
    assert forward_flops(MLP([2, 16, 16, 1]), batch_size=8) == 8 * (linear + 4 * (16 + 16))
    assert forward_flops(MLP([2, 16, 16, 1], activation="relu")) == linear + 1 * (16 + 16)
    assert forward_flops(MLP([2, 16, 1], bias=False)) == 2 * (2 * 16 + 16 * 1) + 4 * 16
    sequential = nn.Sequential(nn.Linear(2, 16), nn.Dropout(0.1), nn.Tanh(), nn.Linear(16, 1))
    assert forward_flops(sequential) == 2 * (2 * 16 + 16) + 17 + 4 * 16


def test_forward_flops_of_a_kan():
    def layer_flops(n_in, n_out, grid_size, k, activation_flops=4, bias=0):
        return 2 * n_in * (grid_size + k + 1) * n_out + n_in * ((k + 1) ** 2 + 10 + activation_flops) + bias

    assert forward_flops(KAN([2, 3, 1]), batch_size=5) == 5 * (layer_flops(2, 3, 5, 3) + layer_flops(3, 1, 5, 3))
    model = KAN([4, 2], grid_size=10, spline_order=2, base_activation="identity", bias=True)
    assert forward_flops(model) == layer_flops(4, 2, 10, 2, activation_flops=0, bias=2)
    nested = nn.Sequential(KAN([2, 3]), nn.SiLU(), MLP([3, 4, 1]))
    assert forward_flops(nested) == layer_flops(2, 3, 5, 3) + 4 * 3 + forward_flops(MLP([3, 4, 1]))


def test_forward_flops_of_an_edge_sparse_kan_counts_its_live_edges():
    model = KAN([4, 3, 2], grid_size=6, spline_order=2, bias=True, seed=0)
    with torch.no_grad():
        model.layers[0].mask[:, 1:] = 0  # 4 of 12 edges live
        model.layers[1].mask[0, 0] = 0  # 5 of 6
    sparse = model.to_sparse()
    per_input = (2 + 1) ** 2 + 10 + 4
    assert forward_flops(sparse, batch_size=3) == 3 * (2 * 4 * (2 + 2) + 4 * per_input + 3
                                                       + 2 * 5 * (2 + 2) + 3 * per_input + 2)
    assert forward_flops(sparse) < forward_flops(model)


def test_every_activation_has_a_flop_estimate():
    assert all(isinstance(ACTIVATIONS[name].flops, int) for name in (*MLP_ACTIVATIONS, *BASE_ACTIVATIONS))


@pytest.mark.parametrize("model,words", [
    (nn.Sequential(nn.Linear(2, 3), nn.LayerNorm(3)), "LayerNorm"),
    (nn.Conv1d(2, 3, 1), "Conv1d"),
    (nn.SiLU(), "SiLU outside an nn.Sequential"),
    (nn.Sequential(nn.GELU(), nn.Linear(2, 3)), "GELU"),
    (nn.Sequential(nn.Linear(2, 3), nn.Sequential(nn.Linear(3, 5)), nn.ReLU()), "ReLU"),
])
def test_forward_flops_refuses_what_it_cannot_count(model, words):
    with pytest.raises(ValueError, match=words):
        forward_flops(model)


def mlp_parameters(widths):
    return sum(n_in * n_out + n_out for n_in, n_out in zip(widths, widths[1:]))


@pytest.mark.parametrize("n_in,n_out,n_params,depth", [(2, 1, 90, 2), (2, 1, 1000, 2), (17, 3, 5000, 1),
                                                       (4, 2, 3000, 3), (1, 1, 59, 2)])
def test_mlp_with_parameter_count_is_the_closest_width(n_in, n_out, n_params, depth):
    model = mlp_with_parameter_count(n_in, n_out, n_params, depth=depth, activation="tanh")
    hidden = model.widths[1]
    assert model.widths == [n_in, *[hidden] * depth, n_out] and model.activation == "tanh"
    assert count_parameters(model) == mlp_parameters(model.widths)
    distance = lambda h: abs(mlp_parameters([n_in, *[h] * depth, n_out]) - n_params)
    assert distance(hidden) == min(distance(h) for h in range(1, n_params + 1))
    one_unit = mlp_parameters([n_in, *[hidden + 1] * depth, n_out]) - mlp_parameters(model.widths)
    assert distance(hidden) <= one_unit / 2


def test_mlp_with_parameter_count_below_the_smallest_mlp_has_width_one():
    assert mlp_with_parameter_count(5, 5, 1, depth=2).widths == [5, 1, 1, 5]


@pytest.mark.parametrize("widths", [[3], [], [2, 0], [2, 2.5], [True, 2], "25", 5, None])
def test_bad_widths_are_named(widths):
    for model_type in (KAN, MLP):
        with pytest.raises((ValueError, TypeError), match="widths"):
            model_type(widths)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match=r"activation must be one of \['gelu', 'relu', 'silu', 'tanh'\], got 'swish'"):
        MLP([2, 3], activation="swish")
    with pytest.raises(ValueError,
                       match=r"layer must be one of \['bspline', 'chebyshev', 'rbf', 'relu', 'rswaf'\].*got 'fourier'"):
        KAN([2, 3], layer="fourier")
    with pytest.raises(TypeError, match="layer must be a name"):
        KAN([2, 3], layer=BSplineKAN(2, 3))
    with pytest.raises(TypeError, match="seed must be an int"):
        KAN([2, 3], seed=1.5)
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        forward_flops(MLP([2, 3]), batch_size=0)
    with pytest.raises(ValueError, match="n_params must be a positive int"):
        mlp_with_parameter_count(2, 1, 0)
    with pytest.raises(ValueError, match="activation must be one of"):
        mlp_with_parameter_count(2, 1, 100, activation="swish")


def test_kan_update_grid_is_all_or_nothing():
    """A sample the first layer can take but whose image a later layer cannot leaves every layer as it was."""
    model = KAN([2, 3, 1], grid_size=5, seed=0)
    state = {name: t.clone() for name, t in model.state_dict().items()}
    x = torch.rand(30, 2) - 0.5
    x[3, 1] = 3e38
    with pytest.raises(ValueError, match=r"KAN.update_grid: layer \d .*no layer was changed"):
        model.update_grid(x)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, state[name], rtol=0, atol=0)
    model.update_grid(torch.rand(30, 2) - 0.5)  # and it still works afterwards


@pytest.mark.parametrize("model_type", ["ConvKAN", "CNNWithKANHead"])
@pytest.mark.parametrize("layer", ["bspline", "rbf"])
def test_image_models_classify_and_train(model_type, layer):
    import kanlib

    model = getattr(kanlib, model_type)(1, 10, channels=(4, 6), layer=layer, seed=0)
    x = torch.rand(5, 1, 8, 8)
    assert model(x).shape == (5, 10)
    again = getattr(kanlib, model_type)(1, 10, channels=(4, 6), layer=layer, seed=0)
    torch.testing.assert_close(again(x), model(x))
    loss = torch.nn.functional.cross_entropy(model(x), torch.arange(5))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_image_models_name_bad_settings():
    import kanlib

    with pytest.raises(ValueError, match=r"channels must be a non-empty sequence of positive ints, got \(\)"):
        kanlib.ConvKAN(1, 10, channels=())
    with pytest.raises(ValueError, match="n_classes must be a positive int, got 0"):
        kanlib.CNNWithKANHead(1, 0)


def test_forward_flops_of_the_other_families():
    from kanlib import KANConv2d, RBFKAN
    from kanlib.models import BASIS_FLOPS, LAYERNORM_FLOPS

    layer = RBFKAN(5, 3, grid_size=7)  # layer norm, SiLU base branch and bias by default
    expected = (2 * 5 * 7 * 3 + 5 * 7 * BASIS_FLOPS["rbf"] + 2 * 5 * 3 + 5 * ACTIVATIONS["silu"].flops
                + LAYERNORM_FLOPS * 5 + 3)
    assert forward_flops(layer, batch_size=2) == 2 * expected
    cheby = KAN([4, 2], layer="chebyshev", degree=3)
    assert forward_flops(cheby) == 2 * 4 * 4 * 2 + 4 * 4 * BASIS_FLOPS["chebyshev"]
    with pytest.raises(ValueError, match="without the image size; a KANConv2d"):
        forward_flops(KANConv2d(1, 2, 3))


@pytest.mark.parametrize("build", ["bspline", "bspline_bias", "chebyshev", "edge_sparse"])
def test_a_model_on_the_meta_device_runs_forward_and_backward_for_its_shapes(build):
    """Tensors without values (shape inference, building large models before allocating them): the layers take
    the plain formula, as under a transform, instead of reading the grid's uniformity."""
    if build == "edge_sparse":
        model = KAN([3, 4, 2], seed=0)
        model.remove_edge(0, 1, 2)
        model = model.to_sparse().to("meta")
    else:
        with torch.device("meta"):
            model = KAN([3, 4, 2], **{"bspline": {}, "bspline_bias": {"bias": True},
                                      "chebyshev": {"layer": "chebyshev"}}[build])
    x = torch.empty(5, 3, device="meta", requires_grad=True)
    out = model(x)
    out.sum().backward()
    assert out.shape == (5, 2) and out.is_meta and x.grad.shape == (5, 3)
