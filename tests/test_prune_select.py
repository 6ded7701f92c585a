"""BSplineKAN.select, pruning's exactness on what remains, the penalty's gradient, the cases where pykan's scores
are NaN or its pruning fails, and bad input."""
import copy

import pytest
from conftest import inputs_around, random_grid
import torch
from torch import nn

from kanlib import KAN, BSplineKAN
from kanlib.quant import QATConfig
from kanlib.quant.qat import prepare_qat

F64 = torch.float64


def random_layer(n_in, n_out, seed, bias=False, **kwargs):
    generator = torch.Generator().manual_seed(seed)
    layer = BSplineKAN(n_in, n_out, grid_size=5, bias=bias, dtype=F64, **kwargs)
    with torch.no_grad():
        layer.grid.copy_(random_grid(n_in, 5, 3, generator, dtype=F64))
        for parameter in layer.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=F64))
    return layer


def random_model(widths, seed):
    model = KAN(widths, seed=seed, dtype=F64)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.layers:
            layer.coef.copy_(torch.randn(layer.coef.shape, generator=generator, dtype=F64))
            layer.scale_sp.mul_(torch.rand(layer.scale_sp.shape, generator=generator, dtype=F64) * 3)
    return model


def samples(n_in, seed, n=60):
    """Inputs inside [-1, 1] (the default grid) and beyond it on both sides."""
    return 2 * torch.randn(n, n_in, generator=torch.Generator().manual_seed(seed + 1000), dtype=F64)


