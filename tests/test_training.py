"""Tests for kanlib.training.fit on plain torch modules and small test doubles."""

import copy
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from kanlib.training import FitCallback, History, fit


def mlp(in_features=1, out_features=1, hidden=16, dropout=0.0):
    layers = [nn.Linear(in_features, hidden), nn.SiLU()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers += [nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, out_features)]
    return nn.Sequential(*layers)


def sine_data(n_train=64, n_test=32, label_shape="column"):
    """y = sin(x) on [-3, 3]; labels [n, 1] ("column") or [n] ("flat")."""
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(n_train + n_test, 1, generator=generator) * 6 - 3
    y = torch.sin(x) if label_shape == "column" else torch.sin(x[:, 0])
    return {
        "train_input": x[:n_train],
        "train_label": y[:n_train],
        "test_input": x[n_train:],
        "test_label": y[n_train:],
    }


def blobs_data(n_train=200, n_test=100):
    """Two classes split by the line x0 + x1 = 0, with a margin of 0.5 around it."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4 * (n_train + n_test), 2, generator=generator)
    x = x[(x.sum(dim=1)).abs() > 0.5][: n_train + n_test]
    y = (x.sum(dim=1) > 0).long()
    return {
        "train_input": x[:n_train],
        "train_label": y[:n_train],
        "test_input": x[n_train:],
        "test_label": y[n_train:],
    }


class Recorder(nn.Module):
    """An MLP that records, for every forward, the mode, grad state, input and output."""

    def __init__(self, in_features=1, out_features=1):
        super().__init__()
        self.net = mlp(in_features, out_features, hidden=8)
        self.calls = []

    def forward(self, x):
        out = self.net(x)
        self.calls.append(
            {
                "training": self.training,
                "grad_enabled": torch.is_grad_enabled(),
                "input": x.detach().clone(),
                "output": out.detach().clone(),
            }
        )
        return out

    def training_calls(self):
        return [call for call in self.calls if call["training"]]


class GridRecorder(Recorder):
    """Records each update_grid(x) with the number of training forwards seen before it."""

    def __init__(self):
        super().__init__()
        self.grid_updates = []

    def update_grid(self, x):
        self.grid_updates.append(
            {
                "training_forwards_before": len(self.training_calls()),
                "input": x.clone(),
                "grad_enabled": torch.is_grad_enabled(),
            }
        )


class PenalizedLinear(nn.Module):
    """A linear model plus a parameter used only by regularization_loss() = scale * sum(unused)."""

    def __init__(self, scale):
        super().__init__()
        self.linear = nn.Linear(1, 1)
        self.unused = nn.Parameter(torch.zeros(3))
        self.scale = scale
        self.unused_gradients = []
        self.penalty_calls = []
        self.unused.register_hook(lambda grad: self.unused_gradients.append(grad.clone()))

    def forward(self, x):
        return self.linear(x)

    def regularization_loss(self, x, l1=1.0, entropy=2.0, coef=0.0, coefdiff=0.0):
        self.penalty_calls.append({"x": x, "l1": l1, "entropy": entropy, "coef": coef, "coefdiff": coefdiff})
        return self.scale * self.unused.sum()


class BlowsUpAt(Recorder):
    """Returns inf outputs on its `blowup_forward`-th training forward (1-based)."""

    def __init__(self, blowup_forward):
        super().__init__()
        self.blowup_forward = blowup_forward

    def forward(self, x):
        out = super().forward(x)
        if self.training and len(self.training_calls()) == self.blowup_forward:
            return out * float("inf")
        return out


class CountOptimizerSteps:
    """Counts optimizer.step calls of any torch optimizer while active."""

    def __enter__(self):
        self.count = 0
        self.handle = register_optimizer_step_post_hook(self._hook)
        return self

    def _hook(self, optimizer, args, kwargs):
        self.count += 1

    def __exit__(self, *exc):
        self.handle.remove()


def test_regression_loss_decreases_and_rmse_is_the_root_of_mse():
    torch.manual_seed(0)
    model = mlp()
    data = sine_data()
    history = fit(model, data, steps=300, progress=False)

    assert history.metric_name == "rmse"
    assert history.step[0] == 0 and history.step[-1] == 300
    assert history.train_loss[-1] < 0.01 * history.train_loss[0]
    with torch.no_grad():
        test_mse = F.mse_loss(model(data["test_input"]), data["test_label"]).item()
    assert history.test_loss[-1] == pytest.approx(test_mse, rel=1e-5)
    assert history.test_metric[-1] == pytest.approx(math.sqrt(test_mse), rel=1e-5)


def test_flat_regression_labels_match_single_column_output():
    torch.manual_seed(0)
    history = fit(mlp(), sine_data(label_shape="flat"), steps=100, progress=False)
    assert history.train_loss[-1] < 0.1 * history.train_loss[0]


def test_output_shape_that_does_not_match_labels_is_an_error():
    with pytest.raises(ValueError, match=r"model output has shape \(64, 2\).*\(64, 1\)"):
        fit(mlp(out_features=2), sine_data(), steps=1, progress=False)


def test_classification_reaches_high_accuracy():
    torch.manual_seed(0)
    model = mlp(in_features=2, out_features=2)
    data = blobs_data()
    history = fit(model, data, steps=200, progress=False)

    assert history.metric_name == "accuracy"
    assert history.test_metric[-1] >= 0.97
    with torch.no_grad():
        logits = model(data["test_input"])
    accuracy = (logits.argmax(dim=1) == data["test_label"]).float().mean().item()
    assert history.test_metric[-1] == pytest.approx(accuracy)
    cross_entropy = F.cross_entropy(logits, data["test_label"]).item()
    assert history.test_loss[-1] == pytest.approx(cross_entropy, rel=1e-5)


def test_lbfgs_fits_in_few_steps():
    torch.manual_seed(0)
    with CountOptimizerSteps() as counter:
        history = fit(mlp(), sine_data(), steps=10, opt="lbfgs", progress=False)
    assert counter.count == 10
    assert history.train_loss[-1] < 1e-3 * history.train_loss[0]


@pytest.mark.parametrize("spelled", ["LBFGS", "Adam"])
def test_pykans_spelling_of_the_optimizer_trains_as_the_lower_case_one(spelled):
    histories = []
    for opt in (spelled, spelled.lower()):
        torch.manual_seed(0)
        histories.append(fit(mlp(), sine_data(), steps=3, opt=opt, progress=False).train_loss)
    assert histories[0] == histories[1]


def test_custom_loss_replaces_the_default():
    torch.manual_seed(0)
    model = mlp()
    data = sine_data()

    def l1(pred, target):
        return (pred - target).abs().mean()

    history = fit(model, data, steps=20, loss=l1, progress=False)
    with torch.no_grad():
        expected = l1(model(data["train_input"]), data["train_label"]).item()
    assert history.train_loss[-1] == pytest.approx(expected, rel=1e-5)
    assert history.metric_name == "rmse"


@pytest.mark.parametrize(
    ("run", "expected_steps"),
    [
        ({"epochs": 3, "batch_size": 16}, 12),  # ceil(50 / 16) = 4 steps per epoch
        ({"epochs": 5}, 5),  # full batch: one step per epoch
        ({"steps": 7, "batch_size": 16}, 7),
    ],
)
def test_steps_and_epochs_count_optimizer_steps(run, expected_steps):
    model = Recorder()
    with CountOptimizerSteps() as counter:
        history = fit(model, sine_data(n_train=50), progress=False, **run)
    assert counter.count == expected_steps
    assert len(history.seconds_per_step) == expected_steps
    assert all(seconds > 0 for seconds in history.seconds_per_step)
    assert history.step[-1] == expected_steps
    assert len(model.training_calls()) == expected_steps


def test_each_epoch_visits_every_training_sample_once():
    model = Recorder()
    data = sine_data(n_train=50)
    fit(model, data, epochs=3, batch_size=16, seed=0, progress=False)

    batches = [call["input"] for call in model.training_calls()]
    assert [len(batch) for batch in batches] == [16, 16, 16, 2] * 3
    epochs = [torch.cat(batches[i : i + 4]) for i in range(0, 12, 4)]
    expected = data["train_input"][:, 0].sort().values
    for epoch in epochs:
        assert torch.equal(epoch[:, 0].sort().values, expected)
    assert not torch.equal(epochs[0], epochs[1])


def test_same_seed_is_bitwise_reproducible_and_different_seeds_differ():
    torch.manual_seed(0)
    initial = mlp(dropout=0.2)  # dropout makes the run depend on torch's global RNG
    data = sine_data()

    def run(seed):
        model = copy.deepcopy(initial)
        history = fit(model, data, steps=30, batch_size=16, seed=seed, eval_every=5, progress=False)
        record = history.as_dict()
        del record["seconds_per_step"]
        return record, [p.detach().clone() for p in model.parameters()]

    first, first_parameters = run(seed=3)
    torch.rand(100)  # advance the global RNG between runs
    second, second_parameters = run(seed=3)
    other, other_parameters = run(seed=4)

    assert first == second
    assert all(torch.equal(a, b) for a, b in zip(first_parameters, second_parameters))
    assert first["train_loss"][1:] != other["train_loss"][1:]
    assert not all(torch.equal(a, b) for a, b in zip(first_parameters, other_parameters))


@pytest.mark.parametrize(
    ("steps", "every", "stop", "expected_steps_taken"),
    [
        (15, 3, 10, [0, 3, 6, 9]),
        (15, 3, 9, [0, 3, 6]),
        (7, 3, None, [0, 3, 6]),
        (5, 1, 0, []),
    ],
)
def test_update_grid_runs_on_the_whole_training_set_at_the_scheduled_steps(
    steps, every, stop, expected_steps_taken
):
    model = GridRecorder()
    data = sine_data(n_train=40)
    fit(
        model,
        data,
        steps=steps,
        batch_size=8,
        update_grid_every=every,
        stop_grid_update_step=stop,
        seed=0,
        progress=False,
    )
    steps_taken = [update["training_forwards_before"] for update in model.grid_updates]
    assert steps_taken == expected_steps_taken
    for update in model.grid_updates:
        assert torch.equal(update["input"], data["train_input"])
        assert not update["grad_enabled"]


def test_update_grid_on_a_one_sample_minibatch_step_uses_the_training_set():
    """1000 = 3 * 333 + 1: an epoch's fourth minibatch has one sample, and the grid update before
    step 4 used to run on it and fail ("update_grid needs at least 2 samples, got 1")."""
    from kanlib import KAN

    model = KAN([1, 3, 1], grid_size=3, seed=0)
    data = sine_data(n_train=1000)
    history = fit(
        model, data, steps=8, batch_size=333, update_grid_every=3, seed=0, progress=False
    )
    assert history.step[-1] == 8
    k = model.layers[0].spline_order
    inner_knots = model.layers[0].grid[0, k : model.layers[0].grid.shape[1] - k]
    assert inner_knots[0] == data["train_input"].min()
    assert inner_knots[-1] == data["train_input"].max()


def test_update_grid_gets_the_full_training_set_without_batching():
    model = GridRecorder()
    data = sine_data()
    fit(model, data, steps=4, update_grid_every=2, progress=False)
    assert [update["training_forwards_before"] for update in model.grid_updates] == [0, 2]
    assert all(torch.equal(update["input"], data["train_input"]) for update in model.grid_updates)


def test_regularization_gradient_is_lamb_times_penalty_gradient():
    model = PenalizedLinear(scale=3.0)
    fit(model, sine_data(), steps=4, lamb=0.5, progress=False)
    assert len(model.unused_gradients) == 4
    for grad in model.unused_gradients:
        torch.testing.assert_close(grad, torch.full((3,), 1.5))


def test_regularization_is_left_out_when_lamb_is_zero():
    model = PenalizedLinear(scale=3.0)
    fit(model, sine_data(), steps=4, progress=False)
    assert model.unused_gradients == []


def test_amp_bf16_runs_the_forward_under_autocast():
    torch.manual_seed(0)
    model = Recorder()
    history = fit(model, sine_data(), steps=100, amp="bf16", progress=False)
    assert {call["output"].dtype for call in model.calls} == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert history.train_loss[-1] < 0.5 * history.train_loss[0]


def test_amp_fp16_on_cpu_uses_a_grad_scaler(monkeypatch):
    scaler_steps = []
    original_step = torch.amp.GradScaler.step

    def recording_step(self, optimizer, *args, **kwargs):
        scaler_steps.append(self.is_enabled())
        return original_step(self, optimizer, *args, **kwargs)

    monkeypatch.setattr(torch.amp.GradScaler, "step", recording_step)
    torch.manual_seed(0)
    model = Recorder()
    history = fit(model, sine_data(), steps=100, amp="fp16", progress=False)

    assert {call["output"].dtype for call in model.calls} == {torch.float16}
    assert scaler_steps == [True] * 100
    assert history.train_loss[-1] < 0.5 * history.train_loss[0]


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_with_lbfgs_is_rejected(amp):
    with pytest.raises(ValueError, match=f"amp='{amp}' needs opt='adam'"):
        fit(mlp(), sine_data(), steps=1, opt="lbfgs", amp=amp, progress=False)


@pytest.mark.parametrize("blowup_step", [4, 1])
def test_non_finite_loss_reports_step_and_last_finite_loss(blowup_step):
    model = BlowsUpAt(blowup_forward=blowup_step)
    data = sine_data()
    with pytest.raises(FloatingPointError) as raised:
        fit(model, data, steps=10, progress=False)

    error = raised.value
    assert error.step == blowup_step
    assert re.search(rf"\bat step {blowup_step}\b", str(error))
    outputs = [call["output"] for call in model.training_calls()]
    assert len(outputs) == blowup_step
    if blowup_step == 1:
        assert error.last_finite_loss is None
        assert "no finite loss" in str(error)
    else:
        last_finite = F.mse_loss(outputs[-2], data["train_label"]).item()
        assert error.last_finite_loss == pytest.approx(last_finite, rel=1e-6)
        assert f"{error.last_finite_loss:.6g}" in str(error)


class NonFiniteOnceFlagged(Recorder):
    """Returns NaN outputs in training forwards once ``flagged`` is set."""

    flagged = False

    def forward(self, x):
        out = super().forward(x)
        return out * float("nan") if self.training and self.flagged else out


@pytest.mark.parametrize("steps_before", [1, 3])
def test_lbfgs_puts_the_parameters_back_to_the_last_finite_loss(steps_before):
    """A step's first evaluation is NaN where the step before ended: the parameters go back to that step's start,
    the last point whose loss was finite, and the error reports it."""
    torch.manual_seed(0)
    model = NonFiniteOnceFlagged()
    starts, taken = [], []

    def before_step(optimizer, args, kwargs):
        starts.append([p.detach().clone() for p in model.parameters()])

    def after_step(optimizer, args, kwargs):
        taken.append(1)
        if len(taken) == steps_before:
            model.flagged = True

    handles = [register_optimizer_step_pre_hook(before_step), register_optimizer_step_post_hook(after_step)]
    try:
        with pytest.raises(FloatingPointError) as raised:
            fit(model, sine_data(), steps=10, opt="lbfgs", progress=False)
    finally:
        for handle in handles:
            handle.remove()
    assert raised.value.step == steps_before + 1 and raised.value.last_finite_loss is not None
    for parameter, start in zip(model.parameters(), starts[steps_before - 1]):
        assert torch.equal(parameter.detach(), start)
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


def test_evaluation_runs_in_eval_mode_without_grad_and_restores_the_mode():
    model = Recorder()
    history = fit(model, sine_data(), steps=10, eval_every=4, progress=False)

    assert history.step == [0, 4, 8, 10]
    evaluation_calls = [call for call in model.calls if not call["training"]]
    assert len(evaluation_calls) == 2 * len(history.step)  # train and test set per evaluation
    assert not any(call["grad_enabled"] for call in evaluation_calls)
    assert all(call["grad_enabled"] for call in model.training_calls())
    assert model.training

    model.eval()
    fit(model, sine_data(), steps=2, progress=False)
    assert not model.training


def test_default_evaluation_schedule_has_about_fifty_points():
    history = fit(mlp(), sine_data(), steps=200, progress=False)
    assert history.step == list(range(0, 201, 4))
    assert len(history.train_loss) == len(history.test_metric) == len(history.step)


def test_history_helpers():
    history = fit(mlp(), sine_data(), steps=6, eval_every=5, progress=False)
    assert isinstance(history, History)
    record = history.as_dict()
    assert record["step"] == [0, 5, 6]
    assert record["metric_name"] == "rmse"
    assert len(record["seconds_per_step"]) == 6
    assert history.final == {
        "step": 6,
        "train_loss": history.train_loss[-1],
        "test_loss": history.test_loss[-1],
        "train_metric": history.train_metric[-1],
        "test_metric": history.test_metric[-1],
    }


def test_progress_bar_shows_loss_and_metric_only_when_asked(capsys):
    fit(mlp(), sine_data(), steps=5, progress=False)
    assert capsys.readouterr().err == ""
    fit(mlp(), sine_data(), steps=5, progress=True)
    shown = capsys.readouterr().err
    assert "5/5" in shown and "train_loss=" in shown and "test_rmse=" in shown


def test_explicit_device_moves_model_and_data():
    model = mlp().double()
    data = {key: value.double() for key, value in sine_data().items()}
    history = fit(model, data, steps=3, device=torch.device("cpu"), progress=False)
    assert next(model.parameters()).device.type == "cpu"
    assert history.step[-1] == 3


def valid_call(**overrides):
    arguments = {"model": mlp(), "data": sine_data(), "steps": 2, "progress": False}
    arguments.update(overrides)
    return arguments


def sine_data_with(**replacements):
    data = sine_data()
    data.update(replacements)
    return data


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"data": [1, 2]}, TypeError, r"data must be a dict .* got list"),
        (
            {"data": {"train_input": torch.zeros(3, 1)}},
            ValueError,
            r"missing \['train_label', 'test_input', 'test_label'\]",
        ),
        (
            {"data": sine_data_with(train_label=torch.zeros(10, 1))},
            ValueError,
            r"train_input and train_label .* got 64 and 10",
        ),
        (
            {"data": sine_data_with(test_input=torch.zeros(5, 1))},
            ValueError,
            r"test_input and test_label .* got 5 and 32",
        ),
        (
            {"data": sine_data_with(test_label=[0.0] * 32)},
            TypeError,
            r"data\['test_label'\] must be a torch.Tensor, got list",
        ),
        (
            {"data": sine_data_with(train_label=torch.zeros(64, dtype=torch.bool))},
            TypeError,
            r"train_label must be floating .* got torch.bool",
        ),
        (
            {"data": sine_data_with(train_label=torch.zeros(64, 1, dtype=torch.long))},
            ValueError,
            r"must have shape \[n\], got \(64, 1\)",
        ),
        (
            {"data": sine_data_with(test_label=torch.zeros(32, dtype=torch.long))},
            TypeError,
            r"both be floating or both integer, got torch.float32 and torch.int64",
        ),
        ({"steps": 0}, ValueError, r"steps must be a positive int, got 0"),
        ({"steps": -3}, ValueError, r"steps must be a positive int, got -3"),
        ({"steps": 2.5}, TypeError, r"steps must be a positive int, got 2.5"),
        (
            {"steps": None},
            ValueError,
            r"exactly one of steps or epochs, got steps=None, epochs=None",
        ),
        ({"epochs": 1}, ValueError, r"exactly one of steps or epochs, got steps=2, epochs=1"),
        ({"steps": None, "epochs": 0}, ValueError, r"epochs must be a positive int, got 0"),
        ({"opt": "sgd"}, ValueError, r"opt must be one of \['adam', 'lbfgs'\] \(any case.*got 'sgd'"),
        ({"lr": 0}, ValueError, r"lr must be a finite number > 0, got 0"),
        ({"lr": -0.1}, ValueError, r"lr must be a finite number > 0, got -0.1"),
        ({"lr": "fast"}, TypeError, r"lr must be a finite number > 0, got str 'fast'"),
        ({"batch_size": 0}, ValueError, r"batch_size must be a positive int, got 0"),
        ({"batch_size": -8}, ValueError, r"batch_size must be a positive int, got -8"),
        ({"eval_every": 0}, ValueError, r"eval_every must be a positive int, got 0"),
        ({"amp": "fp8"}, ValueError, r"amp must be None, 'bf16' or 'fp16', got 'fp8'"),
        ({"lamb": -1.0}, ValueError, r"lamb must be a finite number >= 0, got -1.0"),
        ({"lamb": 0.1}, TypeError, r"regularization_loss\(\) method, Sequential has none"),
        ({"update_grid_every": 2}, TypeError, r"update_grid\(x\) method, Sequential has none"),
        ({"update_grid_every": 0}, ValueError, r"update_grid_every must be a positive int, got 0"),
        (
            {"stop_grid_update_step": 5},
            TypeError,
            r"stop_grid_update_step need a model with an update_grid\(x\) method, Sequential has none",
        ),
        (
            {"update_grid": False, "update_grid_every": 5},
            ValueError,
            r"update_grid=False turns the grid schedule off, so update_grid_every and "
            r"stop_grid_update_step must be None, got 5 and None",
        ),
        ({"update_grid": 1}, TypeError, r"update_grid must be True or False, got int"),
        ({"lamb_l1": -1.0}, ValueError, r"lamb_l1 must be a finite number >= 0, got -1.0"),
        ({"lamb_coefdiff": "x"}, TypeError, r"lamb_coefdiff must be a finite number >= 0, got str"),
        ({"loss": "mse"}, TypeError, r"loss must be a callable\(pred, target\), got str"),
        ({"seed": 1.5}, TypeError, r"seed must be an int or None, got 1.5"),
        ({"model": nn.SiLU()}, ValueError, r"model SiLU has no parameters"),
    ],
)
def test_bad_input_is_rejected_with_what_was_expected_and_received(overrides, error, message):
    with pytest.raises(error, match=message):
        fit(**valid_call(**overrides))


def test_amp_trains_a_kan_on_the_torch_path():
    from kanlib import KAN

    torch.manual_seed(0)
    model = KAN([1, 4, 1], grid_size=4, backend="eager")
    history = fit(model, sine_data(), steps=30, amp="bf16", progress=False)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert history.train_loss[-1] < history.train_loss[0]


@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("dtype", [torch.int32, torch.uint8])
def test_class_labels_that_are_not_int64_are_rejected(split, dtype):
    data = blobs_data()
    data[f"{split}_label"] = data[f"{split}_label"].to(dtype)
    message = (
        rf"{split}_label holds class indices, which must be torch.int64, got {dtype}; "
        r"convert them with \.long\(\)"
    )
    with pytest.raises(TypeError, match=message):
        fit(mlp(in_features=2, out_features=2), data, steps=2, progress=False)


@pytest.mark.parametrize(("split", "bad"), [("train", 4), ("train", -1), ("test", 2)])
def test_class_labels_outside_the_model_outputs_are_rejected_before_training(split, bad):
    model = Recorder(in_features=2, out_features=2)
    data = blobs_data()
    labels = data[f"{split}_label"].clone()
    labels[5] = bad
    data[f"{split}_label"] = labels
    message = (
        rf"{split}_label holds class index {bad}, expected indices in \[0, 2\) for the model's "
        rf"2 outputs \(1 of {len(labels)} {split} labels are outside\)"
    )
    with CountOptimizerSteps() as counter, pytest.raises(ValueError, match=message):
        fit(model, data, steps=3, progress=False)
    assert counter.count == 0
    assert model.training_calls() == []


def test_class_labels_need_two_dimensional_logits():
    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(2, 1)

        def forward(self, x):
            return self.linear(x)[:, 0]

    def loss(pred, target):
        return (pred - target).pow(2).mean()

    with pytest.raises(ValueError, match=r"logits \[n, classes\], got an output of shape \(200,\)"):
        fit(Flat(), blobs_data(), steps=2, loss=loss, progress=False)


def test_amp_bf16_on_the_cpu_changes_a_kan_s_losses():
    """The default backend ("auto") takes the eager path under CPU autocast, whose products run
    in bfloat16; the CPU kernels it used to take computed in float32, giving fp32's losses."""
    from kanlib import KAN

    initial = KAN([1, 4, 1], grid_size=4, seed=0)
    data = sine_data()
    fp32 = fit(copy.deepcopy(initial), data, steps=30, seed=0, progress=False)
    bf16 = fit(copy.deepcopy(initial), data, steps=30, seed=0, amp="bf16", progress=False)
    assert bf16.train_loss != fp32.train_loss
    assert bf16.train_loss[-1] < 0.5 * bf16.train_loss[0]


