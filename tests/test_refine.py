"""Grid refinement with pykan's semantics: the new grid from the samples the model last saw, the function kept
by least squares on them, compared with pykan's own refine."""
import copy

import pytest
import torch

from kanlib import KAN, fit
from kanlib.layers.bspline import BSplineKAN


def trained_kan(widths=(2, 3, 1), grid_size=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(300, widths[0], generator=generator) * 2 - 1
    y = torch.sin(2 * x.sum(-1, keepdim=True))
    data = {"train_input": x, "train_label": y, "test_input": x[:50], "test_label": y[:50]}
    model = KAN(list(widths), grid_size=grid_size, seed=seed)
    # A joint fit: after first-layer steps the hidden values leave the last grid update's range, and a
    # refined spline cannot follow the old one's edge there as closely as these bounds ask.
    fit(model, data, steps=5, opt="lbfgs", first_layer_steps=0, progress=False)
    return model, x


@pytest.mark.parametrize("new_size,bound", [(7, 0.03), (10, 0.01), (20, 0.005)])
def test_refine_keeps_the_function_on_the_samples_and_returns_the_model(new_size, bound):
    model, x = trained_kan()
    before = model(x)
    assert model.refine(new_size) is model
    assert [layer.grid_size for layer in model.layers] == [new_size, new_size]
    change = (model(x) - before).abs().max() / before.abs().max()
    assert change < bound, change


def test_refine_puts_each_layers_grid_on_the_inputs_it_sees():
    model, x = trained_kan()
    inputs = model.layer_inputs(x)
    model.refine(9)
    for layer, layer_input in zip(model.layers, inputs):
        k = layer.spline_order
        knots = layer.grid[:, k:layer.grid.shape[1] - k]
        torch.testing.assert_close(knots[:, 0], layer_input.min(0).values)
        torch.testing.assert_close(knots[:, -1], layer_input.max(0).values)


def test_refine_uses_the_last_input_or_the_given_samples():
    model, x = trained_kan()
    other = x[:120] * 0.5
    refined_given = KAN.refine(trained_kan()[0], 8, x=other)
    model(other)  # the last input is now `other`
    model.refine(8)
    for ours, theirs in zip(model.layers, refined_given.layers):
        torch.testing.assert_close(ours.grid, theirs.grid)
        torch.testing.assert_close(ours.coef, theirs.coef)


def test_refine_after_fit_uses_the_training_input():
    model, x = trained_kan()
    assert torch.equal(model.samples(None, "refine"), x)


@pytest.mark.parametrize("grid_size,error,message", [
    (0, ValueError, r"grid_size must be an int >= 1, got 0"),
    (2.5, TypeError, r"grid_size must be an int >= 1, got 2.5 \(float\)"),
    (True, TypeError, r"grid_size must be an int >= 1, got True \(bool\)"),
])
def test_bad_grid_size_is_refused_and_nothing_changes(grid_size, error, message):
    model, x = trained_kan()
    state = {name: t.clone() for name, t in model.state_dict().items()}
    with pytest.raises(error, match=message):
        model.refine(grid_size)
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name])


def test_refine_without_samples_says_what_it_needs():
    with pytest.raises(ValueError, match=r"KAN.refine needs samples: pass x=\[N, 2\] or call model\(x\) first"):
        KAN([2, 1], seed=0).refine(5)


def test_update_grid_reads_the_last_forward_calls_input_as_refine_does():
    model, x = trained_kan()
    twin = copy.deepcopy(model)
    model(x)
    model.update_grid()
    twin.update_grid(x)
    for (name, value), other in zip(model.state_dict().items(), twin.state_dict().values()):
        assert torch.equal(value, other), name
    with pytest.raises(ValueError, match=r"KAN.update_grid needs samples: pass x=\[N, 2\] or call model\(x\) first"):
        KAN([2, 1], seed=0).update_grid()


def test_a_failing_layer_leaves_every_layer_unchanged():
    model, x = trained_kan()
    state = {name: t.clone() for name, t in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"KAN.refine: layer 0 .*at least 2 samples, got 1; no layer was changed"):
        model.refine(6, x=x[:1])
    assert {name: t.shape for name, t in model.state_dict().items()} == {n: t.shape for n, t in state.items()}
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name])


def test_refine_replaces_the_coefficient_parameter_and_it_trains():
    model, x = trained_kan()
    old = model.layers[0].coef
    model.refine(8)
    assert model.layers[0].coef is not old and model.layers[0].coef.shape == (2, 3, 11)
    model(x).sum().backward()
    assert model.layers[0].coef.grad is not None


def test_layer_refine_with_samples_keeps_the_function_there_at_odd_sizes():
    torch.manual_seed(1)
    layer = BSplineKAN(3, 5, grid_size=5)
    with torch.no_grad():
        layer.coef.normal_()
    x = torch.rand(400, 3) * 1.6 - 0.7
    before = layer(x)
    layer.refine(15, x)
    assert layer.grid_size == 15 and layer.coef.shape == (3, 5, 18)
    assert (layer(x) - before).abs().max() / before.abs().max() < 0.05


def test_kanlib_refine_keeps_the_function_at_least_as_well_as_pykans():
    kan = pytest.importorskip("kan")
    theirs = kan.MultKAN(width=[2, 3, 1], grid=3, k=3, seed=2, auto_save=False)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for layer in theirs.act_fun:
            layer.coef.normal_(generator=generator)
    x = torch.rand(500, 2, generator=generator) * 2 - 1
    ours = KAN.from_pykan(theirs)
    theirs.update_grid(x)
    ours.update_grid(x)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-4)
    before = ours(x).detach()
    theirs(x)
    refined = theirs.refine(10)
    ours.refine(10, x=x)
    their_change = (refined(x) - before).abs().max().item()
    our_change = (ours(x) - before).abs().max().item()
    assert our_change <= their_change + 1e-5, (our_change, their_change)
