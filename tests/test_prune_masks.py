"""A masked edge contributes nothing, forward or backward, on every backend, in QAT and in a quantized model:
each check compares a layer whose masked edges hold large weights with one whose masked edges hold zeros.
The Triton backend runs under Triton's interpreter without a GPU (tests/conftest.py)."""
import copy

import pytest
from conftest import inputs_around, random_grid
import torch

from kanlib import KAN, BSplineKAN, quantize
from kanlib.quant import QATConfig
from kanlib.quant.qat import prepare_qat

MASKED = [(0, 1), (2, 0), (3, 2), (1, 1)]
BACKENDS = ["eager", "cpu", "sparse", "triton"]


def with_masked_edges(layer: BSplineKAN, seed: int) -> BSplineKAN:
    """layer with MASKED (among its first 4 x 3 edges) switched off and their weights set large; returns a copy
    where those weights are zero and the mask is on, which computes what the masked layer should."""
    generator = torch.Generator().manual_seed(seed)
    zeroed = copy.deepcopy(layer)
    with torch.no_grad():
        for i, j in MASKED:
            layer.mask[i, j] = 0
            for name in ("scale_base", "scale_sp", "coef"):
                value = getattr(layer, name)[i, j]
                value.copy_(1e3 * (1 + torch.rand(value.shape, generator=generator, dtype=value.dtype)))
                getattr(zeroed, name)[i, j] = 0
    return zeroed


def random_layer(backend, dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    layer = BSplineKAN(5, 3, grid_size=6, backend=backend, dtype=dtype)
    with torch.no_grad():
        layer.grid.copy_(random_grid(5, 6, 3, generator, dtype=dtype))
        layer.coef.copy_(torch.randn(layer.coef.shape, generator=generator, dtype=dtype))
    return layer


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_masked_edge_gives_nothing_and_takes_no_gradient(backend):
    if backend == "triton":
        pytest.importorskip("triton")
    dtype = torch.float32 if backend == "triton" else torch.float64  # the Triton kernels take no float64
    tolerance = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {}
    layer = random_layer(backend, dtype, seed=0)
    zeroed = with_masked_edges(layer, seed=0)
    x = inputs_around(layer.grid, 37, torch.Generator().manual_seed(1)).requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    out, expected = layer(x), zeroed(x_ref)
    torch.testing.assert_close(out, expected, **tolerance)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=dtype)
    (out * weights).sum().backward()
    (expected * weights).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, **tolerance)
    for name in ("scale_base", "scale_sp", "coef"):
        grad = getattr(layer, name).grad
        assert all(bool((grad[i, j] == 0).all()) for i, j in MASKED), name
        assert grad.abs().sum() > 0


def masked_model(seed, dtype=torch.float32):
    model = KAN([3, 5, 3], seed=seed, dtype=dtype)
    model.layers[1] = random_layer("auto", dtype, seed)
    return model, with_masked_edges(model.layers[1], seed)


@pytest.mark.parametrize("backend", ["eager", "cpu", "triton"])
@pytest.mark.parametrize("table_bits", [None, 6])
def test_a_masked_edge_gives_nothing_under_qat(backend, table_bits):
    if backend == "triton":
        pytest.importorskip("triton")
    model, zeroed_layer = masked_model(seed=3)
    reference = copy.deepcopy(model)
    reference.layers[1] = zeroed_layer
    for m in (model, reference):
        for layer in m.layers:
            layer.backend = backend
    config = QATConfig(bits=4, table_bits=table_bits)
    model, reference = prepare_qat(model, config), prepare_qat(reference, config)
    x = torch.randn(29, 3, generator=torch.Generator().manual_seed(4)) * 1.5
    out, expected = model(x), reference(x)
    torch.testing.assert_close(out, expected)
    out.square().sum().backward()
    grad = model.layers[1].coef.grad
    assert all(bool((grad[i, j] == 0).all()) for i, j in MASKED) and grad.abs().sum() > 0


@pytest.mark.parametrize("backend", ["eager", "cpu", "triton"])
@pytest.mark.parametrize("table_bits", [None, 6])
def test_a_masked_edge_gives_nothing_in_a_quantized_model(backend, table_bits):
    if backend == "triton":
        pytest.importorskip("triton")
    model, zeroed_layer = masked_model(seed=5)
    reference = copy.deepcopy(model)
    reference.layers[1] = zeroed_layer
    x = torch.randn(31, 3, generator=torch.Generator().manual_seed(6)) * 1.5
    quantized = quantize(model, bits=4, table_bits=table_bits, calib=x, backend=backend)
    expected = quantize(reference, bits=4, table_bits=table_bits, calib=x, backend=backend)
    torch.testing.assert_close(quantized(x), expected(x))
