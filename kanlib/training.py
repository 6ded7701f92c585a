"""Training loop for KAN models (and any torch module): `fit` returns a `History`.

`data` uses pykan's `create_dataset` keys: `train_input` [n, in], `train_label`,
`test_input` [m, in], `test_label`. Floating labels ([n] or [n, out]) mean regression
(MSE loss, RMSE metric); integer class indices ([n]) mean classification (cross-entropy
loss, accuracy metric; the model returns logits [n, classes]).
"""

from __future__ import annotations

import itertools
import math
import numbers
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

if TYPE_CHECKING:
    from .quant.qat import QATConfig

DATA_KEYS = ("train_input", "train_label", "test_input", "test_label")
DEFAULT_LR = {"adam": 1e-2, "lbfgs": 1.0}
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
TARGET_EVALUATIONS = 50
EVALUATION_FIELDS = ("step", "train_loss", "test_loss", "train_metric", "test_metric")

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class NonFiniteLossError(FloatingPointError):
    """The training loss became inf or NaN at optimizer step `step` (1-based)."""

    def __init__(self, step: int, loss: float, last_finite_loss: float | None):
        self.step = step
        self.loss = loss
        self.last_finite_loss = last_finite_loss
        if last_finite_loss is None:
            before = "no finite loss before it"
        else:
            before = f"last finite loss {last_finite_loss:.6g} at step {step - 1}"
        super().__init__(f"training loss is {loss} at step {step} ({before})")


@dataclass
class History:
    """What `fit` recorded.

    `step`, `train_loss`, `test_loss`, `train_metric`, `test_metric` hold one entry per
    evaluation; `step` counts optimizer steps taken (0 is before training). Losses exclude
    the `lamb` penalty. `seconds_per_step` holds the wall time of every optimizer step.
    """

    metric_name: str
    step: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    train_metric: list[float] = field(default_factory=list)
    test_metric: list[float] = field(default_factory=list)
    seconds_per_step: list[float] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def final(self) -> dict[str, float]:
        """The last evaluation, keyed like the fields: step, train_loss, ..., test_metric."""
        return {name: getattr(self, name)[-1] for name in EVALUATION_FIELDS}


