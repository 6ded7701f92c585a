"""Training loop for KAN models (and any torch module): `fit` returns a `History`.

`data` uses pykan's `create_dataset` keys: `train_input` [n, in], `train_label`,
`test_input` [m, in], `test_label`. Floating labels ([n] or [n, out]) mean regression
(MSE loss, RMSE metric); int64 class indices ([n], in [0, classes)) mean classification
(cross-entropy loss, accuracy metric; the model returns logits [n, classes]).

`fit` checks its arguments into a `_Settings`, moves model and data, runs the `FitCallback`s'
`on_fit_start`, then a `_Trainer` runs the steps and evaluations. `fit_steps` does the same one
step per `next()`.
"""

from __future__ import annotations

import inspect
import itertools
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, NamedTuple, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .checks import check_bool, check_device, check_int, check_positive_int, check_real
from .distributed import TrainingGroup, smallest_batch, training_group

if TYPE_CHECKING:
    from .quant.qat import QATConfig

DATA_KEYS = ("train_input", "train_label", "test_input", "test_label")
DEFAULT_LR = {"adam": 1e-2, "lbfgs": 1.0}
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
TARGET_EVALUATIONS = 50
# pykan's grid schedule: update_grid_num updates spread over the first stop_grid_update_step steps.
GRID_UPDATE_NUM = 10
STOP_GRID_UPDATE_STEP = 50
# torch's LBFGS keeps a curvature pair only when y.s > 1e-10, an absolute bound: once a KAN's loss is
# small (after grid refinement) most pairs fall below it and LBFGS decays to steepest descent (pykan
# ships its own LBFGS with the bound at 1e-32). LBFGS is invariant to the objective's scale apart from
# that bound and its first step, so fit hands it the objective times this factor. Not more: the line
# search's cubic interpolation squares products of gradients, which must stay finite in float32.
LBFGS_OBJECTIVE_SCALE = 2.0**12
FIRST_LAYER_STEPS = 2
CONSTANT_INPUT_WARNING = r"the samples of input\(s\) .* are all equal"
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


@runtime_checkable
class FitCallback(Protocol):
    """A hook into `fit`: any object with these two methods. Subclass it to inherit methods that
    do nothing and override what you need.

    `fit(..., qat=QATConfig(...))` is such a hook (`kanlib.quant.qat.QATCallback`).
    """

    def check_model(self, model: nn.Module) -> None:
        """Raise when `model` cannot be trained with this callback. Runs while fit checks its
        arguments, before the model moves or changes."""

    def on_fit_start(self, model: nn.Module, train_input: torch.Tensor) -> None:
        """Prepare `model` in place before training. Runs once model and data are on the training
        device and the seed is set, before the optimizer is built and the first evaluation, so
        Parameters added or swapped in here train. train_input: [n, in]."""


class _Splits(NamedTuple):
    """The four tensors of `data`: inputs [n, in] / [m, in] and their labels."""

    train_input: torch.Tensor
    train_label: torch.Tensor
    test_input: torch.Tensor
    test_label: torch.Tensor

    def to(self, device: torch.device) -> "_Splits":
        return _Splits(*(t.to(device) for t in self))

    @property
    def is_classification(self) -> bool:
        return not self.train_label.is_floating_point()


