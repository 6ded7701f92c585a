"""kanlib.ops.spline_linear.compiled: under torch.compile a B-spline layer's product is one kanlib operator that runs
the fused kernels (numba's on the CPU, from the layer's parameters; Triton's, under the interpreter without a GPU),
with the eager layer's outputs and gradients; torch.library's own checks of the operators; gradients in float64,
twice differentiable; a grid that changes between calls; torch.export keeps the plain formula."""
import pytest
import torch
from compiled_models import assert_trains_as_the_eager_model, kanlib_operators, random_batches
from compiled_models import fresh_compiler  # noqa: F401 (autouse: a fresh compiler for each test)
from conftest import inputs_around, random_grid
from torch._dynamo.testing import CompileCounterWithBackend

from kanlib import KAN, BSplineKAN
from kanlib.ops.spline_linear import GROUP_ROWS, compiled, spline_linear
from kanlib.ops.spline_linear.reference import spline_linear_reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
LAYER_BACKENDS = ("auto", "cpu", "sparse", "triton") if DEVICE == "cpu" else ("auto", "triton")
# the operator a compiled layer's graph holds: on the CPU the layer's own (the product from its parameters), the
# Triton kernels' product of the assembled weight otherwise
CPU_KERNELS_ONLY = pytest.mark.skipif(
    DEVICE != "cpu", reason="the numba operators: tested by the CPU run (on a GPU machine numba would compile them on "
                            "every worker)")
OPERATORS = {"auto": "kanlib.spline_layer.default" if DEVICE == "cpu" else "kanlib.spline_product.default",
             "cpu": "kanlib.spline_layer.default", "sparse": "kanlib.spline_layer.default",
             "triton": "kanlib.spline_product.default"}


def random_problem(seed, n=13, n_in=5, n_out=7, grid_size=6, k=3, uniform=True, dtype=torch.float64):
    """x [n, I] over the extended grid and beyond it, weight [I*(G+k+1), O], grid [I, G+2k+1], all fresh."""
    gen = torch.Generator().manual_seed(seed)
    grid = random_grid(n_in, grid_size, k, gen, uniform=uniform, dtype=dtype)
    x = inputs_around(grid, n, gen, outside=0.25, dtype=dtype).requires_grad_()
    weight = torch.randn(n_in * (grid_size + k + 1), n_out, generator=gen, dtype=dtype).requires_grad_()
    return x, weight, grid, k


def compiled_layer_step(layer, x, grad_out):
    """(output, grad_x, parameter gradients, the kanlib operators in the traced graph) of one compiled step."""
    counter = CompileCounterWithBackend("aot_eager")
    out = torch.compile(layer, backend=counter, fullgraph=True)(x)
    out.backward(grad_out)
    operators = kanlib_operators(counter)
    grads = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    grad_x, x.grad = x.grad.clone(), None
    return out, grad_x, grads, operators


def eager_layer_step(layer, x, grad_out):
    out = layer(x)
    out.backward(grad_out)
    grads = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    grad_x, x.grad = x.grad.clone(), None
    return out, grad_x, grads


