"""The formulas of KAN experiments: the KAN paper's toy functions and the Feynman equations, in one registry."""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch

__all__ = ["FORMULAS", "Formula", "FormulaRegistry", "get_formula", "list_formulas"]

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


def _bessel_j0_20x(x: torch.Tensor) -> torch.Tensor:
    """J0(20 x); float16 and bfloat16, which torch's Bessel functions lack, are computed in float32."""
    if x.dtype in (torch.float16, torch.bfloat16):
        return torch.special.bessel_j0(20 * x.float()).to(x.dtype)
    return torch.special.bessel_j0(20 * x)


def _exp_mean_sin_sq(x: torch.Tensor) -> torch.Tensor:
    return torch.exp(torch.sin(_PI * x / 2).square().mean(dim=1))


_TOY_FORMULAS = [
    _toy("bessel_j0_20x", "besselj(0, 20*x)", _bessel_j0_20x),
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
