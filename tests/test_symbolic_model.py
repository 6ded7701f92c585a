"""KAN.suggest_symbolic / fix_symbolic / auto_symbolic / symbolic_formula against pykan, and Example 1's recovery."""
import io
import math

import pandas
import pytest
import sympy
import torch
from kan import MultKAN

from kanlib import KAN
from kanlib.basis import make_grid
from kanlib.layers.bspline import fit_spline_coefficients

LIB = ["x", "x^2", "sin", "tanh", "exp", "gaussian", "abs", "0"]


def _pykan_pair(seed: int, width=(2, 3, 2)):
    ref = MultKAN(width=list(width), grid=5, k=3, seed=seed, auto_save=False)
    with torch.no_grad():
        for layer in ref.act_fun:
            layer.coef.normal_(generator=torch.Generator().manual_seed(seed + 7))
    return ref, KAN.from_pykan(ref)


def test_fixed_edges_compute_what_pykans_fixed_edges_compute():
    ref, model = _pykan_pair(0)
    fixed = [(0, 0, 1, "sin", (1.3, 0.2, -0.7, 0.1)), (0, 1, 2, "x^2", (0.6, -0.4, 1.1, -0.2)),
             (1, 2, 0, "tanh", (1.7, 0.3, 0.9, 0.05)), (1, 0, 1, "exp", (0.5, 0.1, 0.3, -0.1))]
    for l, i, j, name, params in fixed:
        ref.fix_symbolic(l, i, j, name, fit_params_bool=False, verbose=False, log_history=False)
        with torch.no_grad():
            ref.symbolic_fun[l].affine[j, i] = torch.tensor(params)
        model.layers[l].set_symbolic(i, j, name, params)
    for l in range(2):
        assert torch.equal(model.layers[l].mask, ref.act_fun[l].mask)
        assert torch.equal(model.layers[l].symbolic.mask, ref.symbolic_fun[l].mask.t())
    x = torch.cat([torch.rand(17, 2) * 2 - 1, torch.randn(6, 2) * 3])  # inside and outside the grid
    torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-5)
    ref(x)
    torch.testing.assert_close(model.layers[1].activations(model.layer_inputs(x)[1]),
                               ref.spline_postacts[1].permute(0, 2, 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("edge", [(0, 1, 2), (1, 2, 1)])
def test_suggest_symbolic_ranks_as_pykan(edge, capsys):
    ref, model = _pykan_pair(3)
    x = torch.rand(60, 2) * 2 - 1
    ref(x)
    l, i, j = edge
    ours = model.suggest_symbolic(l, i, j, lib=LIB, topk=len(LIB), x=x)
    best_name, _, best_r2, best_c = ref.suggest_symbolic(l, i, j, lib=LIB, verbose=False)
    assert (ours[0].name, ours[0].complexity) == (best_name, best_c)
    assert ours[0].r2 == pytest.approx(best_r2, abs=1e-4)
    for candidate in ours:
        r2 = ref.fix_symbolic(l, i, j, candidate.name, verbose=False, log_history=False)
        ref.unfix_symbolic(l, i, j, log_history=False)
        assert candidate.r2 == pytest.approx(float(r2), abs=1e-4), candidate.name
    assert sorted(c.name for c in ours) == sorted(LIB)
    table = pandas.DataFrame(ours)
    assert list(table.columns) == ["name", "r2", "complexity", "score", "a", "b", "c", "d"]
    # The model is not changed, and its last input is the default samples.
    assert all(layer.symbolic is None for layer in model.layers)
    model(x)
    assert [c.name for c in model.suggest_symbolic(l, i, j, lib=LIB, topk=3)] == [c.name for c in ours[:3]]


def test_fix_unfix_and_auto_symbolic_follow_pykans_masks():
    ref, model = _pykan_pair(5)
    x = torch.rand(50, 2) * 2 - 1
    model(x)
    r2 = model.fix_symbolic(0, 1, 0, "sin")
    assert r2 is not None and model.layers[0].symbolic.name(1, 0) == "sin" and model.layers[0].mask[1, 0] == 0
    assert model.fix_symbolic(0, 0, 0, "x", fit_params=False) is None
    model.unfix_symbolic(0, 0, 0)
    assert model.layers[0].mask[0, 0] == 1 and model.layers[0].symbolic.name(0, 0) is None
    model.remove_edge(1, 1, 0)
    choices = model.auto_symbolic(lib=["x", "sin", "x^2"], verbose=0)
    by_edge = {(c.l, c.i, c.j): c for c in choices}
    assert len(by_edge) == 2 * 3 + 3 * 2
    assert by_edge[0, 1, 0] == (0, 1, 0, None, None, False)  # already fixed: skipped
    assert by_edge[1, 1, 0].name == "0" and by_edge[1, 1, 0].fixed  # switched off: "0"
    assert all(c.fixed for c in choices if (c.l, c.i, c.j) != (0, 1, 0))
    for layer in model.layers:
        assert bool((layer.mask == 0).all()) and bool((layer.symbolic.mask == 1).all())
    assert model.layers[0].symbolic.name(1, 0) == "sin"
    assert len(model.symbolic_formula()) == 2


def test_auto_symbolic_leaves_edges_below_r2_threshold_as_splines(capsys):
    _, model = _pykan_pair(6, width=(2, 1))
    x = torch.rand(40, 2) * 2 - 1
    choices = model.auto_symbolic(lib=["x"], r2_threshold=1.5, x=x)
    assert [c.fixed for c in choices] == [False, False]
    assert model.layers[0].symbolic is None and bool((model.layers[0].mask == 1).all())
    assert "stays a spline" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"edges \(l, i, j\) \(0, 0, 0\), \(0, 1, 0\) are still splines: "
                                         r"call auto_symbolic\(\) or fix_symbolic\(l, i, j, name\) first"):
        model.symbolic_formula()


def test_bad_edges_names_and_missing_samples_are_refused():
    model = KAN([2, 3, 1], seed=0)
    with pytest.raises(ValueError, match=r"l must be a layer index in 0..1, got 2"):
        model.fix_symbolic(2, 0, 0, "sin", fit_params=False)
    with pytest.raises(ValueError, match=r"i must be in 0..2 \(layer 1 has 3 inputs\), got 3"):
        model.suggest_symbolic(1, 3, 0)
    with pytest.raises(ValueError, match=r"j must be in 0..0 \(layer 1 has 1 outputs\), got 1"):
        model.unfix_symbolic(1, 0, 1)
    with pytest.raises(ValueError, match=r"library's names .*got 'sine'"):
        model.fix_symbolic(0, 0, 0, "sine", x=torch.rand(5, 2))
    with pytest.raises(ValueError, match=r"not in the symbolic library: \['sine'\]"):
        model.auto_symbolic(lib=["sine"], x=torch.rand(5, 2))
    with pytest.raises(ValueError, match=r"KAN.fix_symbolic needs samples"):
        model.fix_symbolic(0, 0, 0, "sin")
    assert all(layer.symbolic is None for layer in model.layers)


def test_samples_with_nan_one_row_or_bad_arguments_are_refused_and_change_nothing():
    """NaN samples made the symbolic fits return NaN constants, which auto_symbolic then fixed on every edge (the
    model's output became NaN); one sample (a last forward call of one row) failed deep in the fit."""
    model = KAN([2, 3, 1], grid_size=3, seed=0)
    x = torch.rand(40, 2) * 2 - 1
    bad = x.clone()
    bad[5, 1] = float("nan")
    before = model(x)
    for call in (lambda: model.suggest_symbolic(0, 0, 0, x=bad), lambda: model.fix_symbolic(0, 0, 0, "sin", x=bad),
                 lambda: model.auto_symbolic(x=bad, verbose=0), lambda: model.prune(x=bad)):
        with pytest.raises(ValueError, match=r"needs finite samples; x has NaN or inf"):
            call()
    model(bad[:1].nan_to_num())
    with pytest.raises(ValueError, match=r"KAN.auto_symbolic needs at least 2 samples, got 1 in the last forward "
                                         r"call's input \(pass x to use others\)"):
        model.auto_symbolic(verbose=0)
    with pytest.raises(ValueError, match=r"r2_threshold must be a number .*got nan"):
        model.auto_symbolic(r2_threshold=float("nan"), x=x, verbose=0)
    with pytest.raises(TypeError, match=r"verbose must be an int >= 0, got 'a'"):
        model.auto_symbolic(x=x, verbose="a")
    assert all(layer.symbolic is None for layer in model.layers)
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)
    from kanlib.symbolic import fit_affine
    with pytest.raises(ValueError, match=r"fit_affine needs finite samples; y has NaN or inf"):
        fit_affine(x[:, 0], bad[:, 1], torch.sin)


