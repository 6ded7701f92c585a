"""The symbolic branch of a layer: its values, gradients, masks, and the layer's fast path when nothing is fixed."""
import pytest
import torch
from torch.func import functional_call

from kanlib import BSplineKAN
from kanlib.symbolic import SYMBOLIC_LIBRARY, SymbolicBranch

FIXED = {(0, 1): ("sin", (1.3, 0.2, -0.7, 0.1)), (2, 0): ("x^2", (0.6, -0.4, 1.1, -0.2)),
         (2, 3): ("sin", (-2.0, 0.5, 0.4, 0.0)), (4, 2): ("tanh", (1.7, 0.3, 0.9, 0.05)),
         (1, 3): ("gaussian", (0.8, 0.0, 1.5, -0.3))}


def _branch(dtype=torch.float32) -> SymbolicBranch:
    branch = SymbolicBranch(5, 4, dtype=dtype)
    for (i, j), (name, params) in FIXED.items():
        branch.set_edge(i, j, name, params)
    return branch


def _expected_edges(x: torch.Tensor) -> torch.Tensor:
    expected = torch.zeros(x.shape[0], 5, 4, dtype=x.dtype)
    for (i, j), (name, (a, b, c, d)) in FIXED.items():
        expected[:, i, j] = c * SYMBOLIC_LIBRARY[name].torch(a * x[:, i] + b) + d
    return expected


def test_edge_values_are_each_fixed_edge_and_forward_their_sum():
    branch = _branch()
    x = torch.randn(23, 5) * 2  # inside and far outside [-1, 1]
    edges = branch.edge_values(x)
    torch.testing.assert_close(edges, _expected_edges(x), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(branch(x), edges.sum(1), rtol=1e-6, atol=1e-6)
    assert branch.name(0, 1) == "sin" and branch.name(0, 0) is None
    assert branch.names()[4][2] == "tanh"


def test_an_unfixed_edge_gives_zero_even_where_its_old_function_is_nan():
    branch = SymbolicBranch(2, 1)
    branch.set_edge(0, 0, "log")
    branch.set_edge(1, 0, "x")
    branch.clear_edge(0, 0)
    x = torch.tensor([[-1.0, 2.0], [0.0, 3.0]], requires_grad=True)
    out = branch(x)
    torch.testing.assert_close(out, torch.tensor([[2.0], [3.0]]))
    out.sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([[0.0, 1.0], [0.0, 1.0]]))


def test_gradcheck_in_float64_through_inputs_and_affine():
    branch = _branch(torch.float64)
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    affine = branch.affine.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(branch, (x,))
    assert torch.autograd.gradcheck(lambda params: functional_call(branch, {"affine": params}, (x.detach(),)),
                                    (affine,))
    layer = BSplineKAN(5, 4, dtype=torch.float64)
    for (i, j), (name, params) in FIXED.items():
        layer.set_symbolic(i, j, name, params)
    assert torch.autograd.gradcheck(layer, (x,))


def test_select_keeps_the_chosen_edges():
    branch = _branch()
    part = branch.select([4, 2, 1], [3, 0])
    x = torch.randn(9, 5)
    torch.testing.assert_close(part.edge_values(x[:, [4, 2, 1]]), branch.edge_values(x)[:, [4, 2, 1]][:, :, [3, 0]])
    assert part.name(1, 0) == "sin" and part.name(1, 1) == "x^2" and part.name(2, 0) == "gaussian"


def test_a_layer_with_nothing_fixed_has_no_branch_and_unfixing_restores_it_exactly():
    torch.manual_seed(0)
    layer = BSplineKAN(5, 4)
    assert layer.symbolic is None
    x = torch.randn(31, 5)
    before, acts_before = layer(x), layer.activations(x)
    mask = layer.mask.clone()
    layer.fix_symbolic(2, 3, "sin", fit_params=False)
    layer.fix_symbolic(0, 1, "x^2", x)
    assert layer.mask[2, 3] == 0 and layer.mask[0, 1] == 0 and layer.symbolic.mask.sum() == 2
    assert not torch.equal(layer(x), before)
    layer.unfix_symbolic(2, 3)
    layer.unfix_symbolic(0, 1)
    assert layer.symbolic is None
    assert torch.equal(layer.mask, mask)
    assert torch.equal(layer(x), before) and torch.equal(layer.activations(x), acts_before)


def test_a_fixed_edge_replaces_its_spline_in_forward_and_activations():
    torch.manual_seed(1)
    layer = BSplineKAN(5, 4, bias=True)
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(19, 5) * 1.5
    splines = layer.activations(x)
    for (i, j), (name, params) in FIXED.items():
        layer.set_symbolic(i, j, name, params)
    fixed = torch.zeros(5, 4, dtype=torch.bool)
    for i, j in FIXED:
        fixed[i, j] = True
    expected_edges = torch.where(fixed, _expected_edges(x), splines)
    torch.testing.assert_close(layer.activations(x), expected_edges, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer(x), expected_edges.sum(1) + layer.bias, rtol=1e-5, atol=1e-5)
    # pykan's masks: the spline off, the symbolic on.
    assert torch.equal(layer.mask == 0, fixed) and torch.equal(layer.symbolic.mask == 1, fixed)


def test_fix_symbolic_fits_the_edges_current_values():
    torch.manual_seed(2)
    layer = BSplineKAN(2, 2)
    x = torch.rand(80, 2) * 2 - 1
    target = layer.activations(x)[:, 1, 0].detach()
    r2 = layer.fix_symbolic(1, 0, "x^3", x)
    a, b, c, d = layer.symbolic.affine[1, 0].tolist()
    assert 0 <= r2 <= 1.001
    residual = target - (c * (a * x[:, 1] + b) ** 3 + d)
    explained = 1 - residual.pow(2).sum() / (target - target.mean()).pow(2).sum()
    assert float(explained) == pytest.approx(r2, abs=1e-3)


def test_bad_edges_and_names_are_refused():
    layer = BSplineKAN(3, 2)
    with pytest.raises(ValueError, match=r"an output index in 0..1, got 2"):
        layer.fix_symbolic(0, 2, "sin", fit_params=False)
    with pytest.raises(ValueError, match=r"an input index in 0..2, got -1"):
        layer.unfix_symbolic(-1, 0)
    with pytest.raises(ValueError, match=r"library's names .*got 'sine'"):
        layer.fix_symbolic(0, 0, "sine", fit_params=False)
    with pytest.raises(ValueError, match=r"needs samples x \[N, 3\]"):
        layer.fix_symbolic(0, 0, "sin")
    assert layer.symbolic is None and bool((layer.mask == 1).all())


def test_a_singularity_threshold_switches_to_the_safe_forms():
    branch = SymbolicBranch(1, 1, dtype=torch.float64)
    branch.set_edge(0, 0, "1/x", (1.0, 0.0, 2.0, 0.5))
    x = torch.tensor([[0.0], [1e-3], [0.5], [-4.0]], dtype=torch.float64)
    assert not bool(torch.isfinite(branch(x)).all())
    branch.singularity_threshold = 10.0
    expected = 2.0 * SYMBOLIC_LIBRARY["1/x"].safe(x[:, 0], 10.0) + 0.5
    torch.testing.assert_close(branch(x)[:, 0], expected)
    assert bool(torch.isfinite(branch(x)).all()) and branch(x)[2, 0] == 2.0 * 2.0 + 0.5