@pytest.mark.parametrize(
    ("device", "error", "message"),
    [
        ("meta", ValueError, r"device: expected 'cpu', 'cuda' or 'cuda:<index>'.*got 'meta'"),
        ("cuda:99", ValueError, r"device: got 'cuda:99'"),
        ("gpu", ValueError, r"device: expected .* got 'gpu'"),
        (3, TypeError, r"device: expected .* got int 3"),
    ],
)
def test_bad_device_is_rejected_before_the_model_moves(device, error, message):
    model = mlp()
    with pytest.raises(error, match=message):
        fit(model, sine_data(), steps=1, device=device, progress=False)
    assert {p.device.type for p in model.parameters()} == {"cpu"}


class SwapHead(FitCallback):
    """Replaces the last layer of an nn.Sequential at fit start and records the calls."""

    def __init__(self, calls, name="swap"):
        self.calls, self.name = calls, name
        self.head = self.initial_weight = None

    def check_model(self, model):
        self.calls.append((self.name, "check_model", model))

    def on_fit_start(self, model, train_input):
        self.calls.append((self.name, "on_fit_start", model, train_input))
        self.head = nn.Linear(model[-1].in_features, model[-1].out_features)
        self.initial_weight = self.head.weight.detach().clone()
        model[-1] = self.head


