"""The Triton weight assembly (kanlib.ops.spline_linear.triton_weight) against the plain formula of
kanlib.ops.spline_linear.reference.layer_weight_matrix. Without a GPU it runs under Triton's interpreter
(tests/conftest.py).

Sizes: the kernels take 64 outputs and 16 coefficients per block, so O = 70 and G + k = 20 span two blocks each;
one edge (I = O = G + k = 1) is the smallest layer.
"""
import textwrap

import pytest
from conftest import fill_empty_with_nan, relative_error
import torch

triton = pytest.importorskip("triton")

from gpu_compile import SPILL_STORES, assert_compiles  # noqa: E402

from kanlib import BSplineKAN  # noqa: E402
from kanlib.layers.bspline import _WeightMatrix  # noqa: E402
from kanlib.ops.spline_linear import triton as kernels  # noqa: E402
from kanlib.ops.spline_linear.reference import layer_weight_matrix  # noqa: E402
from kanlib.ops.spline_linear.triton_weight import WEIGHT_DTYPES, assemble_weight, weight_gradients  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SIZES = [(3, 5, 7), (2, 70, 20), (1, 1, 1)]  # (I, O, G + k)
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}


def random_parameters(n_in, n_out, n_basis, dtype, seed, layout="contiguous"):
    """(scale_base, scale_sp, mask [I, O], coef [I, O, G+k]) on DEVICE: the mask switches about a third of the edges
    off and scales one edge by 0.5; "strided" gives every tensor other strides (coef with the coefficients
    outermost, the [I, O] ones transposed)."""
    gen = torch.Generator().manual_seed(seed)
    scale_base, scale_sp = (torch.randn(n_in, n_out, generator=gen) for _ in range(2))
    mask = (torch.rand(n_in, n_out, generator=gen) > 0.3).double()
    mask[0, 0] = 0.5
    coef = torch.randn(n_in, n_out, n_basis, generator=gen)
    tensors = [t.to(DEVICE, dtype) for t in (scale_base, scale_sp, mask, coef)]
    if layout == "strided":
        coef = tensors[3].permute(2, 0, 1).contiguous().permute(1, 2, 0)
        tensors = [t.t().contiguous().t() for t in tensors[:3]] + [coef]
    return tensors


@pytest.mark.parametrize("dtype", WEIGHT_DTYPES, ids=str)
@pytest.mark.parametrize("size", SIZES, ids=lambda size: "I{}-O{}-J{}".format(*size))
def test_the_weight_has_the_formulas_bits(monkeypatch, dtype, size):
    fill_empty_with_nan(monkeypatch)
    for layout in ("contiguous", "strided"):
        parameters = random_parameters(*size, dtype, seed=sum(size), layout=layout)
        weight = assemble_weight(*parameters)
        assert weight.is_contiguous() and torch.equal(weight, layer_weight_matrix(*parameters)), layout


def reference_gradients(parameters, grad_weight):
    """The formula's gradients; a grad_weight of another dtype than the parameters' as if W had been cast to it."""
    scale_base, scale_sp, mask, coef = (t.detach().requires_grad_() for t in parameters)
    weight = layer_weight_matrix(scale_base, scale_sp, mask, coef).to(grad_weight.dtype)
    return torch.autograd.grad(weight, (scale_base, scale_sp, coef), grad_weight)