@pytest.mark.parametrize("uniform", [True, False])
@pytest.mark.parametrize("backend", LAYER_BACKENDS)
def test_a_compiled_layer_runs_the_fused_operator_with_the_eager_results(backend, uniform):
    torch.manual_seed(0)
    layer = BSplineKAN(5, 7, grid_size=13, backend=backend).to(DEVICE)
    if not uniform:
        layer.update_grid(torch.randn(64, 5, device=DEVICE))
    gen = torch.Generator().manual_seed(1)
    x = inputs_around(layer.grid.cpu(), 37, gen, outside=0.25).to(DEVICE).requires_grad_()
    grad_out = torch.randn(37, 7, generator=gen).to(DEVICE)
    out, grad_x, grads, operators = compiled_layer_step(layer, x, grad_out)
    assert operators == [OPERATORS[backend]]
    want_out, want_grad_x, want_grads = eager_layer_step(layer, x, grad_out)
    torch.testing.assert_close(out, want_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_x, want_grad_x, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, want_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_a_compiled_layer_follows_its_grid_when_it_moves():
    """The operator reads the grid when it runs: uniform, then after update_grid (not uniform), then refined."""
    torch.manual_seed(2)
    layer = BSplineKAN(3, 4, grid_size=5).to(DEVICE)
    model = torch.compile(layer, backend="aot_eager", fullgraph=True)
    x = torch.randn(29, 3, device=DEVICE) * 1.5
    for change in (lambda: None, lambda: layer.update_grid(torch.randn(50, 3, device=DEVICE) ** 3),
                   lambda: layer.refine(9)):
        change()
        torch.testing.assert_close(model(x), layer(x), rtol=1e-5, atol=1e-6)


@CPU_KERNELS_ONLY
@pytest.mark.parametrize("backend", ["cpu", "sparse"])
@pytest.mark.parametrize("uniform", [True, False])
def test_the_operator_gradients_pass_gradcheck_in_float64(backend, uniform):
    x, weight, grid, k = random_problem(3, n=9, n_in=3, n_out=4, uniform=uniform)

    def product(x, weight):
        return compiled.spline_product(x, weight, grid, k, "silu", backend, "auto")

    assert torch.autograd.gradcheck(product, (x, weight))
    assert torch.autograd.gradgradcheck(product, (x, weight))


@CPU_KERNELS_ONLY
@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("uniform", [True, False])
def test_the_layer_operator_gradients_pass_gradcheck_in_float64(sparse, uniform):
    layer = BSplineKAN(3, 4, grid_size=7).double()
    if not uniform:
        layer.update_grid(torch.randn(40, 3, dtype=torch.float64))
    with torch.no_grad():
        layer.mask[1, 2] = 0.0
    gen = torch.Generator().manual_seed(11)
    x = inputs_around(layer.grid, 9, gen, outside=0.25).requires_grad_()

    def product(x, scale_base, scale_sp, coef):
        return compiled.spline_layer(x, scale_base, scale_sp, layer.mask, coef, layer.grid, 3, "silu", sparse, True,
                                     True, GROUP_ROWS)[0]

    tensors = (x, layer.scale_base, layer.scale_sp, layer.coef)
    assert torch.autograd.gradcheck(product, tensors)
    assert torch.autograd.gradgradcheck(product, tensors)


@pytest.mark.parametrize("kernels", ["dense", "local"])
def test_the_triton_operator_matches_the_formula_with_its_gradients(kernels):
    x, weight, grid, k = random_problem(4, n=19, n_in=3, n_out=5, grid_size=9, uniform=False, dtype=torch.float32)
    x, weight, grid = (t.detach().to(DEVICE).requires_grad_(t.requires_grad) for t in (x, weight, grid))
    grad_out = torch.randn(19, 5, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    results = []
    for compute in (lambda: compiled.spline_product(x, weight, grid, k, "tanh", "triton", kernels),
                    lambda: spline_linear_reference(x, weight, grid, k, "tanh")):
        out = compute()
        results.append((out, *torch.autograd.grad(out, (x, weight), grad_out)))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend,kernels,dtype", [
    pytest.param("cpu", "auto", torch.float64, marks=CPU_KERNELS_ONLY),
    pytest.param("sparse", "auto", torch.float32, marks=CPU_KERNELS_ONLY),
    ("triton", "dense", torch.float32), ("triton", "local", torch.float32)])
