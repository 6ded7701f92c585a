"""The library of symbolic functions an edge can be fixed to (pykan's ``SYMBOLIC_LIB``: names and complexities).

Each entry has a plain torch form (what a fixed edge computes and what the fit samples), a singularity-safe
torch form (``safe(x, y_th)``: bounded by about ``y_th`` near the poles, as pykan's ``singularity_avoiding``),
a sympy form (for :func:`kanlib.symbolic.formula`) and a complexity (the "bits" that favor simple functions).
sympy is imported only when a sympy form is called.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

__all__ = ["SymbolicFunction", "SYMBOLIC_LIBRARY", "FUNCTION_NAMES", "resolve_library", "get_function"]


class SymbolicFunction(NamedTuple):
    name: str
    torch: Callable[[torch.Tensor], torch.Tensor]
    sympy: Callable[[object], object]
    complexity: int
    safe: Callable[[torch.Tensor, float], torch.Tensor]


def _sympy():
    try:
        import sympy
    except ImportError as error:  # pragma: no cover - sympy is a dev dependency
        raise ImportError("the sympy forms of the symbolic library need sympy: pip install sympy") from error
    return sympy


def _inverse_power(power: int) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """1/x^power, continued inside |x| < y_th^(-1/power) by a line (odd power) or the constant y_th (even)."""
    def safe(x, y_th):
        x_th = y_th ** (-1.0 / power)
        near = x.abs() < x_th
        far = torch.where(near, torch.full_like(x, x_th), x)
        inside = y_th / x_th * x if power % 2 else torch.full_like(x, y_th)
        return torch.where(near, inside, 1 / far**power)
    return safe


def _safe_sqrt(x, y_th):
    """sign(x) sqrt(|x|), a line through 0 inside |x| < 1/y_th^2."""
    x_th = 1 / y_th**2
    near = x.abs() < x_th
    far = torch.where(near, torch.full_like(x, x_th), x)
    return torch.where(near, x_th / y_th * x, torch.sign(far) * far.abs().sqrt())


def _safe_inverse_sqrt(x, y_th):
    x_th = 1 / y_th**2
    near = x.abs() < x_th
    far = torch.where(near, torch.full_like(x, x_th), x)
    return torch.where(near, torch.full_like(x, y_th), 1 / far.abs().sqrt())


def _safe_exp(x, y_th):
    x_th = math.log(y_th)
    over = x > x_th
    return torch.where(over, torch.full_like(x, y_th), torch.exp(torch.where(over, torch.full_like(x, x_th), x)))


def _safe_log(x, y_th):
    x_th = math.exp(-y_th)
    near = x.abs() < x_th
    far = torch.where(near, torch.full_like(x, 1.0), x)
    return torch.where(near, torch.full_like(x, -y_th), far.abs().log())


def _safe_tan(x, y_th):
    """tan on x mod pi, a line of slope -y_th/delta through the pole at pi/2 within delta of it."""
    folded = torch.remainder(x, math.pi)
    delta = math.pi / 2 - math.atan(y_th)
    offset = folded - math.pi / 2
    near = offset.abs() < delta
    far = torch.where(near, torch.zeros_like(x), folded)
    return torch.where(near, -y_th / delta * offset, torch.tan(far))


def _safe_arctanh(x, y_th):
    delta = 1 - math.tanh(y_th) + 1e-4
    edge = x.abs() > 1 - delta
    inside = torch.where(edge, torch.zeros_like(x), x)
    return torch.where(edge, y_th * torch.sign(x), torch.arctanh(inside))


def _safe_arcsin(x, y_th):
    outside = x.abs() > 1
    return torch.where(outside, math.pi / 2 * torch.sign(x), torch.arcsin(torch.where(outside, torch.zeros_like(x), x)))


def _safe_arccos(x, y_th):
    outside = x.abs() > 1
    return torch.where(outside, math.pi / 2 * (1 - torch.sign(x)),
                       torch.arccos(torch.where(outside, torch.zeros_like(x), x)))


def _plain(function):
    return lambda x, y_th: function(x)


def _entry(name, torch_form, sympy_form, complexity, safe=None):
    return name, SymbolicFunction(name, torch_form, sympy_form, complexity, safe or _plain(torch_form))


def _sqrt_sympy(x):
    return _sympy().sqrt(x)


SYMBOLIC_LIBRARY: dict[str, SymbolicFunction] = dict([
    _entry("x", lambda x: x, lambda x: x, 1),
    _entry("x^2", lambda x: x**2, lambda x: x**2, 2),
    _entry("x^3", lambda x: x**3, lambda x: x**3, 3),
    _entry("x^4", lambda x: x**4, lambda x: x**4, 3),
    _entry("x^5", lambda x: x**5, lambda x: x**5, 3),
    _entry("1/x", lambda x: 1 / x, lambda x: 1 / x, 2, _inverse_power(1)),
    _entry("1/x^2", lambda x: 1 / x**2, lambda x: 1 / x**2, 2, _inverse_power(2)),
    _entry("1/x^3", lambda x: 1 / x**3, lambda x: 1 / x**3, 3, _inverse_power(3)),
    _entry("1/x^4", lambda x: 1 / x**4, lambda x: 1 / x**4, 4, _inverse_power(4)),
    _entry("1/x^5", lambda x: 1 / x**5, lambda x: 1 / x**5, 5, _inverse_power(5)),
    _entry("sqrt", torch.sqrt, _sqrt_sympy, 2, _safe_sqrt),
    _entry("x^0.5", torch.sqrt, _sqrt_sympy, 2, _safe_sqrt),
    _entry("x^1.5", lambda x: torch.sqrt(x) ** 3, lambda x: _sqrt_sympy(x) ** 3, 4, lambda x, y_th: x.abs() ** 1.5),
    _entry("1/sqrt(x)", lambda x: 1 / torch.sqrt(x), lambda x: 1 / _sqrt_sympy(x), 2, _safe_inverse_sqrt),
    _entry("1/x^0.5", lambda x: 1 / torch.sqrt(x), lambda x: 1 / _sqrt_sympy(x), 2, _safe_inverse_sqrt),
    _entry("exp", torch.exp, lambda x: _sympy().exp(x), 2, _safe_exp),
    _entry("log", torch.log, lambda x: _sympy().log(x), 2, _safe_log),
    _entry("abs", torch.abs, lambda x: _sympy().Abs(x), 3),
    _entry("sin", torch.sin, lambda x: _sympy().sin(x), 2),
    _entry("cos", torch.cos, lambda x: _sympy().cos(x), 2),
    _entry("tan", torch.tan, lambda x: _sympy().tan(x), 3, _safe_tan),
    _entry("tanh", torch.tanh, lambda x: _sympy().tanh(x), 3),
    _entry("sgn", torch.sign, lambda x: _sympy().sign(x), 3),
    _entry("arcsin", torch.arcsin, lambda x: _sympy().asin(x), 4, _safe_arcsin),
    _entry("arccos", torch.arccos, lambda x: _sympy().acos(x), 4, _safe_arccos),
    _entry("arctan", torch.arctan, lambda x: _sympy().atan(x), 4),
    _entry("arctanh", torch.arctanh, lambda x: _sympy().atanh(x), 4, _safe_arctanh),
    _entry("0", lambda x: x * 0, lambda x: _sympy().Integer(0), 0),
    _entry("gaussian", lambda x: torch.exp(-x**2), lambda x: _sympy().exp(-x**2), 3),
])

# The position of a name here is what a SymbolicBranch stores in its state dict: append new names, never reorder.
FUNCTION_NAMES: tuple[str, ...] = tuple(SYMBOLIC_LIBRARY)


def get_function(name: object) -> SymbolicFunction:
    """The library entry called ``name``; ValueError listing the library when there is none."""
    if not isinstance(name, str) or name not in SYMBOLIC_LIBRARY:
        raise ValueError(f"symbolic function must be one of the library's names {list(FUNCTION_NAMES)}, "
                         f"got {name!r}")
    return SYMBOLIC_LIBRARY[name]


def resolve_library(lib: Sequence[str] | None) -> dict[str, SymbolicFunction]:
    """The candidates for ``lib`` (names, in the given order; None: the whole library)."""
    if lib is None:
        return dict(SYMBOLIC_LIBRARY)
    if isinstance(lib, str) or not isinstance(lib, Sequence) or not lib:
        raise ValueError(f"lib must be a non-empty list of names from {list(FUNCTION_NAMES)} or None, got {lib!r}")
    unknown = [name for name in lib if not isinstance(name, str) or name not in SYMBOLIC_LIBRARY]
    if unknown:
        raise ValueError(f"lib has names that are not in the symbolic library: {unknown}; "
                         f"the library has {list(FUNCTION_NAMES)}")
    return {name: SYMBOLIC_LIBRARY[name] for name in dict.fromkeys(lib)}
