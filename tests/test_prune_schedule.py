"""prune_to_sparsity: exact dead-edge counts per round on the cubic and linear schedules, no edge revived, grids
kept after the first round, symbolic edges kept, fine-tuning, compaction, score order, and bad input."""
import copy

import pytest
import torch
from torch import nn

import kanlib
from kanlib import KAN, FitCallback
from kanlib.prune import live_edges
from kanlib.prune.schedule import _mask_lowest, prune_to_sparsity, sparsity_targets

FIT = dict(steps=4, finetune_steps=15, opt="adam", lamb=0.01)


def classification_data(seed=0, n_train=100, n_test=50):
    """Random inputs [n, 6] in [-1, 1]; the class is the argmax of three fixed linear functions."""
    generator = torch.Generator().manual_seed(seed)
    weights = torch.randn(6, 3, generator=generator)
    data = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = torch.rand(n, 6, generator=generator) * 2 - 1
        data[f"{split}_input"], data[f"{split}_label"] = x, (x @ weights).argmax(1)
    return data


def regression_data():
    return kanlib.symbolic_dataset("exp_sin_sq", n_train=200, n_test=100, seed=0)


class Snapshots(FitCallback):
    """At the start of every fit: each layer's dead edges [I, O] and grid."""

    def __init__(self):
        self.dead, self.grids = [], []

    def on_fit_start(self, model, train_input):
        self.dead.append([~live_edges(layer) for layer in model.layers])
        self.grids.append([layer.grid.clone() for layer in model.layers])


def dead_masks(model):
    return [~live_edges(layer) for layer in model.layers]


def n_edges(model):
    return sum(layer.mask.numel() for layer in model.layers)


def formula(start, final, rounds, schedule):
    if schedule == "cubic":
        return [final + (start - final) * (1 - t / rounds) ** 3 for t in range(1, rounds + 1)]
    return [start + (final - start) * t / rounds for t in range(1, rounds + 1)]


def run(model, data, sparsity, **kwargs):
    snapshots = Snapshots()
    settings = {**FIT, **kwargs}
    result = prune_to_sparsity(model, data, sparsity, seed=0, fit_kwargs={"callbacks": [snapshots]}, **settings)
    return result, snapshots


@pytest.mark.parametrize("sparsity, schedule", [(0.5, "cubic"), (0.75, "cubic"), (0.9, "cubic"), (0.9, "linear")])
def test_rounds_follow_the_schedule_with_exact_counts(sparsity, schedule):
    model = KAN([6, 7, 3], seed=1, grid_size=4)
    data = classification_data()
    rounds = 4
    result, snapshots = run(model, data, sparsity, rounds=rounds, schedule=schedule, steps=3, finetune_steps=5)
    edges = n_edges(model)
    assert edges == 6 * 7 + 7 * 3 == result.edges
    targets = formula(0.0, sparsity, rounds, schedule)
    assert [r.round for r in result.rounds] == list(range(1, rounds + 1))
    for record, target in zip(result.rounds, targets):
        assert record.target == pytest.approx(target, abs=1e-12)
        assert record.dead_edges == round(target * edges)
        assert record.sparsity == record.dead_edges / edges
    final = sum(int(dead.sum()) for dead in dead_masks(model))
    assert final == round(sparsity * edges) == result.rounds[-1].dead_edges
    assert result.sparsity == final / edges
    # one snapshot per fit: the rounds, then the fine-tuning; each round's pruning shows at the next fit's start
    assert len(snapshots.dead) == rounds + 1
    assert [sum(int(d.sum()) for d in dead) for dead in snapshots.dead] == \
        [0] + [record.dead_edges for record in result.rounds]
    states = snapshots.dead + [dead_masks(model)]
    for before, after in zip(states, states[1:]):
        for b, a in zip(before, after):
            assert bool((a | ~b).all()), "an edge came back to life"
    # grids move in the first round only
    for later in snapshots.grids[2:] + [[layer.grid for layer in model.layers]]:
        for grid, first in zip(later, snapshots.grids[1]):
            assert torch.equal(grid, first)


@pytest.mark.parametrize("start, final, words", [(0.0, 1.5, "final"), (1.0, 0.5, "start"), (0.2, 1.0, "final")])
def test_schedule_helper_takes_fractions_below_one(start, final, words):
    with pytest.raises(ValueError, match=rf"{words} must be a fraction of the edges in \[0, 1\)"):
        sparsity_targets(start, final, 3)


