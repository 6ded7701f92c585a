"""The local-support Triton kernels (kanlib.ops.spline_linear.triton_local) against the plain formula of
kanlib.ops.spline_linear.reference, run in float64, and the "triton" backend's choice between them and the
dense kernels. Without a GPU they run under Triton's interpreter (tests/conftest.py).

The kernels take float32, bfloat16 and float16 only, so gradients are compared with the float64 reference's
(on the same rounded inputs) rather than by torch.autograd.gradcheck.
"""
import copy
import textwrap

import pytest
from conftest import (LAYOUTS, fill_empty_with_nan, in_layout, inputs_around, random_grid, record_flag,
                      relative_error)
import torch

triton = pytest.importorskip("triton")

from gpu_compile import SPILL_STORES, assert_compiles  # noqa: E402

from kanlib import BSplineKAN  # noqa: E402
from kanlib.ops.spline_linear import prefers_sparse, spline_linear  # noqa: E402
from kanlib.ops.spline_linear import triton as dense  # noqa: E402
from kanlib.ops.spline_linear import triton_local as local  # noqa: E402
from kanlib.ops.spline_linear.reference import spline_linear_reference  # noqa: E402
from kanlib.ops.triton_tuning import tile_config  # noqa: E402
from kanlib.ops.spline_linear.support import (  # noqa: E402
    SPARSE_SLOWDOWN, TRITON_SPARSE_SLOWDOWN, TRITON_TENSOR_CORE_SPARSE_SLOWDOWN, triton_sparse_slowdown)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 1e-2, torch.float16: 1e-2}
ACTIVATIONS = ("silu", "tanh", "relu", "identity")

# (N, I, O, G, k, uniform): every order on both kinds of grid, every G in (1, 2, 9, 40)
CASES = [
    (13, 3, 5, 1, 1, True),
    (13, 3, 5, 40, 1, False),
    (13, 3, 5, 2, 2, False),
    (13, 3, 5, 40, 2, True),
    (13, 3, 5, 9, 3, True),
    (13, 3, 5, 9, 3, False),
    (13, 3, 5, 40, 3, False),
    (13, 3, 5, 2, 4, True),
    (13, 3, 5, 9, 4, False),
    (13, 3, 5, 40, 5, True),
    (13, 3, 5, 1, 5, False),
    (1, 2, 1, 40, 3, True),
]


def case_id(case):
    batch, n_in, n_out, grid_size, k, uniform = case
    return f"N{batch}-I{n_in}-O{n_out}-G{grid_size}-k{k}-{'uniform' if uniform else 'knots'}"


def random_inputs(batch, grid, gen, dtype, layout):
    """x [N, I] across the extended grid and half its width beyond either end; contiguous or not."""
    return in_layout(inputs_around(grid, batch, gen, outside=0.5, dtype=torch.float32).to(DEVICE, dtype), layout)


def local_product(x, weight, grid, k, uniform, activation):
    return local.spline_linear_triton_any(x, weight, grid, k, uniform, activation, kernels="local")


def check_against_reference(case, dtype, activation, layout, seed, repeat_knot=False, rows=None):
    batch, n_in, n_out, grid_size, k, uniform = case
    gen = torch.Generator().manual_seed(seed)
    grid = random_grid(n_in, grid_size, k, gen, uniform=uniform, repeat_knot=repeat_knot).to(DEVICE)
    x = random_inputs(batch, grid.cpu(), gen, dtype, layout) if rows is None else rows(grid).to(DEVICE, dtype)
    x.requires_grad_()
    weight = (torch.randn(n_in * (grid_size + k + 1), n_out, generator=gen) / n_in ** 0.5).to(DEVICE, dtype)
    if layout == "transposed":
        weight = weight.t().contiguous().t()
    weight.requires_grad_()
    grad_out = torch.randn(x.shape[0], n_out, generator=gen).to(DEVICE, dtype)

    out = local_product(x, weight, grid, k, uniform, activation)
    grads = torch.autograd.grad(out, (x, weight), grad_out)
    x64 = x.detach().double().requires_grad_()
    w64 = weight.detach().double().requires_grad_()
    want = spline_linear_reference(x64, w64, grid.double(), k, activation)
    expected = (want, *torch.autograd.grad(want, (x64, w64), grad_out.double()))
    for name, got, wanted in zip(("output", "grad_x", "grad_weight"), (out, *grads), expected):
        assert got.dtype == dtype, f"{name} has dtype {got.dtype}, expected {dtype}"
        error = relative_error(got, wanted)
        assert error <= TOLERANCE[dtype], f"{name}: relative error {error:.2e} > {TOLERANCE[dtype]:.0e}"


