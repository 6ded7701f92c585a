"""A B-spline layer on the Triton path in one autograd node (kanlib.ops.spline_linear.triton_layer) against the same
layer on the eager backend in float64. Without a GPU it runs under Triton's interpreter (tests/conftest.py).

Sizes: odd widths (I = 5, O = 7 or 70: two blocks of the weight kernels' 64 outputs); G = 5 runs the dense product
kernels and G = 40 the local-support ones (as "auto" picks them); inputs inside the grid and up to half its width
beyond either end; uniform and adapted grids.
"""
import copy

import pytest
from conftest import inputs_around, relative_error
import torch

triton = pytest.importorskip("triton")

from kanlib import BSplineKAN  # noqa: E402
from kanlib.ops.spline_linear import triton_layer  # noqa: E402
from kanlib.quant import QATBSplineKAN  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
NAMES = ("coef", "scale_base", "scale_sp", "bias")


def random_layer(grid_size: int, n_out: int = 7, uniform: bool = True, seed: int = 0) -> BSplineKAN:
    """A Triton layer with random coefficients, scales and bias, two edges switched off, and (unless uniform) its
    grid adapted to random samples."""
    torch.manual_seed(seed)
    layer = BSplineKAN(5, n_out, grid_size=grid_size, bias=True, backend="triton", device=DEVICE)
    with torch.no_grad():
        for name in NAMES:
            getattr(layer, name).normal_()
        layer.mask[0, 1] = layer.mask[3, 0] = 0.0
    if not uniform:
        layer.update_grid(torch.randn(300, 5, device=DEVICE))
    assert layer.is_uniform() == uniform
    return layer


def eager_float64(layer: BSplineKAN) -> BSplineKAN:
    reference = copy.deepcopy(layer).double()
    reference.backend = "eager"
    return reference


def random_inputs(layer: BSplineKAN, n: int, seed: int) -> torch.Tensor:
    return inputs_around(layer.grid.cpu(), n, torch.Generator().manual_seed(seed)).to(DEVICE)


@pytest.mark.parametrize("grid_size", [5, 40], ids=["dense", "local"])
@pytest.mark.parametrize("uniform", [True, False], ids=["uniform", "adapted"])
@pytest.mark.parametrize("x_grad", [True, False], ids=["x-grad", "x-frozen"])
def test_one_node_gives_the_eager_layer_outputs_and_gradients(grid_size, uniform, x_grad):
    """Without a gradient for x the weight is not kept for backward: the parameters' gradients still come."""
    layer = random_layer(grid_size, uniform=uniform, seed=grid_size)
    reference = eager_float64(layer)
    x = random_inputs(layer, 13, seed=1).requires_grad_(x_grad)
    x64 = x.detach().double().requires_grad_(x_grad)
    grad_out = torch.randn(13, 7, device=DEVICE)
    out = layer(x)
    assert type(out.grad_fn.next_functions[0][0]).__name__ == "TritonSplineLayerBackward"  # then the bias' add
    want_out = reference(x64)
    assert out.dtype == torch.float32 and relative_error(out, want_out) <= 1e-4
    leaves = ([x] if x_grad else []) + [getattr(layer, n) for n in NAMES]
    want_leaves = ([x64] if x_grad else []) + [getattr(reference, n) for n in NAMES]
    got = torch.autograd.grad(out, leaves, grad_out)
    want = torch.autograd.grad(want_out, want_leaves, grad_out.double())
    for name, g, w in zip((["x"] if x_grad else []) + list(NAMES), got, want):
        assert relative_error(g, w) <= 1e-4, name


def test_frozen_parameters_get_no_gradient_and_their_kernels_do_not_run(monkeypatch):
    from kanlib.ops.spline_linear import triton_weight

    launches = []
    run = triton_weight._gradients_kernel.run
    monkeypatch.setattr(triton_weight._gradients_kernel, "run",
                        lambda *args, **kwargs: launches.append(kwargs) or run(*args, **kwargs))
    layer = random_layer(5)
    layer.coef.requires_grad_(False)
    layer.scale_sp.requires_grad_(False)
    reference = eager_float64(layer)
    x = random_inputs(layer, 9, seed=2)
    layer(x).sum().backward()
    reference(x.double()).sum().backward()
    assert layer.coef.grad is None and layer.scale_sp.grad is None
    assert [(k["WANT_BASE"], k["WANT_SP"], k["WANT_COEF"]) for k in launches] == [(True, False, False)]
    assert relative_error(layer.scale_base.grad, reference.scale_base.grad) <= 1e-4
    layer.scale_base.requires_grad_(False)
    layer.bias.requires_grad_(False)
    assert not layer(x).requires_grad  # nothing takes a gradient: no graph


def test_create_graph_gives_the_eager_layers_second_derivatives():
    """A create_graph backward goes through the plain formula: the gradient of x is differentiated again (a gradient
    penalty), in x and in the parameters."""
    layer = random_layer(5, seed=3)
    reference = eager_float64(layer)
    x = random_inputs(layer, 11, seed=4).requires_grad_()
    x64 = x.detach().double().requires_grad_()
    penalties = []
    for module, inputs in ((layer, x), (reference, x64)):
        (grad_x,) = torch.autograd.grad(module(inputs).square().sum(), inputs, create_graph=True)
        penalty = grad_x.square().sum()
        penalties.append(torch.autograd.grad(penalty, [inputs, module.coef, module.scale_base]))
    for name, g, w in zip(("x", "coef", "scale_base"), *penalties):
        assert relative_error(g, w) <= 1e-4, name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_under_autocast_the_weight_is_written_and_the_product_taken_in_the_autocast_dtype(dtype, monkeypatch):
    written = []
    assemble = triton_layer.assemble_weight
    monkeypatch.setattr(triton_layer, "assemble_weight",
                        lambda *args: written.append(args[-1]) or assemble(*args))
    layer = random_layer(5, n_out=70, seed=5)
    reference = eager_float64(layer)
    x = random_inputs(layer, 9, seed=6).requires_grad_()
    x64 = x.detach().double().requires_grad_()
    with torch.autocast(DEVICE, dtype=dtype):
        out = layer(x)
    assert out.dtype == dtype and written == [dtype]
    out.float().square().sum().backward()
    reference(x64).square().sum().backward()
    assert layer.coef.grad.dtype == torch.float32 and x.grad.dtype == torch.float32
    assert relative_error(out, reference(x64)) <= 2e-2
    for name, got, want in ((n, getattr(layer, n).grad, getattr(reference, n).grad) for n in NAMES):
        assert relative_error(got, want) <= 5e-2, name
    assert relative_error(x.grad, x64.grad) <= 5e-2


def test_the_layer_takes_two_nodes_where_its_weight_is_not_its_own_or_its_mask_learns():
    """Quantization-aware training changes the weight, and a mask that takes a gradient needs the plain formula's
    weight: those keep the weight's node and the product's."""
    x = torch.rand(4, 3, device=DEVICE) * 2 - 1
    qat = QATBSplineKAN(3, 2, grid_size=5, backend="triton", device=DEVICE)
    assert type(qat(x).grad_fn).__name__ != "TritonSplineLayerBackward"
    learned = BSplineKAN(3, 2, grid_size=5, backend="triton", device=DEVICE)
    learned.mask.requires_grad_()
    assert type(learned(x).grad_fn).__name__ != "TritonSplineLayerBackward"
    plain = BSplineKAN(3, 2, grid_size=5, backend="triton", device=DEVICE)
    assert type(plain(x).grad_fn).__name__ == "TritonSplineLayerBackward"