def test_schedule_helper_matches_the_formula():
    for schedule in ("cubic", "linear"):
        assert sparsity_targets(0.2, 0.8, 5, schedule) == pytest.approx(formula(0.2, 0.8, 5, schedule), abs=1e-15)
    cubic = sparsity_targets(0.0, 0.9, 4)
    assert cubic[-1] == 0.9 and all(a < b for a, b in zip(cubic, cubic[1:]))
    assert cubic[0] > 0.9 / 4  # cubic prunes most in the first rounds


def test_regression_fine_tunes_and_compacts():
    model = KAN([2, 5, 1], seed=0, grid_size=5)
    data = regression_data()
    result, _ = run(model, data, 0.5, rounds=3, lamb=(0.02, 0.0), finetune_steps=30)
    assert [r.lamb for r in result.rounds] == pytest.approx([0.02, 0.01, 0.0])
    last = result.rounds[-1]
    history = result.history
    assert history.train_loss[0] == last.train_loss and history.test_loss[0] == last.test_loss
    assert torch.isfinite(torch.tensor(history.train_loss)).all()
    assert history.train_loss[-1] < history.train_loss[0]  # fine-tuning happened and helped
    assert sum(int(d.sum()) for d in dead_masks(model)) == round(0.5 * 15)
    x = data["test_input"]
    small = model.compact()
    assert sum(small.widths[1:-1]) < sum(model.widths[1:-1])
    torch.testing.assert_close(small(x), model(x), rtol=1e-5, atol=1e-5)


def test_previous_dead_edges_count_and_the_lamb_callable_is_used():
    model = KAN([6, 7, 3], seed=2, grid_size=4)
    model.remove_edge(0, 1, 1)
    model.remove_edge(1, 4, 2)
    before = dead_masks(model)
    seen = []

    def lamb(t):
        seen.append(t)
        return 0.01 * t

    result, snapshots = run(model, classification_data(1), 0.6, rounds=3, lamb=lamb, steps=2, finetune_steps=2)
    assert seen == [1, 2, 3] and [r.lamb for r in result.rounds] == pytest.approx([0.01, 0.02, 0.03])
    edges = n_edges(model)
    for record, target in zip(result.rounds, formula(2 / edges, 0.6, 3, "cubic")):
        assert record.dead_edges == round(target * edges)
    assert all(bool(a[b].all()) for a, b in zip(dead_masks(model), before))
    # a model with dead edges keeps its grids from the start
    for grid, first in zip(snapshots.grids[0], [layer.grid for layer in model.layers]):
        assert torch.equal(grid, first)


def with_symbolic(fixed):
    model = KAN([2, 5, 1], seed=0, grid_size=5)
    for l, i, j, name in fixed:
        model.fix_symbolic(l, i, j, name, fit_params=False)
    return model


def test_symbolic_edges_are_live_and_never_pruned():
    fixed = [(0, 0, 3, "sin"), (1, 2, 0, "x^2")]
    model = with_symbolic(fixed)
    result, _ = run(model, regression_data(), 0.8, rounds=2, finetune_steps=2)
    assert result.rounds[-1].dead_edges == round(0.8 * 15) == 12
    for l, i, j, _ in fixed:
        assert bool(model.layers[l].symbolic.mask[i, j]) and bool(live_edges(model.layers[l])[i, j])
    live = sum(int(live_edges(layer).sum()) for layer in model.layers)
    assert live == 3
    # 0.9 needs 14 of 15 dead, but the two symbolic edges stay
    with pytest.raises(ValueError, match="symbolic"):
        prune_to_sparsity(with_symbolic(fixed), regression_data(), 0.9, **FIT)


def test_a_symbolic_edge_with_its_spline_on_is_not_pruned():
    """Edge (0, 1, 2) is fixed to the zero function and its spline, switched back on, starts at zero: the
    lowest score of all, which pruning must pass over."""
    model = KAN([2, 5, 1], seed=0, grid_size=5)
    model.fix_symbolic(0, 1, 2, "0", fit_params=False)
    with torch.no_grad():
        model.layers[0].mask[1, 2] = 1
        model.layers[0].scale_base[1, 2] = model.layers[0].scale_sp[1, 2] = 0
    for score in ("attribution", "magnitude"):
        trial = copy.deepcopy(model)
        result = prune_to_sparsity(trial, regression_data(), 0.4, rounds=1, steps=1, finetune_steps=1,
                                   lamb=0.0, lr=1e-6, update_grid=False, score=score)
        assert result.rounds[0].dead_edges == round(0.4 * 15) == 6
        assert trial.layers[0].mask[1, 2] == 1 and bool(trial.layers[0].symbolic.mask[1, 2]), score