@pytest.mark.parametrize("digits", [-1, True, 2.5])
def test_symbolic_formula_refuses_digits_that_are_not_a_count_of_decimals(digits):
    model = KAN([2, 1], grid_size=3, seed=0)
    model.auto_symbolic(lib=["x", "sin"], x=torch.rand(30, 2) * 2 - 1, verbose=0)
    with pytest.raises(ValueError if digits == -1 else TypeError, match=r"digits must be None or an int >= 0"):
        model.symbolic_formula(digits=digits)


def test_remove_edge_switches_a_symbolic_edge_off_too():
    """pykan's remove_edge clears the spline mask only, which fix_symbolic had cleared already: the edge went on
    computing its function."""
    model = KAN([2, 2, 1], grid_size=3, seed=0)
    x = torch.rand(40, 2) * 2 - 1
    model.fix_symbolic(0, 1, 0, "sin", x=x)
    model.remove_edge(0, 1, 0)
    assert model.layers[0].symbolic.name(1, 0) is None and model.layers[0].mask[1, 0] == 0
    reference = KAN([2, 2, 1], grid_size=3, seed=0)
    reference.remove_edge(0, 1, 0)
    torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)


def test_fixed_edges_survive_a_state_dict_round_trip():
    _, model = _pykan_pair(8)
    x = torch.rand(30, 2) * 2 - 1
    model.fix_symbolic(0, 1, 2, "sin", x=x)
    model.fix_symbolic(1, 0, 1, "gaussian", x=x)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = KAN([2, 3, 2], grid_size=5)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)
    assert fresh.layers[0].symbolic.names() == model.layers[0].symbolic.names()
    assert fresh.layers[1].symbolic.name(0, 1) == "gaussian"
    assert [p.shape for p in fresh.parameters()] == [p.shape for p in model.parameters()]
    # A strict load of a state without fixed edges removes the branch.
    fresh.load_state_dict(KAN([2, 3, 2], grid_size=5).state_dict())
    assert all(layer.symbolic is None for layer in fresh.layers)