def test_callbacks_run_in_order_and_their_new_parameters_train():
    model = mlp()
    data = sine_data()
    calls = []
    first, second = SwapHead(calls, "first"), SwapHead(calls, "second")
    fit(model, data, steps=5, callbacks=[first, second], progress=False)

    assert [call[:2] for call in calls] == [
        ("first", "check_model"),
        ("second", "check_model"),
        ("first", "on_fit_start"),
        ("second", "on_fit_start"),
    ]
    assert all(call[2] is model for call in calls)
    assert all(torch.equal(call[3], data["train_input"]) for call in calls[2:])
    assert model[-1] is second.head
    assert not torch.equal(second.head.weight, second.initial_weight)


def test_a_callback_check_failure_stops_fit_before_anything_changes():
    class Refuses(FitCallback):
        def check_model(self, model):
            raise ValueError("not this model")

        def on_fit_start(self, model, train_input):
            raise AssertionError("on_fit_start must not run")

    model = Recorder()
    with pytest.raises(ValueError, match="not this model"):
        fit(model, sine_data(), steps=2, callbacks=[Refuses()], progress=False)
    assert model.calls == []


@pytest.mark.parametrize(
    ("callbacks", "message"),
    [
        (SwapHead([]), r"callbacks must be a list or tuple of .*FitCallback objects, got SwapHead"),
        ([SwapHead([]), "print"], r"callbacks\[1\] must be a .*FitCallback .* got str"),
        (None, r"callbacks must be a list or tuple .* got NoneType"),
    ],
)
def test_callbacks_must_be_fit_callbacks(callbacks, message):
    with pytest.raises(TypeError, match=message):
        fit(mlp(), sine_data(), steps=1, callbacks=callbacks, progress=False)