@dataclass(frozen=True)
class _Settings:
    """fit's checked arguments, with `lr`, the step count and the evaluation interval resolved."""

    opt: str
    lr: float
    amp: str | None
    lamb: float
    penalty: dict[str, float]
    batch_size: int | None
    update_grid_every: int | None
    stop_grid_update_step: int | None
    total_steps: int
    eval_every: int
    device: torch.device | None
    seed: int | None
    loss: LossFn | None
    progress: bool
    callbacks: tuple[FitCallback, ...]
    first_layer_steps: int = 0
    group: TrainingGroup | None = None

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return AMP_DTYPES.get(self.amp)

    def updates_grid_before(self, step: int) -> bool:
        """Whether the grid is updated before optimizer step `step` (1-based): when the steps
        already taken are a multiple of `update_grid_every` and below `stop_grid_update_step`."""
        taken = step - 1
        return (
            self.update_grid_every is not None
            and taken % self.update_grid_every == 0
            and (self.stop_grid_update_step is None or taken < self.stop_grid_update_step)
        )

    def evaluates_after(self, step: int) -> bool:
        """Whether fit evaluates after optimizer step `step` (1-based)."""
        return step % self.eval_every == 0 or step == self.total_steps


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
    lamb_l1: float = 1.0,
    lamb_entropy: float = 2.0,
    lamb_coef: float = 0.0,
    lamb_coefdiff: float = 0.0,
    update_grid: bool = True,
    first_layer_steps: int = FIRST_LAYER_STEPS,
    update_grid_every: int | None = None,
    stop_grid_update_step: int | None = None,
    amp: str | None = None,
    device: str | torch.device | None = None,
    seed: int | None = None,
    loss: LossFn | None = None,
    eval_every: int | None = None,
    progress: bool = True,
    qat: QATConfig | None = None,
    callbacks: Sequence[FitCallback] = (),
    distributed: bool = False,
) -> History:
    """Train `model` in place on `data` and return its `History`.

    Give exactly one of `steps` (optimizer steps) or `epochs` (passes over the training
    set; an epoch is ceil(n_train / batch_size) steps, 1 when full batch).

    data: pykan's dict, see the module docstring. Integer labels must be int64 (`.long()`)
        class indices in [0, classes), classes being the width of the model's output; the
        range is checked on the first evaluation, before any step.
    opt: "adam" (default lr 1e-2) or "lbfgs" (default lr 1.0, history_size 10,
        strong-Wolfe line search, torch's default max_iter 20 within one step), in any case
        (pykan's "Adam" and "LBFGS" too). LBFGS works on
        the objective times LBFGS_OBJECTIVE_SCALE, so that torch's absolute curvature bound
        does not stall it at small losses (pykan's own LBFGS lowers that bound instead); when
        the scaled objective overflows in a line-search trial (an exp edge of a symbolic
        formula far from its data, say), the step starts again and the fit goes on unscaled.
    batch_size: None trains on the full training set each step; otherwise shuffled
        minibatches, reshuffled every epoch.
    lamb: adds `lamb * model.regularization_loss(x, l1=lamb_l1, entropy=lamb_entropy,
        coef=lamb_coef, coefdiff=lamb_coefdiff)` to the training objective, x being the step's
        training batch [b, in] (pykan's names and defaults for the four weights).
    update_grid: pykan's grid schedule, on by default for a model whose grid can follow its
        samples (a `model.update_grid(x)` method and, for a stack with `layers`, one on every
        layer): before a step, when the number of steps already taken is a multiple of
        `update_grid_every` and below `stop_grid_update_step`, fit calls
        `model.update_grid(train_input)` under no_grad. pykan's defaults are 10 updates over
        the first 50 steps: every 5 steps, before steps 1, 6, ..., 46. `update_grid=False`
        turns the schedule off; other models (an MLP, an nn.Linear) train without it, and so
        does QAT fine-tuning (`qat=`), whose grid changes would recalibrate the quantizers,
        unless `update_grid_every` or `stop_grid_update_step` is given.
    first_layer_steps: with LBFGS, a stack of layers (`model.layers`, at least two) trains
        only its first layer during its first `first_layer_steps` steps (a separate LBFGS),
        then every layer. Trained jointly from the start, an outer function can fold (stop
        being monotonic over its inputs) before the inner ones have taken the target's shape,
        and the fit sticks in a minimum that ignores an input; on pykan's Example 1 that is the
        fate of many random initializations (`python -m kanlib bench workflow` counts them).
        Longer warm-ups let the hidden values shrink into a narrow range that float32 cannot
        resolve. 0 trains every layer from the first step; Adam fits ignore it.
    update_grid_every: the interval; when given, the model must have `update_grid`, and the
        updates go on to the end unless `stop_grid_update_step` is given too.
    stop_grid_update_step: no update once this many steps are taken; given alone, the
        interval is pykan's `stop_grid_update_step // 10` (at least 1). The grid always comes
        from the whole training set, also with minibatches (pykan uses its minibatch there),
        so it does not follow one batch's samples.
    amp: None, "bf16" or "fp16" autocast on the model's device type; "fp16" uses a
        GradScaler. Only with "adam": LBFGS's line search needs full-precision losses.
        On the CPU, torch's autocast runs matmuls in the low precision, and a kanlib layer
        with backend "auto" takes its eager PyTorch path, whose products follow autocast: the
        losses differ from fp32's. Layers built with backend "cpu" or "sparse" keep computing
        in their parameters' dtype under autocast.
    device: None keeps the model's device; otherwise "cpu" or an available CUDA device, checked
        before the model moves there. Data always moves to the model's device.
    seed: seeds torch's global RNG and the batch shuffling, so a run is reproducible.
    loss: callable(pred, target) -> scalar replacing MSE / cross-entropy; half-precision
        predictions are upcast to float32 first.
    eval_every: evaluate every this many steps (default ceil(steps / 50)), plus before the
        first step and after the last, on the full train and test sets.
    progress: show a tqdm bar with the latest train loss and test metric.
    qat: a `kanlib.quant.QATConfig` trains quantization-aware, through the callback
        `kanlib.quant.qat.QATCallback(qat)`, which runs before `callbacks`: every BSplineKAN in
        the model is swapped in place for a QATBSplineKAN (`prepare_qat`; layers already
        prepared are kept), the input scales are calibrated on the training inputs
        (`calibrate_inputs`), and the learned scales train with the weights. A bare BSplineKAN
        cannot be swapped in place: pass `prepare_qat(layer, qat)` instead.
    callbacks: `FitCallback`s, in order. Each one's `check_model(model)` runs while the
        arguments are checked, before anything moves; its `on_fit_start(model, train_input)`
        runs after model and data are on the device and the seed is set, before the optimizer
        is built, so it may swap submodules or add Parameters.

    distributed: train with torch's DistributedDataParallel in the initialised default
        process group, one process per device (`torchrun --nproc-per-node N script.py`, the
        script calling `torch.distributed.init_process_group("nccl")`, or "gloo" on CPUs).
        Every rank calls fit with the same arguments and the same full `data`, and its model
        on its own device (cuda:LOCAL_RANK, or the CPU); rank 0's parameters and buffers are
        copied to the others first. Each step's batch (the training set, or the minibatch
        from one seeded order, rank 0 drawing the seed when `seed` is None) is cut into
        world-size contiguous shards; rank r computes the loss on shard r, weighted by
        world_size * n_r / n, so that the averaged gradients are those of the batch's mean
        loss: a custom `loss` must be a batch mean for this to hold. The objective LBFGS sees
        is the mean of the ranks' values, the same on every rank, so the line search decides
        alike everywhere. The `lamb` penalty is computed on the step's whole batch on every
        rank (the same on all, so averaging keeps it exact, at the cost of a forward pass of
        the batch per rank). Grid updates use the whole training input on every rank, so the
        grids stay identical without communication. Evaluations run on the whole sets on every
        rank: every rank returns the same History (the step times aside) and holds the same
        trained model, equal to one process's fit on the same batches up to rounding (not with
        `qat`: the gradients of the input quantizers' step sizes depend on the batch's size).
        Pass the model itself, not wrapped. Every trainable parameter must get a gradient in
        each step; the progress bar shows on rank 0 only.

    When fit returns, its last forward call was on the full training input, so a KAN's
    default samples (`model.samples`, used by `refine`, pruning, plots) are the training
    inputs.

    Raises NonFiniteLossError (a FloatingPointError) when the training loss is inf/NaN; with
    LBFGS the parameters are first put back to those of the last finite loss (the start of the
    step before, whose line search led to the non-finite point).
    """
    return _trainer(
        model, data, steps=steps, epochs=epochs, opt=opt, lr=lr, batch_size=batch_size, lamb=lamb,
        lamb_l1=lamb_l1, lamb_entropy=lamb_entropy, lamb_coef=lamb_coef, lamb_coefdiff=lamb_coefdiff,
        update_grid=update_grid, first_layer_steps=first_layer_steps,
        update_grid_every=update_grid_every, stop_grid_update_step=stop_grid_update_step, amp=amp,
        device=device, seed=seed, loss=loss, eval_every=eval_every, progress=progress, qat=qat,
        callbacks=callbacks, distributed=distributed,
    ).run()


