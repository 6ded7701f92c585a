"""kanlib.ops.edge_spline_linear.compiled: under torch.compile a pruned layer's edge-sparse product is one kanlib
operator that runs the fused kernels (numba's on the CPU, Triton's: under the interpreter without a GPU), with the
eager layer's outputs and gradients, uniform grid or not; torch.library's own checks; float64 gradients, twice
differentiable; the eager backend and torch.export keep the plain formula."""
import pytest
import torch
from compiled_models import assert_trains_as_the_eager_model, kanlib_operators, pruned_kan, random_batches
from compiled_models import fresh_compiler  # noqa: F401 (autouse: a fresh compiler for each test)
from conftest import inputs_around
from torch._dynamo.testing import CompileCounterWithBackend

from kanlib import BSplineKAN, SparseBSplineKAN
from kanlib.ops.edge_spline_linear import compiled

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = ("auto", "cpu", "triton") if DEVICE == "cpu" else ("auto", "triton")
OPERATOR = "kanlib.edge_spline_product.default"


def pruned_layer(seed, n_in=7, n_out=5, grid_size=6, uniform=True, backend="auto", dtype=torch.float32):
    """A SparseBSplineKAN from a dense layer with about 60% of its edges switched off, non-trivial parameters."""
    torch.manual_seed(seed)
    dense = BSplineKAN(n_in, n_out, grid_size=grid_size, backend=backend, dtype=dtype)
    if not uniform:
        dense.update_grid(torch.randn(64, n_in, dtype=dtype) ** 3)
    with torch.no_grad():
        dense.mask.copy_((torch.rand(n_in, n_out) >= 0.6).to(dtype))
        dense.coef.normal_()
        dense.scale_sp.uniform_(-1, 1)
    return SparseBSplineKAN.from_dense(dense).to(DEVICE)


def step(module, x, grad_out):
    out = module(x)
    grads = torch.autograd.grad(out, (x, *module.parameters()), grad_out)
    return out, grads


@pytest.mark.parametrize("uniform", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_compiled_pruned_layer_runs_the_operator_with_the_eager_results(backend, uniform):
    layer = pruned_layer(1, uniform=uniform, backend=backend)
    gen = torch.Generator().manual_seed(2)
    x = inputs_around(layer.grid.cpu(), 37, gen, outside=0.25).to(DEVICE).requires_grad_()
    grad_out = torch.randn(37, 5, generator=gen).to(DEVICE)
    counter = CompileCounterWithBackend("aot_eager")
    got = step(torch.compile(layer, backend=counter, fullgraph=True), x, grad_out)
    assert kanlib_operators(counter) == [OPERATOR]
    want = step(layer, x, grad_out)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)
    for g, w in zip(got[1], want[1]):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(DEVICE != "cpu", reason="the numba kernels: tested by the CPU run")
@pytest.mark.parametrize("uniform", [True, False])
def test_the_operator_gradients_pass_gradcheck_in_float64(uniform):
    layer = pruned_layer(3, n_in=3, n_out=4, uniform=uniform, dtype=torch.float64)
    x = inputs_around(layer.grid, 9, torch.Generator().manual_seed(4), outside=0.25).requires_grad_()
    fixed = (layer.grid, layer.edge_inputs, layer.edge_outputs, layer.input_offsets)

    def product(x, coef, scale_base, scale_sp):
        return compiled.edge_spline_product(x, coef, scale_base, scale_sp, *fixed, 4, 3, "silu", "cpu")

    tensors = (x, layer.coef, layer.scale_base, layer.scale_sp)
    assert torch.autograd.gradcheck(product, tensors)
    assert torch.autograd.gradgradcheck(product, tensors)


@pytest.mark.parametrize("backend", ["cpu", "triton"] if DEVICE == "cpu" else ["triton"])
def test_torch_library_checks_the_operators(backend):
    layer = pruned_layer(5, n_in=3, n_out=4, uniform=False)
    x = inputs_around(layer.grid.cpu(), 7, torch.Generator().manual_seed(6), outside=0.25).to(DEVICE)
    x.requires_grad_()
    tensors = (layer.coef, layer.scale_base, layer.scale_sp, layer.grid, layer.edge_inputs, layer.edge_outputs,
               layer.input_offsets)
    torch.library.opcheck(torch.ops.kanlib.edge_spline_product.default, (x, *tensors, 4, 3, "tanh", backend))
    grad_out = torch.randn(7, 4, device=DEVICE)
    for needs in ((True, True, True, True), (False, True, False, True), (True, False, False, False)):
        torch.library.opcheck(torch.ops.kanlib.edge_spline_product_backward.default,
                              (grad_out, x.detach(), *(t.detach() for t in tensors), 4, 3, "tanh", backend, *needs))


def test_a_compiled_pruned_model_trains_as_the_eager_one():
    assert_trains_as_the_eager_model(lambda: pruned_kan([4, 6, 3], 7, 0.5, DEVICE, grid_size=8),
                                     random_batches(3, 33, 4, 3, 9, DEVICE), backend="aot_eager", fullgraph=True)


@pytest.mark.skipif(not hasattr(torch.Tag, "cudagraph_unsafe"), reason="this torch has no cudagraph_unsafe tag")
def test_the_forward_operator_is_kept_out_of_cuda_graphs():
    """Its non-finite check reads from the device, which a CUDA graph cannot record."""
    assert torch.Tag.cudagraph_unsafe in torch.ops.kanlib.edge_spline_product.default.tags


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs")
def test_under_cuda_graphs_a_compiled_pruned_model_trains_as_the_eager_one():
    """mode="reduce-overhead": the graphs are recorded around the edge-sparse operator, whose results they keep."""
    batches = [(x, None) for x, _ in random_batches(5, 129, 8, 4, 15, "cuda")]
    assert_trains_as_the_eager_model(lambda: pruned_kan([8, 16, 4], 13, 0.7, "cuda", grid_size=10), batches,
                                     optimizer=torch.optim.SGD, mode="reduce-overhead")


def test_the_eager_backend_and_torch_export_keep_the_plain_formula():
    layer = pruned_layer(10, backend="eager").cpu()
    counter = CompileCounterWithBackend("aot_eager")
    torch.compile(layer, backend=counter, fullgraph=True)(torch.randn(5, 7))
    assert kanlib_operators(counter) == []
    exported = torch.export.export(pruned_layer(11).cpu(), (torch.randn(5, 7),))
    assert not [n for n in exported.graph.nodes if str(n.target).startswith("kanlib.")]


def test_a_bad_operator_backend_names_the_choices():
    layer = pruned_layer(12).cpu()
    with pytest.raises(ValueError, match=r"runs backend \('cpu', 'triton'\), got 'eager'"):
        compiled.edge_spline_product(torch.randn(3, 7), layer.coef, layer.scale_base, layer.scale_sp, layer.grid,
                                     layer.edge_inputs, layer.edge_outputs, layer.input_offsets, 5, 3, "silu", "eager")
