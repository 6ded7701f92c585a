"""The fused Triton kernels of the basis-expansion families (kanlib.ops.basis_linear.triton) against the reference
``basis_linear_reference(spec.expand(x), W)`` in float64: output and the gradients of x, W and the basis' own
parameters, at odd sizes, inputs inside and beyond the grids, every kind, S = 1 and odd S. Without a GPU they run
under Triton's interpreter (tests/conftest.py), so sizes stay small.
"""
import dataclasses
import textwrap

import pytest
from conftest import LAYOUTS, in_layout, relative_error
import torch

triton = pytest.importorskip("triton")

from gpu_compile import SM90, SPILL_STORES, assert_compiles  # noqa: E402

from kanlib.ops.basis_linear import BasisSpec, basis_linear_reference  # noqa: E402
from kanlib.ops.basis_linear import triton as kernels  # noqa: E402
from kanlib.ops.basis_linear.triton import basis_linear_triton, triton_runs  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 1e-2, torch.float16: 1e-2}
KINDS = ("rbf", "rswaf", "relu", "chebyshev")
PARAMETERS = {"rbf": ("grid", "scale"), "rswaf": ("grid", "scale"), "relu": ("starts", "ends"), "chebyshev": ()}


def make_spec(kind, n_in, n_basis, gen, dtype, trainable=()):
    """A spec whose grid or bumps lie in [-1.5, 1.5]; ``trainable``: the parameters that require grad."""
    def tensor(value):
        return value.to(DEVICE, dtype)

    values = {}
    if kind in ("rbf", "rswaf"):
        values["grid"] = tensor(torch.linspace(-1.5, 1.5, n_basis, dtype=torch.float64)
                                + 0.1 * torch.rand(n_basis, generator=gen, dtype=torch.float64))
        values["scale"] = tensor(torch.rand((), generator=gen, dtype=torch.float64) + 0.5)
    elif kind == "relu":
        starts = (torch.linspace(-1.5, 0.9, n_basis, dtype=torch.float64).expand(n_in, -1)
                  + 0.2 * torch.rand(n_in, n_basis, generator=gen, dtype=torch.float64))
        values["starts"] = tensor(starts)
        values["ends"] = tensor(starts + 0.6 + 0.6 * torch.rand(n_in, n_basis, generator=gen, dtype=torch.float64))
    for name in values:
        values[name].requires_grad_(name in trainable)
    if kind == "rbf" and "scale" not in trainable:
        values["scale"] = float(values["scale"])  # as RBFKAN holds its width
    return BasisSpec(kind, n_basis, **values)


def trainable_tensors(spec):
    return [getattr(spec, name) for name in PARAMETERS[spec.kind]
            if isinstance(getattr(spec, name), torch.Tensor) and getattr(spec, name).requires_grad]


def float64_copy(spec):
    """The same spec in float64, each tensor a fresh leaf that requires grad as the original does."""
    values = {}
    for name in PARAMETERS[spec.kind]:
        value = getattr(spec, name)
        if isinstance(value, torch.Tensor):
            value = value.detach().double().requires_grad_(value.requires_grad)
        values[name] = value
    return dataclasses.replace(spec, **values)


def gradients(out, inputs, grad_out):
    return torch.autograd.grad(out, inputs, grad_out, allow_unused=True, materialize_grads=True)


def random_inputs(n, n_in, n_basis, n_out, gen, dtype, layout):
    """x [n, I] uniform on [-3, 3] (the grids lie in [-1.5, 1.5]), weight [I*S, O]; contiguous, or x every other
    column of a wider tensor, or both transposed in memory."""
    x = (torch.rand(n, n_in, generator=gen, dtype=torch.float64) * 6 - 3).to(DEVICE, dtype)
    weight = (torch.randn(n_in * n_basis, n_out, generator=gen, dtype=torch.float64) / n_in ** 0.5).to(DEVICE, dtype)
    x = in_layout(x, layout)
    if layout == "transposed":
        weight = weight.t().contiguous().t()
    return x.requires_grad_(), weight.requires_grad_()