def test_the_affine_parameters_train():
    _, model = _pykan_pair(9)
    x = torch.rand(30, 2) * 2 - 1
    model.fix_symbolic(0, 1, 2, "sin", fit_params=False)
    model(x).pow(2).sum().backward()
    grad = model.layers[0].symbolic.affine.grad
    assert bool((grad[1, 2] != 0).all()) and bool((grad[0] == 0).all())


def _example_one(n: int = 200, seed: int = 0):
    """KAN([2, 1, 1]) whose splines are least-squares fits of sin(pi x), y^2 and exp (no training)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=generator) * 2 - 1
    model = KAN([2, 1, 1], grid_size=10, seed=seed)
    first, second = model.layers
    with torch.no_grad():
        for layer in model.layers:
            layer.scale_base.zero_()
            layer.scale_sp.fill_(1.0)
        first.coef.copy_(fit_spline_coefficients(x, torch.stack([torch.sin(math.pi * x[:, 0]), x[:, 1] ** 2],
                                                                1)[:, :, None], first.grid, 3))
        hidden = first(x)
        low, high = hidden.min().item() - 0.1, hidden.max().item() + 0.1
        second.grid.copy_(make_grid(1, 10, 3, (low, high)))
        points = torch.linspace(low, high, 200)[:, None]
        second.coef.copy_(fit_spline_coefficients(points, torch.exp(points)[:, :, None], second.grid, 3))
    return model, x


def test_example_one_is_recovered_as_exp_of_sin_plus_square():
    model, x = _example_one()
    model(x)
    choices = model.auto_symbolic(lib=["x", "x^2", "x^3", "sin", "tanh", "exp"], verbose=0)
    assert [(c.l, c.i, c.j, c.name) for c in choices] == [(0, 0, 0, "sin"), (0, 1, 0, "x^2"), (1, 0, 0, "exp")]
    x1, x2 = sympy.symbols("x_1 x_2")
    (formula,) = model.symbolic_formula()
    # Structure: c * exp(u) + d with u = p * sin(q * x_1 + r) + (a quadratic in x_2) + s.
    (outer,) = [e for e in sympy.preorder_traversal(formula) if isinstance(e, sympy.exp)]
    inner = sympy.expand(outer.args[0])
    (sine,) = inner.atoms(sympy.sin)
    slope = sympy.Poly(sine.args[0], x1).coeffs()[0]
    assert abs(abs(float(slope)) - math.pi) < 1e-2
    assert sympy.Poly(inner.subs(sine, 0), x2).degree() == 2 and x1 not in inner.subs(sine, 0).free_symbols
    # Numerically it is f, on fresh points.
    evaluate = sympy.lambdify((x1, x2), formula, "math")
    points = torch.rand(50, 2, generator=torch.Generator().manual_seed(1)) * 2 - 1
    for a, b in points.tolist():
        assert evaluate(a, b) == pytest.approx(math.exp(math.sin(math.pi * a) + b * b), abs=1e-2)
    # digits rounds the constants; var names the inputs.
    rounded = model.symbolic_formula(var=["u", "v"], digits=2)[0]
    assert {str(s) for s in rounded.free_symbols} == {"u", "v"}
    assert rounded.atoms(sympy.Float) and all(round(float(f), 2) == float(f) for f in rounded.atoms(sympy.Float))
    assert not all(round(float(f), 2) == float(f) for f in formula.atoms(sympy.Float))


def test_the_formula_evaluates_to_the_models_output_with_biases_and_removed_edges():
    model = KAN([3, 2, 2], bias=True, seed=4, dtype=torch.float64)
    generator = torch.Generator().manual_seed(4)
    names = ["sin", "x^2", "tanh", "exp", "gaussian", "x", "abs", "x^3", "cos", "arctan"]
    with torch.no_grad():
        for layer in model.layers:
            layer.bias.normal_(generator=generator)
    model.remove_edge(0, 2, 1)
    for l, layer in enumerate(model.layers):
        for i in range(layer.in_features):
            for j in range(layer.out_features):
                if (l, i, j) != (0, 2, 1):
                    params = (torch.rand(4, generator=generator, dtype=torch.float64) - 0.5).tolist()
                    model.fix_symbolic(l, i, j, names[(3 * l + 2 * i + j) % len(names)], fit_params=False)
                    layer.set_symbolic(i, j, layer.symbolic.name(i, j), params)
    formulas = model.symbolic_formula(var=["a", "b", "c"])
    evaluate = sympy.lambdify(sympy.symbols("a b c"), formulas, "math")
    x = torch.randn(9, 3, generator=generator, dtype=torch.float64) * 2
    expected = model(x)
    got = torch.tensor([evaluate(*row) for row in x.tolist()], dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