def fit_steps(model: nn.Module, data: Mapping[str, torch.Tensor], **options) -> Iterator[History]:
    """`fit`, one optimizer step at a time: checks the arguments (fit's, with its defaults) and
    moves model and data now, then returns a generator that takes the next step (with its
    scheduled grid update and evaluation) on each `next()` and yields the `History` so far.
    Advancing two of them in turn times two models under the same conditions of the machine."""
    bound = inspect.signature(fit).bind(model, data, **options)
    bound.apply_defaults()
    return _trainer(**bound.arguments).steps()


def _trainer(model: nn.Module, data: Mapping[str, torch.Tensor], **options) -> "_Trainer":
    """fit's arguments (all of them, by name) checked, model and data on the device, the
    callbacks started: the `_Trainer` that runs the steps."""
    splits = check_data(data)
    penalty = {name: options.pop(f"lamb_{name}") for name in ("l1", "entropy", "coef", "coefdiff")}
    settings = _check_settings(model, len(splits.train_input), penalty=penalty, **options)
    if settings.device is not None:
        model.to(settings.device)
    device = _model_device(model)
    if settings.group is not None:
        settings.group.check_device(device)
    splits = splits.to(device)
    if settings.group is not None:
        settings.group.check_same(
            splits._asdict(), "data", "each rank takes its shard of every batch of the whole set"
        )
    if settings.seed is not None:
        torch.manual_seed(settings.seed)
    for callback in settings.callbacks:
        callback.on_fit_start(model, splits.train_input)
    return _Trainer(model, splits, settings, device)


