"""Whole-model conversion from and to pykan's MultKAN, and the sparsity penalty, attribution scores and pruning
against pykan 0.2.8 (``reg``, ``attribute``, ``prune_node``, ``prune_edge``) on converted models, in float64."""
import random

import numpy as np
import pytest
import torch

kan = pytest.importorskip("kan")

from kanlib import KAN  # noqa: E402

WIDTHS = [[3, 5, 2], [2, 4, 3, 1]]


def pykan_model(width, seed, grid=4, k=3, dtype=torch.float64):
    """A MultKAN with a sample-fitted (non-uniform) grid and perturbed coefficients."""
    with torch.random.fork_rng():  # MultKAN reseeds the global RNG
        model = kan.MultKAN(width=list(width), grid=grid, k=k, seed=seed, auto_save=False)
    if dtype == torch.float64:
        model.double()  # not .to(dtype): MultKAN.to takes a device
    generator = torch.Generator().manual_seed(seed)
    model.update_grid_from_samples(torch.randn(64, width[0], generator=generator, dtype=dtype))
    with torch.no_grad():
        for layer in model.act_fun:
            layer.coef.add_(0.5 * torch.randn(layer.coef.shape, generator=generator, dtype=dtype))
            layer.scale_sp.mul_(1 + torch.rand(layer.scale_sp.shape, generator=generator, dtype=dtype))
    return model


def samples(n_in, seed, n=80, dtype=torch.float64):
    """Inputs inside the first layer's grid and well beyond it on both sides."""
    return 3 * torch.randn(n, n_in, generator=torch.Generator().manual_seed(seed + 100), dtype=dtype)


@pytest.mark.parametrize("width", WIDTHS)
def test_from_pykan_computes_what_pykan_computes(width):
    reference = pykan_model(width, seed=1)
    model = KAN.from_pykan(reference)
    x = samples(width[0], 1)
    assert model.widths == width and all(layer.bias is None for layer in model.layers)
    torch.testing.assert_close(model(x), reference(x), rtol=1e-12, atol=1e-12)


