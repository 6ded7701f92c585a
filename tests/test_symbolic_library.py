"""The symbolic function library against pykan's SYMBOLIC_LIB: names, complexities, torch, safe and sympy forms."""
import math

import pytest
import sympy
import torch
from kan.utils import SYMBOLIC_LIB

from kanlib.symbolic import FUNCTION_NAMES, SYMBOLIC_LIBRARY, get_function, resolve_library

BRIEF_NAMES = ["x", "x^2", "x^3", "x^4", "x^5", "1/x", "1/x^2", "1/x^3", "1/x^4", "1/x^5", "sqrt", "x^0.5", "x^1.5",
               "1/sqrt(x)", "exp", "log", "abs", "sin", "cos", "tan", "tanh", "sgn", "arcsin", "arccos", "arctan",
               "arctanh", "0", "gaussian"]


def test_the_library_has_pykans_names_in_pykans_order_with_its_complexities():
    assert list(FUNCTION_NAMES) == list(SYMBOLIC_LIB)
    assert set(BRIEF_NAMES) <= set(FUNCTION_NAMES)
    for name, entry in SYMBOLIC_LIBRARY.items():
        assert entry.name == name
        assert entry.complexity == SYMBOLIC_LIB[name][2], name


def _domain_points(seed: int) -> torch.Tensor:
    """Points where every function of the library is defined and away from its poles: (0.05, 0.95)."""
    generator = torch.Generator().manual_seed(seed)
    return 0.05 + 0.9 * torch.rand(37, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("name", FUNCTION_NAMES)
def test_torch_and_sympy_forms_agree_and_torch_is_pykans(name):
    entry = SYMBOLIC_LIBRARY[name]
    x = _domain_points(1)
    values = entry.torch(x)
    symbol = sympy.Symbol("x")
    as_function = sympy.lambdify(symbol, entry.sympy(symbol), "math")
    expected = torch.tensor([float(as_function(float(v))) for v in x], dtype=torch.float64)
    torch.testing.assert_close(values, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(values, SYMBOLIC_LIB[name][0](x), rtol=0, atol=0)
    # And outside (0, 1), where both are defined: negative and large inputs.
    wide = torch.tensor([-3.7, -0.4, 1.6, 2.9], dtype=torch.float64)
    reference = SYMBOLIC_LIB[name][0](wide)
    torch.testing.assert_close(entry.torch(wide), reference, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("name", FUNCTION_NAMES)
@pytest.mark.parametrize("y_th", [3.0, 10.0])
def test_safe_forms_are_pykans_singularity_avoiding_forms(name, y_th):
    generator = torch.Generator().manual_seed(2)
    x = torch.cat([torch.randn(200, generator=generator, dtype=torch.float64) * 3,
                   torch.randn(200, generator=generator, dtype=torch.float64) * 1e-3,
                   torch.tensor([0.0, 1.0, -1.0, math.pi / 2, 1 - 1e-5], dtype=torch.float64)])
    ours = SYMBOLIC_LIBRARY[name].safe(x, y_th)
    reference = SYMBOLIC_LIB[name][3](x, torch.tensor(y_th, dtype=torch.float64))
    # pykan's x^1.5 gives no tuple, its tan a triple whose value is last (its layer reads [1], a constant: a bug).
    reference = reference[-1] if isinstance(reference, tuple) else reference
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    assert bool(torch.isfinite(ours).all())


@pytest.mark.parametrize("name", FUNCTION_NAMES)
def test_safe_forms_have_gradients_without_nan(name):
    # The branch a safe form does not take must not leak NaN into the gradient (inf stays where the derivative
    # is infinite, as arcsin's at 1).
    x = torch.tensor([-2.0, -1e-4, 0.0, 1e-4, 0.999, 1.0, 1.5, math.pi / 2, 5.0], dtype=torch.float64,
                     requires_grad=True)
    SYMBOLIC_LIBRARY[name].safe(x, 10.0).sum().backward()
    assert not bool(torch.isnan(x.grad).any()), (name, x.grad)


def test_an_unknown_name_is_refused_with_the_library_listed():
    with pytest.raises(ValueError, match=r"library's names \['x', 'x\^2'.*got 'sine'"):
        get_function("sine")
    with pytest.raises(ValueError, match=r"not in the symbolic library: \['sine'\].*'gaussian'"):
        resolve_library(["sin", "sine"])
    with pytest.raises(ValueError, match="non-empty list"):
        resolve_library("sin")
    assert list(resolve_library(["sin", "x", "sin"])) == ["sin", "x"]
    assert list(resolve_library(None)) == list(FUNCTION_NAMES)