def check_against_reference(kind, n, n_in, n_out, n_basis, dtype, trainable, layout, seed):
    gen = torch.Generator().manual_seed(seed)
    spec = make_spec(kind, n_in, n_basis, gen, dtype, trainable)
    x, weight = random_inputs(n, n_in, n_basis, n_out, gen, dtype, layout)
    grad_out = torch.randn(n, n_out, generator=gen).to(DEVICE, dtype)
    out = basis_linear_triton(x, weight, spec)
    got = gradients(out, [x, weight, *trainable_tensors(spec)], grad_out)

    spec64 = float64_copy(spec)
    x64, weight64 = (t.detach().double().requires_grad_() for t in (x, weight))
    want_out = basis_linear_reference(spec64.expand(x64), weight64)
    want = gradients(want_out, [x64, weight64, *trainable_tensors(spec64)], grad_out.double())
    names = ("output", "grad_x", "grad_weight", *(f"grad_{name}" for name in trainable))
    assert len(got) == len(names) - 1
    for name, g, w, original in zip(names, (out, *got), (want_out, *want), (out, x, weight, *trainable_tensors(spec))):
        assert g.dtype == original.dtype and g.shape == original.shape, name
        error = relative_error(g, w)
        assert error <= TOLERANCE[dtype], f"{name}: relative error {error:.2e} > {TOLERANCE[dtype]:.0e}"


# (kind, S, trainable parameters): S = 1 and odd S; every parameter trainable somewhere, frozen elsewhere
CASES = [
    ("rbf", 1, ()), ("rbf", 7, ("grid",)), ("rbf", 5, ("grid", "scale")),
    ("rswaf", 1, ("scale",)), ("rswaf", 5, ("scale",)), ("rswaf", 3, ("grid", "scale")),
    ("relu", 1, ("starts", "ends")), ("relu", 3, ("starts", "ends")), ("relu", 5, ("ends",)),
    ("chebyshev", 1, ()), ("chebyshev", 6, ()), ("chebyshev", 7, ()),
]


def case_id(case):
    kind, n_basis, trainable = case
    return f"{kind}-S{n_basis}-{'+'.join(trainable) or 'frozen'}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("index", range(len(CASES)), ids=[case_id(case) for case in CASES])
def test_output_and_all_gradients_match_the_reference(index, dtype):
    kind, n_basis, trainable = CASES[index]
    layout = LAYOUTS[index % 3]
    check_against_reference(kind, 37, 5, 11, n_basis, dtype, trainable, layout, seed=index)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("kind", KINDS)
def test_half_types_match_the_reference(kind, dtype):
    check_against_reference(kind, 37, 5, 11, 5, dtype, PARAMETERS[kind], "contiguous", seed=len(kind))


@pytest.fixture
def small_tiles(monkeypatch):
    """16 x 16 x 16 tiles, so that small inputs span several tiles along every axis."""
    config = triton.Config({"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_I": 16}, num_warps=4, num_stages=1)
    for kernel in (kernels._forward_kernel, kernels._grad_x_kernel, kernels._grad_weight_kernel):
        monkeypatch.setattr(kernel, "configs", [config])
        monkeypatch.setattr(kernel, "cache", {})


@pytest.mark.parametrize("kind", KINDS)
def test_several_tiles_along_every_axis(small_tiles, kind):
    check_against_reference(kind, 37, 19, 21, 3, torch.float32, PARAMETERS[kind], "strided", seed=7)


def test_parameter_gradients_are_deterministic(small_tiles):
    gen = torch.Generator().manual_seed(8)
    spec = make_spec("relu", 19, 3, gen, torch.float32, ("starts", "ends"))
    x, weight = random_inputs(37, 19, 3, 5, gen, torch.float32, "contiguous")
    first, second = (torch.autograd.grad(basis_linear_triton(x, weight, spec).sum(), [spec.starts, spec.ends])
                     for _ in range(2))
    assert all(torch.equal(a, b) for a, b in zip(first, second))


@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_in_float64(kind):
    gen = torch.Generator().manual_seed(9)
    spec = make_spec(kind, 2, 3, gen, torch.float64, PARAMETERS[kind])
    x, weight = random_inputs(5, 2, 3, 3, gen, torch.float64, "contiguous")
    names = PARAMETERS[kind]

    def product(x, weight, *parameters):
        return basis_linear_triton(x, weight, dataclasses.replace(spec, **dict(zip(names, parameters))))

    assert torch.autograd.gradcheck(product, (x, weight, *trainable_tensors(spec)))


