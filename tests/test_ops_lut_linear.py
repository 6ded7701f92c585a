"""The Triton lookup-table kernel (kanlib.ops.lut_linear.triton) against lut_linear's ``"eager"`` backend.
Without a GPU it runs under Triton's interpreter (tests/conftest.py).

Tolerance. Both sides form the same integer codes and accumulate them exactly in int32, then compute the same
float32 epilogue ``spline * (table.scale * spline_scale) + base * (act_scale * base_scale)``. Under the
interpreter the results are bit-identical; a GPU may contract one of the two products into an FMA (at most half
an ulp of it), hence ``FP_TOLERANCE`` = 4 float32 ulps of the largest output. One more difference is allowed in
a few rows: the base activation's code may differ by one where activation(x) / act_scale lies within an ulp of
a rounding boundary (the kernel's silu and tanh go through tl.sigmoid; torch on CUDA divides by the scale as a
multiplication by its reciprocal), so those rows may be off by one base code of one input.

Sizes: every value of each axis of the issue's grid (N in {1, 7, 130}, I in {3, 33}, O in {1, 17}, G in {1, 5},
k in {1, 3}, table_bits in {3, 8}, position_bits in {0, 4, 8}, uniform and per-input knots) appears in some
case, not in every combination: the interpreter is slow. Orders 2, 4 and 5 (two packed code words) and the
half types get cases of their own.
"""
import textwrap

import pytest
import torch
from conftest import inputs_around

triton = pytest.importorskip("triton")

from gpu_compile import SM90, assert_compiles  # noqa: E402

