"""kanlib.prune.compact: the smaller KAN computes what the pruned one computes (dead-out nodes dropped, dead-in
nodes folded into the next bias, symbolic edges, inputs), the original stays, the result trains and loads, and
bad input is refused."""
import copy

import pytest
from conftest import random_grid
import torch
from torch import nn

from kanlib import KAN, RBFKAN, fit, quantize
from kanlib.prune import compact, live_edges, live_inputs
from kanlib.quant import QATConfig
from kanlib.quant.qat import prepare_qat

F64 = torch.float64


def random_model(widths, seed, dtype=F64, bias=False, spline_order=3, grid_size=5, uniform=True, **kwargs):
    """A KAN with random coefficients, scales and (when bias) biases, on a random knot grid unless uniform."""
    model = KAN(widths, seed=seed, dtype=dtype, bias=bias, spline_order=spline_order, grid_size=grid_size, **kwargs)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.layers:
            if not uniform:
                layer.grid.copy_(random_grid(layer.in_features, grid_size, spline_order, generator, dtype=dtype))
            layer.coef.copy_(torch.randn(layer.coef.shape, generator=generator, dtype=F64))
            layer.scale_base.copy_(torch.randn(layer.scale_base.shape, generator=generator, dtype=F64))
            layer.scale_sp.mul_(torch.rand(layer.scale_sp.shape, generator=generator, dtype=F64) * 3)
            if bias:
                layer.bias.copy_(torch.randn(layer.bias.shape, generator=generator, dtype=F64))
    return model


def samples(n_in, seed, n=64, dtype=F64):
    """Inputs inside the default grid [-1, 1] and well beyond it on both sides."""
    return 3 * torch.randn(n, n_in, generator=torch.Generator().manual_seed(seed + 1000), dtype=F64).to(dtype)


def kill_random_edges(model, seed, spine, low=0.5, high=0.95):
    """Switch off a random 50-95% of every layer's edges, except those of the path through the nodes ``spine``
    (one index per node layer), which keeps the output from being a constant."""
    generator = torch.Generator().manual_seed(seed + 2000)
    with torch.no_grad():
        for l, layer in enumerate(model.layers):
            fraction = low + (high - low) * torch.rand((), generator=generator, dtype=F64)
            layer.mask.mul_((torch.rand(layer.mask.shape, generator=generator, dtype=F64) >= fraction).to(layer.mask))
            layer.mask[spine[l], spine[l + 1]] = 1


def dead_in(model, n, j):
    """Hidden node j of node layer n gets no live incoming edge."""
    with torch.no_grad():
        model.layers[n - 1].mask[:, j] = 0


def dead_out(model, n, j):
    """Hidden node j of node layer n feeds no live edge."""
    with torch.no_grad():
        model.layers[n].mask[j, :] = 0


def state(model):
    return {name: t.clone() for name, t in model.state_dict().items()}


def assert_same_state(before, model):
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def assert_close_rel(actual, expected, rtol):
    scale = expected.abs().max().clamp(min=1.0)
    assert (actual - expected).abs().max() <= rtol * scale, ((actual - expected).abs().max(), scale)


# --- exactness on random pruned models ------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("bias", [False, True])
def test_compact_computes_what_the_pruned_model_computes_in_float64(seed, bias):
    model = random_model([5, 7, 6, 3], seed, bias=bias, uniform=seed % 2 == 0)
    kill_random_edges(model, seed, spine=[seed % 5, 5, 3, seed % 3])
    dead_in(model, 1, 2)
    dead_out(model, 2, 4)
    dead_in(model, 2, 0)
    model.layers[1].set_symbolic(3, 5, "sin", (1.3, 0.2, -0.7, 0.4))  # a fixed edge, maybe from a dead-in node
    x = samples(5, seed)
    before = state(model)
    expected = model(x)
    small = compact(model, live_inputs(model))
    assert small.widths[1] <= 6 and small.widths[2] <= 5 and small.widths[-1] == 3
    assert_close_rel(small(x[:, live_inputs(model)]), expected, 1e-12)
    full = compact(model)
    assert full.widths[0] == 5 and full.widths[1:] == small.widths[1:]
    assert_close_rel(full(x), expected, 1e-12)
    assert_same_state(before, model)
    assert model.widths == [5, 7, 6, 3]