@pytest.mark.parametrize("kind", KINDS)
def test_create_graph_gives_gradients_that_differentiate_again(kind):
    gen = torch.Generator().manual_seed(10)
    spec = make_spec(kind, 2, 3, gen, torch.float64, PARAMETERS[kind])
    x, weight = random_inputs(3, 2, 3, 2, gen, torch.float64, "contiguous")
    names = PARAMETERS[kind]

    def product(x, weight, *parameters):
        return basis_linear_triton(x, weight, dataclasses.replace(spec, **dict(zip(names, parameters))))

    assert torch.autograd.gradgradcheck(product, (x, weight, *trainable_tensors(spec)))


def reference_of(x, weight, spec, grad_out):
    """Output and the gradients of x and weight by the reference formula in float64, on the same values."""
    x64, weight64 = (t.detach().double().requires_grad_() for t in (x, weight))
    out = basis_linear_reference(float64_copy(spec).expand(x64), weight64)
    return (out, *gradients(out, [x64, weight64], grad_out.double()))


@pytest.mark.parametrize("kind", KINDS)
def test_nan_in_a_row_stays_in_that_row(kind):
    gen = torch.Generator().manual_seed(11)
    spec = make_spec(kind, 4, 5, gen, torch.float32)
    x, weight = random_inputs(6, 4, 5, 3, gen, torch.float32, "contiguous")
    with torch.no_grad():
        x[2, 1] = float("nan")
    out = basis_linear_triton(x, weight, spec)
    assert torch.isnan(out[2]).all() and torch.isfinite(out[[0, 1, 3, 4, 5]]).all()
    grad_out = torch.randn(out.shape, generator=gen).to(DEVICE)
    got = (out, *gradients(out, [x, weight], grad_out))
    for name, g, w in zip(("output", "grad_x", "grad_weight"), got, reference_of(x, weight, spec, grad_out)):
        assert torch.equal(torch.isnan(g), torch.isnan(w)), f"{name}: NaN where the reference has none, or not"
        assert relative_error(g.nan_to_num(), w.nan_to_num()) <= TOLERANCE[torch.float32], name


@pytest.mark.parametrize("kind", KINDS)
def test_inputs_on_grid_points_bump_ends_and_far_away(kind):
    gen = torch.Generator().manual_seed(15)
    spec = make_spec(kind, 3, 4, gen, torch.float32)
    if kind == "relu":
        points = torch.cat([spec.starts.t(), spec.ends.t()])
    elif kind == "chebyshev":
        points = torch.zeros(1, 3)
    else:
        points = spec.grid[:, None].expand(-1, 3)
    far = torch.tensor([[-1e4] * 3, [1e4] * 3], device=points.device)
    x = torch.cat([points, far]).to(DEVICE).requires_grad_()
    weight = torch.randn(12, 5, generator=gen).to(DEVICE).requires_grad_()
    grad_out = torch.randn(x.shape[0], 5, generator=gen).to(DEVICE)
    out = basis_linear_triton(x, weight, spec)
    got = (out, *gradients(out, [x, weight], grad_out))
    for name, g, w in zip(("output", "grad_x", "grad_weight"), got, reference_of(x, weight, spec, grad_out)):
        assert relative_error(g, w) <= TOLERANCE[torch.float32], name


def test_an_empty_batch_gives_zero_gradients():
    gen = torch.Generator().manual_seed(12)
    spec = make_spec("relu", 4, 3, gen, torch.float32, ("starts", "ends"))
    x, weight = random_inputs(0, 4, 3, 5, gen, torch.float32, "contiguous")
    out = basis_linear_triton(x, weight, spec)
    assert out.shape == (0, 5)
    grads = torch.autograd.grad(out.sum(), [x, weight, spec.starts, spec.ends])
    assert [g.shape for g in grads] == [(0, 4), (12, 5), (4, 3), (4, 3)]
    assert all(g.abs().sum() == 0 for g in grads)


def test_autocast_runs_the_kernels_in_the_autocast_dtype():
    gen = torch.Generator().manual_seed(13)
    spec = make_spec("rswaf", 5, 5, gen, torch.float32, ("scale",))
    x, weight = random_inputs(37, 5, 5, 11, gen, torch.float32, "contiguous")
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        out = basis_linear_triton(x, weight, spec)
    assert out.dtype == torch.bfloat16
    grads = torch.autograd.grad(out.float().sum(), [x, weight, spec.scale])
    assert [g.dtype for g in grads] == [torch.float32] * 3
    spec64 = float64_copy(spec)
    x64, weight64 = (t.detach().double().requires_grad_() for t in (x, weight))
    want_out = basis_linear_reference(spec64.expand(x64), weight64)
    want = torch.autograd.grad(want_out.sum(), [x64, weight64, spec64.scale])
    for got, expected in zip((out, *grads), (want_out, *want)):
        assert relative_error(got, expected) <= 1e-2


