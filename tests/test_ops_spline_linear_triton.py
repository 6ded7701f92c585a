"""The Triton kernels (kanlib.ops.spline_linear.triton) against the plain formula of
kanlib.ops.spline_linear.reference, run in float64. Without a GPU they run under Triton's interpreter
(tests/conftest.py).

Sizes: every value of each axis of the test grid (B in {1, 7, 130}, I in {3, 33}, O in {1, 17},
G in {1, 5, 13}, k in {1, 2, 3}, uniform and not) appears in some case, not in every combination: the
interpreter is slow. Orders 4 and 5 and the half types get a few cases of their own.
"""
import copy
import textwrap

import pytest
from conftest import (LAYOUTS, fill_empty_with_nan, in_layout, inputs_around, random_grid, record_flag,
                      relative_error)
import torch

triton = pytest.importorskip("triton")

from gpu_compile import SM90, SPILL_STORES, assert_compiles  # noqa: E402

from kanlib import KAN, BSplineKAN
from kanlib.basis import cox_de_boor
from kanlib.ops.spline_linear import triton as kernels
from kanlib.activations import BASE_ACTIVATIONS
from kanlib.ops.spline_linear import spline_linear, torch_backend
from kanlib.ops.spline_linear.reference import spline_linear_reference
from kanlib.ops.triton_tuning import tile_config
from kanlib.training import fit

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 1e-2, torch.float16: 1e-2}
ACTIVATIONS = ("silu", "tanh", "relu", "identity")

# (B, I, O, G, k, uniform)
CASES = [
    (1, 3, 1, 1, 1, False),
    (7, 3, 17, 5, 2, False),
    (130, 33, 17, 13, 3, True),
    (130, 33, 1, 5, 3, False),
    (7, 33, 17, 13, 1, True),
    (130, 3, 17, 1, 2, True),
    (7, 3, 1, 13, 3, False),
    (7, 5, 5, 4, 4, True),
    (7, 5, 5, 4, 4, False),
    (7, 5, 5, 2, 5, True),
    (7, 5, 5, 2, 5, False),
]
HALF_CASES = [(CASES[2], torch.bfloat16), (CASES[3], torch.bfloat16), (CASES[1], torch.bfloat16),
              (CASES[2], torch.float16), (CASES[6], torch.float16)]


def case_id(case):
    batch, n_in, n_out, grid_size, k, uniform = case
    return f"B{batch}-I{n_in}-O{n_out}-G{grid_size}-k{k}-{'uniform' if uniform else 'knots'}"


def random_inputs(batch, grid, gen, dtype, layout):
    """x [B, I] across the extended grid and up to half its width beyond either end; contiguous or not."""
    return in_layout(inputs_around(grid, batch, gen, outside=0.5, dtype=torch.float32).to(DEVICE, dtype), layout)


def reference(x, weight, grid, k, uniform, activation, grad_out):
    """Output and gradients of x and weight from the reference formula in float64, on the same (rounded) values."""
    x64 = x.detach().double().requires_grad_()
    w64 = weight.detach().double().requires_grad_()
    out = spline_linear_reference(x64, w64, grid.double(), k, activation)
    return (out, *torch.autograd.grad(out, (x64, w64), grad_out.double()))


def check_against_reference(case, dtype, activation, layout, seed, repeat_knot=False):
    batch, n_in, n_out, grid_size, k, uniform = case
    gen = torch.Generator().manual_seed(seed)
    grid = random_grid(n_in, grid_size, k, gen, uniform=uniform, repeat_knot=repeat_knot).to(DEVICE)
    x = random_inputs(batch, grid.cpu(), gen, dtype, layout).requires_grad_()
    weight = (torch.randn(n_in * (grid_size + k + 1), n_out, generator=gen) / n_in ** 0.5).to(DEVICE, dtype)
    if layout == "transposed":
        weight = weight.t().contiguous().t()
    weight.requires_grad_()
    grad_out = torch.randn(batch, n_out, generator=gen).to(DEVICE, dtype)

    out = spline_linear(x, weight, grid, k, uniform, activation, backend="triton")
    grads = torch.autograd.grad(out, (x, weight), grad_out)
    expected = reference(x, weight, grid, k, uniform, activation, grad_out)
    for name, got, want in zip(("output", "grad_x", "grad_weight"), (out, *grads), expected):
        assert got.dtype == dtype, f"{name} has dtype {got.dtype}, expected {dtype}"
        error = relative_error(got, want)
        assert error <= TOLERANCE[dtype], f"{name}: relative error {error:.2e} > {TOLERANCE[dtype]:.0e}"


