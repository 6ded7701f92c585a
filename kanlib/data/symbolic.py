"""Symbolic regression data: ``label = f(input)`` on inputs drawn uniformly from a box, as pykan's
``create_dataset``."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from ..checks import check_int, is_real
from .formulas import Formula, get_formula

__all__ = ["symbolic_dataset", "check_float_dtype"]

Dataset = dict[str, torch.Tensor]


def check_float_dtype(dtype: object) -> None:
    """TypeError unless dtype is a floating-point torch.dtype."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")


def _parse_ranges(ranges: object, n_var: int | None) -> torch.Tensor:
    """One (lo, hi) pair or a list of pairs -> float64 [n_var, 2]; infers n_var from a list."""
    try:
        box = torch.as_tensor(np.asarray(ranges, dtype=np.float64))
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"ranges must be a (lo, hi) pair or a list of pairs, got {ranges!r}"
        ) from error
    if box.shape == (2,):
        if n_var is None:
            raise ValueError(
                "n_var is required when ranges is one (lo, hi) pair shared by all variables"
            )
        box = box.expand(n_var, 2)
    elif box.ndim == 2 and box.shape[1] == 2 and box.shape[0] >= 1:
        if n_var is not None and box.shape[0] != n_var:
            raise ValueError(f"ranges lists {box.shape[0]} (lo, hi) pairs but n_var is {n_var}")
    else:
        raise ValueError(
            "ranges must be a (lo, hi) pair or a list of (lo, hi) pairs, "
            f"got shape {tuple(box.shape)}"
        )
    bad = [
        i
        for i, (lo, hi) in enumerate(box.tolist())
        if not (math.isfinite(lo) and lo < hi < math.inf)
    ]
    if bad:
        raise ValueError(
            f"each range needs finite lo < hi; variable {bad[0]} got {tuple(box[bad[0]].tolist())}"
        )
    return box


def _evaluate(fn: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
    """Labels [n, n_out] of ``fn`` at inputs [n, n_var], in the inputs' dtype and device."""
    with torch.no_grad():
        labels = fn(inputs)
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"f must return a torch.Tensor, got {type(labels).__name__}")
    n = inputs.shape[0]
    if labels.ndim not in (1, 2) or labels.shape[0] != n:
        raise ValueError(
            f"f must map inputs [{n}, {inputs.shape[1]}] to labels [{n}] or [{n}, n_out], "
            f"got shape {tuple(labels.shape)}"
        )
    return labels.reshape(n, -1).to(device=inputs.device, dtype=inputs.dtype)


def _standardize(
    train: torch.Tensor, test: torch.Tensor, what: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Subtract the train mean and divide by the train std (unbiased), per column."""
    mean = train.mean(dim=0, keepdim=True)
    std = train.std(dim=0, keepdim=True)
    degenerate = (~(std > 0)).squeeze(0).nonzero().flatten().tolist()
    if degenerate:
        raise ValueError(
            f"cannot normalize {what}: train std is {std.squeeze(0)[degenerate].tolist()} in "
            f"column(s) {degenerate}; need n_train >= 2 and non-constant columns"
        )
    return (train - mean) / std, (test - mean) / std


def symbolic_dataset(
    f_or_name: str | Formula | Callable[[torch.Tensor], torch.Tensor],
    n_var: int | None = None,
    ranges: object = None,
    n_train: int = 1000,
    n_test: int = 1000,
    noise: float = 0.0,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    normalize_input: bool = False,
    normalize_label: bool = False,
) -> Dataset:
    """Regression data ``label = f(input)``, inputs uniform in a box, like pykan's create_dataset.

    ``f_or_name``: a registry name (see ``list_formulas()``) or Formula, whose n_var and ranges
    are the defaults; or a callable mapping inputs [n, n_var] to [n] or [n, n_out], which needs
    n_var unless ``ranges`` lists one pair per variable, and whose ranges default to (-1, 1).
    ``ranges``: one (lo, hi) pair for all variables or a list of n_var pairs.

    Inputs are drawn in float64 on the CPU from a ``torch.Generator`` seeded with ``seed``, train
    before test, so a seed gives the same points on every device; labels are ``f`` of the inputs
    after their cast to ``dtype`` and move to ``device``.
    ``noise`` (pykan has no such option): Gaussian noise of this standard deviation, in label
    units, added to the train labels only, before any normalization; test labels stay exact.
    ``normalize_input`` / ``normalize_label``: as in pykan, subtract the train mean and divide by
    the train std per column, in train and test alike.

    Returns train_input [n_train, n_var], train_label [n_train, n_out], test_input [n_test, n_var]
    and test_label [n_test, n_out].
    """
    if n_var is not None:
        check_int("n_var", n_var, 1)
        n_var = int(n_var)
    check_int("n_train", n_train, 1)
    check_int("n_test", n_test, 1)
    check_int("seed", seed, 0)
    check_float_dtype(dtype)
    if not is_real(noise):
        raise TypeError(f"noise must be a number, got {type(noise).__name__} {noise!r}")
    if not (0 <= noise < math.inf):
        raise ValueError(f"noise must be a finite standard deviation >= 0, got {noise}")
    n_train, n_test, seed, noise = int(n_train), int(n_test), int(seed), float(noise)

    if isinstance(f_or_name, (str, Formula)):
        formula = get_formula(f_or_name) if isinstance(f_or_name, str) else f_or_name
        if n_var is not None and n_var != formula.n_var:
            raise ValueError(
                f"formula {formula.name!r} has n_var={formula.n_var}, got n_var={n_var}"
            )
        fn = formula.fn
        box = _parse_ranges(formula.ranges if ranges is None else ranges, formula.n_var)
    elif callable(f_or_name):
        fn = f_or_name
        box = _parse_ranges((-1.0, 1.0) if ranges is None else ranges, n_var)
    else:
        raise TypeError(
            "f_or_name must be a formula name, a Formula or a callable, "
            f"got {type(f_or_name).__name__}"
        )

    generator = torch.Generator().manual_seed(seed)
    low, width = box[:, 0], box[:, 1] - box[:, 0]

    def draw_inputs(n: int) -> torch.Tensor:
        unit = torch.rand(n, len(box), generator=generator, dtype=torch.float64)
        return (low + width * unit).to(device=device, dtype=dtype)

    train_input, test_input = draw_inputs(n_train), draw_inputs(n_test)
    train_label, test_label = _evaluate(fn, train_input), _evaluate(fn, test_input)
    if noise > 0:
        gaussian = torch.randn(train_label.shape, generator=generator, dtype=torch.float64)
        train_label = train_label + (noise * gaussian).to(device=device, dtype=dtype)
    if normalize_input:
        train_input, test_input = _standardize(train_input, test_input, "inputs")
    if normalize_label:
        train_label, test_label = _standardize(train_label, test_label, "labels")
    return {
        "train_input": train_input,
        "train_label": train_label,
        "test_input": test_input,
        "test_label": test_label,
    }