def frozen_first_layer_model(quiet):
    """KAN([4, 3, 2]) whose first layer does not train, its edges ``quiet`` scaled by 1e-4 (base and spline)."""
    model = KAN([4, 3, 2], seed=3, grid_size=4)
    with torch.no_grad():
        for i, j, factor in quiet:
            model.layers[0].scale_base[i, j] *= factor
            model.layers[0].scale_sp[i, j] *= factor
    for parameter in model.layers[0].parameters():
        parameter.requires_grad_(False)
    return model


def regression_data_4():
    return kanlib.symbolic_dataset(lambda x: torch.stack([x.sum(1), (x[:, 0] * x[:, 1])], 1), n_var=4,
                                   n_train=100, n_test=50, seed=1)


def test_magnitude_removes_the_smallest_activations_first():
    quiet = [(1, 2, 1e-4), (3, 0, 3e-4), (0, 1, 2e-4)]
    model = frozen_first_layer_model(quiet)
    data = regression_data_4()
    edges = n_edges(model)  # 12 + 6
    stds = model.layers[0].activations(data["train_input"]).std(0)
    order = stds.flatten().argsort()[:3].tolist()
    assert sorted(order) == sorted(i * 3 + j for i, j, _ in quiet)  # the model is built as meant
    sparsity = 2 / edges
    prune_to_sparsity(model, data, sparsity, rounds=1, steps=2, finetune_steps=1, score="magnitude",
                      update_grid=False)
    dead = dead_masks(model)
    assert not bool(dead[1].any())
    # the two smallest stds go, in their order: (1, 2) at 1e-4 scale and (0, 1) at 2e-4
    assert dead[0].nonzero().tolist() == sorted([[1, 2], [0, 1]])


def test_ties_are_broken_by_position():
    silent = [(3, 1), (0, 2), (2, 0), (1, 1)]
    model = frozen_first_layer_model([(i, j, 0.0) for i, j in silent])
    data = regression_data_4()
    for score in ("magnitude", "attribution"):
        trial = copy.deepcopy(model)
        prune_to_sparsity(trial, data, 3 / n_edges(trial), rounds=1, steps=1, finetune_steps=1, score=score,
                          update_grid=False, lamb=0.0)
        assert dead_masks(trial)[0].nonzero().tolist() == [[0, 2], [1, 1], [2, 0]], score


def test_a_layer_keeps_its_best_edge_and_the_next_edge_in_the_ranking_goes_instead():
    model = KAN([4, 3, 2], seed=3, grid_size=4)
    scores = [torch.ones(4, 3), torch.arange(1.0, 7.0).view(3, 2) / 10]  # layer 1's six edges rank lowest
    _mask_lowest(list(model.layers), scores, 7)
    dead = dead_masks(model)
    assert dead[1].sum() == 5 and not dead[1][2, 1]  # its best-scored edge (0.6) stays
    assert dead[0].nonzero().tolist() == [[0, 0], [0, 1]]  # two of layer 0's tied edges, by position


def has_live_path(model):
    """Whether some input reaches some output through live edges."""
    reached = torch.ones(model.widths[0], dtype=torch.bool)
    for layer in model.layers:
        reached = (live_edges(layer).cpu() & reached[:, None]).any(dim=0)
    return bool(reached.any())


def test_edges_that_each_keep_a_layer_alive_but_no_path_are_not_what_is_kept():
    """Scores that rank the edges into hidden node 1 and out of node 0 low and the others high: switching off the
    two lowest left one live edge per layer, in -> 1 and 0 -> out, and no path (a constant output). The kept
    path is the best connected one, and the next edges in the ranking go instead."""
    model = KAN([1, 2, 1], seed=0, grid_size=3)
    scores = [torch.tensor([[0.9, 0.2]]), torch.tensor([[0.1], [0.8]])]
    _mask_lowest(list(model.layers), scores, 2)
    assert has_live_path(model)
    assert dead_masks(model)[0].tolist() == [[True, False]] and dead_masks(model)[1].tolist() == [[True], [False]]


