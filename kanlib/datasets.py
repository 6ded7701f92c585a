"""Datasets for KAN experiments: symbolic formulas, scikit-learn's 8x8 digits and (Fashion-)MNIST.

Every loader returns the dict of pykan's ``kan.utils.create_dataset``: ``train_input``,
``train_label``, ``test_input``, ``test_label``. Nothing here downloads anything.
"""

from __future__ import annotations

import difflib
import gzip
import inspect
import math
import numbers
import os
import struct
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
import torch

__all__ = [
    "FORMULAS",
    "Formula",
    "FormulaRegistry",
    "get_formula",
    "list_formulas",
    "load_digits",
    "load_mnist",
    "read_idx",
    "symbolic_dataset",
]

Range = tuple[float, float]
Dataset = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Formula:
    """A named target ``fn``: inputs [n, n_var] -> labels [n], with its sampling box.

    ``ranges`` holds one ``(lo, hi)`` per input column, ``variables`` the column names in the
    order ``fn`` reads them, ``expression`` the formula in SymPy syntax over those names.
    """

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    n_var: int
    ranges: tuple[Range, ...]
    expression: str
    source: str
    variables: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.ranges) != self.n_var:
            raise ValueError(f"{self.name}: expected {self.n_var} ranges, got {len(self.ranges)}")
        if self.variables and len(self.variables) != self.n_var:
            raise ValueError(
                f"{self.name}: expected {self.n_var} variable names, got {len(self.variables)}"
            )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Evaluate on inputs [n, n_var]; returns [n]."""
        return self.fn(x)


class FormulaRegistry(Mapping[str, Formula]):
    """Read-only ``name -> Formula`` mapping; aliases resolve on lookup but are not iterated."""

    def __init__(self, formulas: list[Formula], aliases: dict[str, str]) -> None:
        self._formulas = {formula.name: formula for formula in formulas}
        if len(self._formulas) != len(formulas):
            raise ValueError("formula names must be unique")
        dangling = sorted(alias for alias, name in aliases.items() if name not in self._formulas)
        if dangling:
            raise ValueError(f"aliases point to no formula: {dangling}")
        self._aliases = MappingProxyType(dict(aliases))

    @property
    def aliases(self) -> Mapping[str, str]:
        """``alias -> canonical name``."""
        return self._aliases

    def __getitem__(self, name: str) -> Formula:
        return self._formulas[self._aliases.get(name, name)]

    def __iter__(self) -> Iterator[str]:
        return iter(self._formulas)

    def __len__(self) -> int:
        return len(self._formulas)


class _ByColumn:
    """Adapts ``f(x1, ..., xk)`` taking [n] columns to ``fn(x)`` taking an [n, k] tensor."""

    def __init__(self, f: Callable[..., torch.Tensor]) -> None:
        self.f = f

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.f(*x.unbind(dim=1))


_KAN_PAPER = "Liu et al. 2024, KAN: Kolmogorov-Arnold Networks, section 3.1 toy functions"
_PI = math.pi


def _toy(name: str, expression: str, f: Callable[..., torch.Tensor]) -> Formula:
    variables = tuple(inspect.signature(f).parameters)
    return Formula(
        name=name,
        fn=_ByColumn(f),
        n_var=len(variables),
        ranges=((-1.0, 1.0),) * len(variables),
        expression=expression,
        source=_KAN_PAPER,
        variables=variables,
    )


def _exp_mean_sin_sq(x: torch.Tensor) -> torch.Tensor:
    return torch.exp(torch.sin(_PI * x / 2).square().mean(dim=1))


_TOY_FORMULAS = [
    _toy("bessel_j0_20x", "besselj(0, 20*x)", lambda x: torch.special.bessel_j0(20 * x)),
    _toy(
        "exp_sin_sq",
        "exp(sin(pi*x) + y**2)",
        lambda x, y: torch.exp(torch.sin(_PI * x) + y**2),
    ),
    _toy("product_xy", "x*y", lambda x, y: x * y),
    Formula(
        name="exp_mean_sin_sq_100d",
        fn=_exp_mean_sin_sq,
        n_var=100,
        ranges=((-1.0, 1.0),) * 100,
        expression="exp(sum(sin(pi*x_i/2)**2 for i in 1..100)/100)",
        source=_KAN_PAPER,
        variables=tuple(f"x{i}" for i in range(1, 101)),
    ),
    _toy(
        "exp_sin_sum_sq_4d",
        "exp((sin(pi*(x1**2 + x2**2)) + sin(pi*(x3**2 + x4**2)))/2)",
        lambda x1, x2, x3, x4: torch.exp(
            (torch.sin(_PI * (x1**2 + x2**2)) + torch.sin(_PI * (x3**2 + x4**2))) / 2
        ),
    ),
]

_FEYNMAN_DEFAULT_RANGE = (1.0, 5.0)


def _feynman(
    number: str,
    expression: str,
    f: Callable[..., torch.Tensor],
    ranges: dict[str, Range] | None = None,
    ai_feynman_id: str | None = None,
) -> Formula:
    """Registry entry ``feynman_<number>``; variables are ``f``'s parameters, in the dataset's
    column order, each sampled from ``ranges`` or else (1, 5)."""
    variables = tuple(inspect.signature(f).parameters)
    ranges = ranges or {}
    unknown = sorted(set(ranges) - set(variables))
    if unknown:
        raise ValueError(f"feynman {number}: ranges name unknown variables {unknown}")
    return Formula(
        name="feynman_" + number.replace(".", "_"),
        fn=_ByColumn(f),
        n_var=len(variables),
        ranges=tuple(ranges.get(v, _FEYNMAN_DEFAULT_RANGE) for v in variables),
        expression=expression,
        source=(
            f"AI Feynman dataset (Udrescu & Tegmark 2020), equation {ai_feynman_id or number}; "
            "variable order and ranges from its FeynmanEquations.csv"
        ),
        variables=variables,
    )


# The 27 equations of the KAN paper's Table 2 (its "II.11.7" is the dataset's II.11.17) plus
# a few common ones. The dataset's IDs drop a trailing zero of the Feynman Lectures' equation
# numbers (I.6.2a is eq. 6.20a); those entries use the lecture number and keep the ID as an alias.
_FEYNMAN_FORMULAS = [
    _feynman(
        "I.6.20a",
        "exp(-theta**2/2)/sqrt(2*pi)",
        lambda theta: torch.exp(-(theta**2) / 2) / math.sqrt(2 * _PI),
        {"theta": (1.0, 3.0)},
        ai_feynman_id="I.6.2a",
    ),
    _feynman(
        "I.6.20",
        "exp(-(theta/sigma)**2/2)/(sqrt(2*pi)*sigma)",
        lambda sigma, theta: torch.exp(-((theta / sigma) ** 2) / 2) / (math.sqrt(2 * _PI) * sigma),
        {"sigma": (1.0, 3.0), "theta": (1.0, 3.0)},
        ai_feynman_id="I.6.2",
    ),
    _feynman(
        "I.6.20b",
        "exp(-((theta - theta1)/sigma)**2/2)/(sqrt(2*pi)*sigma)",
        lambda sigma, theta, theta1: torch.exp(-(((theta - theta1) / sigma) ** 2) / 2)
        / (math.sqrt(2 * _PI) * sigma),
        {"sigma": (1.0, 3.0), "theta": (1.0, 3.0), "theta1": (1.0, 3.0)},
        ai_feynman_id="I.6.2b",
    ),
    _feynman(
        "I.8.14",
        "sqrt((x2 - x1)**2 + (y2 - y1)**2)",
        lambda x1, x2, y1, y2: torch.sqrt((x2 - x1) ** 2 + (y2 - y1) ** 2),
    ),
    _feynman(
        "I.9.18",
        "G*m1*m2/((x2 - x1)**2 + (y2 - y1)**2 + (z2 - z1)**2)",
        lambda m1, m2, G, x1, x2, y1, y2, z1, z2: G
        * m1
        * m2
        / ((x2 - x1) ** 2 + (y2 - y1) ** 2 + (z2 - z1) ** 2),
        {
            "m1": (1.0, 2.0),
            "m2": (1.0, 2.0),
            "G": (1.0, 2.0),
            "x1": (3.0, 4.0),
            "x2": (1.0, 2.0),
            "y1": (3.0, 4.0),
            "y2": (1.0, 2.0),
            "z1": (3.0, 4.0),
            "z2": (1.0, 2.0),
        },
    ),
    _feynman(
        "I.10.7",
        "m_0/sqrt(1 - v**2/c**2)",
        lambda m_0, v, c: m_0 / torch.sqrt(1 - v**2 / c**2),
        {"v": (1.0, 2.0), "c": (3.0, 10.0)},
    ),
    _feynman(
        "I.12.11",
        "q*(Ef + B*v*sin(theta))",
        lambda q, Ef, B, v, theta: q * (Ef + B * v * torch.sin(theta)),
    ),
    _feynman(
        "I.13.12",
        "G*m1*m2*(1/r2 - 1/r1)",
        lambda m1, m2, r1, r2, G: G * m1 * m2 * (1 / r2 - 1 / r1),
    ),
    _feynman(
        "I.14.4",
        "k_spring*x**2/2",
        lambda k_spring, x: k_spring * x**2 / 2,
    ),
    _feynman(
        "I.15.3x",
        "(x - u*t)/sqrt(1 - u**2/c**2)",
        lambda x, u, c, t: (x - u * t) / torch.sqrt(1 - u**2 / c**2),
        {"x": (5.0, 10.0), "u": (1.0, 2.0), "c": (3.0, 20.0), "t": (1.0, 2.0)},
    ),
    _feynman(
        "I.15.10",
        "m_0*v/sqrt(1 - v**2/c**2)",
        lambda m_0, v, c: m_0 * v / torch.sqrt(1 - v**2 / c**2),
        {"v": (1.0, 2.0), "c": (3.0, 10.0)},
        ai_feynman_id="I.15.1",
    ),
    _feynman(
        "I.16.6",
        "(u + v)/(1 + u*v/c**2)",
        lambda c, v, u: (u + v) / (1 + u * v / c**2),
    ),
    _feynman(
        "I.18.4",
        "(m1*r1 + m2*r2)/(m1 + m2)",
        lambda m1, m2, r1, r2: (m1 * r1 + m2 * r2) / (m1 + m2),
    ),
    _feynman(
        "I.26.2",
        "asin(n*sin(theta2))",
        lambda n, theta2: torch.asin(n * torch.sin(theta2)),
        {"n": (0.0, 1.0)},
    ),
    _feynman(
        "I.27.6",
        "1/(1/d1 + n/d2)",
        lambda d1, d2, n: 1 / (1 / d1 + n / d2),
    ),
    _feynman(
        "I.29.16",
        "sqrt(x1**2 + x2**2 - 2*x1*x2*cos(theta1 - theta2))",
        # Rounding can push the radicand of a near-zero distance just below 0.
        lambda x1, x2, theta1, theta2: torch.sqrt(
            (x1**2 + x2**2 - 2 * x1 * x2 * torch.cos(theta1 - theta2)).clamp_min(0)
        ),
    ),
    _feynman(
        "I.30.3",
        "Int_0*sin(n*theta/2)**2/sin(theta/2)**2",
        lambda Int_0, theta, n: Int_0 * torch.sin(n * theta / 2) ** 2 / torch.sin(theta / 2) ** 2,
    ),
    _feynman(
        "I.30.5",
        "asin(lambd/(n*d))",
        lambda lambd, d, n: torch.asin(lambd / (n * d)),
        {"lambd": (1.0, 2.0), "d": (2.0, 5.0)},
    ),
    _feynman(
        "I.34.8",
        "q*v*B/p",
        lambda q, v, B, p: q * v * B / p,
    ),
    _feynman(
        "I.37.4",
        "I1 + I2 + 2*sqrt(I1*I2)*cos(delta)",
        lambda I1, I2, delta: I1 + I2 + 2 * torch.sqrt(I1 * I2) * torch.cos(delta),
    ),
    _feynman(
        "I.39.22",
        "n*kb*T/V",
        lambda n, T, V, kb: n * kb * T / V,
    ),
    _feynman(
        "I.40.1",
        "n_0*exp(-m*g*x/(kb*T))",
        lambda n_0, m, x, T, g, kb: n_0 * torch.exp(-m * g * x / (kb * T)),
    ),
    _feynman(
        "I.43.31",
        "mob*kb*T",
        lambda mob, T, kb: mob * kb * T,
    ),
    _feynman(
        "I.44.4",
        "n*kb*T*log(V2/V1)",
        lambda n, kb, T, V1, V2: n * kb * T * torch.log(V2 / V1),
    ),
    _feynman(
        "I.50.26",
        "x1*(cos(omega*t) + alpha*cos(omega*t)**2)",
        lambda x1, omega, t, alpha: x1
        * (torch.cos(omega * t) + alpha * torch.cos(omega * t) ** 2),
        {"x1": (1.0, 3.0), "omega": (1.0, 3.0), "t": (1.0, 3.0), "alpha": (1.0, 3.0)},
    ),
    _feynman(
        "II.2.42",
        "kappa*(T2 - T1)*A/d",
        lambda kappa, T1, T2, A, d: kappa * (T2 - T1) * A / d,
    ),
    _feynman(
        "II.6.15a",
        "p_d/(4*pi*epsilon)*3*z/r**5*sqrt(x**2 + y**2)",
        lambda epsilon, p_d, r, x, y, z: p_d
        / (4 * _PI * epsilon)
        * 3
        * z
        / r**5
        * torch.sqrt(x**2 + y**2),
        {name: (1.0, 3.0) for name in ("epsilon", "p_d", "r", "x", "y", "z")},
    ),
    _feynman(
        "II.8.31",
        "epsilon*Ef**2/2",
        lambda epsilon, Ef: epsilon * Ef**2 / 2,
    ),
    _feynman(
        "II.11.17",
        "n_0*(1 + p_d*Ef*cos(theta)/(kb*T))",
        lambda n_0, kb, T, theta, p_d, Ef: n_0 * (1 + p_d * Ef * torch.cos(theta) / (kb * T)),
        {name: (1.0, 3.0) for name in ("n_0", "kb", "T", "theta", "p_d", "Ef")},
    ),
    _feynman(
        "II.11.27",
        "n*alpha/(1 - n*alpha/3)*epsilon*Ef",
        lambda n, alpha, epsilon, Ef: n * alpha / (1 - n * alpha / 3) * epsilon * Ef,
        {"n": (0.0, 1.0), "alpha": (0.0, 1.0), "epsilon": (1.0, 2.0), "Ef": (1.0, 2.0)},
    ),
    _feynman(
        "II.24.17",
        "sqrt(omega**2/c**2 - pi**2/d**2)",
        lambda omega, c, d: torch.sqrt(omega**2 / c**2 - _PI**2 / d**2),
        {"omega": (4.0, 6.0), "c": (1.0, 2.0), "d": (2.0, 4.0)},
    ),
    _feynman(
        "II.35.18",
        "n_0/(exp(mom*B/(kb*T)) + exp(-mom*B/(kb*T)))",
        lambda n_0, kb, T, mom, B: n_0
        / (torch.exp(mom * B / (kb * T)) + torch.exp(-mom * B / (kb * T))),
        {name: (1.0, 3.0) for name in ("n_0", "kb", "T", "mom", "B")},
    ),
    _feynman(
        "II.36.38",
        "mom*H/(kb*T) + mom*alpha*M/(epsilon*c**2*kb*T)",
        lambda mom, H, kb, T, alpha, epsilon, c, M: mom * H / (kb * T)
        + mom * alpha * M / (epsilon * c**2 * kb * T),
        {name: (1.0, 3.0) for name in ("mom", "H", "kb", "T", "alpha", "epsilon", "c", "M")},
    ),
    _feynman(
        "II.38.3",
        "Y*A*x/d",
        lambda Y, A, d, x: Y * A * x / d,
    ),
    _feynman(
        "III.4.32",
        "1/(exp((h/(2*pi))*omega/(kb*T)) - 1)",
        lambda h, omega, kb, T: 1 / torch.expm1(h / (2 * _PI) * omega / (kb * T)),
    ),
    _feynman(
        "III.9.52",
        "(p_d*Ef*t/(h/(2*pi)))*sin((omega - omega_0)*t/2)**2/((omega - omega_0)*t/2)**2",
        # sinc(z) = sin(pi z)/(pi z) stays finite where omega == omega_0.
        lambda p_d, Ef, t, h, omega, omega_0: p_d
        * Ef
        * t
        / (h / (2 * _PI))
        * torch.sinc((omega - omega_0) * t / (2 * _PI)) ** 2,
        {
            "p_d": (1.0, 3.0),
            "Ef": (1.0, 3.0),
            "t": (1.0, 3.0),
            "h": (1.0, 3.0),
            "omega": (1.0, 5.0),
            "omega_0": (1.0, 5.0),
        },
    ),
    _feynman(
        "III.10.19",
        "mom*sqrt(Bx**2 + By**2 + Bz**2)",
        lambda mom, Bx, By, Bz: mom * torch.sqrt(Bx**2 + By**2 + Bz**2),
    ),
    _feynman(
        "III.17.37",
        "beta*(1 + alpha*cos(theta))",
        lambda beta, alpha, theta: beta * (1 + alpha * torch.cos(theta)),
    ),
]

FORMULAS = FormulaRegistry(
    _TOY_FORMULAS + _FEYNMAN_FORMULAS,
    aliases={
        "feynman_I_6_2a": "feynman_I_6_20a",
        "feynman_I_6_2": "feynman_I_6_20",
        "feynman_I_6_2b": "feynman_I_6_20b",
        "feynman_I_15_1": "feynman_I_15_10",
    },
)


def list_formulas() -> list[str]:
    """Canonical registry names, toy functions first, then the Feynman equations."""
    return list(FORMULAS)


def get_formula(name: str) -> Formula:
    """The registry entry for ``name`` (or an alias); ValueError listing close names if unknown."""
    if not isinstance(name, str):
        raise TypeError(f"formula name must be a str, got {type(name).__name__}")
    try:
        return FORMULAS[name]
    except KeyError:
        close = difflib.get_close_matches(name, [*FORMULAS, *FORMULAS.aliases], n=5, cutoff=0.6)
        hint = f"close names: {', '.join(close)}" if close else "see list_formulas() for all names"
        raise ValueError(f"unknown formula {name!r}; {hint}") from None


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_float_dtype(dtype: object) -> None:
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
        _check_int("n_var", n_var, 1)
        n_var = int(n_var)
    _check_int("n_train", n_train, 1)
    _check_int("n_test", n_test, 1)
    _check_int("seed", seed, 0)
    _check_float_dtype(dtype)
    if not _is_real(noise):
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


def load_digits(
    test_size: float = 0.2,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    normalize: bool = True,
) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes), split stratified by class.

    ``test_size`` is the test fraction in (0, 1); ``seed`` fixes the split. Returns
    train_input / test_input [n, 64]: pixel intensities 0..16, divided by 16 into [0, 1] when
    ``normalize`` (no standardization); train_label / test_label [n] int64 class indices 0..9.
    """
    # scikit-learn takes about a second to import and only this loader needs it.
    from sklearn.datasets import load_digits as sklearn_load_digits
    from sklearn.model_selection import train_test_split

    if not _is_real(test_size):
        raise TypeError(f"test_size must be a float in (0, 1), got {type(test_size).__name__}")
    if not 0 < test_size < 1:
        raise ValueError(f"test_size must be a fraction in (0, 1), got {test_size}")
    _check_int("seed", seed, 0)
    _check_float_dtype(dtype)

    images, labels = sklearn_load_digits(return_X_y=True)
    train_x, test_x, train_y, test_y = train_test_split(
        images, labels, test_size=float(test_size), random_state=int(seed), stratify=labels
    )
    scale = 16.0 if normalize else 1.0

    def inputs(x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(x / scale, dtype=dtype, device=device)

    def classes(y: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(y, dtype=torch.int64, device=device)

    return {
        "train_input": inputs(train_x),
        "train_label": classes(train_y),
        "test_input": inputs(test_x),
        "test_label": classes(test_y),
    }


_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_idx_file(path: Path) -> tuple[int, np.ndarray]:
    """(magic number, native-endian array) of an IDX file, gzipped or not."""
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":  # the gzip signature, whatever the file's suffix
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as error:
            raise ValueError(
                f"{path}: expected a gzip-compressed IDX file, got a corrupt stream ({error})"
            ) from error
    if len(data) < 4:
        raise ValueError(f"{path}: expected a 4-byte IDX magic number, got a {len(data)}-byte file")
    magic = int.from_bytes(data[:4], "big")
    type_code, ndim = data[2], data[3]
    if data[:2] != b"\x00\x00" or type_code not in _IDX_DTYPES or ndim == 0:
        codes = ", ".join(f"0x{code:02X}" for code in _IDX_DTYPES)
        raise ValueError(
            f"{path}: expected an IDX magic number 0x0000TTDD (TT a type code in {codes}, "
            f"DD >= 1 dimensions), got 0x{magic:08X}"
        )
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise ValueError(
            f"{path}: expected a {header_size}-byte header for {ndim} dimensions, "
            f"got a {len(data)}-byte file"
        )
    shape = struct.unpack(f">{ndim}I", data[4:header_size])
    dtype = _IDX_DTYPES[type_code]
    expected_bytes = math.prod(shape) * dtype.itemsize
    if len(data) - header_size != expected_bytes:
        raise ValueError(
            f"{path}: expected {expected_bytes} data bytes for shape {shape} of {dtype.name}, "
            f"got {len(data) - header_size}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_size).reshape(shape)
    return magic, array.astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The array in an IDX file (raw or gzipped), shaped by its header, in native byte order."""
    return _read_idx_file(Path(path))[1]


_MNIST_FILES = {
    "train_input": "train-images-idx3-ubyte",
    "train_label": "train-labels-idx1-ubyte",
    "test_input": "t10k-images-idx3-ubyte",
    "test_label": "t10k-labels-idx1-ubyte",
}
_TORCHVISION_FOLDERS = {"mnist": "MNIST", "fashion": "FashionMNIST"}
_IMAGES_MAGIC, _LABELS_MAGIC = 0x00000803, 0x00000801
_N_CLASSES = 10


def _find_idx(directory: Path, base_name: str) -> Path | None:
    for candidate in (directory / base_name, directory / f"{base_name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _locate_mnist(folder: Path, variant: str) -> dict[str, Path]:
    """Paths of the four IDX files in ``folder`` or in its torchvision layout ``<Name>/raw``."""
    torchvision_folder = folder / _TORCHVISION_FOLDERS[variant] / "raw"
    for directory in (folder, torchvision_folder):
        paths = {key: _find_idx(directory, name) for key, name in _MNIST_FILES.items()}
        if all(paths.values()):
            return paths
    missing = [name for name in _MNIST_FILES.values() if _find_idx(folder, name) is None]
    raise FileNotFoundError(
        f"{variant} IDX files missing from {folder} (also looked in {torchvision_folder}); "
        f"expected {', '.join(f'{name} (or {name}.gz)' for name in missing)}"
    )


def _read_mnist_part(path: Path, expected_magic: int) -> np.ndarray:
    magic, array = _read_idx_file(path)
    if magic != expected_magic:
        raise ValueError(
            f"{path}: expected IDX magic number 0x{expected_magic:08X} "
            f"(unsigned bytes, {expected_magic & 0xFF} dimensions), got 0x{magic:08X}"
        )
    return array


def load_mnist(
    folder: str | os.PathLike,
    variant: str = "mnist",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    normalize: bool = True,
    flatten: bool = True,
) -> Dataset:
    """MNIST or Fashion-MNIST (``variant`` "mnist" / "fashion") from local IDX files; no download.

    ``folder`` holds the four standard files (train-images-idx3-ubyte, train-labels-idx1-ubyte,
    t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte), each raw or gzipped with a ``.gz`` suffix,
    either directly or in torchvision's ``MNIST/raw`` or ``FashionMNIST/raw`` below it.
    Returns train_input / test_input [n, rows*cols] ([n, 784] for MNIST) when ``flatten``, else
    [n, 1, rows, cols], as 0..255 divided by 255 into [0, 1] when ``normalize``;
    train_label / test_label [n] int64 class indices 0..9.
    Raises FileNotFoundError naming the folder and every missing file, ValueError for a bad file.
    """
    if variant not in _TORCHVISION_FOLDERS:
        raise ValueError(f"variant must be one of {sorted(_TORCHVISION_FOLDERS)}, got {variant!r}")
    _check_float_dtype(dtype)
    paths = _locate_mnist(Path(folder), variant)

    dataset: Dataset = {}
    for split in ("train", "test"):
        image_path, label_path = paths[f"{split}_input"], paths[f"{split}_label"]
        images = _read_mnist_part(image_path, _IMAGES_MAGIC)
        labels = _read_mnist_part(label_path, _LABELS_MAGIC)
        if len(images) != len(labels):
            raise ValueError(
                f"expected as many labels as images, got {len(images)} images in {image_path} "
                f"and {len(labels)} labels in {label_path}"
            )
        if labels.size and labels.max() >= _N_CLASSES:
            raise ValueError(
                f"{label_path}: expected class indices 0..{_N_CLASSES - 1}, got {int(labels.max())}"
            )
        inputs = torch.from_numpy(images).to(dtype=dtype)
        if normalize:
            inputs = inputs / 255
        inputs = inputs.reshape(len(images), -1) if flatten else inputs.unsqueeze(1)
        dataset[f"{split}_input"] = inputs.to(device)
        dataset[f"{split}_label"] = torch.from_numpy(labels.astype(np.int64)).to(device)
    return dataset