@pytest.mark.parametrize("index", range(len(CASES)), ids=[case_id(case) for case in CASES])
def test_float32_output_and_gradients_match_the_reference(index):
    layout = LAYOUTS[index % 3]
    check_against_reference(CASES[index], torch.float32, ACTIVATIONS[index % 4], layout, seed=index)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_types_match_the_reference(dtype):
    check_against_reference((13, 3, 5, 40, 3, True), dtype, "silu", "contiguous", seed=20)
    check_against_reference((13, 3, 5, 9, 2, False), dtype, "silu", "contiguous", seed=21)


def test_repeated_knots_match_the_reference():
    check_against_reference((13, 4, 6, 9, 3, False), torch.float32, "silu", "contiguous", seed=3, repeat_knot=True)


@pytest.mark.parametrize("uniform", [True, False])
def test_values_on_knots_and_far_outside_the_grid(uniform):
    def knots_and_far(grid):
        far = torch.tensor([[-1e4] * grid.shape[0], [1e4] * grid.shape[0]])
        return torch.cat([grid.t().cpu(), far, grid.t().cpu() + 1e-3, grid.t().cpu() - 1e-3])

    check_against_reference((0, 3, 5, 9, 2, uniform), torch.float32, "identity", "contiguous", seed=4,
                            rows=knots_and_far)


@pytest.fixture(params=[1, 4], ids=["one-chunk", "four-chunks"])
def small_tiles(monkeypatch, request):
    """Tiles of 8 rows and 4 inputs or outputs, so that small inputs span several tiles along every axis; the
    weight gradient's tiles are 16 rows, outputs and slots (the least tl.dot takes), so that its runs of rows span
    several row blocks and G = 40 several blocks of slots; the forward walks the inputs in one chunk or in four (of
    9 inputs: 3, 3, 3 and none). torch.empty's buffers hold NaN: with one chunk the forward's output is not zeroed,
    and every element must be written."""
    for kernel, blocks in ((local._forward_kernel, {"BLOCK_M": 8, "BLOCK_N": 4, "SPLIT_I": request.param}),
                           (local._grad_x_kernel, {"BLOCK_M": 8, "BLOCK_N": 4, "BLOCK_I": 4}),
                           (local._grad_weight_kernel, {"BLOCK_M": 16, "BLOCK_N": 16, "SLOTS": 16})):
        monkeypatch.setattr(kernel, "configs", [tile_config(blocks, 4, 1, "out_ptr")])
        monkeypatch.setattr(kernel, "cache", {})
    fill_empty_with_nan(monkeypatch)


@pytest.mark.parametrize("uniform", [True, False])
@pytest.mark.parametrize("grid_size", [2, 40], ids=["runs-of-several-row-blocks", "several-blocks-of-slots"])
def test_several_tiles_along_every_axis(small_tiles, uniform, grid_size):
    check_against_reference((37, 9, 21, grid_size, 3, uniform), torch.float32, "silu", "strided",
                            seed=grid_size + int(uniform))


def test_half_types_over_several_tiles_and_chunks(small_tiles):
    check_against_reference((21, 9, 11, 5, 3, True), torch.bfloat16, "silu", "contiguous", seed=22)