def problem_for_errors(kind="relu"):
    gen = torch.Generator().manual_seed(14)
    spec = make_spec(kind, 3, 4, gen, torch.float32)
    x, weight = random_inputs(6, 3, 4, 2, gen, torch.float32, "contiguous")
    return x.detach(), weight.detach(), spec


def test_triton_runs_says_why_not(monkeypatch):
    x, weight, spec = problem_for_errors()
    assert triton_runs(x, weight, spec) is None
    assert "got x torch.int32 and weight torch.float32" in triton_runs(x.int(), weight, spec)
    assert "got x torch.float32 and weight torch.float64" in triton_runs(x, weight.double(), spec)
    assert "got 'bspline'" in triton_runs(x, weight, dataclasses.replace(spec, kind="bspline"))
    reasons = []

    def record(row):
        reasons.append(triton_runs(row[None], weight, spec))
        return row

    torch.func.vmap(record)(x)
    assert "torch.func and torch.export cannot look into Triton kernels" in reasons[0]
    monkeypatch.setattr(kernels, "INTERPRET", False)
    assert "it runs CUDA tensors, got x on cpu" in triton_runs(x.cpu(), weight, spec)


@pytest.mark.parametrize("kind,change,words", [
    ("relu", {"weight": torch.randn(11, 2)}, "weight [I*S, O] with S = 4, got x (6, 3) and weight (11, 2)"),
    ("relu", {"starts": torch.zeros(4, 3)}, "needs starts of shape (3, 4), got (4, 3)"),
    ("relu", {"ends": None}, "needs ends of shape (3, 4), got None"),
    ("rbf", {"grid": torch.zeros(5)}, "needs grid of shape (4,), got (5,)"),
    ("rswaf", {"scale": torch.ones(2)}, "a one-element tensor as scale, got shape (2,)"),
    ("rswaf", {"scale": "wide"}, "a one-element tensor as scale, got 'wide'"),
    ("chebyshev", {"n_basis": 0}, "n_basis must be an int >= 1, got 0"),
    ("relu", {"x": torch.randn(6, 3).bfloat16()}, "got x torch.bfloat16 and weight torch.float32"),
])
def test_bad_inputs_name_what_was_expected_and_what_came(kind, change, words):
    x, weight, spec = problem_for_errors(kind)
    change = {name: value.to(DEVICE) if isinstance(value, torch.Tensor) else value for name, value in change.items()}
    x, weight = change.pop("x", x), change.pop("weight", weight)
    with pytest.raises(ValueError) as info:
        basis_linear_triton(x, weight, dataclasses.replace(spec, **change))
    assert words in str(info.value)


# The kernels' pointers: the basis parameters' (p, q and their gradient) in the accumulator's width, the others in
# the products' dtype.
POINTER_TYPES = textwrap.dedent("""
    def pointer_type(name, dtype, wide):
        return f"*{wide if name in ('p_ptr', 'q_ptr', 'pg_ptr') else dtype}"
""")

COMPILE_FOR_H100 = SM90 + POINTER_TYPES + textwrap.dedent("""
    import triton.language as tl
    import kanlib.ops.basis_linear.triton as kernels

    POINTERS = {"_forward_kernel": 5, "_grad_x_kernel": 7, "_grad_weight_kernel": 5}
    for name, n_pointers in POINTERS.items():
        tuner = getattr(kernels, name)
        for dtype, kind, precision, config in (("bf16", "rswaf", "ieee", tuner.configs[0]),
                                               ("fp32", "rbf", "tf32", tuner.configs[0]),
                                               ("fp32", "relu", "ieee", tuner.configs[-1]),
                                               ("fp64", "chebyshev", "ieee", tuner.configs[-1])):
            wide = "fp64" if dtype == "fp64" else "fp32"
            constants = {"KIND": kernels.KINDS[kind], "PARAMS": True, "ACC": getattr(tl, "float64" if wide == "fp64"
                         else "float32"), "PRECISION": precision, "INTERPRET": False, **config.kwargs}
            names = tuner.fn.arg_names
            signature = kernel_signature(names, n_pointers, lambda n: pointer_type(n, dtype, wide), constants)
            compiled = compile_for_sm90(tuner.fn, signature, constants, config.num_warps, config.num_stages)
            if dtype == "bf16":
                assert "wgmma" in compiled.asm["ptx"], f"{name} does not use the tensor cores"
    print("compiled")
""")