@pytest.mark.parametrize("backend", ["eager", "cpu", "sparse"])
def test_select_computes_the_kept_columns_when_the_dropped_inputs_weigh_nothing(backend):
    layer = random_layer(5, 4, seed=0, bias=True, backend=backend)
    layer.scale_base.requires_grad_(False)
    rows, columns = [3, 0, 4], [2, 0]
    new = layer.select(rows, columns)
    assert (new.in_features, new.out_features, new.backend, new.coef.dtype) == (3, 2, backend, F64)
    assert (new.grid_size, new.spline_order, new.base_activation, new.grid_eps) == (5, 3, "silu", layer.grid_eps)
    assert not new.scale_base.requires_grad and new.coef.requires_grad
    torch.testing.assert_close(new.grid, layer.grid[rows], rtol=0, atol=0)
    for name in ("coef", "scale_base", "scale_sp", "mask"):
        torch.testing.assert_close(getattr(new, name), getattr(layer, name)[rows][:, columns], rtol=0, atol=0)
    torch.testing.assert_close(new.bias, layer.bias[columns], rtol=0, atol=0)
    with torch.no_grad():
        layer.mask[[1, 2]] = 0
    x = inputs_around(layer.grid, 50, torch.Generator().manual_seed(1))
    torch.testing.assert_close(new(x[:, rows]), layer(x)[:, columns], rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        new.coef.zero_()
    assert layer.coef.abs().sum() > 0  # nothing shared


def test_select_carries_the_symbolic_branch():
    layer = random_layer(4, 3, seed=2)
    layer.set_symbolic(1, 2, "sin", (2.0, 0.5, 1.5, -0.3))
    layer.set_symbolic(0, 1, "x^2")
    new = layer.select([1, 3], [2, 0])
    assert new.symbolic.name(0, 0) == "sin" and new.symbolic.name(0, 1) is None and new.mask[0, 0] == 0
    with torch.no_grad():
        layer.mask[[0, 2]] = 0
    x = samples(4, 2)
    torch.testing.assert_close(new(x[:, [1, 3]]), layer(x)[:, [2, 0]], rtol=1e-12, atol=1e-12)


def test_select_refuses_bad_indices_and_layers_with_more_state():
    layer = random_layer(5, 4, seed=3)
    with pytest.raises(ValueError, match=r"inputs must be a non-empty list of indices in 0\.\.4, got \[1, 5\]"):
        layer.select([1, 5], [0])
    with pytest.raises(ValueError, match=r"outputs must be a non-empty list of indices in 0\.\.3, got \[\]"):
        layer.select([0], [])
    with pytest.raises(ValueError, match="1-D integer tensor.*torch.float32"):
        layer.select(torch.tensor([0.0]), [0])
    with pytest.raises(TypeError, match="inputs must be a sequence of ints"):
        layer.select(3, [0])
    qat = prepare_qat(KAN([2, 3, 1]), QATConfig(bits=4)).layers[0]
    with pytest.raises(TypeError, match="QATBSplineKAN holds more state"):
        qat.select([0], [0])


def hidden_scores_threshold(model, x):
    """A threshold between the two smallest scores of the first hidden layer: it removes exactly one node there."""
    scores = torch.sort(model.attribute(x).node_scores[1]).values
    return ((scores[0] + scores[1]) / 2).item()


def removed_nodes_masked(model, kept):
    """A copy of model whose nodes outside ``kept`` (per node layer) have their outgoing edges switched off."""
    reference = copy.deepcopy(model)
    for l, layer in enumerate(reference.layers):
        for i in range(layer.in_features):
            if i not in kept[l]:
                for j in range(layer.out_features):
                    reference.remove_edge(l, i, j)
    return reference


def test_prune_node_computes_the_original_without_the_removed_nodes():
    model = random_model([3, 6, 5, 2], seed=4)
    x = samples(3, 4)
    scores = model.attribute(x).node_scores
    threshold = hidden_scores_threshold(model, x)
    pruned = model.prune_node(threshold, x, keep_means=False)
    kept = [list(range(3))] + [(s > threshold).nonzero().flatten().tolist() for s in scores[1:-1]] + [[0, 1]]
    assert pruned.widths == [len(k) for k in kept] and pruned.widths[1] == 5
    reference = removed_nodes_masked(model, kept)
    torch.testing.assert_close(pruned(x), reference(x), rtol=1e-12, atol=1e-12)


def test_prune_node_removes_nodes_that_contribute_nothing_and_keeps_the_function():
    model = random_model([3, 6, 2], seed=5)
    for i in range(3):
        for dead in (1, 4):
            model.remove_edge(0, i, dead)
    for dead in (1, 4):
        for j in range(2):
            model.remove_edge(1, dead, j)
    x = samples(3, 5)
    scores = model.attribute(x)
    assert scores.node_scores[1][[1, 4]].tolist() == [0.0, 0.0]
    pruned = model.prune_node(1e-2, x)
    assert pruned.widths == [3, 4, 2]
    torch.testing.assert_close(pruned(x), model(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bias", [False, True])
def test_a_removed_node_of_constant_output_leaves_its_constant_in_the_next_bias(bias):
    """A node no live edge feeds outputs its bias entry (0 without a bias), a constant that its outgoing edges still
    turn into phi(c) on the next layer; it scores 0 and is pruned. pykan drops that constant and the output moves;
    here it is folded into the next layer's bias, as compact does. A node fed only by such a node is constant too."""
    model = random_model([3, 5, 4, 2], seed=12)
    if bias:
        for layer in model.layers:
            layer.bias = nn.Parameter(torch.randn(layer.out_features, dtype=F64))
    for i in range(3):
        model.remove_edge(0, i, 1)  # node (1, 1) outputs a constant
    for i in range(5):
        if i != 1:
            model.remove_edge(1, i, 3)  # node (2, 3) reads node (1, 1) only: a constant too
    x = samples(3, 12)
    pruned = model.prune_node(0.0, x)
    assert pruned.widths == [3, 4, 3, 2]
    assert all(isinstance(layer.bias, nn.Parameter) for layer in pruned.layers)
    torch.testing.assert_close(pruned(x), model(x), rtol=1e-12, atol=1e-12)
    assert KAN([3, 4, 3, 2], bias=True, dtype=F64).load_state_dict(pruned.state_dict())


def test_prune_edge_switches_off_the_low_scoring_edges():
    model = random_model([3, 4, 2], seed=6)
    x = samples(3, 6)
    edges = model.attribute(x).edge_scores
    threshold = torch.sort(edges[0].flatten()).values[3:5].mean().item()
    pruned = model.prune_edge(threshold, x, keep_means=False)
    for layer, score, old in zip(pruned.layers, edges, model.layers):
        assert torch.equal(layer.mask, old.mask * (score > threshold))
    assert pruned.layers[0].mask.sum() == 12 - 4
    reference = copy.deepcopy(model)
    for l, score in enumerate(edges):
        for i, j in (score <= threshold).nonzero().tolist():
            reference.remove_edge(l, i, j)
    torch.testing.assert_close(pruned(x), reference(x), rtol=1e-12, atol=1e-12)


def test_prune_node_keeps_what_the_removed_nodes_added_on_average_in_the_next_bias():
    """[3, 6, 2]: the kept hidden nodes compute what they did, so each output's mean over the samples is the
    original's; with pykan's rule (keep_means=False) it moves by what the removed nodes added."""
    model = random_model([3, 6, 2], seed=13)
    x = samples(3, 13)
    threshold = hidden_scores_threshold(model, x)
    kept = model.prune_node(threshold, x)
    dropped = model.prune_node(threshold, x, keep_means=False)
    assert kept.widths == dropped.widths == [3, 5, 2]
    expected = model(x).mean(dim=0)
    torch.testing.assert_close(kept(x).mean(dim=0), expected, rtol=1e-12, atol=1e-12)
    assert (dropped(x).mean(dim=0) - expected).abs().max() > 1e-3
    torch.testing.assert_close(kept(x) - kept.layers[1].bias, dropped(x), rtol=1e-12, atol=1e-12)


def test_prune_edge_keeps_what_the_masked_edges_added_on_average_in_their_layers_bias():
    """Each layer of the pruned copy, on the original layer inputs, has the original layer's mean output; pykan's
    rule (keep_means=False) drops the masked edges' means, and only the biases differ between the two."""
    model = random_model([3, 4, 2], seed=14)
    x = samples(3, 14)
    edges = model.attribute(x).edge_scores
    threshold = torch.sort(torch.cat([e.flatten() for e in edges])).values[3:5].mean().item()
    kept, dropped = model.prune_edge(threshold, x), model.prune_edge(threshold, x, keep_means=False)
    inputs = model.layer_inputs(x)
    for ours, pykans, original, layer_input in zip(kept.layers, dropped.layers, model.layers, inputs):
        assert torch.equal(ours.mask, pykans.mask)
        torch.testing.assert_close(ours(layer_input).mean(dim=0), original(layer_input).mean(dim=0),
                                   rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ours(layer_input) - ours.bias, pykans(layer_input), rtol=1e-12, atol=1e-12)
    assert any((p(i).mean(dim=0) - o(i).mean(dim=0)).abs().max() > 1e-3
               for p, o, i in zip(dropped.layers, model.layers, inputs))


@pytest.mark.parametrize("method", ["prune_node", "prune_edge", "prune"])
def test_keep_means_must_be_a_flag(method):
    model = random_model([3, 4, 2], seed=15)
    with pytest.raises(TypeError, match="keep_means must be True or False, got int"):
        getattr(model, method)(x=samples(3, 15), keep_means=1)


def test_pruning_leaves_the_model_as_it_was_and_carries_its_samples():
    model = random_model([3, 5, 2], seed=7)
    x = samples(3, 7)
    model(x)
    before = {name: t.clone() for name, t in model.state_dict().items()}
    threshold = hidden_scores_threshold(model, x)
    for pruned in (model.prune_node(threshold), model.prune_edge(0.1), model.prune(threshold, 0.1)):
        assert pruned is not model and pruned.layers is not model.layers
        assert torch.equal(pruned.samples(None, "test"), x)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert model.widths == [3, 5, 2]


def test_pruning_every_node_of_a_hidden_layer_is_an_error_naming_the_best_score():
    model = random_model([3, 4, 2], seed=8)
    x = samples(3, 8)
    best = model.attribute(x).node_scores[1].max().item()
    with pytest.raises(ValueError, match=rf"threshold=1e\+06\) would remove every node of hidden layer 1 .*"
                                         rf"largest score is {best:.4g}"):
        model.prune_node(1e6, x)


def dead_cases():
    """Models and samples where pykan's scores are zero or its gradients could be undefined: a hidden node with
    no live edge, a layer with no live edge, an input that does not vary."""
    dead_node = random_model([3, 4, 2], seed=9)
    with torch.no_grad():
        dead_node.layers[0].mask[:, 2] = 0
        dead_node.layers[1].mask[2] = 0
    dead_layer = random_model([3, 4, 2], seed=9)
    with torch.no_grad():
        dead_layer.layers[1].mask.zero_()
    constant = samples(3, 9)
    constant[:, 1] = 0.25
    return [(dead_node, samples(3, 9)), (dead_layer, samples(3, 9)), (random_model([3, 4, 2], seed=9), constant)]


@pytest.mark.parametrize("case", range(3))
def test_scores_penalty_and_its_gradient_stay_finite_where_edges_or_inputs_are_dead(case):
    model, x = dead_cases()[case]
    scores = model.attribute(x)
    assert all(bool(s.isfinite().all()) for s in (*scores.node_scores, *scores.edge_scores))
    x = x.clone().requires_grad_(True)
    loss = model.regularization_loss(x, coef=0.1, coefdiff=0.1)
    loss.backward()
    assert loss.isfinite() and x.grad.isfinite().all()
    assert all(bool(p.grad.isfinite().all()) for p in model.parameters())


def test_a_dead_node_is_pruned_and_a_dead_layer_is_an_error():
    (dead_node, x), (dead_layer, y), _ = dead_cases()
    pruned = dead_node.prune(1e-2, 0.0, x)
    assert pruned.widths == [3, 3, 2] and pruned(x).isfinite().all()
    with pytest.raises(ValueError, match="every node of hidden layer 1 .*largest score is 0"):
        dead_layer.prune_node(1e-2, y)


def test_one_sample_is_refused_where_pykan_gives_nan():
    model = random_model([3, 4, 2], seed=10)
    x = samples(3, 10)[:1]
    for method in (model.attribute, model.regularization_loss, lambda x: model.prune(x=x)):
        with pytest.raises(ValueError, match="at least 2 samples, got 1"):
            method(x)


def test_regularization_loss_gradcheck_in_float64():
    """In the layer's parameters and its input, and through a layer's input into the layer before it."""
    model = random_model([2, 2, 1], seed=11)
    penalty = _Penalty(model)
    names = [f"model.layers.{l}.{name}" for l in (0, 1) for name in ("coef", "scale_base", "scale_sp")]
    values = [penalty.get_parameter(name).detach().clone().requires_grad_(True) for name in names]
    x = samples(2, 11, n=6).requires_grad_(True)

    def loss(x, *parameters):
        return torch.func.functional_call(penalty, dict(zip(names, parameters)), (x,))

    assert torch.autograd.gradcheck(loss, (x, *values), fast_mode=True)


class _Penalty(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.regularization_loss(x, l1=0.7, entropy=1.3, coef=0.4, coefdiff=0.6)


def test_remove_edge_and_thresholds_refuse_what_does_not_exist():
    model = random_model([3, 4, 2], seed=12)
    model.remove_edge(1, 3, 0)
    assert model.layers[1].mask[3, 0] == 0 and model.layers[1].mask.sum() == 7
    with pytest.raises(ValueError, match=r"l must be an int in 0\.\.1, got 2"):
        model.remove_edge(2, 0, 0)
    with pytest.raises(ValueError, match=r"i must be an int in 0\.\.3, got 4"):
        model.remove_edge(1, 4, 0)
    with pytest.raises(ValueError, match=r"j must be an int in 0\.\.1, got 2"):
        model.remove_edge(1, 0, 2)
    x = samples(3, 12)
    for method in (model.prune_node, model.prune_edge):
        with pytest.raises(ValueError, match=r"threshold must be a finite number >= 0.0, got -0.1"):
            method(-0.1, x)
    with pytest.raises(ValueError, match=r"samples of shape \[N, 3\], got \(60, 2\)"):
        model.attribute(x[:, :2])
    x[5, 1] = float("nan")
    with pytest.raises(ValueError, match="needs finite samples"):
        model.prune_node(0.1, x)


@pytest.mark.parametrize("method,args", [("attribute", ()), ("prune_node", ()), ("prune_edge", ()), ("prune", ()),
                                         ("remove_edge", (0, 0, 0))])
def test_pruning_needs_bspline_layers(method, args):
    model = KAN([2, 3, 1], layer=nn.Linear)
    model(torch.randn(5, 2))
    with pytest.raises(TypeError, match=f"KAN.{method} needs BSplineKAN layers; layer 0 is Linear"):
        getattr(model, method)(*args)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_pruned_and_compacted_models_keep_the_train_or_eval_mode(mode):
    """select built its layers in train mode: prune_node and prune of an eval-mode model had training layers."""
    model = random_model([3, 5, 2], seed=16)
    for i in range(3):
        model.remove_edge(0, i, 1)
    model.train(mode == "train")
    x = samples(3, 16)
    for result in (model.prune_node(1e-12, x), model.prune(1e-12, 1e-12, x), model.prune_edge(1e-12, x),
                   model.compact()):
        assert {module.training for module in result.modules()} == {mode == "train"}