class _ScaledTrialOverflow(ArithmeticError):
    """A line-search trial of LBFGS on the scaled objective gave an inf/NaN value or gradient."""


def _finite(value: torch.Tensor, parameters: Iterable[nn.Parameter]) -> bool:
    """Whether value and every gradient of parameters are finite."""
    sums = [p.grad.sum() for p in parameters if p.grad is not None]
    return bool(torch.isfinite(value + sum(sums)))  # inf or NaN anywhere makes the sum so


class _Trainer:
    """One run of fit: model, data on its device, optimizer, grad scaler and the History. With a
    process group, `network` is the model in DistributedDataParallel, which computes the training
    shards; evaluations, grid updates and the penalty use the model itself."""

    def __init__(
        self, model: nn.Module, splits: _Splits, settings: _Settings, device: torch.device
    ):
        self.model, self.splits, self.settings, self.device = model, splits, settings, device
        classification = splits.is_classification
        self.loss_fn = settings.loss or (_cross_entropy if classification else _mse)
        self.metric_fn = _accuracy if classification else _rmse
        self.history = History(metric_name="accuracy" if classification else "rmse")
        self.optimizer = _build_optimizer(model.parameters(), settings.opt, settings.lr)
        self.first_layer_optimizer = (
            _build_optimizer(model.layers[0].parameters(), settings.opt, settings.lr)
            if settings.first_layer_steps else None
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=settings.amp == "fp16")
        self.lbfgs_scale = LBFGS_OBJECTIVE_SCALE
        self.last_finite_loss: float | None = None
        # LBFGS: the parameters at the start of the last step whose first evaluation was finite
        self.last_finite_parameters: list[torch.Tensor] | None = None
        self.group = settings.group
        self.network: nn.Module = model
        if self.group is not None:
            # After the callbacks swapped their modules in; the optimizers hold the same Parameters.
            self.network = self.group.wrap(model, device)

    def run(self) -> History:
        """Evaluate, take `total_steps` steps with the scheduled evaluations, restore the mode."""
        for _ in self.steps():
            pass
        return self.history

    def steps(self) -> Iterator[History]:
        """`run`, yielding the History after each step (and its scheduled evaluation)."""
        settings, model, group = self.settings, self.model, self.group
        seed = settings.seed
        if group is not None and settings.batch_size is not None:
            seed = group.share_seed(seed)  # one batch order for all ranks
        batches = _batches(self.splits.train_input, self.splits.train_label, settings.batch_size, seed)
        was_training = model.training
        model.train()
        shows_progress = settings.progress and (group is None or group.rank == 0)
        bar = tqdm(total=settings.total_steps, disable=not shows_progress, unit="step")
        layouts = group.gradients_in_parameter_layout(model) if group is not None else nullcontext()
        with layouts:
            try:
                self.evaluate(0)
                for step in range(1, settings.total_steps + 1):
                    x, y = next(batches)
                    self.history.seconds_per_step.append(self.timed_step(step, x, y))
                    bar.update()
                    if settings.evaluates_after(step):
                        self.evaluate(step)
                        bar.set_postfix(self.postfix())
                    yield self.history
            finally:
                bar.close()
                model.train(was_training)
                # DistributedDataParallel's gradient hooks stay on the Parameters but act only on a
                # backward after its own forward: the model goes on alone.
                self.network = model

    def autocast(self):
        """The `amp` autocast context on the model's device type, or a no-op."""
        dtype = self.settings.amp_dtype
        return torch.autocast(self.device.type, dtype=dtype) if dtype else nullcontext()

    def timed_step(self, step: int, x: torch.Tensor, y: torch.Tensor) -> float:
        """The scheduled grid update, then optimizer step `step` (1-based) on x [b, in], y [b, ...];
        returns the seconds both took."""
        _synchronize(self.device)
        start = time.perf_counter()
        if self.settings.updates_grid_before(step):
            with torch.no_grad():
                with warnings.catch_warnings():
                    # Constant inputs (blank pixels, a pruned node) keep their grid; said once per
                    # explicit update_grid call, not at every scheduled one.
                    warnings.filterwarnings("ignore", message=CONSTANT_INPUT_WARNING)
                    self.model.update_grid(self.splits.train_input)
        self.optimizer_step(step, x, y)
        _synchronize(self.device)
        return time.perf_counter() - start

    def optimizer_step(self, step: int, x: torch.Tensor, y: torch.Tensor) -> None:
        """One Adam step (through the grad scaler) or one LBFGS step on the batch x, y. An LBFGS
        step whose first evaluation is not finite (the line search of the step before went astray)
        puts the parameters back to the start of that step, the last finite loss's, before
        NonFiniteLossError goes up."""
        if self.settings.opt == "lbfgs":
            start = [p.detach().clone() for p in self.model.parameters()]
            try:
                self.lbfgs_step(step, x, y)
            except NonFiniteLossError:
                if self.last_finite_parameters is not None:
                    self.restore(self.last_finite_parameters)
                raise
            except _ScaledTrialOverflow:
                # The scaled objective overflowed in a line-search trial where the plain one may
                # not: start the step again, and the rest of the fit, unscaled with a fresh LBFGS.
                self.restore(start)
                self.lbfgs_scale = 1.0
                settings, model = self.settings, self.model
                self.optimizer = _build_optimizer(model.parameters(), settings.opt, settings.lr)
                if self.first_layer_optimizer is not None:
                    self.first_layer_optimizer = _build_optimizer(
                        model.layers[0].parameters(), settings.opt, settings.lr
                    )
                self.lbfgs_step(step, x, y)
            self.last_finite_parameters = start
        else:
            self.forward_backward(step, x, y, check_finite=True)
            self.scaler.step(self.optimizer)
            self.scaler.update()

    @torch.no_grad()
    def restore(self, values: list[torch.Tensor]) -> None:
        """The model's parameters set to values (in model.parameters() order)."""
        for parameter, value in zip(self.model.parameters(), values):
            parameter.copy_(value)

    def lbfgs_step(self, step: int, x: torch.Tensor, y: torch.Tensor) -> None:
        """One LBFGS step on the objective times `lbfgs_scale`. Only a step's first evaluation is
        checked: later ones are line-search trials, which may overshoot; the next step's first
        evaluation catches a real blow-up."""
        calls = itertools.count()
        self.optimizer_for(step).step(
            lambda: self.forward_backward(
                step, x, y, next(calls) == 0, scale=self.lbfgs_scale
            )
        )

    def optimizer_for(self, step: int) -> torch.optim.Optimizer:
        """The first layer's optimizer during the first `first_layer_steps` steps, then the model's."""
        if self.first_layer_optimizer is not None and step <= self.settings.first_layer_steps:
            return self.first_layer_optimizer
        return self.optimizer

    def forward_backward(
        self,
        step: int,
        x: torch.Tensor,
        y: torch.Tensor,
        check_finite: bool,
        scale: float = 1.0,
    ) -> torch.Tensor:
        """Zero the gradients, compute the objective on x, y times `scale` and backpropagate it
        (through the grad scaler); with `check_finite`, raise NonFiniteLossError on an inf/NaN
        loss. Returns the scaled objective, detached; with a process group, the mean of the
        ranks' objectives, the same on every rank (as the averaged gradients are)."""
        self.model.zero_grad(set_to_none=True)
        value = self.objective(x, y)
        total = value.detach() if self.group is None else self.group.mean(value)
        if check_finite:
            loss_value = total.item()
            if not math.isfinite(loss_value):
                raise NonFiniteLossError(step, loss_value, self.last_finite_loss)
            self.last_finite_loss = loss_value
        if scale != 1.0:
            value, total = value * scale, total * scale
        self.scaler.scale(value).backward()
        if self.group is not None:
            self.check_gradients()
        if scale != 1.0 and not check_finite and not _finite(total, self.model.parameters()):
            raise _ScaledTrialOverflow
        return total

    def objective(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss of model(x) against y plus `lamb * model.regularization_loss(x, ...)`: a scalar.
        With a process group, the loss is this rank's shard's, weighted (see `fit`), and the
        penalty the whole batch's."""
        x_part, y_part = x, y
        if self.group is not None:
            x_part, y_part = self.group.shard(x), self.group.shard(y)
        with self.autocast():
            pred = self.network(x_part)
        value = self.loss_fn(_upcast(pred), y_part)
        if self.group is not None:
            value = value * self.group.shard_weight(len(x))
        if self.settings.lamb:
            value = value + self.settings.lamb * self.model.regularization_loss(x, **self.settings.penalty)
        return value

    def check_gradients(self) -> None:
        """Raise unless every trainable parameter got a gradient: DistributedDataParallel waits
        for all of them before it averages the last ones."""
        missing = [
            name for name, p in self.model.named_parameters() if p.requires_grad and p.grad is None
        ]
        if missing:
            raise ValueError(
                "fit(distributed=True) needs a gradient for every trainable parameter in every "
                f"step; {missing} got none (freeze them with requires_grad_(False))"
            )

    @torch.no_grad()
    def evaluate(self, step: int) -> None:
        """Record losses and metrics on the full train and test sets, in eval mode. At step 0
        the class labels are checked against the width of the model's logits first."""
        model, splits = self.model, self.splits
        model.eval()
        try:
            with self.autocast():
                # The training input goes last: a KAN keeps it as its default samples.
                test_pred = model(splits.test_input)
                train_pred = model(splits.train_input)
            train_pred, test_pred = _upcast(train_pred), _upcast(test_pred)
            if step == 0 and splits.is_classification:
                _check_class_indices(train_pred, splits)
            history = self.history
            history.step.append(step)
            history.train_loss.append(self.loss_fn(train_pred, splits.train_label).item())
            history.test_loss.append(self.loss_fn(test_pred, splits.test_label).item())
            history.train_metric.append(self.metric_fn(train_pred, splits.train_label).item())
            history.test_metric.append(self.metric_fn(test_pred, splits.test_label).item())
        finally:
            model.train()

    def postfix(self) -> dict[str, str]:
        """The progress bar's latest train loss and test metric."""
        history = self.history
        return {
            "train_loss": f"{history.train_loss[-1]:.4g}",
            f"test_{history.metric_name}": f"{history.test_metric[-1]:.4g}",
        }


def _is_stack(model: nn.Module) -> bool:
    """Whether model is a stack of at least two layers in a `layers` ModuleList (a KAN)."""
    layers = getattr(model, "layers", None)
    return isinstance(layers, nn.ModuleList) and len(layers) >= 2


def _build_optimizer(parameters: Iterable[nn.Parameter], opt: str, lr: float) -> torch.optim.Optimizer:
    """Adam, or LBFGS with pykan's settings, over the parameters that require grad. Adam takes torch's fused
    implementation (one kernel for every tensor, instead of a loop of operations per tensor) where it runs: floating
    parameters on one CPU or CUDA device."""
    trainable = [p for p in parameters if p.requires_grad]
    if opt == "adam":
        devices = {p.device for p in trainable}
        fused = (len(devices) == 1 and next(iter(devices)).type in ("cpu", "cuda")
                 and all(p.dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16) for p in trainable))
        return torch.optim.Adam(trainable, lr=lr, fused=fused or None)
    # pykan's tolerances: torch's defaults (1e-7, 1e-9) end each step early once the error is small,
    # and training stalls after a grid refinement.
    return torch.optim.LBFGS(
        trainable, lr=lr, history_size=10, line_search_fn="strong_wolfe",
        tolerance_grad=1e-32, tolerance_change=1e-32,
    )


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