@pytest.mark.parametrize("spline_order", [0, 1, 2, 3])
def test_compact_in_float32_at_every_spline_order(spline_order):
    model = random_model([5, 7, 6, 3], 10 + spline_order, dtype=torch.float32, bias=True,
                         spline_order=spline_order, uniform=False)
    kill_random_edges(model, spline_order, spine=[1, 2, 3, 0])
    dead_in(model, 1, 6)
    dead_out(model, 1, 0)
    x = samples(5, spline_order, dtype=torch.float32)
    small = model.compact()
    assert small.layers[0].coef.dtype == torch.float32 and small.widths[1] <= 5
    assert small.layers[0].spline_order == spline_order
    torch.testing.assert_close(small(x), model(x), rtol=1e-5, atol=1e-5)


def test_compact_after_update_grid_keeps_the_non_uniform_grid():
    model = random_model([3, 5, 2], 20, bias=True)
    x = samples(3, 20)
    model.update_grid(x)
    assert not model.layers[0].is_uniform()
    dead_in(model, 1, 1)
    dead_out(model, 1, 3)
    small = model.compact()
    assert small.widths == [3, 3, 2]
    torch.testing.assert_close(small.layers[0].grid, model.layers[0].grid[[0, 1, 2]], rtol=0, atol=0)
    torch.testing.assert_close(small.layers[1].grid, model.layers[1].grid[[0, 2, 4]], rtol=0, atol=0)
    assert_close_rel(small(x), model(x), 1e-12)


# --- hand-counted cases ---------------------------------------------------------------------------------------

