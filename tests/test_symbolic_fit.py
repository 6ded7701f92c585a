"""The affine fit c * f(a x + b) + d against pykan's fit_params, and its recovery of known constants."""
import math

import pytest
import torch
from kan.utils import SYMBOLIC_LIB, fit_params

from kanlib.symbolic import SYMBOLIC_LIBRARY, fit_affine, rank_candidates
from kanlib.symbolic.suggest import score


def _samples(seed: int, n: int = 67, low: float = -1.0, high: float = 1.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return low + (high - low) * torch.rand(n, generator=generator)


@pytest.mark.parametrize("name, a, b, c, d", [
    ("sin", 2.3, 0.4, 1.7, -0.3),
    ("gaussian", 1.6, -0.7, -2.2, 0.5),
    ("tanh", 3.1, 1.2, 0.8, 0.1),
    ("x^3", 1.4, -0.6, 0.9, 0.2),
    ("exp", 0.9, 0.0, 1.3, -1.0),
])
def test_the_fit_recovers_known_constants(name, a, b, c, d):
    # a > 0 and |b| < pi/2 make (a, b, c, d) unique for sin and gaussian; exp fixes c * e^b only, x^3 c * a^3.
    x = _samples(0)
    function = SYMBOLIC_LIBRARY[name].torch
    y = c * function(a * x + b) + d
    fit = fit_affine(x, y, function, a_range=(0.5, 5.0), b_range=(-1.5, 1.5))
    assert fit.r2 > 0.9999
    fitted = fit.c * function(fit.a * x + fit.b) + fit.d
    torch.testing.assert_close(fitted, y, rtol=0, atol=2e-3 * y.abs().max().item())
    if name == "exp":
        assert (fit.a, fit.c * math.exp(fit.b), fit.d) == pytest.approx((a, c * math.exp(b), d), abs=2e-2)
    elif name == "x^3":
        assert (fit.b / fit.a, fit.c * fit.a**3, fit.d) == pytest.approx((b / a, c * a**3, d), abs=2e-2)
    else:
        assert (fit.a, fit.b, fit.c, fit.d) == pytest.approx((a, b, c, d), abs=1e-2)


@pytest.mark.parametrize("name", ["sin", "x^2", "exp", "1/x", "sqrt", "log", "arctanh", "0", "abs"])
@pytest.mark.parametrize("seed", [0, 1])
def test_the_fit_is_pykans_fit_params(name, seed):
    x = _samples(seed, n=41, low=-1.3, high=1.7)
    generator = torch.Generator().manual_seed(seed + 10)
    y = torch.sin(2 * x + 0.5) + 0.3 * x**2 + 0.05 * torch.randn(41, generator=generator)
    function = SYMBOLIC_LIBRARY[name].torch
    ours = fit_affine(x, y, function, a_range=(-7, 9), b_range=(-4, 6))
    params, r2 = fit_params(x, y, SYMBOLIC_LIB[name][0], a_range=(-7, 9), b_range=(-4, 6), verbose=False)
    assert (ours.a, ours.b) == pytest.approx((float(params[0]), float(params[1])), abs=1e-6)
    assert (ours.c, ours.d) == pytest.approx((float(params[2]), float(params[3])), rel=1e-4, abs=1e-5)
    assert ours.r2 == pytest.approx(float(r2), rel=1e-5, abs=1e-6)


def test_a_best_cell_on_the_boundary_shrinks_that_axis_only_as_pykan():
    # y = x^2 with a far outside a_range: the best a sits on the boundary.
    x = _samples(3)
    y = (30 * x) ** 2
    ours = fit_affine(x, y, SYMBOLIC_LIBRARY["x"].torch, a_range=(1, 2), b_range=(-1, 1))
    params, r2 = fit_params(x, y, SYMBOLIC_LIB["x"][0], a_range=(1, 2), b_range=(-1, 1), verbose=False)
    assert (ours.a, ours.b) == pytest.approx((float(params[0]), float(params[1])), abs=1e-6)
    assert ours.r2 == pytest.approx(float(r2), rel=1e-5)


def test_ranking_uses_pykans_score():
    x = _samples(4)
    y = 2 * torch.sin(3 * x) + 1
    lib = ["x", "x^2", "sin", "tanh", "0", "exp"]
    ranked = rank_candidates(x, y, lib, topk=None)
    assert [c.name for c in ranked][0] == "sin" and len(ranked) == len(lib)
    assert [c.score for c in ranked] == sorted(c.score for c in ranked)
    for candidate in ranked:
        expected = 0.8 * candidate.complexity + 0.2 * torch.log2(torch.tensor(1 + 1e-5 - candidate.r2,
                                                                               dtype=torch.float64)).item()
        assert candidate.score == pytest.approx(expected)
        assert candidate.score == pytest.approx(float(score(candidate.r2, candidate.complexity, 0.8)))
    # Only complexity counts with weight_simple=1: "0" first.
    assert rank_candidates(x, y, lib, topk=2, weight_simple=1.0)[0].name == "0"


def test_bad_fit_arguments_are_refused():
    x = _samples(0)
    with pytest.raises(ValueError, match=r"same shape \[N\]"):
        fit_affine(x, x[:-1], torch.sin)
    with pytest.raises(ValueError, match="a_range must be a pair"):
        fit_affine(x, x, torch.sin, a_range=(1, -1))
    with pytest.raises(ValueError, match="weight_simple must be a number in"):
        rank_candidates(x, x, ["sin"], weight_simple=2)
    with pytest.raises(ValueError, match="not in the symbolic library"):
        rank_candidates(x, x, ["sine"])