def metric_on_test_set(model: nn.Module, data: Mapping[str, torch.Tensor], metric: str) -> float:
    """The model's ``"rmse"`` on data's test_input/test_label, or its ``"accuracy"`` in percent (class indices)."""
    with torch.no_grad():
        pred = model(data["test_input"]).float()
    if metric == "rmse":
        return float(torch.sqrt(torch.mean((pred - data["test_label"]) ** 2)))
    if metric == "accuracy":
        return 100.0 * float(_accuracy(pred, data["test_label"]))
    raise ValueError(f"metric: expected 'rmse' or 'accuracy', got {metric!r}")


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


def _check_settings(
    model: nn.Module,
    n_train: int,
    *,
    steps: int | None,
    epochs: int | None,
    opt: str,
    lr: float | None,
    batch_size: int | None,
    lamb: float,
    penalty: dict[str, float],
    update_grid: bool,
    update_grid_every: int | None,
    stop_grid_update_step: int | None,
    amp: str | None,
    device: str | torch.device | None,
    seed: int | None,
    loss: LossFn | None,
    eval_every: int | None,
    progress: bool,
    qat: QATConfig | None,
    callbacks: Sequence[FitCallback],
    first_layer_steps: int = 0,
    distributed: bool = False,
) -> _Settings:
    """fit's arguments checked against `model` and `n_train` training samples; nothing moves."""
    if distributed is True and isinstance(model, nn.parallel.DistributedDataParallel):
        raise TypeError(
            "fit(distributed=True) wraps the model in DistributedDataParallel itself: pass the "
            "model (the wrapper's .module), got a DistributedDataParallel"
        )
    if not isinstance(opt, str) or opt.lower() not in DEFAULT_LR:
        raise ValueError(f"opt must be one of {sorted(DEFAULT_LR)} (any case, as pykan's \"LBFGS\"), got {opt!r}")
    opt = opt.lower()
    lr = DEFAULT_LR[opt] if lr is None else check_real("lr", lr, positive=True)
    _check_amp(amp, opt)
    lamb = check_real("lamb", lamb, minimum=0)
    penalty = {name: check_real(f"lamb_{name}", value, minimum=0) for name, value in penalty.items()}
    hooks = _callbacks(qat, callbacks)
    update_grid_every, stop_grid_update_step = _grid_schedule(
        model, update_grid, update_grid_every, stop_grid_update_step,
        default=not _quantization_aware(model, hooks),
    )
    _check_model_methods(model, lamb, update_grid_every)
    first_layer_steps = check_int("first_layer_steps", first_layer_steps, 0)
    if opt != "lbfgs" or not _is_stack(model):
        first_layer_steps = 0
    if loss is not None and not callable(loss):
        raise TypeError(f"loss must be a callable(pred, target), got {type(loss).__name__}")
    if batch_size is not None:
        batch_size = check_positive_int("batch_size", batch_size)
    total_steps = _total_steps(steps, epochs, n_train, batch_size)
    eval_every = (
        math.ceil(total_steps / TARGET_EVALUATIONS)
        if eval_every is None
        else check_positive_int("eval_every", eval_every)
    )
    if seed is not None:
        seed = check_int("seed", seed, expected="an int or None")
    if device is not None:
        device = check_device(device)
    _model_device(model)  # raises for a model without parameters
    for hook in hooks:
        hook.check_model(model)
    group = _check_distributed(distributed, n_train, batch_size)
    return _Settings(
        opt=opt, lr=lr, amp=amp, lamb=lamb, penalty=penalty, batch_size=batch_size,
        update_grid_every=update_grid_every, stop_grid_update_step=stop_grid_update_step,
        total_steps=total_steps, eval_every=eval_every, device=device, seed=seed, loss=loss,
        progress=progress, callbacks=hooks, first_layer_steps=first_layer_steps, group=group,
    )