@pytest.mark.parametrize("dtype", WEIGHT_DTYPES, ids=str)
@pytest.mark.parametrize("size", SIZES, ids=lambda size: "I{}-O{}-J{}".format(*size))
def test_the_gradients_match_the_formulas(monkeypatch, dtype, size):
    fill_empty_with_nan(monkeypatch)
    parameters = random_parameters(*size, dtype, seed=7 * sum(size), layout="strided")
    n_in, n_out, n_basis = size
    gen = torch.Generator().manual_seed(sum(size))
    # a gradient with the strides of a transposed product's
    grad_weight = torch.randn(n_out, n_in * (n_basis + 1), generator=gen).to(DEVICE, dtype).t()
    got = weight_gradients(*parameters[1:], grad_weight)
    for name, g, want in zip(("scale_base", "scale_sp", "coef"), got, reference_gradients(parameters, grad_weight)):
        assert g.shape == want.shape and g.is_contiguous(), name
        assert relative_error(g, want) <= TOLERANCE[dtype], name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_a_weight_in_the_autocast_dtype_is_the_cast_formula_and_takes_its_gradient(monkeypatch, dtype):
    """float32 parameters, W written in a half type (as autocast wants it): the formula's W cast, bit for bit; its
    gradient, in that type, gives the float32 parameters the gradients the cast would. (The layer under autocast:
    tests/test_ops_spline_linear_triton_layer.py.)"""
    fill_empty_with_nan(monkeypatch)
    parameters = random_parameters(2, 70, 20, torch.float32, seed=11, layout="strided")
    weight = assemble_weight(*parameters, dtype)
    assert weight.dtype == dtype and torch.equal(weight, layer_weight_matrix(*parameters).to(dtype))
    grad_weight = torch.randn(weight.shape, generator=torch.Generator().manual_seed(12)).to(DEVICE, dtype)
    got = weight_gradients(*parameters[1:], grad_weight)
    for g, want in zip(got, reference_gradients(parameters, grad_weight)):
        assert g.dtype == torch.float32 and relative_error(g, want) <= 1e-6


def test_only_the_wanted_gradients_are_computed():
    parameters = random_parameters(3, 5, 7, torch.float32, seed=1)
    grad_weight = torch.randn(3 * 8, 5, device=DEVICE)
    want = reference_gradients(parameters, grad_weight)
    for wanted in ((True, False, False), (False, True, False), (False, False, True), (False, False, False)):
        got = weight_gradients(*parameters[1:], grad_weight, wanted)
        for flag, g, w in zip(wanted, got, want):
            assert (g is None) if not flag else relative_error(g, w) <= 1e-6


@pytest.mark.parametrize("size", [(2, 3, 4), (2, 70, 20)], ids=["every-entry", "two-blocks-projected"])
def test_float64_gradients_by_finite_differences(size):
    """Every entry of the Jacobian on a small layer; on one of two blocks each way, random projections of it
    (gradcheck's fast mode: the interpreter runs a launch per perturbed entry)."""
    scale_base, scale_sp, mask, coef = random_parameters(*size, torch.float64, seed=3)
    leaves = [t.requires_grad_() for t in (scale_base, scale_sp, coef)]

    def assembled(scale_base, scale_sp, coef):
        return _WeightMatrix.apply(scale_base, scale_sp, mask, coef, True)

    fast = size[1] > 3
    assert torch.autograd.gradcheck(assembled, leaves, fast_mode=fast)
    assert torch.autograd.gradgradcheck(assembled, leaves, fast_mode=fast)  # create_graph: the plain formula


def test_a_frozen_parameter_gets_no_gradient():
    scale_base, scale_sp, mask, coef = random_parameters(3, 5, 7, torch.float32, seed=5)
    scale_sp.requires_grad_()
    weight = _WeightMatrix.apply(scale_base, scale_sp, mask, coef, True)
    (grad,) = torch.autograd.grad(weight, scale_sp, torch.ones_like(weight))
    assert relative_error(grad, (mask * coef.sum(-1))) <= 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16] if DEVICE == "cuda" else [torch.float32], ids=str)
def test_the_layer_trains_as_the_eager_one(dtype):
    """On CUDA the layer assembles its weight with these kernels (one autograd node; on the CPU, in float32, with
    numba's) and its parameters' gradients match the eager backend's."""
    fused = BSplineKAN(6, 70, grid_size=17, device=DEVICE, dtype=dtype)
    fused.mask[1, 3] = 0.0
    eager = BSplineKAN(6, 70, grid_size=17, backend="eager", device=DEVICE, dtype=dtype)
    eager.load_state_dict(fused.state_dict())
    x = torch.rand(9, 6, device=DEVICE, dtype=dtype) * 2 - 1
    weight = fused.weight_matrix()
    assert type(weight.grad_fn).__name__ == "_WeightMatrixBackward"
    assert torch.equal(weight, eager.weight_matrix())
    for layer in (fused, eager):
        layer(x).square().sum().backward()
    for (name, got), want in zip(fused.named_parameters(), eager.parameters()):
        assert relative_error(got.grad, want.grad) <= TOLERANCE[dtype] * 10, name