from kanlib.activations import get_activation
from kanlib.basis import extend_grid, is_uniform
from kanlib.layers import BSplineKAN
from kanlib.ops.lut_linear import IntegerWeights, lut_linear
from kanlib.ops.lut_linear import triton as kernels
from kanlib.quant.table import BasisTable
from kanlib.quant.tensor import QuantizedTensor, QuantSpec

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# numpy's warnings from the interpreter on inf and NaN inputs (exp overflow in the sigmoid, inf * 0)
pytestmark = [pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")]
FP_TOLERANCE = 4 * torch.finfo(torch.float32).eps

# (N, I, O, G, k, uniform, table_bits, position_bits, x dtype, activation)
CASES = [
    (1, 3, 1, 1, 1, True, 8, 8, torch.float32, "silu"),
    (7, 3, 17, 5, 3, False, 3, 4, torch.float32, "tanh"),
    (130, 33, 17, 5, 3, True, 8, 4, torch.float32, "relu"),
    (130, 33, 1, 1, 3, False, 8, 8, torch.float32, "identity"),
    (7, 33, 17, 5, 1, False, 8, 0, torch.float32, "silu"),
    (130, 3, 17, 1, 1, True, 3, 0, torch.float32, "tanh"),
    (7, 3, 17, 5, 2, False, 6, 8, torch.float32, "identity"),
    (7, 5, 5, 2, 4, True, 8, 5, torch.float32, "silu"),
    (7, 5, 5, 2, 5, False, 8, 3, torch.float32, "relu"),
    (130, 33, 17, 5, 3, True, 8, 8, torch.bfloat16, "silu"),
    (7, 33, 17, 5, 3, False, 8, 8, torch.bfloat16, "tanh"),
    (7, 3, 17, 5, 3, True, 8, 8, torch.float16, "relu"),
    (130, 3, 1, 1, 1, False, 3, 4, torch.float16, "silu"),
]


def case_id(case):
    n, i, o, g, k, uniform, table_bits, position_bits, dtype, activation = case
    return (f"N{n}-I{i}-O{o}-G{g}-k{k}-{'uniform' if uniform else 'knots'}-t{table_bits}-p{position_bits}-"
            f"{str(dtype)[6:]}-{activation}")


def make_layer(n_in, n_out, grid_size, k, uniform, seed):
    """A BSplineKAN with random coefficients; per-input knots from update_grid on skewed samples (with one
    interval update_grid's grid stays uniform: then the left extension knots are spread by hand)."""
    torch.manual_seed(seed)
    # this range makes 1/h inexact in float32 and bfloat16, so that rounding it (or dividing by h another way)
    # shows
    layer = BSplineKAN(n_in, n_out, grid_size=grid_size, spline_order=k, grid_range=(-1.2, 1.0))
    with torch.no_grad():
        layer.coef.normal_()
        if not uniform:
            layer.update_grid(torch.randn(200, n_in) ** 3 + torch.rand(n_in))
        if not uniform and grid_size == 1:
            first = layer.grid[:, k:k + 1]
            layer.grid[:, :k] = first - (first - layer.grid[:, :k]) * 1.5
    assert is_uniform(layer.grid) == uniform
    return layer


def integer_weights(layer, device=DEVICE):
    spec = QuantSpec(8, granularity="channel")
    return IntegerWeights.from_quantized(QuantizedTensor.quantize(layer.spline_weight().detach().to(device), spec),
                                         QuantizedTensor.quantize(layer.base_weight().detach().to(device), spec))


def random_inputs(n, grid, gen):
    """x [N, I] across the extended grid and half its width beyond either end, with a NaN row (the last), a row
    of knots (exactly on them) and infinities where there is room."""
    x = inputs_around(grid, n, gen, outside=0.5, dtype=torch.float32)
    if n >= 3:
        columns = torch.randint(0, grid.shape[1], (grid.shape[0],), generator=gen)
        x[0] = grid.gather(1, columns.unsqueeze(1)).squeeze(1)
        x[1, 0], x[1, -1] = float("inf"), float("-inf")
    if n >= 2:
        x[-1] = float("nan")
    return x


def activation_scale(x, activation, act_bits):
    """A calibration-like scale: 0.8 of the largest |activation| maps to the top code (some values clamp)."""
    values = get_activation(activation).function(x.float())
    top = values[torch.isfinite(values)].abs().max() if torch.isfinite(values).any() else torch.tensor(0.0)
    return 0.8 * float(top) / (2 ** (act_bits - 1) - 1) if float(top) > 0 else 1.0


def check_matches(got, want, weights, act_scale):
    """Equal up to float32 rounding, except in a few rows one base code of one input (see the module docstring)."""
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert torch.isfinite(want).all()
    got, want = got.double().cpu(), want.double().cpu()
    limit = FP_TOLERANCE * max(want.abs().max().item(), 1e-30)
    error = (got - want).abs()
    one_code = act_scale * (weights.base_scale.double().cpu() * weights.base_codes.double().abs().amax(0).cpu())
    assert (error <= limit + one_code).all(), f"max error {error.max().item():.3e}"
    rows_off = int((error > limit).any(1).sum())
    assert rows_off <= 1 + got.shape[0] // 20, f"{rows_off} of {got.shape[0]} rows beyond float32 rounding"


def run_case(case, seed):
    n, n_in, n_out, grid_size, k, uniform, table_bits, position_bits, dtype, activation = case
    layer = make_layer(n_in, n_out, grid_size, k, uniform, seed)
    table = BasisTable(layer.grid.to(DEVICE), k, position_bits, table_bits)
    assert table.uniform == uniform
    weights = integer_weights(layer)
    x = random_inputs(n, layer.grid, torch.Generator().manual_seed(seed)).to(DEVICE, dtype)
    act_bits = 8 if seed % 2 else 6
    act_scale = activation_scale(x, activation, act_bits)
    got = lut_linear(x, table, weights, act_scale, activation, act_bits, backend="triton")
    want = lut_linear(x, table, weights, act_scale, activation, act_bits, backend="eager")
    check_matches(got, want, weights, act_scale)


@pytest.mark.parametrize("index", range(len(CASES)), ids=[case_id(case) for case in CASES])
def test_matches_the_torch_reference(index):
    run_case(CASES[index], seed=index)


def test_repeated_knots_match_the_torch_reference():
    """A zero-width interval (a repeated knot): the binary search must step over it, as searchsorted does."""
    knots = torch.tensor([[-1.0, -0.4, 0.1, 0.1, 0.5, 1.0], [-2.0, -1.0, -1.0, 0.0, 1.5, 2.0]])
    grid = extend_grid(knots, 3)
    layer = make_layer(2, 5, 5, 3, True, seed=20)
    with torch.no_grad():
        layer.grid.copy_(grid)
    table = BasisTable(layer.grid.to(DEVICE), 3, 4, 8)
    assert not table.uniform
    weights = integer_weights(layer)
    x = torch.cat([random_inputs(40, grid, torch.Generator().manual_seed(20)), grid.t()]).to(DEVICE)
    got = lut_linear(x, table, weights, 0.05, "silu", backend="triton")
    check_matches(got, lut_linear(x, table, weights, 0.05, "silu", backend="eager"), weights, 0.05)


@pytest.mark.parametrize("method,backend", [("torch", "eager"), ("cpu", "cpu")])
def test_the_old_method_words_still_work_with_a_deprecation_warning(method, backend):
    layer = make_layer(3, 4, 5, 3, True, seed=25)
    table = BasisTable(layer.grid, 3, 4, 8)
    weights = integer_weights(layer, device="cpu")
    x = random_inputs(9, layer.grid, torch.Generator().manual_seed(25))
    with pytest.warns(DeprecationWarning, match=f"method='{method}' is deprecated.*backend='{backend}'"):
        got = lut_linear(x, table, weights, 0.05, method=method)
    torch.testing.assert_close(got, lut_linear(x, table, weights, 0.05, backend=backend), equal_nan=True)


@pytest.mark.parametrize("uniform", [True, False])
def test_values_within_a_few_ulps_of_every_knot(uniform):
    """Where the span and position change: the kernel must divide (and round) exactly as the reference."""
    layer = make_layer(3, 4, 5, 3, uniform, seed=24)
    table = BasisTable(layer.grid.to(DEVICE), 3, 8, 8)
    weights = integer_weights(layer)
    near = [layer.grid.t()]
    for direction in (float("inf"), float("-inf")):
        x = layer.grid.t()
        for _ in range(4):
            x = torch.nextafter(x, torch.full_like(x, direction))
            near.append(x)
    x = torch.cat(near).to(DEVICE)
    got = lut_linear(x, table, weights, 0.05, "relu", backend="triton")
    check_matches(got, lut_linear(x, table, weights, 0.05, "relu", backend="eager"), weights, 0.05)


def test_base_codes_round_half_to_even_and_clamp():
    """identity with a power-of-two scale puts values exactly on rounding ties; 4-bit codes clamp to [-8, 7]."""
    layer = make_layer(3, 4, 5, 3, True, seed=21)
    table = BasisTable(layer.grid.to(DEVICE), 3, 4, 8)
    weights = integer_weights(layer)
    ties = 0.125 * (2 * torch.arange(-20, 20) + 1)  # x / 0.25 = -19.5 .. 19.5
    x = torch.stack([ties, ties.flip(0), -ties], 1)
    x[0, 0], x[1, 1], x[2, 2] = float("nan"), float("inf"), -0.0
    x = x.to(DEVICE)
    got = lut_linear(x, table, weights, 0.25, "identity", 4, backend="triton")
    want = lut_linear(x, table, weights, 0.25, "identity", 4, backend="eager")
    limit = FP_TOLERANCE * want.abs().max()
    assert ((got - want).abs() <= limit).all()


def test_empty_batch():
    layer = make_layer(3, 4, 5, 3, True, seed=22)
    table = BasisTable(layer.grid.to(DEVICE), 3, 4, 8)
    out = lut_linear(torch.empty(0, 3, device=DEVICE), table, integer_weights(layer), 0.1, backend="triton")
    assert out.shape == (0, 4) and out.dtype == torch.float32


@pytest.fixture
def small_tiles(monkeypatch):
    """16 x 16 x 32 tiles (32: the k of int8 tensor-core products), so that small inputs span several tiles
    along every axis."""
    config = triton.Config({"BLOCK_N": 16, "BLOCK_O": 16, "BLOCK_I": 32}, num_warps=4, num_stages=1)
    monkeypatch.setattr(kernels._lut_kernel, "configs", [config])
    monkeypatch.setattr(kernels._lut_kernel, "cache", {})


@pytest.mark.parametrize("uniform", [True, False])
def test_several_tiles_and_strided_operands(small_tiles, uniform):
    """N, I and O over several tiles; x every other column of a wider tensor, the weight codes column-major."""
    layer = make_layer(40, 20, 3, 2, uniform, seed=23)
    table = BasisTable(layer.grid.to(DEVICE), 2, 4, 8)
    weights = integer_weights(layer)
    weights = IntegerWeights(weights.spline_codes.t().contiguous().t(), weights.spline_scale,
                             weights.base_codes.t().contiguous().t(), weights.base_scale)
    wide = torch.zeros(33, 80)
    wide[:, ::2] = random_inputs(33, layer.grid, torch.Generator().manual_seed(23))
    x = wide.to(DEVICE)[:, ::2]
    got = lut_linear(x, table, weights, 0.05, "silu", backend="triton")
    check_matches(got, lut_linear(x.contiguous(), table, weights, 0.05, "silu", backend="eager"), weights, 0.05)


# ----------------------------------------------------------------------------------------------------------
# Errors name what was expected and what came.


def inputs_for_errors(spline_order=3, device=DEVICE):
    """On a CUDA device where there is one, so that the device check passes and the check a test names speaks."""
    layer = make_layer(3, 2, 5, spline_order, True, seed=0) if spline_order >= 1 else None
    grid = layer.grid if layer is not None else torch.linspace(-1, 1, 7).expand(3, 7).contiguous()
    table = BasisTable(grid.to(device), spline_order, 4, 8)
    n_basis = grid.shape[1] - spline_order - 1
    weights = IntegerWeights(torch.zeros(3 * n_basis, 2, dtype=torch.int8, device=device),
                             torch.ones(2, device=device), torch.zeros(3, 2, dtype=torch.int8, device=device),
                             torch.ones(2, device=device))
    return torch.randn(4, 3, device=device), table, weights


def meta_weights(weights):
    return IntegerWeights(*(t.to("meta") for t in (weights.spline_codes, weights.spline_scale, weights.base_codes,
                                                     weights.base_scale)))


@pytest.mark.parametrize("change,error,words", [
    ({"x": torch.randn(4, 3, dtype=torch.float64)}, TypeError, "got torch.float64"),
    ({"x": torch.ones(4, 3, dtype=torch.int32)}, TypeError, "floating-point [N, I] tensor, got torch.int32"),
    ({"x": torch.randn(2, 4, 3)}, ValueError, "2-D [N, I] tensor, got shape (2, 4, 3)"),
    ({"x": torch.randn(4, 2)}, ValueError, "expected x [N, 3]"),
    ({"activation": "gelu"}, ValueError, "got 'gelu'"),
    ({"act_bits": 9}, ValueError, "act_bits must be an int in 1..8 (int8 codes), got 9"),
    ({"weights": "meta"}, ValueError, "one device, got x on {device}, table on {device}, spline_codes on meta"),
    ({"weights": "int16"}, TypeError, "weights.spline_codes must be int8, got torch.int16"),
    ({"weights": "short"}, ValueError, "spline_codes [I*(G+k), O] = (24, 2)"),
])
def test_bad_inputs_name_what_was_expected_and_what_came(change, error, words):
    x, table, weights = inputs_for_errors()
    kind = change.get("weights")
    if kind == "meta":
        weights = meta_weights(weights)
    elif kind == "int16":
        weights = IntegerWeights(weights.spline_codes.to(torch.int16), weights.spline_scale, weights.base_codes,
                                 weights.base_scale)
    elif kind == "short":
        weights = IntegerWeights(weights.spline_codes[:-1], weights.spline_scale, weights.base_codes,
                                 weights.base_scale)
    args = {"x": x, "activation": "silu", "act_bits": 8, **{k: v for k, v in change.items() if k != "weights"}}
    args["x"] = args["x"].to(DEVICE)
    with pytest.raises(error) as info:
        lut_linear(args["x"], table, weights, 0.1, args["activation"], args["act_bits"], backend="triton")
    assert words.format(device=x.device) in str(info.value)


@pytest.mark.parametrize("spline_order", [0, 6])
def test_unsupported_spline_orders_are_refused(spline_order):
    x, table, weights = inputs_for_errors(spline_order) if spline_order == 0 else inputs_for_errors()
    if spline_order == 6:
        grid = extend_grid(torch.linspace(-1, 1, 3).expand(3, 3), 6)
        table = BasisTable(grid.to(DEVICE), 6, 2, 8)
    with pytest.raises(ValueError, match=f"spline_order 1 to 5, got {spline_order}"):
        lut_linear(x, table, weights, 0.1, backend="triton")


def test_cpu_tensors_outside_the_interpreter_are_refused(monkeypatch):
    from kanlib.ops.spline_linear import triton as spline_linear_triton

    monkeypatch.setattr(spline_linear_triton, "INTERPRET", False)  # the device check shared by both kernels
    x, table, weights = inputs_for_errors(device="cpu")
    with pytest.raises(ValueError, match="needs CUDA tensors, got tensors on cpu"):
        lut_linear(x, table, weights, 0.1, backend="triton")


COMPILE_FOR_H100 = SM90 + textwrap.dedent("""    import kanlib.ops.lut_linear.triton as kernels

    tuner = kernels._lut_kernel
    names = tuner.fn.arg_names
    pointers = {"table_ptr": "*i32", "grid_ptr": "*fp32", "step_ptr": "*fp32", "inv_ptr": "*fp32", "ws_ptr": "*i8",
                "wb_ptr": "*i8", "sums_ptr": "*i32", "ss_ptr": "*fp32", "bs_ptr": "*fp32", "out_ptr": "*fp32"}
    for dtype, k, uniform, config in (("bf16", 3, True, tuner.configs[0]), ("fp32", 5, False, tuner.configs[-1])):
        constants = {"K": k, "UNIFORM": uniform, "ACT": 1, "SHIFT": 128, "WORDS": 1 if k <= 3 else 2,
                     **config.kwargs}
        signature = {"x_ptr": f"*{dtype}", **pointers}
        signature.update({n: ("fp32" if n in ("table_scale", "act_scale") else "i32") for n in names
                          if n not in signature and n not in constants})
        signature.update({n: "constexpr" for n in constants})
        compiled = compile_for_sm90(tuner.fn, signature, constants, config.num_warps, config.num_stages)
        ptx = compiled.asm["ptx"]
        assert "s32.s8.s8" in ptx, "the products do not use int8 tensor-core instructions"
        if config.kwargs["BLOCK_N"] >= 64:
            assert "wgmma" in ptx, "the products do not use Hopper's wgmma"
    print("compiled")
""")


def test_kernel_compiles_for_an_h100():
    assert_compiles(COMPILE_FOR_H100)