@pytest.mark.parametrize("index", range(len(CASES)), ids=[case_id(case) for case in CASES])
def test_float32_output_and_gradients_match_the_reference(index):
    layout = LAYOUTS[index % 3]
    check_against_reference(CASES[index], torch.float32, ACTIVATIONS[index % 4], layout, seed=index)


@pytest.mark.parametrize("case,dtype", HALF_CASES, ids=[f"{case_id(c)}-{str(d)[6:]}" for c, d in HALF_CASES])
def test_half_types_match_the_reference(case, dtype):
    check_against_reference(case, dtype, "silu", "contiguous", seed=case[0] + case[3])


def test_repeated_knots_match_the_reference():
    check_against_reference((9, 4, 6, 5, 3, False), torch.float32, "silu", "contiguous", seed=3, repeat_knot=True)


@pytest.fixture(params=[1, 3], ids=["one-chunk", "three-chunks"])
def small_tiles(monkeypatch, request):
    """16 x 16 x 16 tiles, so that small inputs span several tiles along every axis; the forward walks the input
    blocks in one chunk or in three (of 20 inputs: 16, 4 and none). torch.empty's buffers hold NaN: with one chunk
    the forward's output is not zeroed, and every element must be written."""
    blocks = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_I": 16}
    for kernel, chunks in ((kernels._forward_kernel, {"SPLIT_I": request.param}), (kernels._grad_x_kernel, {}),
                           (kernels._grad_weight_kernel, {})):
        monkeypatch.setattr(kernel, "configs", [tile_config({**blocks, **chunks}, 4, 1, "out_ptr")])
        monkeypatch.setattr(kernel, "cache", {})
    fill_empty_with_nan(monkeypatch)


@pytest.mark.parametrize("uniform", [True, False])
def test_several_tiles_along_every_axis(small_tiles, uniform):
    check_against_reference((33, 20, 20, 3, 2, uniform), torch.float32, "silu", "strided", seed=int(uniform))


def test_values_on_knots_and_far_outside_the_grid():
    gen = torch.Generator().manual_seed(4)
    for uniform in (True, False):
        grid = random_grid(3, 4, 2, gen, uniform=uniform).to(DEVICE)
        far = torch.tensor([[-1e4] * 3, [1e4] * 3], device=DEVICE)
        x = torch.cat([grid.t(), far, grid.t() + 1e-3])
        weight = torch.randn(3 * 7, 5, generator=gen).to(DEVICE)
        out = spline_linear(x, weight, grid, 2, uniform, "identity", backend="triton")
        want = spline_linear_reference(x.double(), weight.double(), grid.double(), 2, "identity")
        assert relative_error(out, want) <= 1e-5


def test_nan_rows_stay_nan_and_an_empty_batch_works():
    layer = BSplineKAN(4, 3, backend="triton", device=DEVICE)
    x = torch.randn(5, 4, device=DEVICE)
    x[2, 1] = float("nan")
    out = layer(x)
    assert torch.isnan(out[2]).all() and torch.isfinite(out[[0, 1, 3, 4]]).all()
    empty = torch.empty(0, 4, device=DEVICE, requires_grad=True)
    out = layer(empty)
    assert out.shape == (0, 3)
    out.sum().backward()
    assert empty.grad.shape == (0, 4) and layer.coef.grad.abs().sum() == 0


@pytest.mark.parametrize("deterministic", [False, True])
def test_the_forward_tells_its_tuner_whether_to_stay_deterministic(monkeypatch, deterministic):
    """The tuner keeps one chunk of inputs (no atomic sums) when DETERMINISTIC is set (tests/test_ops_triton_tuning.py);
    the forward sets it from torch.use_deterministic_algorithms."""
    seen = record_flag(monkeypatch, kernels._forward_kernel, "DETERMINISTIC")
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: deterministic)
    BSplineKAN(4, 3, backend="triton", device=DEVICE)(torch.randn(5, 4, device=DEVICE))
    assert seen == [deterministic]