def fit(
    model: nn.Module,
    data: Mapping[str, torch.Tensor],
    *,
    steps: int | None = None,
    epochs: int | None = None,
    opt: str = "adam",
    lr: float | None = None,
    batch_size: int | None = None,
    lamb: float = 0.0,
    update_grid_every: int | None = None,
    stop_grid_update_step: int | None = None,
    amp: str | None = None,
    device: str | torch.device | None = None,
    seed: int | None = None,
    loss: LossFn | None = None,
    eval_every: int | None = None,
    progress: bool = True,
    qat: QATConfig | None = None,
) -> History:
    """Train `model` in place on `data` and return its `History`.

    Give exactly one of `steps` (optimizer steps) or `epochs` (passes over the training
    set; an epoch is ceil(n_train / batch_size) steps, 1 when full batch).

    opt: "adam" (default lr 1e-2) or "lbfgs" (default lr 1.0, history_size 10,
        strong-Wolfe line search, torch's default max_iter 20 within one step).
    batch_size: None trains on the full training set each step; otherwise shuffled
        minibatches, reshuffled every epoch.
    lamb: adds `lamb * model.regularization_loss()` to the training objective.
    update_grid_every: before a step, when the number of steps already taken is a multiple
        of it and below `stop_grid_update_step` (None: no limit), calls
        `model.update_grid(x_batch)` under no_grad (as pykan does: steps 1, n+1, ...).
    amp: None, "bf16" or "fp16" autocast on the model's device type; "fp16" uses a
        GradScaler. Only with "adam": LBFGS's line search needs full-precision losses.
    device: None keeps the model's device; otherwise the model moves there. Data always
        moves to the model's device.
    seed: seeds torch's global RNG and the batch shuffling, so a run is reproducible.
    loss: callable(pred, target) -> scalar replacing MSE / cross-entropy; half-precision
        predictions are upcast to float32 first.
    eval_every: evaluate every this many steps (default ceil(steps / 50)), plus before the
        first step and after the last, on the full train and test sets.
    progress: show a tqdm bar with the latest train loss and test metric.
    qat: a `kanlib.quant.QATConfig` trains quantization-aware: every BSplineKAN in the model
        is swapped in place for a QATBSplineKAN (`prepare_qat`; layers already prepared are
        kept), the input scales are calibrated on the training inputs (`calibrate_inputs`),
        and the learned scales train with the weights. A bare BSplineKAN cannot be swapped
        in place: pass `prepare_qat(layer, qat)` instead.

    Raises NonFiniteLossError (a FloatingPointError) when the training loss is inf/NaN.
    """
    opt = _check_opt(opt)
    lr = DEFAULT_LR[opt] if lr is None else _check_lr(lr)
    amp_dtype = _check_amp(amp, opt)
    _check_regularization_and_grid(model, lamb, update_grid_every, stop_grid_update_step)
    train_input, train_label, test_input, test_label = _check_data(data)
    if loss is not None and not callable(loss):
        raise TypeError(f"loss must be a callable(pred, target), got {type(loss).__name__}")
    if batch_size is not None:
        _check_positive_int("batch_size", batch_size)
    total_steps = _total_steps(steps, epochs, len(train_input), batch_size)
    eval_every = (
        math.ceil(total_steps / TARGET_EVALUATIONS)
        if eval_every is None
        else _check_positive_int("eval_every", eval_every)
    )
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int or None, got {seed!r}")
    if qat is not None:
        _check_qat(model, qat)

    if device is not None:
        model.to(device)
    device = _model_device(model)
    train_input, train_label, test_input, test_label = (
        t.to(device) for t in (train_input, train_label, test_input, test_label)
    )
    if seed is not None:
        torch.manual_seed(seed)
    if qat is not None:
        from .quant.qat import calibrate_inputs, prepare_qat

        prepare_qat(model, qat)
        calibrate_inputs(model, train_input)

    is_classification = not train_label.is_floating_point()
    loss_fn = loss if loss is not None else (_cross_entropy if is_classification else _mse)
    metric_fn = _accuracy if is_classification else _rmse
    history = History(metric_name="accuracy" if is_classification else "rmse")

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()

    def objective(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with autocast():
            pred = model(x)
        value = loss_fn(_upcast(pred), y)
        if lamb:
            value = value + lamb * model.regularization_loss()
        return value

    @torch.no_grad()
    def evaluate(step: int) -> None:
        model.eval()
        try:
            with autocast():
                train_pred, test_pred = model(train_input), model(test_input)
            train_pred, test_pred = _upcast(train_pred), _upcast(test_pred)
            history.step.append(step)
            history.train_loss.append(loss_fn(train_pred, train_label).item())
            history.test_loss.append(loss_fn(test_pred, test_label).item())
            history.train_metric.append(metric_fn(train_pred, train_label).item())
            history.test_metric.append(metric_fn(test_pred, test_label).item())
        finally:
            model.train()

    trainable = [p for p in model.parameters() if p.requires_grad]
    if opt == "adam":
        optimizer = torch.optim.Adam(trainable, lr=lr)
    else:
        # pykan's tolerances: torch's defaults (1e-7, 1e-9) end each step early once the error is small,
        # and training stalls after a grid refinement.
        optimizer = torch.optim.LBFGS(
            trainable, lr=lr, history_size=10, line_search_fn="strong_wolfe",
            tolerance_grad=1e-32, tolerance_change=1e-32,
        )
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    batches = _batches(train_input, train_label, batch_size, seed)
    step = 0
    last_finite_loss = None

    def forward_backward(x: torch.Tensor, y: torch.Tensor, check_finite: bool) -> torch.Tensor:
        nonlocal last_finite_loss
        optimizer.zero_grad(set_to_none=True)
        value = objective(x, y)
        if check_finite:
            loss_value = value.item()
            if not math.isfinite(loss_value):
                raise NonFiniteLossError(step, loss_value, last_finite_loss)
            last_finite_loss = loss_value
        scaler.scale(value).backward()
        return value

    was_training = model.training
    model.train()
    bar = tqdm(total=total_steps, disable=not progress, unit="step")
    try:
        evaluate(0)
        for step in range(1, total_steps + 1):
            x, y = next(batches)
            _synchronize(device)
            start = time.perf_counter()
            steps_taken = step - 1
            if (
                update_grid_every is not None
                and steps_taken % update_grid_every == 0
                and (stop_grid_update_step is None or steps_taken < stop_grid_update_step)
            ):
                with torch.no_grad():
                    model.update_grid(x)
            if opt == "lbfgs":
                # Only a step's first evaluation is checked: later ones are line-search trials,
                # which may overshoot; the next step's first evaluation catches a real blow-up.
                calls = itertools.count()
                optimizer.step(lambda: forward_backward(x, y, check_finite=next(calls) == 0))
            else:
                forward_backward(x, y, check_finite=True)
                scaler.step(optimizer)
                scaler.update()
            _synchronize(device)
            history.seconds_per_step.append(time.perf_counter() - start)
            bar.update()
            if step % eval_every == 0 or step == total_steps:
                evaluate(step)
                bar.set_postfix(
                    {
                        "train_loss": f"{history.train_loss[-1]:.4g}",
                        f"test_{history.metric_name}": f"{history.test_metric[-1]:.4g}",
                    }
                )
    finally:
        bar.close()
        model.train(was_training)
    return history


def _mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if target.dim() == 1 and pred.dim() == 2 and pred.shape[1] == 1:
        pred = pred[:, 0]
    if pred.shape != target.shape:
        raise ValueError(
            f"model output has shape {tuple(pred.shape)}, "
            f"expected the label shape {tuple(target.shape)}"
        )
    return F.mse_loss(pred.to(target.dtype), target)


def _rmse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return _mse(pred, target).sqrt()


def _cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, target)