def test_metric_on_test_set_gives_rmse_or_accuracy_in_percent():
    from kanlib.training import metric_on_test_set

    regression = {"test_input": torch.tensor([[0.0], [1.0]]), "test_label": torch.tensor([[1.0], [3.0]])}
    assert metric_on_test_set(torch.nn.Identity(), regression, "rmse") == pytest.approx((2.5) ** 0.5)
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 1, 1])
    assert metric_on_test_set(torch.nn.Identity(), {"test_input": logits, "test_label": labels},
                              "accuracy") == pytest.approx(75.0)
    with pytest.raises(ValueError, match="metric: expected 'rmse' or 'accuracy', got 'mae'"):
        metric_on_test_set(torch.nn.Identity(), regression, "mae")


def test_adam_takes_torchs_fused_implementation_where_it_runs():
    from kanlib.training import _build_optimizer

    on_cpu = [torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(2, 2, dtype=torch.float64))]
    assert _build_optimizer(on_cpu, "adam", 1e-2).defaults["fused"] is True
    on_meta = [torch.nn.Parameter(torch.randn(3, device="meta"))]
    assert not _build_optimizer(on_meta, "adam", 1e-2).defaults["fused"]


@pytest.mark.parametrize("key, index, value", [("train_label", (5, 0), float("nan")),
                                               ("train_input", (0, 0), float("inf")),
                                               ("test_label", (30, 0), float("-inf")),
                                               ("test_input", (7, 0), float("nan"))])
def test_data_that_is_not_finite_is_refused_before_the_grids_move(key, index, value):
    """A NaN label was found by the first loss, after the first grid update had moved the grids to the data."""
    from kanlib import KAN

    data = sine_data()
    data[key] = data[key].clone()
    data[key][index] = value
    data[key][-1, 0] = value
    model = KAN([1, 3, 1], grid_size=4, seed=0)
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with pytest.raises(ValueError, match=rf"data\['{key}'\] must be finite, got 2 NaN or inf entries \(the first "
                                         rf"at index \({index[0]}, 0\): {value}\)"):
        fit(model, data, steps=2, update_grid=True, progress=False)
    assert all(torch.equal(tensor, model.state_dict()[name]) for name, tensor in state.items())