def test_handmade_case_widths_kept_nodes_and_folded_bias():
    """[4, 5, 4, 2]. Node layer 1: node 0 dead-out, node 3 dead-in (its constant is its bias entry), node 4 both.
    Node layer 2: node 2 dead-out, node 3 fed only by node 1-3, so dead-in once that one is folded. Input 3 feeds
    only node 1-0: it is not read. Kept: [0, 1, 2], [1, 2], [0, 1], [0, 1]."""
    model = random_model([4, 5, 4, 2], 30, bias=True)
    with torch.no_grad():
        first, second, third = (layer.mask for layer in model.layers)
        first[:, 3] = 0                    # 1-3 dead-in
        second[0, :] = 0                   # 1-0 dead-out
        first[:, 4] = 0                    # 1-4 dead-in and dead-out
        second[4, :] = 0
        second[:, 3] = 0                   # 2-3 fed by 1-3 alone
        second[3, 3] = 1
        third[2, :] = 0                    # 2-2 dead-out
        first[3, :] = 0                    # input 3 feeds 1-0 alone
        first[3, 0] = 1
    assert live_inputs(model) == [0, 1, 2]
    small = compact(model, [0, 1, 2])
    assert small.widths == [3, 2, 2, 2]
    x = samples(4, 30)
    assert_close_rel(small(x[:, :3]), model(x), 1e-12)
    # Node 1-3's constant is layer 0's bias entry 3; it adds phi_{3,o}(c) to layer 1's bias.
    c = model.layers[0].bias[3].item()
    point = torch.zeros(1, 5, dtype=F64)
    point[0, 3] = c
    with torch.no_grad():
        folded = model.layers[1].activations(point)[0, 3]
    # Node 2-3 is removed after folding (its constant: layer 1's bias 3 plus 1-3's phi); it adds to layer 2's bias.
    c2 = (model.layers[1].bias[3] + folded[3]).item()
    point = torch.zeros(1, 4, dtype=F64)
    point[0, 3] = c2
    with torch.no_grad():
        folded2 = model.layers[2].activations(point)[0, 3]
    torch.testing.assert_close(small.layers[1].bias, (model.layers[1].bias + folded)[[0, 1]], rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(small.layers[2].bias, model.layers[2].bias + folded2, rtol=1e-14, atol=1e-14)


def test_a_dead_in_node_creates_the_next_bias_and_a_symbolic_edge_out_of_it_counts():
    model = random_model([3, 4, 2], 40, bias=False)
    dead_in(model, 1, 1)
    model.layers[1].set_symbolic(1, 0, "x^2", (0.5, 1.0, 2.0, -0.3))  # node 1's spline edges stay live too
    x = samples(3, 40)
    small = model.compact()
    assert small.widths == [3, 3, 2]
    assert isinstance(small.layers[1].bias, nn.Parameter)
    # the layer that gained no constant gets a zero bias: one bias setting for the whole model
    assert isinstance(small.layers[0].bias, nn.Parameter) and not small.layers[0].bias.any()
    # c = 0 (no bias): the folded constant includes the symbolic edge's 2 * (0.5 * 0 + 1)^2 - 0.3 on output 0
    with torch.no_grad():
        folded = model.layers[1].activations(torch.zeros(1, 4, dtype=F64))[0, 1]
    assert folded[0] == 2.0 - 0.3 and folded[1] != 0  # output 0: the symbolic edge alone
    torch.testing.assert_close(small.layers[1].bias, folded, rtol=1e-14, atol=1e-14)
    assert_close_rel(small(x), model(x), 1e-12)


def test_a_symbolic_edge_keeps_an_otherwise_dead_node():
    model = random_model([3, 4, 2], 41)
    dead_out(model, 1, 2)
    model.layers[1].set_symbolic(2, 1, "sin")
    dead_in(model, 1, 0)
    model.layers[0].set_symbolic(1, 0, "x")
    assert model.layers[1].mask[2].sum() == 0 and model.layers[0].mask[:, 0].sum() == 0
    assert live_edges(model.layers[1])[2].tolist() == [False, True]
    small = model.compact()
    assert small.widths == [3, 4, 2]
    x = samples(3, 41)
    assert_close_rel(small(x), model(x), 1e-12)


def test_edges_auto_symbolic_fixes_to_zero_stay_dead():
    """auto_symbolic fixes each switched-off edge to "0" (c * 0 + d with d = 0): compact and live_inputs counted those
    as live, and the inputs and nodes pruning had removed came back. One whose d was trained away from 0 adds a
    constant, and stays live."""
    model = random_model([3, 4, 2], 42)
    dead_out(model, 0, 2)  # input 2 is read by nothing
    dead_in(model, 1, 3)
    dead_out(model, 1, 3)  # node 3 is dead both ways
    before = (model.compact().widths, live_inputs(model))
    assert before == ([3, 3, 2], [0, 1])
    x = samples(3, 42)
    model.auto_symbolic(lib=["x", "x^2"], x=x, verbose=0)
    assert model.layers[0].symbolic.name(2, 0) == "0"
    assert (model.compact().widths, live_inputs(model)) == before
    assert_close_rel(model.compact()(x), model(x), 1e-12)
    with torch.no_grad():
        model.layers[0].symbolic.affine[2, 1, 3] = 0.25  # d: edge (0, 2, 1) adds 0.25 to node 1
    assert live_inputs(model) == [0, 1, 2]
    assert_close_rel(model.compact()(x), model(x), 1e-12)


def test_a_fully_live_model_gives_an_equal_copy():
    model = random_model([3, 4, 2], 42, bias=True)
    model.layers[0].set_symbolic(0, 1, "exp", (0.3, 0.1, 1.0, 0.0))
    x = samples(3, 42)
    model(x)
    small = model.compact()
    assert small is not model and small.widths == model.widths and live_inputs(model) == [0, 1, 2]
    assert_same_state(state(model), small)
    assert small.layers[0].symbolic is not model.layers[0].symbolic
    assert torch.equal(small(x), model(x))
    assert torch.equal(small.samples(None, "test"), x)


def test_a_single_layer_kan_drops_only_inputs():
    model = random_model([4, 3], 43, bias=True)
    with torch.no_grad():
        model.layers[0].mask[[0, 2]] = 0
    assert live_inputs(model) == [1, 3]
    x = samples(4, 43)
    model(x)
    small = model.compact([3, 1])
    assert small.widths == [2, 3]
    assert_close_rel(small(x[:, [3, 1]]), model(x), 1e-12)
    assert torch.equal(small.samples(None, "test"), x[:, [3, 1]])  # the remembered samples are narrowed too
    assert model.compact().widths == [4, 3]


def test_removing_nodes_cascades_through_layers():
    """Node 2-0 is the only one dead-out; removing it leaves 1-0 dead-out, then input 0 unread."""
    model = random_model([3, 3, 3, 1], 44)
    with torch.no_grad():
        model.layers[2].mask[0] = 0
        model.layers[1].mask[0] = 0
        model.layers[1].mask[0, 0] = 1
        model.layers[0].mask[0] = 0
        model.layers[0].mask[0, 0] = 1
    assert live_inputs(model) == [1, 2]
    small = model.compact(live_inputs(model))
    assert small.widths == [2, 2, 2, 1]
    x = samples(3, 44)
    assert_close_rel(small(x[:, [1, 2]]), model(x), 1e-12)


# --- the result is a working model ----------------------------------------------------------------------------

def test_state_dict_round_trips_into_a_kan_of_the_compacted_widths():
    model = random_model([5, 7, 6, 3], 50, bias=True, backend="eager")
    kill_random_edges(model, 50, [0, 1, 2, 0], 0.5, 0.7)
    dead_in(model, 1, 0)
    dead_out(model, 2, 1)
    model.layers[1].set_symbolic(2, 2, "tanh", (1.0, 0.5, 2.0, 0.0))
    small = model.compact(live_inputs(model))
    fresh = KAN(small.widths, dtype=F64, bias=True, backend="eager")
    fresh.load_state_dict(small.state_dict())
    x = samples(small.widths[0], 50)
    assert torch.equal(fresh(x), small(x))
    assert fresh.layers[0].backend == small.layers[0].backend == "eager"


def test_the_dead_in_nodes_of_a_layer_fold_in_one_evaluation_of_the_next(monkeypatch):
    """Each edge reads its own input, so one point holding every dead-in node's constant gives all their folded
    values: one activations call for the layer, not one per node (wide pruned models have hundreds)."""
    model = random_model([3, 6, 2], 54, bias=True)
    for j in (0, 2, 5):
        dead_in(model, 1, j)
    expected = model.compact()
    calls = []
    original = type(model.layers[1]).activations

    def counted(layer, x):
        calls.append(x.shape)
        return original(layer, x)

    monkeypatch.setattr(type(model.layers[1]), "activations", counted)
    small = model.compact()
    assert calls == [(1, 6)] and small.widths == [3, 3, 2]
    torch.testing.assert_close(small.layers[1].bias, expected.layers[1].bias, rtol=0, atol=0)
    x = samples(3, 54)
    monkeypatch.undo()
    assert_close_rel(small(x), model(x), 1e-12)


def test_a_bias_free_model_compacts_into_one_that_a_kan_with_biases_loads():
    """A dead-in node folds its constant into the next layer's bias; every layer of the result then has one, so
    KAN(widths, bias=True) takes its state dict (a mix of layers with and without bias no KAN(...) call builds)."""
    model = random_model([4, 6, 3, 2], 52, bias=False)
    dead_in(model, 2, 1)
    small = model.compact()
    assert small.widths == [4, 6, 2, 2]
    assert all(isinstance(layer.bias, nn.Parameter) for layer in small.layers)
    assert not small.layers[0].bias.any() and small.layers[2].bias.any()
    fresh = KAN(small.widths, dtype=F64, bias=True)
    fresh.load_state_dict(small.state_dict())
    x = samples(4, 52)
    assert torch.equal(fresh(x), small(x))
    assert_close_rel(small(x), model(x), 1e-12)
    untouched = random_model([4, 6, 3, 2], 53, bias=False)
    assert all(layer.bias is None for layer in untouched.compact().layers)  # nothing folded: no bias anywhere


def test_fit_trains_the_compacted_model():
    model = random_model([5, 7, 6, 3], 51, dtype=torch.float32)
    kill_random_edges(model, 51, [2, 0, 0, 1])
    dead_in(model, 1, 3)
    small = model.compact(live_inputs(model))
    n_in = small.widths[0]
    generator = torch.Generator().manual_seed(51)
    x = torch.rand(40, n_in, generator=generator) * 2 - 1
    data = {"train_input": x, "train_label": torch.sin(x.sum(1, keepdim=True)).repeat(1, 3),
            "test_input": x, "test_label": torch.sin(x.sum(1, keepdim=True)).repeat(1, 3)}
    before = state(small)
    history = fit(small, data, steps=1, opt="adam", lr=1e-2, update_grid=False, progress=False)
    assert history.step == [0, 1] and history.train_loss[1] != history.train_loss[0]
    assert any(not torch.equal(before[k], v) for k, v in small.state_dict().items())


def test_gradients_of_the_compacted_model_pass_gradcheck():
    model = random_model([3, 4, 2], 52, bias=True, grid_size=3, backend="cpu")
    dead_in(model, 1, 0)
    dead_out(model, 1, 3)
    model.layers[1].set_symbolic(1, 1, "sin", (0.7, 0.1, 1.2, 0.0))
    small = model.compact()
    assert small.widths == [3, 2, 2]
    names = [name for name, _ in small.named_parameters()]
    values = [p.detach().clone().requires_grad_(True) for _, p in small.named_parameters()]
    x = samples(3, 52, n=5).requires_grad_(True)

    def output(x, *parameters):
        return torch.func.functional_call(small, dict(zip(names, parameters)), (x,))

    assert torch.autograd.gradcheck(output, (x, *values), fast_mode=True)


def test_compact_does_not_share_tensors_with_the_model():
    model = random_model([3, 4, 2], 53, bias=True)
    dead_in(model, 1, 2)
    small = model.compact()
    with torch.no_grad():
        for parameter in small.parameters():
            parameter.zero_()
        small.layers[0].mask.zero_()
    assert all(p.abs().sum() > 0 for p in model.parameters()) and model.layers[0].mask.sum() > 0


# --- bad input ------------------------------------------------------------------------------------------------

def test_a_hidden_layer_left_with_no_node_is_an_error_naming_it():
    model = random_model([3, 4, 2, 2], 60)
    with torch.no_grad():
        model.layers[1].mask.zero_()  # every node of hidden layer 1 dead-out (and of hidden layer 2 dead-in)
    with pytest.raises(ValueError, match="every node of hidden layer 1 \\(width 4\\) is dead.*output is a constant"):
        compact(model)
    with pytest.raises(ValueError, match="every node of hidden layer 1"):
        live_inputs(model)
    last = random_model([3, 2, 2], 61)
    dead_out(last, 1, 0)
    dead_in(last, 1, 1)  # node 0 is removed, then node 1, the last one, is dead too
    with pytest.raises(ValueError, match="every node of hidden layer 1 \\(width 2\\)"):
        last.compact()


@pytest.mark.parametrize("inputs,error,message", [
    ([0, 3], ValueError, r"inputs must be indices in 0\.\.2 \(the model has 3 inputs\), got \[0, 3\]"),
    ([-1], ValueError, r"indices in 0\.\.2.*got \[-1\]"),
    ([1, 0, 1], ValueError, r"inputs must be distinct indices, got \[1, 0, 1\] \(\[1\] repeated\)"),
    ([], ValueError, r"at least one input index in 0\.\.2, got \[\]"),
    ([0, 1.5], TypeError, r"inputs\[1\] must be an int, got 1.5"),
    (torch.tensor([0.0, 1.0]), ValueError, "1-D integer tensor.*torch.float32"),
    (2, TypeError, "inputs must be None or a sequence of input indices, got int"),
])
def test_bad_inputs_are_refused(inputs, error, message):
    model = random_model([3, 4, 2], 62)
    with pytest.raises(error, match=message):
        model.compact(inputs)


def test_dropping_a_live_input_is_an_error_naming_its_edges():
    model = random_model([3, 4, 2], 63)
    with torch.no_grad():
        model.layers[0].mask[1] = 0
        model.layers[0].mask[1, 2] = 1
    with pytest.raises(ValueError, match=r"leaves out input 1, whose edges \[\(0, 1, 2\)\] .*are live"):
        compact(model, [0, 2])
    assert compact(model, torch.tensor([0, 1, 2])).widths == [3, 4, 2]


def test_models_that_are_not_kans_of_bspline_layers_are_refused():
    with pytest.raises(TypeError, match="compact expects a KAN of BSplineKAN layers, got Linear"):
        compact(nn.Linear(3, 2))
    with pytest.raises(TypeError, match="live_inputs expects a KAN of BSplineKAN layers, got Sequential"):
        live_inputs(nn.Sequential(nn.Linear(3, 2)))
    with pytest.raises(TypeError, match="expects a KAN of BSplineKAN layers; layer 0 is RBFKAN"):
        compact(KAN([3, 4, 2], layer=RBFKAN))
    with pytest.raises(TypeError, match="layer 0 is Linear"):
        KAN([3, 4, 2], layer=nn.Linear).compact()


def test_quantized_and_qat_models_are_refused():
    model = random_model([3, 4, 2], 64, dtype=torch.float32)
    quantized = quantize(model, calib=samples(3, 64, dtype=torch.float32))
    with pytest.raises(TypeError, match="layer 0 is QuantizedBSplineKAN.*compact before quantizing"):
        compact(quantized)
    qat = prepare_qat(copy.deepcopy(model), QATConfig(bits=4))
    with pytest.raises(TypeError, match="layer 0 is QATBSplineKAN.*compact before quantizing"):
        qat.compact()