def test_kernels_compile_for_an_h100():
    assert_compiles(COMPILE_FOR_H100)


@pytest.mark.parametrize("family", ["rbf", "rswaf", "relu", "chebyshev"])
def test_a_layer_with_backend_triton_runs_these_kernels_with_every_parameter_trainable(family, monkeypatch):
    """``BasisKAN(backend="triton")`` goes through basis_linear_triton (counted) and matches its eager twin; the
    choice is refused with the reason where the kernels cannot run."""
    import kanlib
    from kanlib.models import LAYERS

    calls = []
    monkeypatch.setattr(kernels, "basis_linear_triton",
                        lambda *args: calls.append(1) or basis_linear_triton(*args))
    torch.manual_seed(0)
    layer = LAYERS[family](4, 3, backend="triton").double().to(DEVICE)
    eager = LAYERS[family](4, 3, backend="eager").double().to(DEVICE)
    eager.load_state_dict(layer.state_dict())
    x = (torch.randn(9, 4, dtype=torch.float64, device=DEVICE) * 1.5).requires_grad_()
    outputs = []
    for module in (layer, eager):
        out = module(x)
        params = [p for p in module.parameters() if p.requires_grad]
        outputs.append((out, *torch.autograd.grad(out.square().sum(), [x, *params])))
    assert calls, "backend='triton' did not reach the Triton kernels"
    for got, want in zip(*outputs):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    if DEVICE == "cpu":
        monkeypatch.setattr(kernels, "INTERPRET", False)
        with pytest.raises(ValueError, match="backend='triton' cannot run this call: "):
            kanlib.ops.basis_linear.basis_linear(x, layer.weight, layer.spec(), "triton")


COMPACT_TILES_FOR_H100 = SPILL_STORES + POINTER_TYPES + textwrap.dedent("""
    import triton.language as tl
    import kanlib.ops.basis_linear.triton as kernels

    KERNELS = {"_forward_kernel": (5, kernels.FORWARD_TILES, kernels.FORWARD_FULL_TILES),
               "_grad_x_kernel": (7, kernels.GRAD_X_TILES, kernels.GRAD_X_FULL_TILES),
               "_grad_weight_kernel": (5, kernels.GRAD_WEIGHT_TILES, kernels.GRAD_WEIGHT_FULL_TILES)}
    # the tensor-core list's tile in bfloat16 and TF32 products, the full-precision list's in float32 and float64
    PRODUCTS = ((0, "bf16", "ieee"), (0, "fp32", "tf32"), (1, "fp32", "ieee"), (1, "fp64", "ieee"))
    for name, (n_pointers, *lists) in KERNELS.items():
        tuner = getattr(kernels, name)
        names = tuner.fn.arg_names
        for which, dtype, precision in PRODUCTS:
            tile = lists[which][-1]
            wide = "fp64" if dtype == "fp64" else "fp32"
            for kind in kernels.KINDS:
                constants = {"KIND": kernels.KINDS[kind], "PARAMS": True, "ACC": getattr(tl, "float64" if wide ==
                             "fp64" else "float32"), "PRECISION": precision, "INTERPRET": False,
                             **dict(zip(("BLOCK_M", "BLOCK_N", "BLOCK_I"), tile[:3]))}
                signature = kernel_signature(names, n_pointers, lambda n: pointer_type(n, dtype, wide), constants)
                spills = spill_stores(tuner.fn, signature, constants, tile[-2], tile[-1])
                assert spills == [0], f"{name} {tile} {dtype} {precision} {kind}: spill stores {spills}"
    print("compiled")
""")


def test_the_last_tile_of_each_list_compiles_for_an_h100_without_register_spills():
    """Some larger tiles spill a few bytes (grad_x's full-precision ones); the tuner always has this one."""
    assert_compiles(COMPACT_TILES_FOR_H100)