def test_nan_rows_stay_nan_and_an_empty_batch_works():
    gen = torch.Generator().manual_seed(5)
    grid = random_grid(4, 40, 3, gen, uniform=True).to(DEVICE)
    weight = torch.randn(4 * 44, 3, generator=gen).to(DEVICE)
    x = inputs_around(grid.cpu(), 5, gen).to(DEVICE)
    x[2, 1] = float("nan")
    out = local_product(x, weight, grid, 3, True, "silu")
    dense_out = dense.spline_linear_triton(x, weight, grid, 3, True, "silu")
    assert torch.isnan(out[2]).all() and torch.isfinite(out[[0, 1, 3, 4]]).all()
    assert torch.equal(torch.isnan(out), torch.isnan(dense_out))
    empty = torch.empty(0, 4, device=DEVICE, requires_grad=True)
    weight.requires_grad_()
    out = local_product(empty, weight, grid, 3, True, "silu")
    assert out.shape == (0, 3)
    grad_x, grad_w = torch.autograd.grad(out.sum(), (empty, weight))
    assert grad_x.shape == (0, 4) and grad_w.abs().sum() == 0


def test_create_graph_gives_differentiable_gradients():
    gen = torch.Generator().manual_seed(6)
    grid = random_grid(3, 40, 3, gen, uniform=False).to(DEVICE)
    x = inputs_around(grid.cpu(), 7, gen, outside=0.0).to(DEVICE).requires_grad_()
    weight = torch.randn(3 * 44, 2, generator=gen).to(DEVICE).requires_grad_()
    (grad_x,) = torch.autograd.grad(local_product(x, weight, grid, 3, False, "silu").sum(), x, create_graph=True)
    second = torch.autograd.grad(grad_x.square().sum(), weight)[0]
    x64 = x.detach().double().requires_grad_()
    w64 = weight.detach().double().requires_grad_()
    (grad_x64,) = torch.autograd.grad(spline_linear_reference(x64, w64, grid.double(), 3, "silu").sum(), x64,
                                      create_graph=True)
    want = torch.autograd.grad(grad_x64.square().sum(), w64)[0]
    assert relative_error(grad_x, grad_x64) <= 1e-4 and relative_error(second, want) <= 1e-4


def test_layer_gradients_of_coef_scales_bias_and_input(monkeypatch):
    torch.manual_seed(7)
    layer = BSplineKAN(5, 4, grid_size=40, spline_order=3, bias=True, backend="triton", device=DEVICE)
    with torch.no_grad():
        layer.coef.normal_()
        layer.mask[0, 1] = 0.0
        layer.bias.normal_()
    reference = copy.deepcopy(layer).double()
    reference.backend = "eager"
    seen = record_families(monkeypatch)
    x = (torch.rand(2, 7, 10, device=DEVICE)[..., ::2] * 3 - 1.5).requires_grad_()  # non-contiguous
    x64 = x.detach().double().requires_grad_()
    grad_out = torch.randn(2, 7, 4, device=DEVICE)
    names = ("coef", "scale_base", "scale_sp", "bias")
    out = layer(x)
    got = torch.autograd.grad(out, [x] + [getattr(layer, n) for n in names], grad_out)
    want_out = reference(x64)
    want = torch.autograd.grad(want_out, [x64] + [getattr(reference, n) for n in names], grad_out.double())
    assert seen == ["local"] and relative_error(out, want_out) <= 1e-4
    for name, g, w in zip(("x",) + names, got, want):
        assert relative_error(g, w) <= 1e-4, name


def record_families(monkeypatch):
    """The kernel family ('dense' or 'local') of every forward kernel launch, in order."""
    seen = []
    for family, kernel in (("dense", dense._forward_kernel), ("local", local._forward_kernel)):
        run = kernel.run

        def recording_run(*args, _run=run, _family=family, **kwargs):
            seen.append(_family)
            return _run(*args, **kwargs)

        monkeypatch.setattr(kernel, "run", recording_run)
    return seen


