"""BSplineKAN against pykan's KANLayer, a float64 evaluation, and its own reference."""
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch.nn.utils.parametrize
import torch.nn.utils.prune
from kan import KANLayer

from kanlib import BSplineKAN
from kanlib.basis import cox_de_boor
from kanlib.layers.bspline import assemble_weight_matrix, solve_positive_definite
from kanlib.ops.spline_linear import torch_backend


def random_pykan_layer(n_in, n_out, grid_size, k, seed, update_grid=False, mask=True):
    """A pykan layer with random coefficients, scales, edge mask and (optionally) a sample-fitted grid."""
    torch.manual_seed(seed)
    layer = KANLayer(n_in, n_out, num=grid_size, k=k, grid_range=[-1.5, 1.0])
    with torch.no_grad():
        layer.coef.normal_()
        layer.scale_base.normal_()
        layer.scale_sp.normal_()
        if mask:
            layer.mask.copy_((torch.rand(n_in, n_out) > 0.3).float())
    if update_grid:
        layer.update_grid_from_samples(torch.randn(257, n_in) * 1.3 + 0.2)
    return layer


def inputs_in_and_out(n, n_in, seed, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(n, n_in, generator=gen, dtype=dtype) * 8 - 4)  # the grid spans about [-2.5, 2]


def reference_forward(layer: BSplineKAN, x):
    """The layer's function written out: base branch plus spline branch over the dense Cox-de Boor basis."""
    bases = cox_de_boor(x, layer.grid, layer.spline_order)
    spline = torch.einsum("nij,ioj->nio", bases, layer.coef)
    edges = layer.scale_base * F.silu(x).unsqueeze(-1) + layer.scale_sp * spline
    return (edges * layer.mask).sum(1)


# pykan 0.2.8 cannot build a layer of order 0 (its curve2coef fails), so k = 0 is checked against the reference.
PYKAN_CASES = [(7, 5, 5, 3), (3, 1, 1, 1), (33, 17, 13, 2), (4, 9, 20, 3), (5, 3, 6, 5)]


BACKENDS = ["eager", "cpu", "sparse"]