def _check_distributed(
    distributed: object, n_train: int, batch_size: int | None
) -> TrainingGroup | None:
    """The process group for `distributed=True` (None for False), checked to give every rank at
    least one sample of every batch."""
    check_bool("distributed", distributed)
    if not distributed:
        return None
    group = training_group()
    smallest = smallest_batch(n_train, batch_size)
    if smallest < group.world_size:
        raise ValueError(
            f"fit(distributed=True) gives each of the {group.world_size} ranks a shard of every "
            f"batch, so every batch needs at least {group.world_size} samples; with "
            f"{n_train} training samples and batch_size={batch_size} the smallest holds {smallest}"
        )
    return group


def _grid_schedule(
    model: nn.Module,
    update_grid: object,
    every: int | None,
    stop: int | None,
    default: bool = True,
) -> tuple[int | None, int | None]:
    """(update_grid_every, stop_grid_update_step) from fit's three grid arguments; (None, None)
    when the grid is not updated. Explicit values win over pykan's defaults, which apply only
    when `default` (not for QAT fine-tuning)."""
    check_bool("update_grid", update_grid)
    if not update_grid:
        if every is not None or stop is not None:
            raise ValueError(
                "update_grid=False turns the grid schedule off, so update_grid_every and "
                f"stop_grid_update_step must be None, got {every!r} and {stop!r}"
            )
        return None, None
    if stop is not None:
        stop = check_int("stop_grid_update_step", stop, 0)
    if every is not None:
        return check_positive_int("update_grid_every", every), stop
    if stop is not None:
        return max(1, stop // GRID_UPDATE_NUM), stop
    if not default or not _has_grid(model):
        return None, None
    return STOP_GRID_UPDATE_STEP // GRID_UPDATE_NUM, STOP_GRID_UPDATE_STEP


def _quantization_aware(model: nn.Module, hooks: Sequence[FitCallback]) -> bool:
    """Whether fit trains quantization-aware: a QATCallback among the hooks (`qat=` adds one) or
    QAT layers already in the model."""
    from .quant.qat import QATBSplineKAN, QATCallback

    return any(isinstance(hook, QATCallback) for hook in hooks) or any(
        isinstance(module, QATBSplineKAN) for module in model.modules()
    )


def _has_grid(model: nn.Module) -> bool:
    """Whether `model.update_grid` exists and, for a stack with `layers`, every layer has one."""
    return callable(getattr(model, "update_grid", None)) and not _layers_without(model, "update_grid")


def _layers_without(model: nn.Module, method: str) -> list[str]:
    """For a stack with `layers`, its layers that have no `method`, as "index (class)"; [] for other models."""
    layers = getattr(model, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        return []
    return [f"{index} ({type(layer).__name__})" for index, layer in enumerate(layers)
            if not callable(getattr(layer, method, None))]


def _callbacks(qat: object, callbacks: object) -> tuple[FitCallback, ...]:
    """The QAT callback for `qat` (unless None) followed by `callbacks`, each checked."""
    if isinstance(callbacks, FitCallback) or not isinstance(callbacks, Sequence):
        raise TypeError(
            "callbacks must be a list or tuple of kanlib.training.FitCallback objects, "
            f"got {type(callbacks).__name__}"
        )
    for index, callback in enumerate(callbacks):
        if not isinstance(callback, FitCallback):
            raise TypeError(
                f"callbacks[{index}] must be a kanlib.training.FitCallback (with methods "
                f"check_model and on_fit_start), got {type(callback).__name__}"
            )
    if qat is None:
        return tuple(callbacks)
    from .quant.qat import QATCallback

    return (QATCallback(qat), *callbacks)


def _total_steps(
    steps: int | None, epochs: int | None, n_train: int, batch_size: int | None
) -> int:
    if (steps is None) == (epochs is None):
        raise ValueError(
            f"give exactly one of steps or epochs, got steps={steps!r}, epochs={epochs!r}"
        )
    if steps is not None:
        return check_positive_int("steps", steps)
    steps_per_epoch = 1 if batch_size is None else math.ceil(n_train / batch_size)
    return check_positive_int("epochs", epochs) * steps_per_epoch


def _check_amp(amp: object, opt: str) -> None:
    if amp is None:
        return
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp must be None, 'bf16' or 'fp16', got {amp!r}")
    if opt == "lbfgs":
        raise ValueError(
            f"amp={amp!r} needs opt='adam': LBFGS's line search compares losses "
            "that reduced precision cannot resolve"
        )


def _check_model_methods(model: nn.Module, lamb: float, update_grid_every: int | None) -> None:
    """The model has the methods that `lamb` > 0 and a grid schedule call."""
    if lamb > 0 and not callable(getattr(model, "regularization_loss", None)):
        raise TypeError(
            f"lamb={lamb} needs a model with a regularization_loss() method, "
            f"{type(model).__name__} has none"
        )
    lacking = _layers_without(model, "regularization_loss")
    if lamb > 0 and lacking:  # a stack's penalty sums its layers' own
        raise TypeError(f"lamb={lamb} needs layers with the sparsity penalty (regularization_loss); layers "
                        f"{', '.join(lacking)} have none (train with lamb=0; an edge-sparse model takes the "
                        f"penalty after to_dense())")
    if update_grid_every is not None and not _has_grid(model):
        raise TypeError(
            "update_grid_every and stop_grid_update_step need a model with an update_grid(x) "
            f"method, {type(model).__name__} has none (a stack needs one on every layer)"
        )


def check_data(data: object) -> _Splits:
    """The four tensors of `data`, checked for keys, types, lengths, label dtypes and finite values."""
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
    for split in ("train", "test"):
        labels = data[f"{split}_label"]
        if not labels.is_floating_point() and labels.dtype != torch.int64:
            raise TypeError(
                f"{split}_label holds class indices, which must be torch.int64, "
                f"got {labels.dtype}; convert them with .long()"
            )
    for key in DATA_KEYS:
        _check_finite(key, data[key])
    return _Splits(*(data[key] for key in DATA_KEYS))


def _check_finite(key: str, values: torch.Tensor) -> None:
    """ValueError when floating ``values`` hold NaN or inf: a loss over them is not finite, and a grid update
    would have moved the grids to them before the first step found that out."""
    if not values.is_floating_point():
        return
    bad = ~torch.isfinite(values)
    if bool(bad.any()):
        first = tuple(bad.nonzero()[0].tolist())
        raise ValueError(f"data[{key!r}] must be finite, got {int(bad.sum())} NaN or inf entries (the first at "
                         f"index {first}: {values[first].item()})")


def _check_class_indices(logits: torch.Tensor, splits: _Splits) -> None:
    """Check that the class labels index the model's logits [n, classes]: each in [0, classes)."""
    if logits.dim() != 2:
        raise ValueError(
            "integer labels are class indices, so the model must return logits [n, classes], "
            f"got an output of shape {tuple(logits.shape)}"
        )
    classes = logits.shape[1]
    for split, labels in (("train", splits.train_label), ("test", splits.test_label)):
        outside = labels[(labels < 0) | (labels >= classes)]
        if len(outside):
            raise ValueError(
                f"{split}_label holds class index {outside[0].item()}, expected indices in "
                f"[0, {classes}) for the model's {classes} outputs "
                f"({len(outside)} of {len(labels)} {split} labels are outside)"
            )
