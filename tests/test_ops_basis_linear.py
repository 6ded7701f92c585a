"""kanlib.ops.basis_linear: the fused numba kernel of the elementwise bases against the reference formulas, at
odd sizes, inside and outside the grids, with float64 gradient checks, second derivatives and NaN inputs."""
import pytest
import torch

from kanlib.ops.basis_linear import BasisSpec, basis_linear, basis_linear_reference


def spec_for(kind, n_in, gen, dtype=torch.float64):
    if kind == "rbf":
        return BasisSpec("rbf", 7, grid=torch.linspace(-1.5, 2.0, 7, dtype=dtype), scale=0.6)
    if kind == "rswaf":
        return BasisSpec("rswaf", 9, grid=torch.linspace(-2, 2, 9, dtype=dtype), scale=torch.tensor(1.7, dtype=dtype))
    if kind == "relu":
        starts = torch.linspace(-1.6, 0.8, 6, dtype=dtype).expand(n_in, -1) + 0.1 * torch.rand(n_in, 6, generator=gen,
                                                                                               dtype=dtype)
        return BasisSpec("relu", 6, starts=starts, ends=starts + 0.8)
    return BasisSpec("chebyshev", 6)


KINDS = ["rbf", "rswaf", "relu", "chebyshev"]


def problem(kind, seed, n=23, n_in=5, n_out=7, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    spec = spec_for(kind, n_in, gen, dtype)
    x = (torch.randn(n, n_in, generator=gen, dtype=dtype) * 2).requires_grad_()  # inside and outside the grids
    weight = torch.randn(n_in * spec.n_basis, n_out, generator=gen, dtype=dtype).requires_grad_()
    return x, weight, spec


@pytest.mark.parametrize("n,n_in,n_out", [(1, 1, 1), (23, 5, 7), (130, 3, 17)])
@pytest.mark.parametrize("kind", KINDS)
def test_the_fused_kernel_computes_the_reference_and_its_gradients(kind, n, n_in, n_out):
    x, weight, spec = problem(kind, n + n_in, n, n_in, n_out)
    grad_out = torch.randn(n, n_out, dtype=torch.float64)
    results = []
    for compute in (lambda: basis_linear(x, weight, spec, "cpu"),
                    lambda: basis_linear_reference(spec.expand(x), weight)):
        out = compute()
        results.append((out, *torch.autograd.grad(out, (x, weight), grad_out)))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
def test_float32_matches_float64(kind):
    x, weight, spec = problem(kind, 3)
    spec32 = BasisSpec(spec.kind, spec.n_basis, *(t.float() if isinstance(t, torch.Tensor) else t
                                                  for t in (spec.grid, spec.scale, spec.starts, spec.ends)))
    got = basis_linear(x.detach().float(), weight.detach().float(), spec32, "cpu")
    torch.testing.assert_close(got.double(), basis_linear_reference(spec.expand(x), weight), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_and_second_derivatives(kind):
    x, weight, spec = problem(kind, 4, n=4, n_in=2, n_out=3)
    assert torch.autograd.gradcheck(lambda x, w: basis_linear(x, w, spec, "cpu"), (x, weight))
    assert torch.autograd.gradgradcheck(lambda x, w: basis_linear(x, w, spec, "cpu"), (x, weight))


def test_nan_rows_stay_nan_and_an_empty_batch_works():
    x, weight, spec = problem("rbf", 5, n=4)
    x = x.detach().clone()
    x[2, 1] = float("nan")
    out = basis_linear(x, weight, spec, "cpu")
    assert torch.isnan(out[2]).all() and torch.isfinite(out[[0, 1, 3]]).all()
    assert basis_linear(x[:0], weight, spec, "cpu").shape == (0, 7)


def test_cpu_backend_says_why_it_cannot_run():
    x, weight, spec = problem("rbf", 6)
    trainable = BasisSpec("rbf", spec.n_basis, grid=spec.grid, scale=torch.tensor(0.6, dtype=torch.float64,
                                                                                  requires_grad=True))
    with pytest.raises(ValueError, match="backend='cpu' cannot run this call: it gives no gradient to the rbf "
                                         "basis' scale .*freeze them"):
        basis_linear(x, weight, trainable, "cpu")
    with pytest.raises(ValueError, match="float32 or float64 CPU tensors of one dtype"):
        basis_linear(x.detach().bfloat16(), weight.detach().bfloat16(), spec, "cpu")
    with pytest.raises(ValueError, match=r"backend must be one of \('auto', 'eager', 'cpu', 'triton'\), got 'gpu'"):
        basis_linear(x, weight, spec, "gpu")
    # auto computes the same function where the kernel cannot run
    torch.testing.assert_close(basis_linear(x, weight, trainable), basis_linear(x, weight, spec, "cpu"))


def trainable_parameters(kind, spec):
    """The basis parameters whose gradients the kernel gives, as leaves of a new spec."""
    if kind == "rswaf":
        scale = spec.scale.detach().clone().requires_grad_()
        return BasisSpec("rswaf", spec.n_basis, grid=spec.grid, scale=scale), [scale]
    starts, ends = spec.starts.detach().clone().requires_grad_(), spec.ends.detach().clone().requires_grad_()
    return BasisSpec("relu", spec.n_basis, starts=starts, ends=ends), [starts, ends]


@pytest.mark.parametrize("n,n_in,n_out", [(1, 1, 1), (37, 5, 7), (70, 3, 17)])
@pytest.mark.parametrize("kind", ["rswaf", "relu"])
def test_the_basis_parameters_get_their_gradients(kind, n, n_in, n_out):
    x, weight, spec = problem(kind, 7 + n, n, n_in, n_out)
    spec, parameters = trainable_parameters(kind, spec)
    grad_out = torch.randn(n, n_out, dtype=torch.float64)
    results = []
    for backend in ("cpu", "eager"):
        out = basis_linear(x, weight, spec, backend)
        results.append((out, *torch.autograd.grad(out, (x, weight, *parameters), grad_out)))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    small_x, small_w, small = problem(kind, 8, n=4, n_in=2, n_out=3)
    small, leaves = trainable_parameters(kind, small)
    assert torch.autograd.gradcheck(lambda x, w, *p: basis_linear(x, w, small, "cpu"), (small_x, small_w, *leaves))


@pytest.mark.parametrize("kind", KINDS)
def test_float32_is_as_exact_as_pytorch_far_outside_the_grid_and_keeps_nan_and_inf(kind):
    """The kernel's own exponential against torch's, in float32, for inputs up to 200 grid widths away (where
    exp underflows) and for inf and NaN."""
    x, weight, spec = problem(kind, 9, n=64, n_in=6, n_out=5, dtype=torch.float32)
    x = x.detach() * torch.logspace(-3, 2, 64).unsqueeze(1)
    x[5, 2], x[6, 1], x[7, 0] = float("inf"), -float("inf"), float("nan")
    x.requires_grad_()
    grad_out = torch.randn(64, 5)
    results = []
    for backend in ("cpu", "eager"):
        out = basis_linear(x, weight, spec, backend)
        results.append((out, *torch.autograd.grad(out, (x, weight), grad_out)))
    for got, want in zip(*results):
        finite = torch.isfinite(want).all(1)
        torch.testing.assert_close(got[finite], want[finite], rtol=1e-5, atol=1e-5)
        assert torch.isnan(got[~finite]).any(1).all()


@pytest.mark.parametrize("dtype,lowest", [(torch.float32, -87.0), (torch.float64, -708.0)])
def test_the_kernels_exponential_is_within_a_few_units_in_the_last_place(dtype, lowest):
    """One Gaussian at 0 of width 1 and a unit weight: the layer is exp(-x^2), over arguments down to the smallest
    normal number's order."""
    arguments = -torch.cat([torch.linspace(0, 1, 5001, dtype=torch.float64) ** 2 * -lowest,
                            torch.rand(5000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * -lowest])
    x = (-arguments).sqrt().to(dtype).unsqueeze(1)
    spec = BasisSpec("rbf", 1, grid=torch.zeros(1, dtype=dtype), scale=1.0)
    got = basis_linear(x, torch.ones(1, 1, dtype=dtype), spec, "cpu").squeeze(1).double()
    want = torch.exp((-(x.squeeze(1) * x.squeeze(1))).double())  # the argument as rounded in dtype
    assert ((got - want).abs() / want).max() <= 4 * torch.finfo(dtype).eps