def _accuracy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(dim=-1) == target).float().mean()


def _upcast(pred: torch.Tensor) -> torch.Tensor:
    return pred.float() if pred.dtype in (torch.float16, torch.bfloat16) else pred


def _batches(
    inputs: torch.Tensor, labels: torch.Tensor, batch_size: int | None, seed: int | None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (x [b, in], y [b, ...]) forever: the full set, or shuffled minibatches per epoch."""
    if batch_size is None:
        while True:
            yield inputs, labels
    # A private generator keeps the batch order independent of the model's own RNG use.
    generator = torch.Generator()
    generator.manual_seed(seed if seed is not None else int(torch.randint(2**62, ())))
    while True:
        order = torch.randperm(len(inputs), generator=generator).to(inputs.device)
        for index in order.split(batch_size):
            yield inputs[index], labels[index]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _model_device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    if parameter is None:
        raise ValueError(f"model {type(model).__name__} has no parameters to train")
    return parameter.device


def _total_steps(
    steps: int | None, epochs: int | None, n_train: int, batch_size: int | None
) -> int:
    if (steps is None) == (epochs is None):
        raise ValueError(
            f"give exactly one of steps or epochs, got steps={steps!r}, epochs={epochs!r}"
        )
    if steps is not None:
        return _check_positive_int("steps", steps)
    steps_per_epoch = 1 if batch_size is None else math.ceil(n_train / batch_size)
    return _check_positive_int("epochs", epochs) * steps_per_epoch


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive int, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _check_opt(opt: object) -> str:
    if opt not in DEFAULT_LR:
        raise ValueError(f"opt must be one of {sorted(DEFAULT_LR)}, got {opt!r}")
    return opt


def _check_lr(lr: object) -> float:
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real):
        raise TypeError(f"lr must be a positive number, got {lr!r}")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    return float(lr)


def _check_amp(amp: object, opt: str) -> torch.dtype | None:
    if amp is None:
        return None
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp must be None, 'bf16' or 'fp16', got {amp!r}")
    if opt == "lbfgs":
        raise ValueError(
            f"amp={amp!r} needs opt='adam': LBFGS's line search compares losses "
            "that reduced precision cannot resolve"
        )
    return AMP_DTYPES[amp]


def _check_regularization_and_grid(
    model: nn.Module,
    lamb: object,
    update_grid_every: int | None,
    stop_grid_update_step: int | None,
) -> None:
    if isinstance(lamb, bool) or not isinstance(lamb, numbers.Real):
        raise TypeError(f"lamb must be a number >= 0, got {lamb!r}")
    if not (math.isfinite(lamb) and lamb >= 0):
        raise ValueError(f"lamb must be a number >= 0, got {lamb!r}")
    if lamb > 0 and not callable(getattr(model, "regularization_loss", None)):
        raise TypeError(
            f"lamb={lamb} needs a model with a regularization_loss() method, "
            f"{type(model).__name__} has none"
        )
    if update_grid_every is not None:
        _check_positive_int("update_grid_every", update_grid_every)
        if not callable(getattr(model, "update_grid", None)):
            raise TypeError(
                "update_grid_every needs a model with an update_grid(x) method, "
                f"{type(model).__name__} has none"
            )
    if stop_grid_update_step is not None:
        if update_grid_every is None:
            raise ValueError("stop_grid_update_step needs update_grid_every, got None")
        expected = f"stop_grid_update_step must be an int >= 0, got {stop_grid_update_step!r}"
        if isinstance(stop_grid_update_step, bool) or not isinstance(stop_grid_update_step, int):
            raise TypeError(expected)
        if stop_grid_update_step < 0:
            raise ValueError(expected)


def _check_qat(model: nn.Module, qat: object) -> None:
    from .layers.bspline import BSplineKAN
    from .quant.qat import QATBSplineKAN, QATConfig, no_bspline_error

    if not isinstance(qat, QATConfig):
        raise TypeError(f"qat must be a kanlib.quant.QATConfig or None, got {type(qat).__name__}")
    if not any(isinstance(module, BSplineKAN) for module in model.modules()):
        raise no_bspline_error(model, "fit(qat=...)")
    if isinstance(model, BSplineKAN) and not isinstance(model, QATBSplineKAN):
        raise ValueError(
            "fit(qat=...) cannot swap a bare BSplineKAN in place; "
            "train model = kanlib.quant.prepare_qat(model, qat) instead"
        )


def _check_data(data: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    if not isinstance(data, Mapping):
        raise TypeError(
            f"data must be a dict with keys {list(DATA_KEYS)}, got {type(data).__name__}"
        )
    missing = [key for key in DATA_KEYS if key not in data]
    if missing:
        raise ValueError(
            f"data must have keys {list(DATA_KEYS)}, missing {missing} (got {list(data)})"
        )
    for key in DATA_KEYS:
        if not isinstance(data[key], torch.Tensor):
            raise TypeError(f"data[{key!r}] must be a torch.Tensor, got {type(data[key]).__name__}")
    for split in ("train", "test"):
        inputs, labels = data[f"{split}_input"], data[f"{split}_label"]
        if len(inputs) == 0 or len(inputs) != len(labels):
            raise ValueError(
                f"{split}_input and {split}_label must have the same, nonzero length, "
                f"got {len(inputs)} and {len(labels)}"
            )
        if labels.dtype == torch.bool or labels.is_complex():
            raise TypeError(
                f"{split}_label must be floating (regression) or integer class indices, "
                f"got {labels.dtype}"
            )
        if not labels.is_floating_point() and labels.dim() != 1:
            raise ValueError(
                f"{split}_label holds class indices and must have shape [n], "
                f"got {tuple(labels.shape)}"
            )
    if data["train_label"].is_floating_point() != data["test_label"].is_floating_point():
        raise TypeError(
            "train_label and test_label must both be floating or both integer, "
            f"got {data['train_label'].dtype} and {data['test_label'].dtype}"
        )
    return tuple(data[key] for key in DATA_KEYS)