def test_torch_library_checks_the_operators(backend, kernels, dtype):
    """Schema, fake (shape-only) implementation, autograd registration and AOT dispatch, by torch.library.opcheck."""
    x, weight, grid, k = random_problem(6, n=7, n_in=3, n_out=2, grid_size=4, uniform=False, dtype=dtype)
    device = DEVICE if backend == "triton" else "cpu"
    x, weight, grid = (t.detach().to(device).requires_grad_(t.requires_grad) for t in (x, weight, grid))
    torch.library.opcheck(torch.ops.kanlib.spline_product.default, (x, weight, grid, k, "silu", backend, kernels))
    grad_out = torch.randn(7, 2, dtype=dtype, device=device)
    for need_x, need_weight in ((True, True), (True, False), (False, True)):
        torch.library.opcheck(torch.ops.kanlib.spline_product_backward.default,
                              (grad_out, x.detach(), weight.detach(), grid, k, "silu", backend, kernels, need_x,
                               need_weight))


@CPU_KERNELS_ONLY
@pytest.mark.parametrize("keep_windows,with_slopes", [(True, True), (True, False), (False, False)])
@pytest.mark.parametrize("sparse", [False, True])
def test_torch_library_checks_the_layer_operators(sparse, keep_windows, with_slopes):
    """Also the windows' shapes: the fake implementation's against the kernels' (blocks of fewer rows than there are,
    by a small group_rows monkeypatched in)."""
    layer = BSplineKAN(3, 13, grid_size=4)  # 13 outputs: the dense path's plain (not transposed) product
    x = inputs_around(layer.grid, 7, torch.Generator().manual_seed(12), outside=0.25).requires_grad_()
    parameters = (layer.scale_base, layer.scale_sp, layer.mask, layer.coef, layer.grid)
    arguments = (x, *parameters, 3, "tanh", sparse, keep_windows, with_slopes, GROUP_ROWS)
    torch.library.opcheck(torch.ops.kanlib.spline_layer.default, arguments)
    _, *windows = compiled.spline_layer(*arguments)
    if sparse and keep_windows:
        shapes = compiled.window_shapes(7, 3, 4 + 3, 3, with_slopes, GROUP_ROWS)
        assert [tuple(w.shape) for w in windows] == list(shapes)
    grad_out = torch.randn(7, 13)
    for need_x, need_parameters in ((True, True), (True, False), (False, True)):
        if need_x and sparse and keep_windows and not with_slopes:
            continue  # the forward keeps no slopes when x takes no gradient
        torch.library.opcheck(torch.ops.kanlib.spline_layer_backward.default,
                              (grad_out, x.detach(), *(t.detach() for t in parameters), *windows, 3, "tanh", sparse,
                               need_x, need_parameters))


@CPU_KERNELS_ONLY
@pytest.mark.parametrize("x_needs_grad", [True, False])
def test_a_compiled_sparse_layer_finds_its_windows_once_per_step(monkeypatch, x_needs_grad):
    """The forward operator's windows (with slopes only when x takes a gradient) reach the backward operator."""
    import kanlib.ops.spline_linear as spline_linear_module

    calls = []
    windows = spline_linear_module._sparse_windows
    monkeypatch.setattr(spline_linear_module, "_sparse_windows",
                        lambda args, n_slots, with_slopes: calls.append(with_slopes) or windows(args, n_slots,
                                                                                                with_slopes))
    layer = BSplineKAN(4, 5, grid_size=30, backend="sparse")
    x = torch.randn(21, 4, requires_grad=x_needs_grad)
    grad_out = torch.randn(21, 5)
    leaves = (x, *layer.parameters()) if x_needs_grad else tuple(layer.parameters())
    model = torch.compile(layer, backend="aot_eager", fullgraph=True)
    model(x)  # compiles (tracing runs no kernel)
    calls.clear()
    got = torch.autograd.grad(model(x), leaves, grad_out)
    assert calls == [x_needs_grad]
    for g, w in zip(got, torch.autograd.grad(layer(x), leaves, grad_out)):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


