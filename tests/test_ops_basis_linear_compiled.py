"""kanlib.ops.basis_linear.compiled: under torch.compile the other families' product (FastKAN's radial bases,
FasterKAN's switch functions, ReLU-KAN's bumps, ChebyKAN's polynomials) is one kanlib operator that runs the fused
kernels (numba's on the CPU, Triton's: under the interpreter without a GPU), with the eager layer's outputs and
gradients, the basis' own parameters' included; torch.library's own checks; float64 gradients, twice
differentiable; torch.export keeps the plain formula."""
import pytest
import torch
from compiled_models import assert_trains_as_the_eager_model, kanlib_operators, random_batches
from compiled_models import fresh_compiler  # noqa: F401 (autouse: a fresh compiler for each test)
from torch._dynamo.testing import CompileCounterWithBackend

from kanlib import KAN, ChebyKAN, RBFKAN, ReLUKAN, RSWAFKAN
from kanlib.ops.basis_linear import BasisSpec, compiled

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = ("auto", "cpu", "triton") if DEVICE == "cpu" else ("auto", "triton")
FAMILIES = (RBFKAN, RSWAFKAN, ReLUKAN, ChebyKAN)
CPU_ONLY = pytest.mark.skipif(DEVICE != "cpu", reason="the numba kernels: tested by the CPU run")


def trainable(module):
    return [p for p in module.parameters() if p.requires_grad]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", FAMILIES, ids=lambda family: family.__name__)
def test_a_compiled_layer_runs_the_operator_with_the_eager_results(family, backend):
    """Inputs beyond the bases' range too; gradients for x, the weights and the basis' trainable parameters."""
    torch.manual_seed(1)
    layer = family(5, 7, backend=backend).to(DEVICE)
    gen = torch.Generator().manual_seed(2)
    x = (torch.randn(37, 5, generator=gen) * 2).to(DEVICE).requires_grad_()
    grad_out = torch.randn(37, 7, generator=gen).to(DEVICE)
    counter = CompileCounterWithBackend("aot_eager")
    out = torch.compile(layer, backend=counter, fullgraph=True)(x)
    got = torch.autograd.grad(out, (x, *trainable(layer)), grad_out)
    assert kanlib_operators(counter) == ["kanlib.basis_product.default"]
    want_out = layer(x)
    want = torch.autograd.grad(want_out, (x, *trainable(layer)), grad_out)
    torch.testing.assert_close(out, want_out, rtol=1e-5, atol=1e-6)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def random_spec(kind, n_in, dtype, device, gen):
    """A spec of kind for n_in inputs whose parameters take gradients where the kernels give them."""
    n_basis = 6
    if kind in ("rbf", "rswaf"):
        grid = torch.linspace(-1.5, 1.5, n_basis, dtype=dtype, device=device)
        scale = torch.tensor(1.3, dtype=dtype, device=device).requires_grad_(kind == "rswaf")
        return BasisSpec(kind, n_basis, grid=grid, scale=scale)
    if kind == "relu":
        jitter = 0.1 * torch.rand(n_in, n_basis, generator=gen, dtype=dtype)
        starts = (torch.linspace(-2, 1, n_basis, dtype=dtype) + jitter).to(device)
        return BasisSpec(kind, n_basis, starts=starts.requires_grad_(), ends=(starts + 1.2).detach().requires_grad_())
    return BasisSpec(kind, n_basis)


def operator_arguments(spec):
    p, q = spec.parameters()
    return (p, q, 0.0) if isinstance(q, torch.Tensor) or q is None else (p, None, float(q))


@CPU_ONLY
@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("kind", ["rbf", "rswaf", "relu", "chebyshev"])
def test_the_operator_gradients_pass_gradcheck_in_float64(kind, backend):
    gen = torch.Generator().manual_seed(3)
    spec = random_spec(kind, 3, torch.float64, "cpu", gen)
    x = (torch.randn(5, 3, generator=gen, dtype=torch.float64) * 1.5).requires_grad_()
    weight = torch.randn(3 * 6, 2, generator=gen, dtype=torch.float64).requires_grad_()
    p, q, q_value = operator_arguments(spec)
    wanted = [t for t in (p, q) if isinstance(t, torch.Tensor) and t.requires_grad]

    def product(x, weight, *parameters):
        values = dict(zip([id(t) for t in wanted], parameters))
        pp, qq = (values.get(id(t), t) if isinstance(t, torch.Tensor) else t for t in (p, q))
        return compiled.basis_product(x, weight, kind, 6, pp, qq, q_value, backend)

    assert torch.autograd.gradcheck(product, (x, weight, *wanted))
    assert torch.autograd.gradgradcheck(product, (x, weight, *wanted))


@pytest.mark.parametrize("backend", ["cpu", "triton"] if DEVICE == "cpu" else ["triton"])
@pytest.mark.parametrize("kind", ["rbf", "rswaf", "relu", "chebyshev"])
def test_torch_library_checks_the_operators(kind, backend):
    gen = torch.Generator().manual_seed(4)
    device = DEVICE if backend == "triton" else "cpu"
    spec = random_spec(kind, 3, torch.float32, device, gen)
    x = torch.randn(7, 3, generator=gen).to(device).requires_grad_()
    weight = torch.randn(3 * 6, 2, generator=gen).to(device).requires_grad_()
    p, q, q_value = operator_arguments(spec)
    torch.library.opcheck(torch.ops.kanlib.basis_product.default, (x, weight, kind, 6, p, q, q_value, backend))
    grad_out = torch.randn(7, 2, generator=gen).to(device)
    detached = [t.detach() if isinstance(t, torch.Tensor) else t for t in (p, q)]
    trainable_parameters = [isinstance(t, torch.Tensor) and t.requires_grad for t in (p, q)]
    torch.library.opcheck(torch.ops.kanlib.basis_product_backward.default,
                          (grad_out, x.detach(), weight.detach(), kind, 6, *detached, q_value, backend, True, True,
                           *trainable_parameters))


def test_a_compiled_model_trains_as_the_eager_one_under_inductor():
    """torch.compile's default compiler: three optimizer steps of a two-layer RSWAF KAN (its width trains too)."""
    assert_trains_as_the_eager_model(lambda: KAN([4, 6, 3], layer="rswaf", seed=5).to(DEVICE),
                                     random_batches(3, 65, 4, 3, 6, DEVICE))


@pytest.mark.parametrize("family", FAMILIES, ids=lambda family: family.__name__)
def test_the_eager_backend_and_torch_export_keep_the_plain_formula(family):
    layer = family(3, 2, backend="eager")
    counter = CompileCounterWithBackend("aot_eager")
    torch.compile(layer, backend=counter, fullgraph=True)(torch.randn(5, 3))
    assert kanlib_operators(counter) == []
    exported = torch.export.export(family(3, 2), (torch.randn(5, 3),))
    assert not [n for n in exported.graph.nodes if str(n.target).startswith("kanlib.")]


def test_a_bad_operator_backend_names_the_choices():
    with pytest.raises(ValueError, match=r"runs backend \('cpu', 'triton'\), got 'eager'"):
        compiled.basis_product(torch.randn(3, 2), torch.randn(12, 4), "chebyshev", 6, None, None, 0.0, "eager")