def test_the_triton_backend_picks_local_kernels_at_large_grids_only(monkeypatch):
    seen = record_families(monkeypatch)
    gen = torch.Generator().manual_seed(8)
    for grid_size in (5, 40):
        grid = random_grid(2, grid_size, 3, gen, uniform=True).to(DEVICE)
        x = inputs_around(grid.cpu(), 3, gen).to(DEVICE)
        spline_linear(x, torch.randn(2 * (grid_size + 4), 2).to(DEVICE), grid, 3, True, backend="triton")
    assert seen == ["dense", "local"]
    assert not local.uses_local_kernels(torch.zeros(2, 5 + 7), 3) and local.uses_local_kernels(torch.zeros(2, 47), 3)


@pytest.mark.parametrize("deterministic", [False, True])
def test_deterministic_mode_keeps_the_local_kernels_and_one_forward_chunk(monkeypatch, deterministic):
    """The local weight gradient sums each element in one program (no atomics), so deterministic mode keeps the
    family; the forward tells its tuner, which then keeps one chunk of inputs (tests/test_ops_triton_tuning.py)."""
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: deterministic)
    assert local.uses_local_kernels(torch.zeros(2, 47), 3)
    seen = record_flag(monkeypatch, local._forward_kernel, "DETERMINISTIC")
    gen = torch.Generator().manual_seed(6)
    grid = random_grid(3, 40, 3, gen, uniform=True).to(DEVICE)
    weight = torch.randn(3 * 44, 5, generator=gen).to(DEVICE)
    local_product(random_inputs(7, grid.cpu(), gen, torch.float32, "contiguous"), weight, grid, 3, True, "silu")
    assert seen == [deterministic]


def test_the_weight_gradient_has_the_same_bits_on_every_run():
    gen = torch.Generator().manual_seed(7)
    grid = random_grid(3, 40, 3, gen, uniform=False).to(DEVICE)
    x = random_inputs(37, grid.cpu(), gen, torch.float32, "contiguous")
    weight = torch.randn(3 * 44, 5, generator=gen).to(DEVICE).requires_grad_()
    grad_out = torch.randn(37, 5, generator=gen).to(DEVICE)
    first, again = (torch.autograd.grad(local_product(x, weight, grid, 3, False, "silu"), weight, grad_out)[0]
                    for _ in range(2))
    assert torch.equal(first, again)


def test_a_caller_can_force_either_family(monkeypatch):
    seen = record_families(monkeypatch)
    gen = torch.Generator().manual_seed(9)
    for grid_size in (5, 40):
        grid = random_grid(2, grid_size, 3, gen, uniform=True).to(DEVICE)
        x = inputs_around(grid.cpu(), 3, gen).to(DEVICE)
        weight = torch.randn(2 * (grid_size + 4), 2).to(DEVICE)
        outs = [local.spline_linear_triton_any(x, weight, grid, 3, True, kernels=kernels)
                for kernels in ("dense", "local")]
        assert relative_error(outs[1], outs[0]) <= 1e-5
    assert seen == ["dense", "local"] * 2
    with pytest.raises(ValueError, match=r"kernels must be one of \('auto', 'dense', 'local'\), got 'sparse'"):
        local.spline_linear_triton_any(x, weight, grid, 3, True, kernels="sparse")


def test_bad_inputs_are_named_as_by_the_dense_kernels():
    grid = random_grid(3, 40, 3, torch.Generator().manual_seed(0), uniform=True).to(DEVICE)
    x = torch.randn(4, 3, device=DEVICE)
    with pytest.raises(ValueError, match=r"I\*\(G\+k\+1\) = 3\*44 rows for grid \(3, 47\) and spline_order 3, got 5"):
        local.spline_linear_triton_local(x, torch.randn(5, 2, device=DEVICE), grid, 3, True)
    with pytest.raises(TypeError, match="got torch.float64"):
        local.spline_linear_triton_local(x.double(), torch.randn(132, 2, device=DEVICE).double(), grid, 3, True)