def test_bad_inputs_are_named():
    scale_base, scale_sp, mask, coef = random_parameters(3, 5, 7, torch.float32, seed=2)
    with pytest.raises(TypeError, match=r"takes tensors of one dtype .* got scale_base torch.float32, scale_sp "
                                        r"torch.float64, mask torch.float32, coef torch.float32"):
        assemble_weight(scale_base, scale_sp.double(), mask, coef)
    with pytest.raises(TypeError, match=r"one dtype among \['torch.float32', 'torch.bfloat16', 'torch.float16', "
                                        r"'torch.float64'\], got .*coef torch.int64"):
        assemble_weight(*(t.long() for t in (scale_base, scale_sp, mask, coef)))
    with pytest.raises(ValueError, match=r"takes scale_base, scale_sp, mask \[I, O\] and coef \[I, O, G\+k\], got "
                                         r"scale_base \(3, 5\), scale_sp \(3, 4\), mask \(3, 5\), coef \(3, 5, 7\)"):
        assemble_weight(scale_base, scale_sp[:, :4], mask, coef)
    with pytest.raises(ValueError, match=r"expected grad_weight \[24, 5\] of a dtype among \['torch.float32', .*\], "
                                         r"got \(24, 4\) of torch.float32"):
        weight_gradients(scale_sp, mask, coef, torch.zeros(24, 4, device=DEVICE))
    with pytest.raises(TypeError, match=r"writes W in one of \['torch.float32', .*\], got torch.int32"):
        assemble_weight(scale_base, scale_sp, mask, coef, torch.int32)


def test_cpu_tensors_outside_the_interpreter_are_refused(monkeypatch):
    monkeypatch.setattr(kernels, "INTERPRET", False)
    with pytest.raises(ValueError, match="assemble_weight needs CUDA tensors, got tensors on cpu"):
        assemble_weight(*(t.cpu() for t in random_parameters(3, 5, 7, torch.float32, seed=2)))


COMPILE_FOR_H100 = SPILL_STORES + textwrap.dedent("""
    import kanlib.ops.spline_linear.triton_weight as kernels

    POINTERS = {"_assemble_kernel": 5, "_gradients_kernel": 7}
    for name, n_pointers in POINTERS.items():
        function = getattr(kernels, name)
        # (the parameters' dtype, W's and its gradient's: fp32 parameters give a half W under autocast)
        for dtype, w_dtype, wanted in (("fp32", "fp32", (True, True, True)), ("bf16", "bf16", (True, False, True)),
                                       ("fp16", "fp16", (False, True, False)), ("fp64", "fp64", (True, True, True)),
                                       ("fp32", "bf16", (True, True, True))):
            constants = {"DOUBLE": dtype == "fp64", "INTERPRET": False, "BLOCK_O": 64, "BLOCK_J": 16,
                         **dict(zip(("WANT_BASE", "WANT_SP", "WANT_COEF"), wanted))}
            constants = {n: value for n, value in constants.items() if n in function.arg_names}
            signature = kernel_signature(function.arg_names, n_pointers,
                                         lambda n: f"*{w_dtype if n in ('w_ptr', 'gw_ptr') else dtype}", constants)
            spills = spill_stores(function, signature, constants, 4, 3)
            assert spills == [0], f"{name} {dtype} {w_dtype}: spill stores {spills}"
    print("compiled")
""")


def test_kernels_compile_for_an_h100_without_register_spills():
    assert_compiles(COMPILE_FOR_H100)