def float64_copy(layer):
    reference = copy.deepcopy(layer).double()
    reference.backend = "eager"
    return reference


@pytest.mark.parametrize("uniform", [True, False])
def test_layer_gradients_of_coef_scales_bias_and_input(uniform):
    torch.manual_seed(5)
    layer = BSplineKAN(6, 4, grid_size=5, spline_order=3, bias=True, backend="triton", device=DEVICE)
    with torch.no_grad():
        layer.coef.normal_()
        layer.mask[0, 1] = 0.0
        layer.bias.normal_()
    if not uniform:
        layer.update_grid(torch.randn(200, 6, device=DEVICE))
    assert layer.is_uniform() == uniform
    reference = float64_copy(layer)
    x = torch.randn(2, 5, 12, device=DEVICE)[..., ::2] * 1.5  # leading dimensions, non-contiguous
    x64 = x.double().requires_grad_()
    x.requires_grad_()
    grad_out = torch.randn(2, 5, 4, device=DEVICE)
    names = ("coef", "scale_base", "scale_sp", "bias")
    got = torch.autograd.grad(layer(x), [x] + [getattr(layer, n) for n in names], grad_out)
    want = torch.autograd.grad(reference(x64), [x64] + [getattr(reference, n) for n in names], grad_out.double())
    assert relative_error(layer(x), reference(x64)) <= 1e-4
    for name, g, w in zip(("x",) + names, got, want):
        assert relative_error(g, w) <= 1e-4, name


def test_a_changed_grid_is_seen():
    """The kernels cache the knots' float32 form per grid: an in-place change must reach them."""
    torch.manual_seed(8)
    layer = BSplineKAN(3, 2, grid_size=4, backend="triton", device=DEVICE)
    x = torch.rand(10, 3, device=DEVICE) * 4 - 2
    before = layer(x)
    with torch.no_grad():
        layer.grid.mul_(1.5)  # still uniform, other knots
    after = layer(x)
    reference = float64_copy(layer)
    assert relative_error(after, reference(x.double())) <= 1e-5 < relative_error(before, reference(x.double()))


def record_operand_dtypes(monkeypatch) -> list:
    """(x's dtype, weight's dtype) at each launch of the dense forward kernel, in order."""
    seen = []
    run = kernels._forward_kernel.run

    def recording_run(x, weight, *args, **kwargs):
        seen.append((x.dtype, weight.dtype))
        return run(x, weight, *args, **kwargs)

    monkeypatch.setattr(kernels._forward_kernel, "run", recording_run)
    return seen


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_runs_the_kernels_in_the_autocast_dtype(dtype, monkeypatch):
    seen = record_operand_dtypes(monkeypatch)
    torch.manual_seed(6)
    layer = BSplineKAN(5, 3, grid_size=5, backend="triton", device=DEVICE)
    x = (torch.rand(20, 5, device=DEVICE) * 3 - 1.5).requires_grad_()
    with torch.autocast(DEVICE, dtype=dtype):
        out = layer(x)
    assert out.dtype == dtype and seen == [(dtype, dtype)]
    out.float().sum().backward()
    assert layer.coef.grad.dtype == torch.float32 and x.grad.dtype == torch.float32
    reference = float64_copy(layer)
    x64 = x.detach().double().requires_grad_()
    reference(x64).sum().backward()
    assert relative_error(out, reference(x64)) <= 1e-2
    assert relative_error(layer.coef.grad, reference.coef.grad) <= 1e-2
    assert relative_error(x.grad, x64.grad) <= 1e-2


def test_fit_with_amp_trains_a_triton_kan(monkeypatch):
    seen = record_operand_dtypes(monkeypatch)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 2, generator=gen) * 2 - 1
    y = x[:, :1] * x[:, 1:]
    data = {"train_input": x, "train_label": y, "test_input": x[:8], "test_label": y[:8]}
    model = KAN([2, 3, 1], grid_size=3, backend="triton", seed=0).to(DEVICE)
    # update_grid=False: a grid update runs the layers outside autocast, in float32 on purpose.
    history = fit(model, data, steps=3, amp="bf16", eval_every=3, update_grid=False, progress=False)
    assert set(seen) == {(torch.bfloat16, torch.bfloat16)} and len(history.train_loss) == 2
    assert all(p.dtype == torch.float32 and p.grad is not None for p in model.parameters())