def test_the_cost_model_takes_the_device_slowdown():
    assert prefers_sparse(5 * SPARSE_SLOWDOWN + 1, 3) and not prefers_sparse(5 * SPARSE_SLOWDOWN, 3)
    assert not prefers_sparse(5 * SPARSE_SLOWDOWN + 1, 3, TRITON_SPARSE_SLOWDOWN)
    assert prefers_sparse(5 * TRITON_SPARSE_SLOWDOWN + 1, 3, TRITON_SPARSE_SLOWDOWN)


def test_against_tensor_core_products_the_local_kernels_wait_for_far_larger_grids():
    """The dense kernels' bfloat16, float16 and TF32 products are many times faster than full float32 ones."""
    assert TRITON_TENSOR_CORE_SPARSE_SLOWDOWN > TRITON_SPARSE_SLOWDOWN
    assert {triton_sparse_slowdown(dtype) for dtype in (torch.bfloat16, torch.float16)} == {
        TRITON_TENSOR_CORE_SPARSE_SLOWDOWN}
    past_full = int(5 * TRITON_SPARSE_SLOWDOWN) + 1 + 3  # knots per input of a grid just past the float32 crossover
    grid = torch.zeros(2, past_full)
    assert not local.uses_local_kernels(grid, 3, torch.bfloat16)
    assert not local.uses_local_kernels(grid, 3, torch.float16)
    assert local.uses_local_kernels(torch.zeros(2, int(5 * TRITON_TENSOR_CORE_SPARSE_SLOWDOWN) + 4), 3, torch.bfloat16)
    allowed = torch.backends.cuda.matmul.allow_tf32
    try:
        for tf32, slowdown in ((False, TRITON_SPARSE_SLOWDOWN), (True, TRITON_TENSOR_CORE_SPARSE_SLOWDOWN)):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            assert triton_sparse_slowdown(torch.float32) == slowdown
            assert local.uses_local_kernels(grid, 3, torch.float32) == (not tf32)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allowed


def test_a_bfloat16_layer_at_a_large_grid_keeps_the_dense_kernels(monkeypatch):
    seen = record_families(monkeypatch)
    gen = torch.Generator().manual_seed(10)
    grid = random_grid(2, 40, 3, gen, uniform=True).to(DEVICE)
    x = inputs_around(grid.cpu(), 3, gen).to(DEVICE)
    weight = torch.randn(2 * 44, 2).to(DEVICE)
    spline_linear(x, weight, grid, 3, True, backend="triton")
    spline_linear(x.bfloat16(), weight.bfloat16(), grid, 3, True, backend="triton")
    assert seen == ["local", "dense"]


COMPILE_FOR_H100 = SPILL_STORES + textwrap.dedent("""
    import kanlib.ops.spline_linear.triton as dense
    import kanlib.ops.spline_linear.triton_local as kernels

    VARIANTS = (("bf16", 3, True), ("fp32", 3, False), ("fp32", 5, True))
    POINTERS = {"_forward_kernel": 6, "_grad_x_kernel": 7, "_grad_weight_kernel": 9, "_window_starts_kernel": 5}
    # the forward sums into float32; the weight gradient's sorted rows and run bounds are int64, the starts int32
    TYPES = {"grid": "*fp32", "scale": "*fp32", "shift": "*fp32", "out_ptr": "*fp32", "order": "*i64",
             "bounds": "*i64", "starts": "*i32"}
    STARTS_TILE = triton.Config({"BLOCK_I": kernels.STARTS_BLOCK_I, "BLOCK_M": kernels.STARTS_BLOCK_M}, num_warps=4,
                                num_stages=1)
    for name, n_pointers in POINTERS.items():
        tuner = getattr(kernels, name)
        function, configs = (tuner.fn, tuner.configs) if hasattr(tuner, "configs") else (tuner, [STARTS_TILE])
        for index, config in enumerate(configs):
            dtype, k, uniform = VARIANTS[index % len(VARIANTS)]
            names = function.arg_names
            constants = {"K": k, "PIECES": dense.symmetric_pieces(k), "UNIFORM": uniform, "ACT": 1,
                         "INTERPRET": False, **config.kwargs}
            constants = {n: value for n, value in constants.items() if n in names}
            signature = kernel_signature(names, n_pointers, lambda n: next((t for w, t in TYPES.items() if w in n),
                                                                           f"*{dtype}"), constants)
            spills = spill_stores(function, signature, constants, config.num_warps, config.num_stages)
            assert spills == [0], f"{name} {config} {dtype} k={k} uniform={uniform}: spill stores {spills}"
    print("compiled")
""")


