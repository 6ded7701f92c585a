"""fit's pykan defaults: the grid schedule, the penalty's weights and batch, the samples a KAN keeps, and LBFGS
at small losses."""
import pytest
import torch
from torch import nn

import kanlib.training as training
from kanlib import KAN, QATConfig, fit
from kanlib.layers.bspline import BSplineKAN


def sine_data(n_train=64, n_test=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    train = torch.rand(n_train, 1, generator=generator) * 2 - 1
    test = torch.rand(n_test, 1, generator=generator) * 2 - 1
    return {"train_input": train, "train_label": torch.sin(3 * train),
            "test_input": test, "test_label": torch.sin(3 * test)}


class GridCounter(nn.Module):
    """A linear model with update_grid: records the training forwards before each update."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(1, 1)
        self.training_forwards = 0
        self.updates = []

    def forward(self, x):
        self.training_forwards += self.training
        return self.linear(x)

    def update_grid(self, x):
        self.updates.append(self.training_forwards)


class PenaltyRecorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(1, 1)
        self.calls = []

    def forward(self, x):
        return self.linear(x)

    def regularization_loss(self, x, l1=1.0, entropy=2.0, coef=0.0, coefdiff=0.0):
        self.calls.append({"x": x, "l1": l1, "entropy": entropy, "coef": coef, "coefdiff": coefdiff})
        return self.linear.weight.square().sum()


def updates_of(steps, **kwargs):
    model = GridCounter()
    fit(model, sine_data(), steps=steps, progress=False, **kwargs)
    return model.updates


def test_default_schedule_is_pykans_every_5_steps_for_the_first_50():
    # Adam: one training forward per step, so the count before an update is the steps taken.
    assert updates_of(60, opt="adam") == [0, 5, 10, 15, 20, 25, 30, 35, 40, 45]
    assert training.STOP_GRID_UPDATE_STEP // training.GRID_UPDATE_NUM == 5


def test_update_grid_false_turns_the_schedule_off():
    assert updates_of(12, update_grid=False) == []


@pytest.mark.parametrize("kwargs,expected", [
    ({"update_grid_every": 4}, [0, 4, 8, 12, 16]),  # explicit interval, no stop
    ({"update_grid_every": 3, "stop_grid_update_step": 7}, [0, 3, 6]),
    ({"stop_grid_update_step": 20}, [0, 2, 4, 6, 8, 10, 12, 14, 16]),  # pykan: interval stop // 10
    ({"stop_grid_update_step": 5}, [0, 1, 2, 3, 4]),  # interval at least 1
    ({"stop_grid_update_step": 0}, []),
])
def test_explicit_schedule_overrides_the_default(kwargs, expected):
    assert updates_of(18, opt="adam", **kwargs) == expected


@pytest.mark.parametrize("make", [lambda: nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1)),
                                  lambda: nn.Linear(1, 1),
                                  lambda: KAN([1, 3, 1], layer="rbf", seed=0)])
def test_models_without_a_grid_train_as_before(make):
    model = make()
    history = fit(model, sine_data(), steps=3, opt="lbfgs", progress=False)
    assert history.step[-1] == 3


def test_stack_with_a_layer_lacking_update_grid_is_named_when_a_schedule_is_asked_for():
    with pytest.raises(TypeError, match=r"update_grid\(x\) method, KAN has none \(a stack needs one on every"):
        fit(KAN([1, 3, 1], layer="rbf", seed=0), sine_data(), steps=2, update_grid_every=1, progress=False)


def test_default_schedule_moves_a_kan_grid_to_the_training_inputs():
    data = sine_data()
    data["train_input"] = data["train_input"] * 0.5 + 0.2
    model = KAN([1, 2, 1], grid_size=4, seed=0)
    fit(model, data, steps=2, opt="lbfgs", progress=False)
    layer, k = model.layers[0], model.layers[0].spline_order
    knots = layer.grid[0, k:layer.grid.shape[1] - k]
    torch.testing.assert_close(knots[[0, -1]], torch.stack([data["train_input"].min(), data["train_input"].max()]))


def test_penalty_gets_the_step_batch_and_pykans_weights():
    model = PenaltyRecorder()
    data = sine_data(n_train=40)
    fit(model, data, steps=3, lamb=0.1, opt="adam", progress=False)
    assert [c["x"].shape[0] for c in model.calls] == [40, 40, 40]
    assert all(torch.equal(c["x"], data["train_input"]) for c in model.calls)
    assert {(c["l1"], c["entropy"], c["coef"], c["coefdiff"]) for c in model.calls} == {(1.0, 2.0, 0.0, 0.0)}
    model = PenaltyRecorder()
    fit(model, data, steps=5, lamb=0.1, lamb_l1=0.5, lamb_entropy=0.0, lamb_coef=3.0, lamb_coefdiff=4.0,
        batch_size=8, seed=0, opt="adam", progress=False)
    assert [c["x"].shape[0] for c in model.calls] == [8] * 5
    assert {(c["l1"], c["entropy"], c["coef"], c["coefdiff"]) for c in model.calls} == {(0.5, 0.0, 3.0, 4.0)}


@pytest.mark.parametrize("kwargs", [{"opt": "lbfgs"}, {"opt": "adam", "batch_size": 16, "seed": 0},
                                    {"opt": "adam", "qat": QATConfig(bits=8)}])
def test_a_kan_keeps_the_training_input_as_its_samples(kwargs):
    data = sine_data()
    model = KAN([1, 3, 1], grid_size=4, seed=0)
    history = fit(model, data, steps=4, progress=False, **kwargs)
    assert history.step[-1] == 4
    assert torch.equal(model.samples(None, "test"), data["train_input"])


def test_lbfgs_sees_the_scaled_objective_and_keeps_curvature_pairs_at_small_losses(monkeypatch):
    """torch's LBFGS drops pairs with y.s <= 1e-10: on an objective near 1e-12 it would keep none."""
    kept = []
    original = torch.optim.LBFGS.step

    def step(self, closure):
        loss = original(self, closure)
        kept.append(len(self.state[self._params[0]].get("old_dirs", [])))
        return loss

    monkeypatch.setattr(torch.optim.LBFGS, "step", step)
    x = torch.linspace(-1, 1, 50)[:, None].double()
    data = {"train_input": x, "train_label": 1e-6 * x.square(), "test_input": x, "test_label": 1e-6 * x.square()}
    model = nn.Sequential(nn.Linear(1, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1e-6)
    fit(model, data, steps=2, opt="lbfgs", progress=False)
    assert kept[-1] > 0
    assert training.LBFGS_OBJECTIVE_SCALE > 1


def test_lbfgs_reports_unscaled_losses():
    data = sine_data()
    model = nn.Linear(1, 1)
    history = fit(model, data, steps=1, opt="lbfgs", progress=False)
    with torch.no_grad():
        expected = torch.nn.functional.mse_loss(model(data["train_input"]), data["train_label"]).item()
    assert history.train_loss[-1] == pytest.approx(expected, rel=1e-6)


def test_kan_init_matches_pykans_multkan():
    kan = pytest.importorskip("kan")
    for seed in (0, 3):
        theirs = kan.MultKAN(width=[2, 3, 1], grid=4, k=3, seed=seed, auto_save=False)
        ours = KAN([2, 3, 1], grid_size=4, spline_order=3, seed=seed)
        for their_layer, our_layer in zip(theirs.act_fun, ours.layers):
            for name in ("coef", "scale_base", "scale_sp", "mask"):
                torch.testing.assert_close(getattr(our_layer, name), getattr(their_layer, name).detach())
            torch.testing.assert_close(our_layer.grid, their_layer.grid, rtol=0, atol=1e-6)


def test_noise_scale_given_to_a_kan_wins_over_multkans():
    assert KAN([2, 1], seed=0, noise_scale=0.0).layers[0].coef.abs().max() == 0
    assert isinstance(KAN([2, 1], seed=0).layers[0], BSplineKAN)


def test_qat_fine_tuning_keeps_the_grid_unless_a_schedule_is_given():
    data = sine_data()
    model = KAN([1, 3, 1], grid_size=4, seed=0)
    grids = [layer.grid.clone() for layer in model.layers]
    fit(model, data, steps=3, opt="adam", qat=QATConfig(bits=8), progress=False)
    assert all(torch.equal(layer.grid, grid) for layer, grid in zip(model.layers, grids))
    fit(model, data, steps=3, opt="adam", qat=QATConfig(bits=8), update_grid_every=1, progress=False)
    assert not torch.equal(model.layers[0].grid, grids[0])


def _snapshot(module):
    return [p.detach().clone() for p in module.parameters()]


def _changed(before, module):
    return [not torch.equal(old, new) for old, new in zip(before, module.parameters())]


@pytest.mark.parametrize("warmup", [1, 2, 3])
def test_lbfgs_trains_only_the_first_layer_during_first_layer_steps(warmup):
    data = sine_data()
    model = KAN([1, 3, 2, 1], grid_size=4, seed=0)
    outer = _snapshot(model.layers[1:])
    fit(model, data, opt="lbfgs", steps=warmup, update_grid=False, first_layer_steps=warmup, progress=False)
    assert not any(_changed(outer, model.layers[1:])), "an outer layer moved during the first-layer steps"
    inner = _snapshot(model.layers[0])
    fresh = KAN([1, 3, 2, 1], grid_size=4, seed=0)
    assert all(_changed(_snapshot(fresh.layers[0]), model.layers[0]))
    fit(model, data, opt="lbfgs", steps=1, update_grid=False, first_layer_steps=0, progress=False)
    assert all(_changed(outer, model.layers[1:])) and any(_changed(inner, model.layers[0]))


def test_the_warm_up_then_hands_over_to_every_layer():
    data = sine_data()
    model = KAN([1, 3, 1], grid_size=4, seed=1)
    outer = _snapshot(model.layers[1])
    fit(model, data, opt="lbfgs", steps=3, update_grid=False, first_layer_steps=2, progress=False)
    assert all(_changed(outer, model.layers[1]))


@pytest.mark.parametrize("opt,widths", [("lbfgs", [1, 1]), ("adam", [1, 3, 1])])
def test_first_layer_steps_apply_only_to_lbfgs_on_a_stack(opt, widths):
    data = sine_data()
    model = KAN(widths, grid_size=4, seed=0)
    before = _snapshot(model.layers[-1])
    fit(model, data, opt=opt, steps=1, update_grid=False, first_layer_steps=5, progress=False)
    assert all(_changed(before, model.layers[-1]))


def test_first_layer_steps_zero_matches_a_joint_fit_and_default_differs():
    data = sine_data()
    joint, default = KAN([1, 3, 1], grid_size=4, seed=2), KAN([1, 3, 1], grid_size=4, seed=2)
    fit(joint, data, opt="lbfgs", steps=1, update_grid=False, first_layer_steps=0, progress=False)
    fit(default, data, opt="lbfgs", steps=1, update_grid=False, progress=False)
    assert training.FIRST_LAYER_STEPS >= 1
    assert not torch.equal(joint.layers[1].coef, default.layers[1].coef)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_bad_first_layer_steps(bad):
    with pytest.raises((TypeError, ValueError), match="first_layer_steps"):
        fit(KAN([1, 2, 1], seed=0), sine_data(), opt="lbfgs", steps=1, first_layer_steps=bad, progress=False)


def test_scheduled_updates_keep_constant_inputs_quietly_and_an_explicit_update_says_so():
    import warnings

    x = torch.rand(200, 4, generator=torch.Generator().manual_seed(0))
    x[:, 0] = 0.0  # a blank input, as a border pixel of the digits
    data = {"train_input": x, "train_label": x[:, 1:2], "test_input": x[:20], "test_label": x[:20, 1:2]}
    model = KAN([4, 3, 1], seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit(model, data, steps=12, progress=False)
    with pytest.warns(RuntimeWarning, match=r"input\(s\) \[0\] are all equal"):
        model.update_grid(x)


def test_fit_steps_takes_fits_steps_one_at_a_time_and_two_of_them_can_alternate():
    data = sine_data()
    options = {"steps": 12, "batch_size": 16, "seed": 3, "eval_every": 4, "progress": False}
    reference = KAN([1, 3, 1], grid_size=4, seed=0)
    reference_history = fit(reference, data, **options)
    stepped, other = KAN([1, 3, 1], grid_size=4, seed=0), KAN([1, 4, 1], grid_size=4, seed=1)
    steps_taken = []
    for history, other_history in zip(training.fit_steps(stepped, data, **options),
                                      training.fit_steps(other, data, **options)):
        steps_taken.append((len(history.seconds_per_step), len(other_history.seconds_per_step)))
    assert steps_taken == [(step, step) for step in range(1, 13)]
    # the same updates of the grid, steps and evaluations as fit: the same parameters and history
    for ours, theirs in zip(stepped.state_dict().values(), reference.state_dict().values()):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert history.step == reference_history.step == [0, 4, 8, 12]
    assert history.test_loss == reference_history.test_loss


def test_fit_steps_checks_its_arguments_when_called():
    with pytest.raises(TypeError, match="got an unexpected keyword argument 'epoch'"):
        training.fit_steps(KAN([1, 2, 1], seed=0), sine_data(), epoch=2)
    with pytest.raises(ValueError, match="steps"):
        training.fit_steps(KAN([1, 2, 1], seed=0), sine_data(), steps=0)