def test_magnitude_pruning_keeps_a_path_from_input_to_output():
    """A hidden node that feeds nothing: magnitude scores (local to each edge) ranked the edge into it highest of
    its layer, and keeping a live edge per layer left the output constant, which compact then refused."""
    x = torch.linspace(-1, 1, 64)[:, None]
    data = dict(train_input=x, train_label=torch.sin(3 * x), test_input=x, test_label=torch.sin(3 * x))
    model = KAN([1, 2, 1], seed=0, grid_size=3)
    model.remove_edge(1, 1, 0)
    with torch.no_grad():
        model.layers[0].scale_base[0, 0] *= 1e-3
        model.layers[0].scale_sp[0, 0] *= 1e-3
        model.layers[0].scale_base[0, 1] *= 10
    prune_to_sparsity(model, data, 0.5, rounds=1, steps=1, finetune_steps=1, score="magnitude", lr=1e-9)
    assert has_live_path(model) and n_edges(model) - sum(int(m.sum()) for m in dead_masks(model)) == 2
    assert model.compact().widths == [1, 1, 1]


def test_a_path_through_symbolic_edges_lets_every_prunable_edge_go():
    model = KAN([2, 3, 1], seed=0, grid_size=3)
    model.fix_symbolic(0, 1, 2, "x", fit_params=False)
    model.fix_symbolic(1, 2, 0, "sin", fit_params=False)
    result = prune_to_sparsity(model, regression_data(), 7 / 9, rounds=1, steps=1, finetune_steps=1,
                               score="magnitude")
    assert result.sparsity == 7 / 9 and has_live_path(model)


def test_a_model_without_a_live_path_is_refused_before_anything_changes():
    model = KAN([1, 2, 1], seed=0, grid_size=3)
    model.remove_edge(0, 0, 1)
    model.remove_edge(1, 0, 0)  # in -> 0 and 1 -> out are live: no path
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="no path of live edges from an input to an output"):
        prune_to_sparsity(model, {key: value[:, :1] if key.endswith("input") else value
                                  for key, value in regression_data().items()}, 0.75, **FIT)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_a_sparsity_that_would_leave_no_path_from_input_to_output_is_refused():
    model = KAN([2, 2, 1], grid_size=3, seed=0)  # 4 + 2 edges: a path keeps 2
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"a path of live edges from an input to an output stays .*it takes 2 "
                                         r"prunable edges\): at most 4 of 6"):
        prune_to_sparsity(model, regression_data(), 0.9, **FIT)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_a_high_sparsity_keeps_a_live_edge_in_every_layer():
    model = KAN([2, 8, 4, 1], grid_size=3, seed=0)
    result = prune_to_sparsity(model, regression_data(), 0.95, rounds=2, steps=2, finetune_steps=1,
                               score="magnitude")
    assert result.edges == n_edges(model) and result.sparsity == round(0.95 * result.edges) / result.edges
    assert all(bool(live_edges(layer).any()) for layer in model.layers)


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5, float("nan")])
def test_sparsity_outside_the_range(sparsity):
    model = KAN([2, 3, 1], seed=0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"\[0, 1\).*" + str(sparsity)):
        prune_to_sparsity(model, regression_data(), sparsity, **FIT)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(sparsity="0.5"), TypeError, "sparsity must be a number"),
    (dict(sparsity=True), TypeError, "sparsity must be a number"),
    (dict(rounds=0), ValueError, "rounds"),
    (dict(rounds=2.0), TypeError, "rounds"),
    (dict(schedule="exponential"), ValueError, "schedule must be one of"),
    (dict(score="random"), ValueError, "score must be one of"),
    (dict(lamb=-0.1), ValueError, "lamb"),
    (dict(lamb=(0.1, 0.2, 0.3)), ValueError, "pair"),
    (dict(lamb=lambda t: -t), ValueError, r"lamb\(1\)"),
    (dict(lamb="big"), TypeError, "lamb"),
    (dict(finetune_steps=0), ValueError, "finetune_steps"),
    (dict(fit_kwargs={"steps": 3}), TypeError, "fit_kwargs"),
])
def test_bad_arguments(kwargs, error, match):
    settings = {**FIT, "sparsity": 0.5, **kwargs}
    with pytest.raises(error, match=match):
        prune_to_sparsity(KAN([2, 3, 1], seed=0), regression_data(), **settings)