def inputs_for_errors():
    grid = random_grid(3, 5, 3, torch.Generator().manual_seed(0), uniform=True)
    return torch.randn(4, 3, device=DEVICE), torch.randn(3 * 9, 2, device=DEVICE), grid.to(DEVICE)


@pytest.mark.parametrize("change,error,words", [
    ({"spline_order": 0}, ValueError, "spline_order 1 to 5, got 0"),
    ({"spline_order": 6}, ValueError, "spline_order 1 to 5, got 6"),
    ({"activation": "gelu"}, ValueError, "got 'gelu'"),
    ({"x": torch.randn(4, 3, dtype=torch.float64)}, TypeError, "got torch.float64"),
    ({"weight": torch.randn(27, 2, dtype=torch.bfloat16)}, TypeError,
     "same dtype (or run under torch.autocast), got x torch.float32 and weight torch.bfloat16"),
    ({"weight": torch.randn(27, 2, device="meta")}, ValueError,
     "one device, got x on {device}, weight on meta, grid on {device}"),
    ({"weight": torch.randn(26, 2)}, ValueError, "I*(G+k+1) = 3*9 rows for grid (3, 12) and spline_order 3, got 26"),
    ({"x": torch.randn(4, 2)}, ValueError, "expected x [N, I], weight [I*S, O], grid [I, G + 2k + 1], got x (4, 2)"),
])
def test_bad_inputs_name_what_was_expected_and_what_came(change, error, words):
    """On the inputs' device (a CUDA one where there is one), so that the device check passes and the named one
    speaks."""
    x, weight, grid = inputs_for_errors()
    change = {name: value.to(DEVICE) if isinstance(value, torch.Tensor) and value.device.type == "cpu" else value
              for name, value in change.items()}
    args = {"x": x, "weight": weight, "grid": grid, "spline_order": 3, "uniform": True, "activation": "silu", **change}
    with pytest.raises(error) as info:
        spline_linear(args["x"], args["weight"], args["grid"], args["spline_order"], args["uniform"],
                      args["activation"], backend="triton")
    assert words.format(device=x.device) in str(info.value)


def test_cpu_tensors_outside_the_interpreter_are_refused(monkeypatch):
    monkeypatch.setattr(kernels, "INTERPRET", False)
    with pytest.raises(ValueError, match="needs CUDA tensors, got tensors on cpu"):
        spline_linear(*(tensor.cpu() for tensor in inputs_for_errors()), 3, True, backend="triton")


@pytest.mark.parametrize("kwargs,words", [
    ({"backend": "cuda"}, "backend must be one of ('auto', 'eager', 'cpu', 'sparse', 'triton'), got 'cuda'"),
    ({"backend": "triton", "spline_order": 0}, "the triton backend supports spline_order 1 to 5, got 0"),
])
def test_bad_layer_settings_are_named(kwargs, words):
    with pytest.raises(ValueError) as info:
        BSplineKAN(3, 2, **kwargs)
    assert words in str(info.value)


def test_backend_choice():
    x = torch.randn(4, 3)
    auto = BSplineKAN(3, 2)
    weight = auto.weight_matrix()
    assert auto.backend_for(x, weight) == "auto"  # spline_linear picks Triton only for CUDA tensors
    assert torch_backend(x, weight, 3) in ("cpu", "sparse")
    assert torch_backend(x.bfloat16(), weight.bfloat16(), 3) == "eager"
    assert BSplineKAN(3, 2, backend="triton").backend_for(x, weight) == "triton"
    assert set(kernels.ACTIVATION_IDS) == set(BASE_ACTIVATIONS)


@pytest.mark.parametrize("k", kernels.SPLINE_ORDERS)
def test_symmetric_pieces_give_the_cardinal_b_spline(k):
    """The uniform path's coefficient table: B_k on [0, k+1) from its symmetric half, against Cox-de Boor."""
    w = torch.linspace(0, k + 1, 97, dtype=torch.float64)[:-1]
    pieces = kernels.symmetric_pieces(k)
    v = torch.minimum(w, k + 1 - w)
    first = v.floor().clamp(max=len(pieces) - 1)
    values = torch.zeros_like(w)
    for p, coefficients in enumerate(pieces):
        poly = sum(c * (v - p) ** q for q, c in enumerate(coefficients))
        values = torch.where(first == p, poly, values)
    knots = torch.arange(k + 2, dtype=torch.float64).unsqueeze(0)
    torch.testing.assert_close(values, cox_de_boor(w.unsqueeze(-1), knots, k)[:, 0, 0], rtol=0, atol=1e-12)