def test_kernels_compile_for_an_h100_without_register_spills():
    assert_compiles(COMPILE_FOR_H100)


# What a Triton training step may run besides its kernels: allocations and relabellings, and the local weight
# gradient's sort of each input's rows by window
STEP_OPS = {"aten::empty", "aten::to", "aten::detach"}
SORT_OPS = {"aten::sort", "aten::searchsorted"}


@pytest.mark.parametrize("family", ["dense", "local"])
@pytest.mark.parametrize("path", ["layer", "two nodes"])
def test_a_triton_training_step_launches_its_kernels_and_no_other_work(monkeypatch, family, path):
    """A B-spline layer's step on the Triton path, kernels stubbed: each kernel launched once, and no torch operation
    that would be a launch of its own on a GPU (a fill, a cast, a copy), where one training step of a layer is a few
    dozen launches at most. ``"layer"``: the layer's forward, one autograd node
    (kanlib/ops/spline_linear/triton_layer.py); ``"two nodes"``: its weight by
    kanlib/ops/spline_linear/triton_weight.py's Function, then the product's (as quantization-aware training runs)."""
    from torch.profiler import ProfilerActivity, profile

    from kanlib.layers.bspline import _WeightMatrix
    from kanlib.ops.spline_linear import triton_weight

    launches = []
    kernels = {dense: ("_forward_kernel", "_grad_x_kernel", "_grad_weight_kernel"),
               local: ("_forward_kernel", "_grad_x_kernel", "_grad_weight_kernel", "_window_starts_kernel"),
               triton_weight: ("_assemble_kernel", "_gradients_kernel")}
    for module, names in kernels.items():
        for name in names:
            monkeypatch.setattr(getattr(module, name), "run",
                                lambda *args, _name=name, **kwargs: launches.append(_name))
    # "auto" picks the family by the grid's size (tests above): 5 and 40 intervals pick each
    layer = BSplineKAN(5, 4, grid_size=5 if family == "dense" else 40, backend="triton", device=DEVICE)
    x = (torch.rand(9, 5, device=DEVICE) * 2 - 1).requires_grad_()
    leaves = [x, layer.scale_base, layer.scale_sp, layer.coef]
    grad_out = torch.randn(9, 4, device=DEVICE)

    def step():
        if path == "layer":
            out = layer(x)
            assert type(out.grad_fn).__name__ == "TritonSplineLayerBackward"
        else:
            weight = _WeightMatrix.apply(layer.scale_base, layer.scale_sp, layer.mask, layer.coef, True)
            out = local.spline_linear_triton_any(x, weight, layer.grid, 3, True, "silu", kernels=family)
        torch.autograd.grad(out, leaves, grad_out)

    step()  # the grid's knot tensors and the run-start table are built once per grid and shape
    launches.clear()
    with profile(activities=[ProfilerActivity.CPU]) as profiled:
        step()

    def under_sort(event):
        while event is not None and event.name not in SORT_OPS:
            event = event.cpu_parent
        return event is not None

    ops = {event.name for event in profiled.events()
           if event.name.startswith("aten::") and not under_sort(event.cpu_parent)}
    if family == "dense":
        assert ops <= STEP_OPS, ops - STEP_OPS
        assert launches == ["_assemble_kernel", "_forward_kernel", "_grad_x_kernel", "_grad_weight_kernel",
                            "_gradients_kernel"]
    else:
        assert ops <= STEP_OPS | SORT_OPS, ops - STEP_OPS - SORT_OPS
        assert launches == ["_assemble_kernel", "_forward_kernel", "_grad_x_kernel", "_window_starts_kernel",
                            "_grad_weight_kernel", "_gradients_kernel"]