def test_node_and_subnode_biases_become_the_layer_bias():
    reference = pykan_model([3, 5, 2], seed=2)
    with torch.no_grad():
        for values in (*reference.node_bias, *reference.subnode_bias):
            values.copy_(torch.randn(values.shape, dtype=values.dtype))
    model = KAN.from_pykan(reference)
    x = samples(3, 2)
    torch.testing.assert_close(model(x), reference(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model.layers[1].bias, reference.node_bias[1] + reference.subnode_bias[1])


def test_a_nonzero_pykan_bias_in_one_layer_gives_every_layer_a_bias():
    """The other layers' biases are pykan's zeros, so that KAN(widths, bias=True) takes the state dict."""
    reference = pykan_model([3, 5, 2], seed=4)
    with torch.no_grad():
        reference.node_bias[1].copy_(torch.randn(reference.node_bias[1].shape, dtype=reference.node_bias[1].dtype))
    model = KAN.from_pykan(reference)
    assert not model.layers[0].bias.any() and model.layers[1].bias.any()
    fresh = KAN([3, 5, 2], grid_size=4, bias=True, dtype=torch.float64)
    fresh.load_state_dict(model.state_dict())
    x = samples(3, 4)
    torch.testing.assert_close(fresh(x), reference(x), rtol=1e-12, atol=1e-12)


def test_to_pykan_computes_the_same_and_converts_back():
    model = KAN([3, 4, 2], seed=3, grid_size=6, bias=True, dtype=torch.float64)
    with torch.no_grad():
        for layer in model.layers:
            layer.bias.normal_()
    reference = model.to_pykan()
    x = samples(3, 3)
    torch.testing.assert_close(reference(x), model(x), rtol=1e-12, atol=1e-12)
    back = KAN.from_pykan(reference)
    for ours, theirs in zip(model.layers, back.layers):
        for name in ("grid", "coef", "scale_base", "scale_sp", "mask", "bias"):
            assert torch.equal(getattr(ours, name), getattr(theirs, name)), name


def test_to_pykan_leaves_the_global_random_states_as_they_were():
    model = KAN([2, 3, 1], seed=0)
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    expected = (torch.rand(2).tolist(), np.random.rand(), random.random())
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    model.to_pykan()
    assert (torch.rand(2).tolist(), np.random.rand(), random.random()) == expected


def test_from_pykan_refuses_what_it_cannot_convert():
    with torch.random.fork_rng():
        multiply = kan.MultKAN(width=[2, [1, 1], 1], grid=3, k=3, auto_save=False)
    with pytest.raises(ValueError, match=r"sum nodes only; layers \[1\]"):
        KAN.from_pykan(multiply)
    for name in ("node_scale", "subnode_scale"):
        reference = pykan_model([2, 3, 1], seed=4)
        with torch.no_grad():
            getattr(reference, name)[0][1] = 2.0
        with pytest.raises(ValueError, match=f"{name} = 1.*layer 0"):
            KAN.from_pykan(reference)
    reference = pykan_model([2, 3, 1], seed=4)
    reference.fix_symbolic(1, 2, 0, "sin", fit_params_bool=False, verbose=False, log_history=False)
    with pytest.raises(ValueError, match=r"symbolic.*layer 1.*\[\[0, 2\]\]"):
        KAN.from_pykan(reference)
    reference = pykan_model([2, 3, 1], seed=4)
    reference.input_id = torch.tensor([1, 0])
    with pytest.raises(ValueError, match=r"input_id is \[1, 0\]"):
        KAN.from_pykan(reference)
    with pytest.raises(TypeError, match="expects a pykan MultKAN, got KAN"):
        KAN.from_pykan(KAN([2, 1]))


PENALTIES = [(1.0, 2.0, 0.0, 0.0), (0.3, 0.0, 0.0, 0.0), (0.0, 1.5, 0.0, 0.0), (0.5, 0.7, 0.4, 0.9)]


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("weights", PENALTIES)
def test_regularization_loss_and_its_gradient_equal_pykans_reg(width, weights):
    reference = pykan_model(width, seed=5)
    model = KAN.from_pykan(reference)
    x = samples(width[0], 5)
    reference(x)
    expected = reference.reg("edge_forward_spline_n", *weights)
    loss = model.regularization_loss(x, *weights)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    expected.backward()
    loss.backward()
    for ours, theirs in zip(model.layers, reference.act_fun):
        for name in ("coef", "scale_base", "scale_sp"):
            torch.testing.assert_close(getattr(ours, name).grad, getattr(theirs, name).grad, rtol=1e-10, atol=1e-12)


def test_regularization_loss_reads_the_last_input_by_default():
    model = KAN.from_pykan(pykan_model([3, 5, 2], seed=6))
    x = samples(3, 6)
    model(x)
    torch.testing.assert_close(model.regularization_loss(None, coef=0.5), model.regularization_loss(x, coef=0.5))


@pytest.mark.parametrize("width", WIDTHS)
def test_attribute_equals_pykans_scores(width):
    reference = pykan_model(width, seed=7)
    model = KAN.from_pykan(reference)
    x = samples(width[0], 7)
    reference(x)
    reference.attribute(plot=False)
    scores = model.attribute(x)
    assert len(scores.node_scores) == len(width) and len(scores.edge_scores) == len(width) - 1
    for ours, theirs in zip(scores.node_scores, reference.node_scores):
        torch.testing.assert_close(ours, theirs.detach().double(), rtol=1e-12, atol=1e-12)
    for ours, theirs in zip(scores.edge_scores, reference.edge_scores):
        torch.testing.assert_close(ours, theirs.detach().t(), rtol=1e-12, atol=1e-12)


def between(scores, rank):
    """A threshold halfway between the rank-th and (rank+1)-th smallest of scores."""
    ordered = torch.sort(scores.flatten()).values
    return (ordered[rank] + ordered[rank + 1]).item() / 2


def assert_same_model(model, reference, x):
    assert model.widths == [sum(w) for w in reference.width]
    for ours, theirs in zip(model.layers, reference.act_fun):
        for name in ("grid", "coef", "scale_base", "scale_sp", "mask"):
            assert torch.equal(getattr(ours, name), getattr(theirs, name)), name
    torch.testing.assert_close(model(x), reference(x))


def assert_same_but_means(model, pykan_rule):
    """model (keep_means=True) masks and keeps what pykan_rule (keep_means=False, pykan's result) does, and has a
    bias in every layer, where the removed nodes' and edges' means went (tests/test_prune_select.py checks them)."""
    assert model.widths == pykan_rule.widths
    for ours, theirs in zip(model.layers, pykan_rule.layers):
        for name in ("grid", "coef", "scale_base", "scale_sp", "mask"):
            assert torch.equal(getattr(ours, name), getattr(theirs, name)), name
        assert ours.bias is not None


# pykan's prune_node loads the model into a new MultKAN of the default dtype, so these compare in float32.


@pytest.mark.parametrize("width", WIDTHS)
def test_prune_node_keeps_what_pykan_keeps(width):
    reference = pykan_model(width, seed=8, dtype=torch.float32)
    model = KAN.from_pykan(reference)
    x = samples(width[0], 8, dtype=torch.float32)
    reference(x)
    reference.attribute(plot=False)
    # below the smallest hidden layer's best score, so every hidden layer keeps a node and some lose one
    threshold = 0.9 * min(s.max().item() for s in reference.node_scores[1:-1])
    assert any(bool((s <= threshold).any()) for s in reference.node_scores[1:-1])
    pruned = model.prune_node(threshold, x, keep_means=False)
    with torch.random.fork_rng():
        expected = reference.prune_node(threshold, log_history=False)
    assert sum(pruned.widths) < sum(width)
    assert_same_model(pruned, expected, x)
    assert_same_but_means(model.prune_node(threshold, x), pruned)


@pytest.mark.parametrize("width", WIDTHS)
def test_prune_edge_and_prune_mask_what_pykan_masks(width):
    reference = pykan_model(width, seed=9, dtype=torch.float32)
    model = KAN.from_pykan(reference)
    x = samples(width[0], 9, dtype=torch.float32)
    reference(x)
    reference.attribute(plot=False)
    edge_th = between(reference.edge_scores[0], 2)
    pruned = model.prune_edge(edge_th, x, keep_means=False)
    reference.prune_edge(edge_th, log_history=False)
    assert int(pruned.layers[0].mask.sum()) < width[0] * width[1]
    assert_same_model(pruned, reference, x)
    assert_same_but_means(model.prune_edge(edge_th, x), pruned)

    reference = pykan_model(width, seed=9, dtype=torch.float32)
    model = KAN.from_pykan(reference)
    reference(x)
    reference.attribute(plot=False)
    node_th = 0.9 * min(s.max().item() for s in reference.node_scores[1:-1])
    with torch.random.fork_rng():
        expected = reference.prune_node(node_th, log_history=False)  # pykan's prune, without its checkpointing
    expected(x)
    expected.attribute(plot=False)
    expected.prune_edge(edge_th, log_history=False)
    assert_same_model(model.prune(node_th, edge_th, x, keep_means=False), expected, x)
    assert_same_but_means(model.prune(node_th, edge_th, x), model.prune(node_th, edge_th, x, keep_means=False))