@pytest.mark.parametrize("n_in,n_out,grid_size,k", PYKAN_CASES)
@pytest.mark.parametrize("update_grid", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_same_outputs_as_pykan(n_in, n_out, grid_size, k, update_grid, backend):
    ref = random_pykan_layer(n_in, n_out, grid_size, k, seed=grid_size + k, update_grid=update_grid)
    layer = BSplineKAN.from_pykan(ref)
    layer.backend = backend
    assert layer.is_uniform() != update_grid or grid_size == 1
    x = inputs_in_and_out(301, n_in, seed=n_in)
    torch.testing.assert_close(layer(x), ref(x)[0], rtol=1e-5, atol=1e-5)


def test_to_pykan_round_trip():
    layer = BSplineKAN(6, 4, grid_size=7, spline_order=2)
    layer.update_grid(torch.randn(100, 6))
    back = layer.to_pykan()
    x = inputs_in_and_out(50, 6, seed=1)
    torch.testing.assert_close(back(x)[0], layer(x), rtol=1e-5, atol=1e-5)
    again = BSplineKAN.from_pykan(back)
    for name in ("grid", "coef", "scale_base", "scale_sp", "mask"):
        assert torch.equal(getattr(again, name), getattr(layer, name))


@pytest.mark.parametrize("grid_size", [5, 20])
@pytest.mark.parametrize("update_grid", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_no_less_accurate_than_pykan_against_float64(grid_size, update_grid, backend):
    ref = random_pykan_layer(16, 8, grid_size, 3, seed=grid_size, update_grid=update_grid)
    layer = BSplineKAN.from_pykan(ref)
    layer.backend = backend
    x = inputs_in_and_out(4000, 16, seed=5)
    exact_layer = BSplineKAN.from_pykan(ref).double()
    exact_edges = exact_layer.activations(x.double())
    kanlib_error = (layer.activations(x).double() - exact_edges).abs().max().item()
    pykan_error = (ref(x)[2].transpose(1, 2).double() - exact_edges).abs().max().item()
    assert kanlib_error <= pykan_error, (kanlib_error, pykan_error)
    # the summed output adds only the float32 rounding of one dot product per output
    torch.testing.assert_close(layer(x).double(), exact_layer(x.double()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k", [0, 1, 4])
@pytest.mark.parametrize("backend", BACKENDS)
def test_any_order_matches_the_reference(k, backend):
    torch.manual_seed(k)
    layer = BSplineKAN(5, 3, grid_size=6, spline_order=k, backend=backend)
    with torch.no_grad():
        layer.coef.normal_()
    x = inputs_in_and_out(400, 5, seed=k)
    torch.testing.assert_close(layer(x), reference_forward(layer, x), rtol=1e-5, atol=1e-5)
    layer.update_grid(torch.randn(100, 5))
    torch.testing.assert_close(layer(x), reference_forward(layer, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("uniform", [True, False])
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_float64(uniform, k, backend):
    torch.manual_seed(k)
    layer = BSplineKAN(3, 2, grid_size=4, spline_order=k, backend=backend).double()
    if not uniform:
        layer.update_grid(torch.randn(64, 3, dtype=torch.float64))
    assert layer.is_uniform() == uniform
    with torch.no_grad():
        layer.coef.normal_()
    x = (torch.rand(5, 3, dtype=torch.float64) * 5 - 2.5).requires_grad_()
    names = ("coef", "scale_base", "scale_sp")

    def run(x, *params):
        return torch.func.functional_call(layer, dict(zip(names, params)), (x,))

    inputs = (x,) + tuple(getattr(layer, n).detach().clone().requires_grad_() for n in names)
    assert torch.autograd.gradcheck(run, inputs)


@pytest.mark.parametrize("uniform", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_match_the_reference(uniform, backend):
    torch.manual_seed(11)
    layer = BSplineKAN(33, 17, grid_size=13, spline_order=3, backend=backend)
    if not uniform:
        layer.update_grid(torch.randn(300, 33))
    x = inputs_in_and_out(130, 33, seed=2).requires_grad_()
    grad_out = torch.randn(130, 17)
    outputs = {}
    for name, fn in (("fast", layer), ("reference", lambda t: reference_forward(layer, t))):
        layer.zero_grad()
        x.grad = None
        fn(x).backward(grad_out)
        outputs[name] = [x.grad.clone()] + [p.grad.clone() for p in (layer.coef, layer.scale_base, layer.scale_sp)]
    for fast, ref in zip(outputs["fast"], outputs["reference"]):
        torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("uniform", [True, False])
@pytest.mark.parametrize("k", [0, 2, 3])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("wanted", ["input", "weights"])
def test_gradients_when_only_the_input_or_only_the_weights_need_them(wanted, backend, k, uniform):
    torch.manual_seed(5 + k)
    layer = BSplineKAN(9, 4, grid_size=6, spline_order=k, backend=backend)
    if not uniform:
        layer.update_grid(torch.randn(200, 9))
    layer.requires_grad_(wanted == "weights")
    x = inputs_in_and_out(37, 9, seed=k).requires_grad_(wanted == "input")
    grad_out = torch.randn(37, 4)
    leaves = [x] if wanted == "input" else [layer.coef, layer.scale_base, layer.scale_sp]
    fast = torch.autograd.grad(layer(x), leaves, grad_out)
    reference = torch.autograd.grad(reference_forward(layer, x), leaves, grad_out)
    for got, expected in zip(fast, reference):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_weight_matrix_kernel_matches_its_torch_assembly(dtype):
    torch.manual_seed(8)
    layer = BSplineKAN(7, 5, grid_size=4, spline_order=2).to(dtype)
    with torch.no_grad():
        layer.mask.bernoulli_(0.6)
        for param in (layer.scale_base, layer.scale_sp, layer.coef):
            param.normal_()
    params = (layer.scale_base, layer.scale_sp, layer.coef)
    fast = layer.weight_matrix()
    assert fast.grad_fn is not None and "WeightMatrix" in type(fast.grad_fn).__name__  # the kernel ran
    reference = assemble_weight_matrix(layer.base_weight(), layer.spline_weight())
    torch.testing.assert_close(fast, reference, rtol=0, atol=0)
    grad = torch.randn_like(fast)
    for got, expected in zip(torch.autograd.grad(fast, params, grad), torch.autograd.grad(reference, params, grad)):
        torch.testing.assert_close(got, expected)


def test_drop_in_for_linear_with_leading_dimensions():
    layer = BSplineKAN(5, 3)
    x = torch.randn(2, 7, 4, 5)
    out = layer(x)
    assert out.shape == (2, 7, 4, 3)
    torch.testing.assert_close(out, layer(x.reshape(-1, 5)).reshape(2, 7, 4, 3))
    strided = torch.randn(5, 9)[:, :5].t()  # non-contiguous
    torch.testing.assert_close(layer(strided), layer(strided.contiguous()))
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), layer, torch.nn.Linear(3, 1))
    assert model(torch.randn(10, 4)).shape == (10, 1)


def test_bias_adds_to_outputs():
    layer = BSplineKAN(4, 3, bias=True)
    with torch.no_grad():
        layer.bias.copy_(torch.tensor([1.0, -2.0, 3.0]))
    x = torch.randn(6, 4)
    torch.testing.assert_close(layer(x), reference_forward(layer, x) + layer.bias)


def test_state_dict_round_trip_after_grid_change():
    layer = BSplineKAN(4, 3, grid_size=5)
    layer.refine(9)
    layer.update_grid(torch.randn(50, 4))
    fresh = BSplineKAN(4, 3, grid_size=9)
    fresh.load_state_dict(layer.state_dict())
    assert not fresh.is_uniform()
    x = torch.randn(20, 4)
    torch.testing.assert_close(fresh(x), layer(x))


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch_and_nan_rows(backend):
    layer = BSplineKAN(4, 3, backend=backend)
    assert layer(torch.empty(0, 4)).shape == (0, 3)
    x = torch.randn(5, 4)
    x[2, 1] = float("nan")
    out = layer(x)
    assert torch.isnan(out[2]).all()
    assert torch.isfinite(out[[0, 1, 3, 4]]).all()
    torch.testing.assert_close(out[[0, 1, 3, 4]], layer(x[[0, 1, 3, 4]]))


def test_a_layer_built_on_the_meta_device_takes_a_state_dict():
    """The meta device has shapes only: the spline fit of the initialization is skipped there."""
    layer = BSplineKAN(3, 2, grid_size=6, bias=True, device="meta")
    assert layer.coef.device.type == "meta" and layer.coef.shape == (3, 2, 9)
    real = BSplineKAN(3, 2, grid_size=6, bias=True)
    layer.load_state_dict(real.state_dict(), assign=True)
    x = torch.randn(7, 3)
    assert torch.equal(layer(x), real(x))


@pytest.mark.parametrize("bias", [False, True])
def test_under_cpu_autocast_the_output_dtype_does_not_depend_on_the_bias(bias):
    layer = BSplineKAN(4, 3, bias=bias)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(torch.rand(5, 4))
        assert out.dtype == torch.nn.Linear(4, 3, bias=bias)(torch.rand(5, 4)).dtype == torch.bfloat16
    out.float().sum().backward()
    assert layer.coef.grad is not None and (layer.bias is None or layer.bias.grad.dtype == torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("grid_size", [5, 12, 30])
def test_an_empty_batch_gives_zero_gradients(backend, grid_size):
    """As nn.Linear's. The kernels' accumulators come from uninitialized memory: the heap is first filled with NaN
    blocks of their sizes, which an accumulator that no row zeroes would hand back."""
    layer = BSplineKAN(4, 5, grid_size=grid_size, backend=backend, dtype=torch.float64)
    for _ in range(5):
        junk = [np.full(n, np.nan) for n in (16, 32, 64, 128, 256, 512, 1024, 2048) for _ in range(4)]
        del junk
        x = torch.empty(0, 4, dtype=torch.float64, requires_grad=True)
        grads = torch.autograd.grad(layer(x).sum(), (x, *layer.parameters()))
        assert grads[0].shape == (0, 4)
        for name, grad in zip(["coef", "scale_base", "scale_sp"], grads[1:]):
            assert torch.equal(grad, torch.zeros_like(grad)), name


@pytest.mark.parametrize("kwargs,error,words", [
    ({"grid_size": 0}, ValueError, "grid_size must be an int >= 1, got 0"),
    ({"spline_order": -1}, ValueError, "spline_order must be an int >= 0, got -1"),
    ({"grid_size": 2.5}, TypeError, "grid_size must be an int"),
    ({"grid_range": (1, 1)}, ValueError, "low < high, got (1, 1)"),
    ({"grid_range": (2, -1)}, ValueError, "low < high, got (2, -1)"),
    ({"grid_range": ()}, ValueError, "pair of numbers (low, high), got ()"),
    ({"base_activation": "swish"}, ValueError, "got 'swish'"),
    ({"backend": "fast"}, ValueError, "got 'fast'"),
    ({"noise_scale": float("nan")}, ValueError, "noise_scale must be a finite number >= 0.0, got nan"),
    ({"noise_scale": -1}, ValueError, "noise_scale must be a finite number >= 0.0, got -1.0"),
    ({"noise_scale": "a"}, TypeError, "noise_scale must be a finite number >= 0.0, got str 'a'"),
    ({"scale_base_sigma": float("nan")}, ValueError, "scale_base_sigma must be a finite number"),
    ({"scale_base_mu": float("inf")}, ValueError, "scale_base_mu must be a finite number, got inf"),
    ({"scale_sp": "a"}, TypeError, "scale_sp must be a finite number, got str 'a'"),
    ({"dtype": torch.int64}, TypeError, "dtype must be a floating-point torch.dtype, got torch.int64"),
])
def test_bad_settings_are_named(kwargs, error, words):
    with pytest.raises(error) as info:
        BSplineKAN(3, 2, **kwargs)
    assert words in str(info.value)


def test_bad_inputs_are_named():
    layer = BSplineKAN(3, 2)
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 3\), got \(4, 5\)"):
        layer(torch.randn(4, 5))
    with pytest.raises(TypeError, match="floating-point tensor, got dtype torch.int64"):
        layer(torch.ones(4, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="torch.float64 does not match"):
        layer(torch.ones(4, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="must be a torch.Tensor, got list"):
        layer([[0.0, 0.0, 0.0]])


def smooth_coefficients(layer, seed):
    """Coefficients sampling smooth curves at the Greville abscissae, so the splines are smooth too."""
    gen = torch.Generator().manual_seed(seed)
    k = layer.spline_order
    greville = layer.grid.unfold(1, k, 1)[:, 1:1 + layer.n_basis].mean(-1) if k else layer.grid[:, :-1]
    phase = torch.rand(layer.in_features, layer.out_features, 1, generator=gen) * 6
    return torch.sin(2 * greville.unsqueeze(1) + phase)


def test_update_grid_matches_pykan_and_preserves_the_function():
    ref = random_pykan_layer(5, 4, 8, 3, seed=3, mask=False)
    with torch.no_grad():
        ref.coef.copy_(smooth_coefficients(BSplineKAN.from_pykan(ref), seed=3))
    layer = BSplineKAN.from_pykan(ref)
    samples = torch.randn(400, 5) * 0.6
    before = layer(samples)
    ref.update_grid_from_samples(samples)
    layer.update_grid(samples)
    torch.testing.assert_close(layer.grid, ref.grid, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(layer(samples), ref(samples)[0], rtol=1e-4, atol=1e-4)
    # Quantile knots leave wide intervals in the tails, so bound the typical change there and the largest
    # change when the new grid is uniform over the samples.
    rms = lambda t: t.pow(2).mean().sqrt()
    assert rms(layer(samples) - before) / rms(before) < 0.05
    assert not layer.is_uniform()
    uniform = BSplineKAN.from_pykan(random_pykan_layer(5, 4, 8, 3, seed=3, mask=False))
    with torch.no_grad():
        uniform.coef.copy_(smooth_coefficients(uniform, seed=3))
    before = uniform(samples)
    uniform.update_grid(samples, grid_eps=1.0)
    assert uniform.is_uniform()
    assert (uniform(samples) - before).abs().max() / before.abs().max() < 0.05


@pytest.mark.parametrize("new_size,bound", [(10, 1e-4), (20, 1e-4), (7, 0.05), (3, 0.5)])
def test_refine_keeps_the_function_in_range(new_size, bound):
    torch.manual_seed(new_size)
    layer = BSplineKAN(3, 2, grid_size=5, spline_order=3)
    with torch.no_grad():
        layer.coef.copy_(smooth_coefficients(layer, seed=new_size))
    x = torch.rand(500, 3) * 2 - 1
    before = layer(x)
    layer.refine(new_size)
    assert layer.grid_size == new_size and layer.coef.shape == (3, 2, new_size + 3)
    assert layer.is_uniform()
    change = (layer(x) - before).abs().max() / before.abs().max()
    assert change < bound, change


def test_refine_keeps_a_trainable_parameter_registered():
    layer = BSplineKAN(3, 2, grid_size=5)
    layer.refine(10)
    assert any(p is layer.coef for p in layer.parameters())
    layer(torch.randn(4, 3)).sum().backward()
    assert layer.coef.grad.shape == (3, 2, 13)


def test_regularization_loss_is_differentiable_and_sparsity_seeking():
    layer = BSplineKAN(4, 3)
    loss = layer.regularization_loss(torch.randn(16, 4))
    loss.backward()
    assert loss.item() > 0 and layer.coef.grad.abs().sum() > 0


@pytest.mark.parametrize("backend", ["cpu", "sparse"])
def test_cpu_kernels_refuse_what_they_cannot_run(backend):
    layer = BSplineKAN(3, 2, backend=backend).to(torch.bfloat16)
    with pytest.raises(ValueError, match="float32 or float64, got torch.bfloat16"):
        layer(torch.randn(4, 3, dtype=torch.bfloat16))


@pytest.mark.parametrize("grid_size,expected", [(3, "cpu"), (5, "cpu"), (6, "cpu"), (7, "sparse"), (50, "sparse")])
def test_auto_picks_the_sparse_kernels_only_for_large_grids_on_the_cpu(grid_size, expected):
    # The benchmark's grids: local support pays once most of an input's G + k + 1 slots are zeros.
    layer = BSplineKAN(6, 2, grid_size=grid_size)
    x = torch.randn(4, 6)
    assert torch_backend(x, layer.weight_matrix(), layer.spline_order) == expected


def test_auto_falls_back_to_eager_for_half_types():
    layer = BSplineKAN(3, 2)
    x = torch.randn(9, 3)
    expected = layer(x)
    out = layer.to(torch.bfloat16)(x.to(torch.bfloat16))
    torch.testing.assert_close(out.float(), expected, rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_backends_train_under_autocast(backend):
    torch.manual_seed(3)
    layer = BSplineKAN(4, 3, backend=backend)
    x = torch.randn(16, 4, requires_grad=True)
    expected = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    # eager's product follows autocast (as a matmul would); the CPU kernels compute in float32
    assert out.dtype == (torch.bfloat16 if backend == "eager" else torch.float32)
    torch.testing.assert_close(out.float(), expected, rtol=0.02, atol=0.02)
    out.float().sum().backward()  # the backward products once mixed float32 and bfloat16 here
    assert x.grad.dtype == torch.float32 and layer.coef.grad.dtype == torch.float32
    expected_grad = torch.autograd.grad(expected.sum(), layer.coef)[0]
    torch.testing.assert_close(layer.coef.grad, expected_grad, rtol=0.02, atol=0.02)


def test_backend_is_checked_and_kept():
    assert BSplineKAN(3, 2).backend == "auto" and BSplineKAN(3, 2, backend="sparse").backend == "sparse"
    with pytest.raises(ValueError, match="backend must be one of .*got 'gpu'"):
        BSplineKAN(3, 2, backend="gpu")
    with pytest.raises(ValueError, match="spline_order 1 to 5, got 0"):
        BSplineKAN(3, 2, spline_order=0, backend="triton")


@pytest.mark.parametrize("backend", ["auto", "eager", "cpu", "sparse", "triton"])
def test_assigning_grid_data_is_seen_by_every_backend(backend):
    """pykan's code updates a grid with ``grid.data = ...``, which changes neither the tensor nor its version."""
    torch.manual_seed(0)
    layer = BSplineKAN(3, 2, grid_size=6, backend=backend)
    x = torch.rand(20, 3) * 4 - 2
    before = layer(x)
    layer.grid.data = layer.grid.data * 2
    fresh = BSplineKAN(3, 2, grid_size=6, backend="eager")
    fresh.load_state_dict(layer.state_dict())
    after = layer(x)
    torch.testing.assert_close(after, fresh(x), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(after, before)


def test_update_grid_refuses_samples_whose_knots_overflow_and_changes_nothing():
    layer = BSplineKAN(2, 3, grid_size=5)
    state = {name: t.clone() for name, t in layer.state_dict().items()}
    x = torch.rand(50, 2) - 0.5
    x[7, 0] = 3e38  # finite, but the extended grid beyond it is not
    with pytest.raises(ValueError, match="new grid is not finite.*left unchanged"):
        layer.update_grid(x)
    for name, value in layer.state_dict().items():
        torch.testing.assert_close(value, state[name], rtol=0, atol=0)


def test_update_grid_on_constant_samples_keeps_that_input_grid_with_a_warning():
    torch.manual_seed(1)
    layer = BSplineKAN(3, 2, grid_size=5)
    old_grid = layer.grid.clone()
    x = torch.rand(40, 3) * 2 - 1
    x[:, 1] = 0.25
    with pytest.warns(RuntimeWarning, match=r"input\(s\) \[1\] are all equal.*keep their old grid"):
        layer.update_grid(x)
    torch.testing.assert_close(layer.grid[1], old_grid[1], rtol=0, atol=0)
    assert not torch.equal(layer.grid[0], old_grid[0])
    assert torch.isfinite(layer(x)).all()


def _same_function(layer: BSplineKAN) -> BSplineKAN:
    """A plain layer holding ``layer``'s current tensor values (its reparametrized ones included)."""
    plain = BSplineKAN(layer.in_features, layer.out_features)
    with torch.no_grad():
        for name in ("scale_base", "scale_sp", "coef", "grid", "mask"):
            getattr(plain, name).copy_(getattr(layer, name))
    return plain


def test_torch_prune_and_parametrize_reach_the_layer():
    """torch.nn.utils.prune and torch.nn.utils.parametrize take a tensor out of the module's parameters: the
    forward computes with the reparametrized values, and the gradient reaches the original parameter."""
    torch.manual_seed(0)
    x = torch.randn(7, 5)
    pruned = BSplineKAN(5, 3)
    torch.nn.utils.prune.l1_unstructured(pruned, "coef", amount=0.5)
    assert (pruned.coef == 0).any()

    class Doubled(torch.nn.Module):
        def forward(self, value):
            return 2 * value

    doubled = BSplineKAN(5, 3)
    torch.nn.utils.parametrize.register_parametrization(doubled, "scale_sp", Doubled())
    for layer, original in ((pruned, "coef_orig"), (doubled, "parametrizations.scale_sp.original")):
        torch.testing.assert_close(layer(x), _same_function(layer)(x))
        layer(x).square().sum().backward()
        assert layer.get_parameter(original).grad.abs().sum() > 0


def test_solve_positive_definite_matches_lu_and_solves_what_cholesky_refuses():
    torch.manual_seed(0)
    factors = torch.randn(4, 9, 9, dtype=torch.float64)
    matrix = factors @ factors.transpose(1, 2) + 0.1 * torch.eye(9, dtype=torch.float64)
    matrix[2] = torch.diag(torch.tensor([3.0, -2.0, 1.0, 5.0, -1.0, 2.0, 4.0, 1.5, -0.5], dtype=torch.float64))
    rhs = torch.randn(4, 9, 5, dtype=torch.float64)
    assert torch.linalg.cholesky_ex(matrix)[1].tolist() == [0, 0, 2, 0]  # the indefinite one is refused
    solution = solve_positive_definite(matrix, rhs)
    torch.testing.assert_close(solution, torch.linalg.solve(matrix, rhs), rtol=1e-10, atol=1e-12)


def test_a_grid_of_200_intervals_builds_and_refits_after_torch_set_num_threads():
    """With MKL, torch.linalg.solve on a batch of systems above about 150 unknowns, after torch.set_num_threads,
    printed LAPACK errors and hung; a grid of 200 intervals fits 203 coefficients per input."""
    script = """
import torch
torch.set_num_threads(2)
from kanlib import BSplineKAN
layer = BSplineKAN(3, 2, grid_size=200)
x = torch.linspace(-1, 1, 401).unsqueeze(1).repeat(1, 3)
before = layer(x)
layer.update_grid(x)
assert torch.isfinite(layer.coef).all()
print(float((layer(x) - before).abs().max()))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "LAPACK" not in done.stderr and "MKL" not in done.stderr, done.stderr
    assert float(done.stdout) < 1e-4


def test_fit_spline_coefficients_solves_a_few_inputs_at_a_time_to_the_same_values(monkeypatch):
    from kanlib.layers import bspline

    torch.manual_seed(0)
    grid = BSplineKAN(6, 4, grid_size=7).grid
    x, y = torch.randn(200, 6) * 1.3, torch.randn(200, 6, 4)
    calls = []

    def counted(matrix, rhs):
        calls.append(matrix.shape[0])
        return solve_positive_definite(matrix, rhs)

    monkeypatch.setattr(bspline, "solve_positive_definite", counted)
    whole = bspline.fit_spline_coefficients(x, y, grid, 3)
    one_by_one = bspline.fit_spline_coefficients(x, y, grid, 3, chunk_bytes=1)
    assert calls == [6] + [1] * 6
    assert one_by_one.shape == (6, 4, 10) and one_by_one.dtype == torch.float32 and one_by_one.is_contiguous()
    torch.testing.assert_close(one_by_one, whole, rtol=1e-12, atol=0)
    # the least-squares fit: at the samples, the splines come closer to y than any other coefficients nearby
    basis = cox_de_boor(x, grid, 3)

    def error(coef):
        return (torch.einsum("nij,ioj->nio", basis, coef) - y).square().sum()

    assert error(whole) < error(whole + 1e-3 * torch.randn_like(whole))


@pytest.mark.parametrize("backend", ["eager", "cpu", "sparse"])
def test_a_nearly_uniform_float64_grid_computes_its_own_knots_basis(backend):
    """Knots off by 1.6e-6 of a step counted as uniform (the float32 tolerance), and every fast path gave the
    evenly spaced basis: 1e-7 from the plain formula in float64."""
    from kanlib.ops.spline_linear.reference import expanded_input, layer_weight_matrix

    torch.manual_seed(0)
    layer = BSplineKAN(2, 3, grid_size=5, spline_order=3, dtype=torch.float64)
    with torch.no_grad():
        layer.grid[:, 5] += 1.6e-6 * 0.4
        layer.coef.normal_()
    layer.backend = backend
    x = torch.linspace(-1.5, 1.5, 301, dtype=torch.float64).unsqueeze(1).repeat(1, 2)
    weight = layer_weight_matrix(layer.scale_base, layer.scale_sp, layer.mask, layer.coef)
    expected = expanded_input(x, layer.grid, 3).reshape(301, -1) @ weight
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k,grid_size", [(3, 5), (3, 9), (4, 6)])
def test_second_input_derivatives_on_every_knot_agree_across_backends(k, grid_size):
    """The eager backend's double backward runs autograd through the closed-form basis, whose clamp dropped the
    spline's slope where the arithmetic span is a knot's neighbour (0 against 40.5 at x = -1, k = 3, G = 9).
    From k = 3 the second derivative is continuous at the knots, so either neighbouring span gives it."""
    torch.manual_seed(1)
    layer = BSplineKAN(3, 2, grid_size=grid_size, spline_order=k, dtype=torch.float64)
    with torch.no_grad():
        layer.coef.normal_()
    knots = layer.grid.t()

    def second(backend):
        layer.backend = backend
        x = torch.cat([knots, torch.nextafter(knots, knots + 1)]).requires_grad_()
        slope = torch.autograd.grad(layer(x).sum(), x, create_graph=True)[0]
        return torch.autograd.grad(slope.sum(), x)[0]

    torch.testing.assert_close(second("eager"), second("cpu"), rtol=1e-9, atol=1e-9)