@pytest.mark.parametrize("model", [nn.Linear(2, 1), KAN([2, 3, 1], layer="rbf"), kanlib.MLP([2, 3, 1])],
                         ids=["linear", "rbf-kan", "mlp"])
def test_models_without_edge_masks(model):
    with pytest.raises(TypeError, match="B-spline"):
        prune_to_sparsity(model, regression_data(), 0.5, **FIT)


@pytest.mark.parametrize("change,error,match", [
    (lambda data: {k: v for k, v in data.items() if k != "train_input"}, ValueError,
     r"data must have keys \['train_input', 'train_label', 'test_input', 'test_label'\], missing \['train_input'\]"),
    (lambda data: list(data.values()), TypeError, r"data must be a dict with keys .*got list"),
])
def test_bad_data_is_named_before_anything_changes(change, error, match):
    """Without train_input the scores' samples were read first, and a bare KeyError came instead of fit's
    message listing the keys."""
    model = KAN([2, 3, 1], seed=0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(error, match=match):
        prune_to_sparsity(model, change(regression_data()), 0.5, **FIT)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_already_sparser_than_asked():
    model = KAN([2, 3, 1], seed=0)
    for i, j in [(0, 0), (0, 1), (1, 0), (1, 2)]:
        model.remove_edge(0, i, j)
    with pytest.raises(ValueError, match="already has 4 of its 9 edges dead"):
        prune_to_sparsity(model, regression_data(), 0.3, **FIT)


def test_switched_off_edges_leave_their_means_in_the_bias():
    """One layer: the mean output over the samples is what it was before the edges went (to float rounding), the
    outputs move by exactly the removed edges' terms less their means; without the inputs only the mask changes."""
    data = regression_data_4()
    x = data["train_input"].double()
    scores = [torch.arange(12.0).view(4, 3)]  # edges (0, 0), (0, 1), (0, 2), (1, 0) rank lowest
    kept = torch.ones(4, 3, dtype=torch.float64)
    kept[0, :], kept[1, 0] = 0, 0
    for keep_means in (True, False):
        model = KAN([4, 3], seed=3, grid_size=4, dtype=torch.float64)
        with torch.no_grad():
            before, terms = model(x), model.layers[0].activations(x)
            _mask_lowest(list(model.layers), scores, 4, model.layer_inputs(x) if keep_means else None)
            after = model(x)
        assert dead_masks(model)[0].tolist() == (kept == 0).tolist()
        removed = (terms * (1 - kept)).sum(dim=1)
        if keep_means:
            torch.testing.assert_close(after.mean(0), before.mean(0), rtol=0, atol=1e-12)
            torch.testing.assert_close(after, before - removed + removed.mean(0), rtol=0, atol=1e-12)
        else:
            assert model.layers[0].bias is None
            torch.testing.assert_close(after, before - removed, rtol=0, atol=1e-12)


def test_keep_means_gives_every_layer_a_bias_that_the_next_fit_trains():
    data = regression_data()
    for keep_means in (True, False):
        model = KAN([2, 5, 1], seed=0, grid_size=5)
        snapshots = Snapshots()
        biases = []
        snapshots.on_fit_start = lambda model, train_input: biases.append(
            [None if layer.bias is None else layer.bias.detach().clone() for layer in model.layers])
        chosen = {"keep_means": True} if keep_means else {}  # off by default
        result = prune_to_sparsity(model, data, 0.5, rounds=2, seed=0, fit_kwargs={"callbacks": [snapshots]},
                                   **chosen, **{**FIT, "finetune_steps": 3})
        assert result.sparsity == round(0.5 * 15) / 15
        if not keep_means:
            assert all(bias is None for bias in biases[-1]) and model.layers[0].bias is None
            continue
        assert biases[0] == [None, None]  # a KAN built without biases, until the first pruning
        assert all(bias is not None for bias in biases[1]) and bool(biases[1][1].abs().sum() > 0)
        assert not torch.equal(model.layers[1].bias.detach(), biases[-1][1])  # the fine-tuning trained it
        x = data["test_input"]
        torch.testing.assert_close(model.compact()(x), model(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.to_sparse()(x), model(x), rtol=1e-5, atol=1e-5)


def test_keep_means_must_be_a_bool():
    with pytest.raises(TypeError, match=r"keep_means must be True or False, got int"):
        prune_to_sparsity(KAN([2, 3, 1], seed=0), regression_data(), 0.5, keep_means=1, **FIT)