# The kernels' pointers: the knots, the input scales and shifts and the forward's float32 output, the others in the
# products' dtype.
POINTER_TYPES = textwrap.dedent("""
    def pointer_type(name, dtype):
        return "*fp32" if any(w in name for w in ("grid", "scale", "shift", "out_ptr")) else f"*{dtype}"
""")

COMPILE_FOR_H100 = SM90 + POINTER_TYPES + textwrap.dedent("""    import kanlib.ops.spline_linear.triton as kernels

    POINTERS = {"_forward_kernel": 6, "_grad_x_kernel": 7, "_grad_weight_kernel": 6}
    for name, n_pointers in POINTERS.items():
        tuner = getattr(kernels, name)
        for dtype, k, uniform, precision, config in (("bf16", 3, True, "ieee", tuner.configs[0]),
                                                     ("fp32", 2, False, "ieee", tuner.configs[-1])):
            constants = {"K": k, "PIECES": kernels.symmetric_pieces(k), "UNIFORM": uniform, "ACT": 1,
                         "PRECISION": precision, "INTERPRET": False, **config.kwargs}
            names = tuner.fn.arg_names
            if "DETERMINISTIC" in names:
                constants["DETERMINISTIC"] = False
            # the forward sums into a float32 output, in one chunk (configs[0]) or atomically in several
            signature = kernel_signature(names, n_pointers, lambda n: pointer_type(n, dtype), constants)
            compiled = compile_for_sm90(tuner.fn, signature, constants, config.num_warps, config.num_stages)
            if dtype == "bf16":
                assert "wgmma" in compiled.asm["ptx"], f"{name} does not use the tensor cores"
    print("compiled")
""")


def test_kernels_compile_for_an_h100():
    assert_compiles(COMPILE_FOR_H100)


COMPACT_TILES_FOR_H100 = SPILL_STORES + POINTER_TYPES + textwrap.dedent("""
    import kanlib.ops.spline_linear.triton as kernels

    KERNELS = {"_forward_kernel": (6, kernels.FORWARD_TILES, kernels.FORWARD_FP32_TILES),
               "_grad_x_kernel": (7, kernels.GRAD_X_TILES, kernels.GRAD_X_FP32_TILES),
               "_grad_weight_kernel": (6, kernels.GRAD_WEIGHT_TILES, kernels.GRAD_WEIGHT_FP32_TILES)}
    # the tensor-core list's tile in bfloat16 and TF32 products, the float32 list's in full float32
    PRODUCTS = ((0, "bf16", "ieee"), (0, "fp32", "tf32"), (1, "fp32", "ieee"))
    for name, (n_pointers, *lists) in KERNELS.items():
        tuner = getattr(kernels, name)
        names = tuner.fn.arg_names
        blocks = [n for n in ("BLOCK_M", "BLOCK_N", "BLOCK_I", "SPLIT_I") if n in names]
        for which, dtype, precision in PRODUCTS:
            tile = lists[which][-1]
            for k in (3, 5):
                for uniform in (True, False):
                    constants = {"K": k, "PIECES": kernels.symmetric_pieces(k), "UNIFORM": uniform, "ACT": 1,
                                 "PRECISION": precision, "INTERPRET": False, **dict(zip(blocks, tile[:-2]))}
                    if "DETERMINISTIC" in names:
                        constants["DETERMINISTIC"] = False
                    signature = kernel_signature(names, n_pointers, lambda n: pointer_type(n, dtype), constants)
                    spills = spill_stores(tuner.fn, signature, constants, tile[-2], tile[-1])
                    assert spills == [0], f"{name} {tile} {dtype} {precision} k={k} uniform={uniform}: {spills}"
    print("compiled")
""")


def test_the_last_tile_of_each_list_compiles_for_an_h100_without_register_spills():
    """The larger tiles spill on grids that are not uniform and at order 5; the tuner always has this one."""
    assert_compiles(COMPACT_TILES_FOR_H100)