@CPU_KERNELS_ONLY
def test_the_window_shapes_follow_the_row_blocks(monkeypatch):
    """Rows in several blocks, the last one short: the shapes the fake implementation gives are the kernels'."""
    import kanlib.ops.spline_linear as spline_linear_module

    monkeypatch.setattr(spline_linear_module, "GROUP_ROWS", 4)
    layer = BSplineKAN(2, 3, grid_size=6)
    x = torch.randn(11, 2, requires_grad=True)
    _, *windows = compiled.spline_layer(x, layer.scale_base, layer.scale_sp, layer.mask, layer.coef, layer.grid, 3,
                                        "silu", True, True, True, 4)
    assert [tuple(w.shape) for w in windows] == list(compiled.window_shapes(11, 2, 6 + 3, 3, True, 4))
    assert windows[2].shape == (3, 2, 4)


def test_a_compiled_model_trains_as_the_eager_one_under_inductor():
    """torch.compile's default compiler (C++ on the CPU, Triton on CUDA): three optimizer steps of a two-layer KAN."""
    assert_trains_as_the_eager_model(lambda: KAN([4, 6, 3], grid_size=20, seed=7).to(DEVICE),
                                     random_batches(3, 65, 4, 3, 8, DEVICE))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA autocast")
def test_under_cuda_autocast_the_compiled_layer_computes_as_the_eager_one():
    """x and the weight go to the Triton operator in bfloat16, as the eager layer sends them to the kernels."""
    torch.manual_seed(13)
    layer = BSplineKAN(33, 17, grid_size=5).cuda()
    x = torch.randn(130, 33, device="cuda", requires_grad=True)
    grad_out = torch.randn(130, 17, device="cuda", dtype=torch.bfloat16)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out, grad_x, grads, operators = compiled_layer_step(layer, x, grad_out)
        want_out, want_grad_x, want_grads = eager_layer_step(layer, x, grad_out)
    assert operators == ["kanlib.spline_product.default"]
    assert out.dtype == want_out.dtype == torch.bfloat16
    for got, want in zip((out, grad_x, *grads), (want_out, want_grad_x, *want_grads)):
        torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs")
@pytest.mark.parametrize("grid_size", [5, 50])  # the dense kernels, the local-support ones (their sort, their tables)
def test_under_cuda_graphs_the_compiled_layer_trains_as_the_eager_one(grid_size):
    """mode="reduce-overhead": the Triton operators are captured in CUDA graphs (after warm-up steps) and replayed."""
    batches = [(x, None) for x, _ in random_batches(5, 257, 16, 8, 15, "cuda")]
    assert_trains_as_the_eager_model(lambda: KAN([16, 32, 8], grid_size=grid_size, seed=14).cuda(), batches,
                                     optimizer=torch.optim.SGD, mode="reduce-overhead")


def test_the_eager_backend_stays_plain_pytorch_under_compile():
    layer = BSplineKAN(3, 2, backend="eager")
    x = torch.randn(5, 3, requires_grad=True)
    _, _, _, operators = compiled_layer_step(layer, x, torch.ones(5, 2))
    assert operators == []


def test_torch_export_keeps_the_plain_formula():
    exported = torch.export.export(KAN([3, 4, 2], seed=0), (torch.randn(6, 3),))
    assert not [node for node in exported.graph.nodes if str(node.target).startswith("kanlib.")]


def test_bad_operator_arguments_name_what_was_expected():
    x, weight, grid, k = random_problem(9)
    with pytest.raises(ValueError, match=r"runs backend \('cpu', 'sparse', 'triton'\), got 'eager'"):
        compiled.spline_product(x, weight, grid, k, "silu", "eager", "auto")
    with pytest.raises(ValueError, match=r"kernels must be one of \('auto', 'dense', 'local'\), got 'sparse'"):
        compiled.spline_product(x, weight, grid, k, "silu", "triton", "sparse")


@CPU_KERNELS_ONLY
def test_outside_compile_the_dispatcher_does_not_use_the_operator(monkeypatch):
    """The eager path keeps its autograd Functions (an operator call costs more host time per step)."""
    monkeypatch.setattr(compiled, "spline_product", None)
    monkeypatch.setattr("kanlib.ops.spline_linear.spline_product", None)
    x, weight, grid, k = random_problem(10)
    spline_linear(x, weight, grid, k, True, "silu", "cpu").sum().backward()
