"""kanlib.ops.spline_linear's dispatcher: every backend against the plain formula of its reference module, higher
derivatives, torch.func and torch.export, the deprecated method= words. (The Triton kernels have their own file.)"""
import json
import subprocess
import sys

import numba
import numpy as np
import pytest
import torch
from conftest import fill_empty_with_nan, inputs_around, random_grid
from torch.func import jacrev, vmap

from kanlib import KAN, BSplineKAN, SparseBSplineKAN
import kanlib.ops.spline_linear as spline_linear_module
from kanlib.ops.spline_linear import BACKENDS, cpu, grid_constants, spline_linear
from kanlib.ops.spline_linear.reference import expanded_input, spline_linear_reference

CPU_BACKENDS = ("auto", "eager", "cpu", "sparse")


def random_problem(seed, n=9, n_in=4, n_out=3, grid_size=6, k=3, uniform=True):
    gen = torch.Generator().manual_seed(seed)
    grid = random_grid(n_in, grid_size, k, gen, uniform=uniform, dtype=torch.float64)
    x = inputs_around(grid, n, gen, outside=0.25, dtype=torch.float64).requires_grad_()
    weight = torch.randn(n_in * (grid_size + k + 1), n_out, generator=gen, dtype=torch.float64).requires_grad_()
    return x, weight, grid, k, uniform


@pytest.mark.parametrize("n_out", [1, 7, 13])  # below and above NARROW_COLUMNS: transposed and plain products
@pytest.mark.parametrize("uniform", [True, False])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_every_backend_computes_the_reference(backend, uniform, n_out):
    x, weight, grid, k, uniform = random_problem(1, n=23, n_in=5, n_out=n_out, grid_size=9, uniform=uniform)
    grad_out = torch.randn(23, n_out, generator=torch.Generator().manual_seed(n_out), dtype=torch.float64)
    results = []
    for compute in (lambda: spline_linear(x, weight, grid, k, uniform, "silu", backend),
                    lambda: spline_linear_reference(x, weight, grid, k, "silu")):
        out = compute()
        results.append((out, *torch.autograd.grad(out, (x, weight), grad_out)))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("uniform", [True, False])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_second_derivatives_match_the_reference(backend, uniform):
    """create_graph=True: the gradients are themselves differentiable (PINN-style losses on dy/dx)."""
    x, weight, grid, k, uniform = random_problem(2, uniform=uniform)
    results = []
    for compute in (lambda: spline_linear(x, weight, grid, k, uniform, "tanh", backend),
                    lambda: spline_linear_reference(x, weight, grid, k, "tanh")):
        out = compute()
        grad_x, = torch.autograd.grad(out.sum(), x, create_graph=True)
        results.append(torch.autograd.grad((grad_x ** 2).sum(), (x, weight)))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("uniform", [True, False])
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_sparse_kernels_across_many_tiles(monkeypatch, k, uniform, threads):
    """Tiles far smaller than the problem: several row, column and input blocks, a partial last block of each,
    and grad_x summed over column blocks; grids small enough that windows meet both ends of the basis."""
    monkeypatch.setattr(spline_linear_module, "TILE_COLUMNS", 4)
    monkeypatch.setattr(spline_linear_module, "GROUP_ROWS", 5)
    monkeypatch.setattr(spline_linear_module, "GRAD_TILE_BYTES", 5 * 8 * 4)
    previous = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        for grid_size in (1, 2, 13):
            gen = torch.Generator().manual_seed(10 * k + grid_size)
            grid = random_grid(7, grid_size, k, gen, uniform=uniform, dtype=torch.float64)
            x = inputs_around(grid, 37, gen, outside=0.3).requires_grad_()
            weight = torch.randn(7 * (grid_size + k + 1), 11, generator=gen, dtype=torch.float64).requires_grad_()
            grad_out = torch.randn(37, 11, generator=gen, dtype=torch.float64)
            results = []
            for compute in (lambda: spline_linear(x, weight, grid, k, uniform, "silu", "sparse"),
                            lambda: spline_linear_reference(x, weight, grid, k, "silu")):
                out = compute()
                results.append((out, *torch.autograd.grad(out, (x, weight), grad_out)))
            for got, want in zip(*results):
                torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10, equal_nan=True)
    finally:
        numba.set_num_threads(previous)


@pytest.mark.parametrize("source", ["weight", "parameters"])
@pytest.mark.parametrize("uniform", [True, False])
@pytest.mark.parametrize("n_parts", [2, 3, 7])
def test_the_sparse_forward_adds_the_sums_of_parts_of_the_inputs(monkeypatch, n_parts, uniform, source):
    """With fewer tiles than threads the sparse forward splits the inputs into parts (the last shorter, down to one
    input each) and adds their sums: the same as one part, and the product picks such a split, from the weight
    (spline_linear) or from the layer's parameters (the fused layer)."""
    gen = torch.Generator().manual_seed(n_parts)
    grid = random_grid(7, 13, 3, gen, uniform=uniform, dtype=torch.float64)
    x = inputs_around(grid, 37, gen, outside=0.3)
    (scale_base, scale_sp), mask, coef = _layer_parameters(gen, 7, 11, 13 + 3)
    parameters = (scale_base.detach(), scale_sp.detach(), mask, coef.detach())
    weight = spline_linear_module.layer_weight_matrix(*parameters)
    given = {"weight": weight} if source == "weight" else {"parameters": parameters}
    args = spline_linear_module._CpuKernelArgs(x, grid, 3, uniform, "silu")
    windows = spline_linear_module._sparse_windows(args, 13 + 3 + 1, with_slopes=False)
    outs = []
    for parts in (1, n_parts):
        out = torch.full((37, 11), float("nan"), dtype=torch.float64)
        cpu.sparse_forward(windows.order, windows.offsets, windows.values,
                           *spline_linear_module._weight_source(**given), out.numpy(), windows.block_rows, 11, parts)
        outs.append(out)
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(outs[0], spline_linear_reference(x, weight, grid, 3, "silu"), rtol=1e-10, atol=1e-10)
    monkeypatch.setattr(cpu, "thread_count", lambda: n_parts)  # one tile: the product splits the inputs
    calls = []
    kernel = cpu.sparse_forward
    monkeypatch.setattr(cpu, "sparse_forward", lambda *args: calls.append(args[-1]) or kernel(*args))
    if source == "weight":
        got = spline_linear(x, weight, grid, 3, uniform, "silu", "sparse")
    else:
        got = spline_linear_module.sparse_spline_layer(x, *parameters, grid, 3, uniform)
    assert calls == [n_parts]
    torch.testing.assert_close(got, outs[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["cpu", "sparse"])
def test_gradgradcheck_float64(backend):
    x, weight, grid, k, uniform = random_problem(3, n=5, n_in=3, n_out=2, grid_size=4, uniform=False)
    assert torch.autograd.gradgradcheck(
        lambda x, w: spline_linear(x, w, grid, k, uniform, "silu", backend), (x, weight))


def test_a_layer_trains_on_a_loss_of_its_input_gradient():
    """The default CPU path (numba kernels, numba weight matrix) under double backward."""
    torch.manual_seed(0)
    layer = BSplineKAN(2, 1, grid_size=5).double()
    reference = BSplineKAN(2, 1, grid_size=5, backend="eager").double()
    reference.load_state_dict(layer.state_dict())
    x = torch.rand(16, 2, dtype=torch.float64, requires_grad=True)
    grads = []
    for model in (layer, reference):
        dy_dx, = torch.autograd.grad(model(x).sum(), x, create_graph=True)
        grads.append(torch.autograd.grad(dy_dx.pow(2).mean(), (model.coef, model.scale_base, model.scale_sp)))
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)


def test_torch_func_vmap_of_jacrev_matches_autograd():
    model = KAN([3, 4, 2], seed=0)
    x = torch.randn(5, 3)
    jacobians = vmap(jacrev(model))(x)
    want = torch.stack([torch.autograd.functional.jacobian(model, row) for row in x])
    torch.testing.assert_close(jacobians, want, rtol=1e-5, atol=1e-6)


def test_torch_export_runs_the_plain_formula_on_the_cpu():
    model = KAN([3, 4, 2], seed=0)
    x = torch.randn(6, 3)
    exported = torch.export.export(model, (x,))
    fresh = torch.randn(6, 3) * 2
    torch.testing.assert_close(exported.module()(fresh), model(fresh), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["cpu", "sparse", "triton"])
def test_fused_backends_say_they_cannot_run_under_torch_func(backend):
    layer = BSplineKAN(3, 2, backend=backend)
    with pytest.raises(RuntimeError, match=f"backend='{backend}' runs fused kernels.*use backend='auto' or 'eager'"):
        vmap(layer)(torch.randn(4, 3))


def test_auto_follows_cpu_autocast_through_the_eager_path():
    layer = BSplineKAN(4, 3)
    x = torch.randn(8, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16


@pytest.mark.parametrize("method,backend", [("dense", "cpu"), ("eager", "eager"), ("sparse", "sparse")])
def test_the_old_method_words_still_work_with_a_deprecation_warning(method, backend):
    x, weight, grid, k, uniform = random_problem(4)
    with pytest.warns(DeprecationWarning, match=f"method='{method}' is deprecated.*backend='{backend}'"):
        got = spline_linear(x, weight, grid, k, uniform, method=method)
    torch.testing.assert_close(got, spline_linear(x, weight, grid, k, uniform, backend=backend))
    with pytest.warns(DeprecationWarning, match="use backend="):
        assert BSplineKAN(3, 2, method=method).backend == backend


def test_bad_backend_names_the_choices():
    x, weight, grid, k, uniform = random_problem(5)
    with pytest.raises(ValueError, match=r"backend must be one of \('auto', 'eager', 'cpu', 'sparse', 'triton'\)"):
        spline_linear(x, weight, grid, k, uniform, backend="dense")
    assert BACKENDS == ("auto", "eager", "cpu", "sparse", "triton")
    with pytest.warns(DeprecationWarning, match="backend='torch' is deprecated"):
        BSplineKAN(3, 2, backend="torch")


def test_the_cpu_kernels_reuse_a_grid_s_constants_until_it_changes():
    from kanlib.ops.spline_linear import grid_constants

    grid = random_grid(3, 5, 3, torch.Generator().manual_seed(6))
    first = grid_constants(grid, 3)
    assert grid_constants(grid, 3) is first
    grid.data = grid.data * 2  # a new storage, the same tensor object and version
    assert grid_constants(grid, 3) is not first
    second = grid_constants(grid, 3)
    with torch.no_grad():
        grid.mul_(0.5)  # in place: a new version
    assert grid_constants(grid, 3) is not second


@pytest.mark.parametrize("torch_threads", [1, 2])
def test_the_kernels_follow_torchs_thread_count_and_leave_it_alone(torch_threads):
    """One setting, torch.set_num_threads, governs the numba kernels, and they never change it (numba's OpenMP
    layer resets torch's count when it starts: a fresh process sees that first start)."""
    script = f"""
import json, numba, torch
torch.set_num_threads({torch_threads})
from kanlib import BSplineKAN
from kanlib.ops.spline_linear import cpu
BSplineKAN(64, 64, grid_size=40, backend="sparse")(torch.rand(2048, 64) * 2 - 1)
with cpu.threads_for(cpu.SERIAL_BELOW):
    large = numba.get_num_threads()
with cpu.threads_for(cpu.SERIAL_BELOW - 1):
    small = numba.get_num_threads()
print(json.dumps(dict(large=large, small=small, torch=torch.get_num_threads(),
                      available=numba.config.NUMBA_NUM_THREADS)))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["large"] == min(torch_threads, seen["available"]) and seen["small"] == 1
    assert seen["torch"] == torch_threads


def _layer_parameters(gen, n_in, n_out, n_basis, dead=0.3):
    scale_base, scale_sp = (torch.randn(n_in, n_out, generator=gen, dtype=torch.float64) for _ in range(2))
    mask = (torch.rand(n_in, n_out, generator=gen, dtype=torch.float64) > dead).double()
    coef = torch.randn(n_in, n_out, n_basis, generator=gen, dtype=torch.float64)
    return [t.requires_grad_() for t in (scale_base, scale_sp)], mask, coef.requires_grad_()


def _slot_major_rows(matrix: torch.Tensor, n_in: int) -> torch.Tensor:
    """An [I*S, ...] matrix's rows (or an [N, I*S] matrix's columns, transposed) in the order s*I + i."""
    return matrix.reshape(n_in, -1, *matrix.shape[1:]).transpose(0, 1).reshape(matrix.shape)


@pytest.mark.parametrize("slot_major", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("narrow_layout", [True, False])
# narrow outputs and wide ones on the serial kernel; the (48, ...) ones big enough for the parallel one; 230 and 920
# bases: an input's coefficients beyond ASSEMBLY_TILE_ABOVE, assembled straight or in 8 x 8 blocks (with edges on both
# axes; a narrow layout's outputs do not lie side by side, so it is assembled straight either way); 6 and 8 bases:
# fewer than the gradient fold's 8 x 8 blocks, and one block
@pytest.mark.parametrize("n_in, n_out, n_basis", [(5, 1, 23), (5, 9, 23), (5, 16, 23), (5, 37, 23), (48, 61, 23),
                                                  (5, 37, 230), (48, 61, 230), (5, 9, 920), (5, 37, 6), (5, 37, 8)])
def test_the_assembled_weight_is_the_layers_weight_matrix(monkeypatch, n_in, n_out, n_basis, narrow_layout, dtype,
                                                          slot_major):
    """The assembly kernel writes every entry, the same products in the same order as the plain formula, in either
    memory layout and row order, and beyond ASSEMBLY_TILE_ABOVE both ways (straight and in blocks); the gradient
    fold reads it back."""
    from kanlib.ops.spline_linear import cpu

    gen = torch.Generator().manual_seed(n_out)
    (scale_base, scale_sp), mask, coef = (t.detach() if isinstance(t, torch.Tensor) else [u.detach() for u in t]
                                          for t in _layer_parameters(gen, n_in, n_out, n_basis))
    scale_base, scale_sp, mask, coef = (t.to(dtype) for t in (scale_base, scale_sp, mask, coef))
    n_slots = n_basis + 1
    parallel = n_in * n_slots * n_out >= cpu.SERIAL_BELOW
    assert parallel == (n_in == 48)
    either_way = n_out * n_basis * coef.element_size() > cpu.ASSEMBLY_TILE_ABOVE
    assert either_way == (n_basis >= 230)
    want = spline_linear_module.layer_weight_matrix(scale_base, scale_sp, mask, coef)
    for blocked in (False, True) if either_way else (None,):
        if blocked is not None:  # the way the first call of a shape picks, then each way
            monkeypatch.setattr(spline_linear_module, "ASSEMBLY_PLANS", {})
            picked = spline_linear_module.assembled_weight(scale_base, scale_sp, mask, coef, narrow_layout, slot_major)
            assert torch.equal(picked, _slot_major_rows(want, n_in) if slot_major else want)
            key, = spline_linear_module.ASSEMBLY_PLANS
            spline_linear_module.ASSEMBLY_PLANS[key] = blocked
        got = spline_linear_module.assembled_weight(scale_base, scale_sp, mask, coef, narrow_layout=narrow_layout,
                                                    slot_major=slot_major)
        assert got.shape == want.shape == (n_in * n_slots, n_out)
        assert torch.equal(got, _slot_major_rows(want, n_in) if slot_major else want)
    grad_weight = torch.randn(n_in * n_slots, n_out, generator=gen, dtype=torch.float64).to(dtype)
    with torch.enable_grad():
        leaves = [t.clone().requires_grad_() for t in (scale_base, scale_sp, coef)]
        expected = torch.autograd.grad(spline_linear_module.layer_weight_matrix(leaves[0], leaves[1], mask, leaves[2]),
                                       leaves, grad_weight)
    given = _slot_major_rows(grad_weight, n_in) if slot_major else grad_weight
    if narrow_layout:  # column-major, as the layer's product gives it for narrow outputs: folded output by output
        given = given.t().contiguous().t()
    folded = spline_linear_module.parameter_gradients(scale_sp, mask, coef, given, slot_major=slot_major)
    # grad_scale_sp sums n_basis products; in float32, 920 of them summed in another order than torch's differ more
    tolerance = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 and n_basis > 256 else {}
    for a, b in zip(folded, expected):
        torch.testing.assert_close(a, b, **tolerance)


@pytest.mark.parametrize("n_in", [7, cpu.BLOCK_BELOW + 1])  # rows side by side, and row by row
@pytest.mark.parametrize("k", [0, 1, 2, 3, 5, 6])
@pytest.mark.parametrize("uniform", [True, False])
def test_the_dense_kernels_slot_major_layout_holds_the_same_expansion(k, uniform, n_in):
    """A written slot-major is A's columns reordered (s*I + i), exactly, and grad_x from a slot-major gradient of
    A is the same as from the input-major one: at every order, on knots, outside the grid, at infinities and NaN,
    over rows enough for the parallel kernel, for a narrow layer and a wide one."""
    gen = torch.Generator().manual_seed(20 + k)
    grid = random_grid(n_in, 5, k, gen, uniform=uniform, dtype=torch.float64)
    special = torch.tensor([float("inf"), float("-inf"), float("nan"), 1e30], dtype=torch.float64)
    x = torch.cat([inputs_around(grid, 2000, gen, outside=0.3), grid.t(), special.unsqueeze(1).expand(-1, n_in)])
    n_slots = 5 + k + 1
    grad_expanded = torch.randn(x.shape[0], n_in * n_slots, generator=gen, dtype=torch.float64)
    by_input, grad_by_input = spline_linear_module._dense_expand(x, grid, k, uniform, "silu", n_slots,
                                                                 grad_expanded.clone())
    by_slot, grad_by_slot = spline_linear_module._dense_expand(
        x, grid, k, uniform, "silu", n_slots, _slot_major_rows(grad_expanded.t(), n_in).t().contiguous(),
        slot_major=True)
    torch.testing.assert_close(by_slot, _slot_major_rows(by_input.t(), n_in).t(), rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(grad_by_slot, grad_by_input, rtol=1e-12, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("n_in", [6, cpu.BLOCK_BELOW + 1])  # rows side by side, and row by row
@pytest.mark.parametrize("k", [0, 1, 3, 6])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_slot_major_recursion_is_the_reference_on_any_grid(k, dtype, n_in):
    """On a grid that is not uniform, slot-major A and grad_x (the recursion over all bases at once, which the
    input-major layout shares) against the reference's expansion and its autograd gradient, computed in float64,
    inside and outside the grid and on the knots, with coinciding knots in one input; for a narrow layer (its rows
    side by side, the last block shorter) and a wide one."""
    gen = torch.Generator().manual_seed(40 + k)
    n_slots = 4 + k + 1
    grid = random_grid(n_in, 4, k, gen, uniform=False, dtype=torch.float64)
    grid[2, k + 2] = grid[2, k + 1]  # a knot interval of width 0
    x = torch.cat([inputs_around(grid, 300, gen, outside=0.3), grid.t()])
    grad_expanded = torch.randn(x.shape[0], n_in * n_slots, generator=gen, dtype=torch.float64)
    x64 = x.clone().requires_grad_()
    want = expanded_input(x64, grid, k).reshape(x.shape[0], -1)
    (want_grad_x,) = torch.autograd.grad(want, x64, grad_expanded)
    got, _ = spline_linear_module._dense_expand(x.to(dtype), grid.to(dtype), k, False, "silu", n_slots,
                                                slot_major=True)
    _, got_grad_x = spline_linear_module._dense_expand(
        x.to(dtype), grid.to(dtype), k, False, "silu", n_slots,
        _slot_major_rows(grad_expanded.t(), n_in).t().contiguous().to(dtype), expanded=False, slot_major=True)
    tolerance = 1e-12 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(got.double(), _slot_major_rows(want.detach().t(), n_in).t(), rtol=tolerance,
                               atol=tolerance)
    torch.testing.assert_close(got_grad_x.double(), want_grad_x, rtol=tolerance * 10, atol=tolerance * 10)


@pytest.mark.parametrize("scheme", ["recursion", "recursion input-major", "uniform"])
@pytest.mark.parametrize("n_in", [1, 5, cpu.BLOCK_BELOW - 1])
def test_rows_side_by_side_compute_what_row_by_row_does(n_in, scheme):
    """A narrow layer's blocks of rows against the row-by-row scheme on the same rows, at every block size a layer
    may get and a shorter last block (A alone, grad_x alone, both into one buffer), in float32: the recursion on
    an adapted grid (either layout of A) and the closed form on a uniform one (slot-major A)."""
    gen = torch.Generator().manual_seed(n_in)
    k, n_slots, n_rows = 3, 5 + 3 + 1, 37
    uniform = scheme == "uniform"
    slot_major = scheme != "recursion input-major"
    grid = random_grid(n_in, 5, k, gen, uniform=uniform)
    x = inputs_around(grid, n_rows, gen, outside=0.3, knots=True, specials=True).numpy()
    grad_expanded = torch.randn(n_rows, n_in * n_slots, generator=gen).numpy()
    empty, bits_like, constants = cpu.dense_arguments(x.dtype)
    grid_np, padded, inv_steps, steps, matrix = grid_constants(grid, k)
    knots, reciprocals = cpu.recursion_tables(grid_np, k, padded)
    uniform_rows = cpu._uniform_rows(k)
    common = (cpu.ACTIVATION_IDS["silu"], bits_like, constants)

    def run(block, write_out, write_grad):
        out = grad_expanded.copy() if write_grad else np.empty_like(grad_expanded)
        grad_x = np.empty_like(x)
        arrays = (out, out, grad_x, write_out, write_grad)
        if uniform and block == 0:
            uniform_rows["UNIFORM_SLOT_ROWS"](x, grid_np, inv_steps, steps, matrix, *common, *arrays, 0, n_rows)
        elif uniform:
            uniform_rows["UNIFORM_BLOCK_ROWS"](x, grid_np, inv_steps, steps, matrix, *common, *arrays, block, 0,
                                               n_rows)
        elif block == 0:
            cpu.recursion_rows(x, knots, reciprocals, k, *common, *arrays, slot_major, 0, n_rows)
        else:
            cpu.recursion_block_rows(x, cpu.tiled_inputs(knots, block), cpu.tiled_inputs(reciprocals, block), k,
                                     block, *common, *arrays, slot_major, 0, n_rows)
        return (out if write_out else None), (grad_x if write_grad else None)

    for write_out, write_grad in ((True, False), (False, True), (True, True)):
        want = run(0, write_out, write_grad)
        for block in (1, 4, cpu.rows_per_block(n_in, False)):  # 37 rows: a shorter last block at each
            for got, expected in zip(run(block, write_out, write_grad), want):
                if expected is not None:
                    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_only_narrow_layers_put_rows_side_by_side():
    for closed_form, below in ((False, cpu.BLOCK_BELOW), (True, cpu.CLOSED_FORM_BLOCK_BELOW)):
        assert cpu.rows_per_block(1, closed_form) == cpu.BLOCK_LANES and cpu.rows_per_block(below - 1, closed_form) > 1
        assert cpu.rows_per_block(below, closed_form) == cpu.rows_per_block(1000, closed_form) == 1


@pytest.mark.parametrize("n_out", [1, 9, 14])  # below and above NARROW_COLUMNS
@pytest.mark.parametrize("path", ["sparse", "dense", "dense rebuilding A"])
@pytest.mark.parametrize("uniform", [True, False])
@pytest.mark.parametrize("k", [1, 3, 4])
def test_the_layer_from_its_parameters_matches_the_reference(monkeypatch, k, uniform, path, n_out):
    """The parameters' gradients written by the kernels (sparse: straight from the windows, over several input and
    column tiles; dense: the weight gradient folded back, in the transposed layout when the output is narrow, from
    the expansion kept in forward or rebuilt in backward)."""
    sparse = path == "sparse"
    if path == "dense rebuilding A":
        monkeypatch.setattr(spline_linear_module, "KEEP_EXPANDED_BELOW", 0)
    monkeypatch.setattr(spline_linear_module, "TILE_COLUMNS", 4)
    monkeypatch.setattr(spline_linear_module, "GROUP_ROWS", 5)
    monkeypatch.setattr(spline_linear_module, "GRAD_TILE_BYTES", 5 * 8 * 4)
    _assert_layer_matches_reference(torch.Generator().manual_seed(k), k, uniform, sparse, n_out, (1, 11))


@pytest.mark.parametrize("x_needs_grad", [True, False])
@pytest.mark.parametrize("uniform", [True, False])
def test_sparse_parameter_gradients_over_8_by_8_blocks_and_their_edges(uniform, x_needs_grad):
    """21 outputs (two blocks of 8 and 5 more) by 5 or 26 bases (none, or three blocks of 8 and 2 more) in one column
    tile: the coefficients' gradients written block by block and entry by entry at the edges, with the weight's rows
    (x takes a gradient) and without them."""
    n_out = 2 * cpu.BLOCK + 5
    assert n_out <= spline_linear_module.TILE_COLUMNS
    _assert_layer_matches_reference(torch.Generator().manual_seed(7), 3, uniform, True, n_out, (2, 23), x_needs_grad)


@pytest.mark.parametrize("uniform", [True, False])
def test_the_sparse_backward_over_runs_of_inputs_and_column_blocks(monkeypatch, uniform):
    """Runs of 4 of the 6 inputs (the last shorter, the next input's coefficients prefetched within a run) by blocks
    of 5 of 13 columns (grad_x summed over them): the reference's gradients."""
    monkeypatch.setattr(spline_linear_module, "_backward_tiles", lambda n_in, n_out, threads: (4, 5))
    _assert_layer_matches_reference(torch.Generator().manual_seed(9), 3, uniform, True, 13, (2, 17))


@pytest.mark.parametrize("uniform", [True, False])
def test_the_sparse_weight_tiles_over_column_blocks_of_whole_shuffled_blocks(monkeypatch, uniform):
    """Column blocks of 16 of 41 outputs (the last 9 wide) and 14 or 26 bases: each input's weight rows are assembled
    for columns that start past 0 through 8 x 8 shuffled blocks and their edges, in forward and backward."""
    monkeypatch.setattr(spline_linear_module, "TILE_COLUMNS", 16)
    _assert_layer_matches_reference(torch.Generator().manual_seed(13), 3, uniform, True, 41, (11, 23))


@pytest.mark.parametrize("sparse", [True, False])
def test_the_layer_writes_every_buffer_it_takes_empty(monkeypatch, sparse):
    """torch.empty's buffers filled with NaN (what was there before is anything): the kernels write every entry they
    later read or return, grad_x included (the sparse backward zeroes its own instead of taking torch.zeros)."""
    fill_empty_with_nan(monkeypatch)
    monkeypatch.setattr(spline_linear_module, "_backward_tiles", lambda n_in, n_out, threads: (4, 5))
    _assert_layer_matches_reference(torch.Generator().manual_seed(21), 3, True, sparse, 13, (2, 17))


# torch operations that allocate or relabel a tensor without touching its entries (and so wake no thread pool)
_NO_COMPUTE_OPS = {"aten::empty", "aten::empty_strided", "aten::new_empty", "aten::detach", "aten::lift_fresh",
                   "aten::to", "aten::resolve_conj", "aten::resolve_neg", "aten::view", "aten::reshape",
                   "aten::as_strided", "aten::alias"}


def test_the_local_support_step_runs_no_torch_computation():
    """Forward and backward of the sparse layer: everything in the numba kernels, no torch operation that would
    wake torch's threads, which then spin beside the kernels' (chapter 09, the thread benchmark beside a busy
    process)."""
    from torch.profiler import ProfilerActivity, profile

    layer = BSplineKAN(64, 48, grid_size=30, backend="sparse")
    x = (torch.rand(300, 64) * 2.4 - 1.2).requires_grad_()
    leaves = [x, *(p for p in layer.parameters() if p.requires_grad)]
    grad_out = torch.randn(300, 48)
    torch.autograd.grad(layer(x), leaves, grad_out)
    with profile(activities=[ProfilerActivity.CPU]) as profiled:
        torch.autograd.grad(layer(x), leaves, grad_out)
    names = {event.name for event in profiled.events()}
    assert {"FusedSplineLayer", "FusedSplineLayerBackward"} <= names
    assert {name for name in names if name.startswith("aten::")} <= _NO_COMPUTE_OPS


def _assert_layer_matches_reference(gen, k, uniform, sparse, n_out, grid_sizes, x_needs_grad=True):
    """fused_spline_layer (sparse or dense) against the reference on 6 inputs and 29 rows around each grid: the output
    and the gradients of the parameters, and of x where it takes one."""
    for grid_size in grid_sizes:
        grid = random_grid(6, grid_size, k, gen, uniform=uniform, dtype=torch.float64)
        x = inputs_around(grid, 29, gen, outside=0.3).requires_grad_(x_needs_grad)
        (scale_base, scale_sp), mask, coef = _layer_parameters(gen, 6, n_out, grid_size + k)
        grad_out = torch.randn(29, n_out, generator=gen, dtype=torch.float64)
        leaves = (x, scale_base, scale_sp, coef)[0 if x_needs_grad else 1:]
        results = []
        for compute in (lambda: spline_linear_module.fused_spline_layer(x, scale_base, scale_sp, mask, coef, grid, k,
                                                                        uniform, "silu", sparse),
                        lambda: spline_linear_reference(
                            x, spline_linear_module.layer_weight_matrix(scale_base, scale_sp, mask, coef), grid, k,
                            "silu")):
            out = compute()
            results.append((out, *torch.autograd.grad(out, leaves, grad_out)))
        for got, want in zip(*results):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def _count_window_calls(monkeypatch) -> list:
    """The list to which every call of the sparse path's window kernel appends its with_slopes."""
    calls = []
    windows = spline_linear_module._sparse_windows

    def counted(args, n_slots, with_slopes):
        calls.append(with_slopes)
        return windows(args, n_slots, with_slopes)

    monkeypatch.setattr(spline_linear_module, "_sparse_windows", counted)
    return calls


@pytest.mark.parametrize("x_needs_grad", [True, False])
@pytest.mark.parametrize("op", ["layer", "spline_linear"])
def test_the_sparse_path_expands_once_for_forward_and_backward(monkeypatch, op, x_needs_grad):
    """The forward's windows (with slopes only when x takes a gradient) serve every backward of the graph, a
    retained graph's second backward too, and the gradients are the reference's."""
    calls = _count_window_calls(monkeypatch)
    gen = torch.Generator().manual_seed(5)
    grid = random_grid(5, 9, 3, gen, uniform=True, dtype=torch.float64)
    x = inputs_around(grid, 23, gen, outside=0.3).requires_grad_(x_needs_grad)
    (scale_base, scale_sp), mask, coef = _layer_parameters(gen, 5, 7, 12)
    weight = spline_linear_module.layer_weight_matrix(scale_base, scale_sp, mask, coef).detach().requires_grad_()
    leaves = (x, scale_base, scale_sp, coef) if op == "layer" else (x, weight)
    leaves = leaves if x_needs_grad else leaves[1:]
    if op == "layer":
        out = spline_linear_module.sparse_spline_layer(x, scale_base, scale_sp, mask, coef, grid, 3, True)
    else:
        out = spline_linear(x, weight, grid, 3, True, "silu", "sparse")
    grad_out = torch.randn(23, 7, generator=gen, dtype=torch.float64)
    first = torch.autograd.grad(out, leaves, grad_out, retain_graph=True)
    second = torch.autograd.grad(out, leaves, grad_out)
    assert calls == [x_needs_grad]
    want_weight = spline_linear_module.layer_weight_matrix(scale_base, scale_sp, mask, coef) if op == "layer" else weight
    want = torch.autograd.grad(spline_linear_reference(x, want_weight, grid, 3, "silu"), leaves, grad_out)
    for got in (first, second):
        for got_grad, want_grad in zip(got, want):
            torch.testing.assert_close(got_grad, want_grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("op", ["module", "layer", "spline_linear"])
def test_the_sparse_path_computes_no_slopes_without_a_graph(monkeypatch, op):
    """Under torch.no_grad no backward can come: the sparse forward computes the windows without slopes, even for an
    x and parameters that require grad, and gives the output it gives with a graph."""
    calls = _count_window_calls(monkeypatch)
    gen = torch.Generator().manual_seed(7)
    if op == "module":
        module = BSplineKAN(5, 7, grid_size=9, backend="sparse", dtype=torch.float64)
        x = inputs_around(module.grid, 23, gen, outside=0.3).requires_grad_()

        def run():
            return module(x)
    else:
        grid = random_grid(5, 9, 3, gen, uniform=True, dtype=torch.float64)
        x = inputs_around(grid, 23, gen, outside=0.3).requires_grad_()
        (scale_base, scale_sp), mask, coef = _layer_parameters(gen, 5, 7, 12)
        weight = spline_linear_module.layer_weight_matrix(scale_base, scale_sp, mask, coef).detach().requires_grad_()

        def run():
            if op == "layer":
                return spline_linear_module.sparse_spline_layer(x, scale_base, scale_sp, mask, coef, grid, 3, True)
            return spline_linear(x, weight, grid, 3, True, "silu", "sparse")
    with torch.no_grad():
        without_graph = run()
    assert calls == [False] and not without_graph.requires_grad
    with_graph = run()
    assert calls == [False, True] and with_graph.requires_grad
    torch.testing.assert_close(without_graph, with_graph, rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["cpu", "sparse", "edge-sparse"])
def test_the_layer_without_a_graph_gives_the_output_it_gives_with_one(backend):
    """Without a graph to record (torch.no_grad, or grad mode on and nothing that takes a gradient) the layer computes
    its product outside the autograd function; the output is the function's, to the bit. Also for the edge-sparse
    layer of a pruned one."""
    gen = torch.Generator().manual_seed(11)
    module = BSplineKAN(6, 13, grid_size=7, backend="cpu" if backend == "edge-sparse" else backend,
                        dtype=torch.float64)
    with torch.no_grad():
        module.scale_sp.uniform_(-1, 1)
        module.coef.normal_(generator=gen)
        module.mask.copy_((torch.rand(6, 13, generator=gen) > 0.6).double())
    if backend == "edge-sparse":
        module = SparseBSplineKAN.from_dense(module)
        module.backend = "cpu"
    x = inputs_around(module.grid, 17, gen, outside=0.3)
    with_graph = module(x.clone().requires_grad_())
    with torch.no_grad():
        under_no_grad = module(x)
    nothing_takes_grad = module.requires_grad_(False)(x)
    assert with_graph.requires_grad and not under_no_grad.requires_grad and not nothing_takes_grad.requires_grad
    torch.testing.assert_close(under_no_grad, with_graph, rtol=0, atol=0)
    torch.testing.assert_close(nothing_takes_grad, with_graph, rtol=0, atol=0)


@pytest.mark.parametrize("keep", [True, False])
@pytest.mark.parametrize("sparse", [True, False])
def test_the_layer_from_its_parameters_gradcheck_and_second_derivatives(monkeypatch, sparse, keep):
    if not keep:
        monkeypatch.setattr(spline_linear_module, "KEEP_EXPANDED_BELOW", 0)
    gen = torch.Generator().manual_seed(5)
    grid = random_grid(3, 6, 3, gen, uniform=False, dtype=torch.float64)
    x = inputs_around(grid, 5, gen, outside=0.2).requires_grad_()
    (scale_base, scale_sp), mask, coef = _layer_parameters(gen, 3, 2, 9)

    def layer(x, scale_base, scale_sp, coef):
        return spline_linear_module.fused_spline_layer(x, scale_base, scale_sp, mask, coef, grid, 3, False, "tanh",
                                                       sparse)

    assert torch.autograd.gradcheck(layer, (x, scale_base, scale_sp, coef))
    assert torch.autograd.gradgradcheck(layer, (x, scale_base, scale_sp, coef))


def test_the_layer_from_its_parameters_refuses_what_it_cannot_run():
    grid = random_grid(2, 4, 3, torch.Generator().manual_seed(0), uniform=True)
    x, mask = torch.rand(3, 2), torch.ones(2, 2)
    scale, coef = torch.ones(2, 2), torch.ones(2, 2, 7)
    with pytest.raises(ValueError, match="float32 or float64 with every tensor of one dtype"):
        spline_linear_module.sparse_spline_layer(x.double(), scale, scale, mask, coef, grid, 3, True)
    with pytest.raises(ValueError, match="the mask takes no gradient"):
        spline_linear_module.sparse_spline_layer(x, scale, scale, mask.requires_grad_(), coef, grid, 3, True)


def test_a_layer_runs_the_parameter_path_of_its_cpu_backend():
    layer = BSplineKAN(4, 3, grid_size=40)
    x = torch.randn(7, 4)
    assert layer._fused_cpu_backend(x) == "sparse"
    assert BSplineKAN(4, 3, grid_size=3)._fused_cpu_backend(x) == "cpu"
    assert BSplineKAN(4, 3, grid_size=40, backend="cpu")._fused_cpu_backend(x) == "cpu"
    assert BSplineKAN(4, 3, grid_size=3, backend="sparse")._fused_cpu_backend(x) == "sparse"
    assert BSplineKAN(4, 3, grid_size=3, backend="eager")._fused_cpu_backend(x) is None
    assert BSplineKAN(4, 3, grid_size=3)._fused_cpu_backend(x.double()) is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert BSplineKAN(4, 3, grid_size=3)._fused_cpu_backend(x) is None
    reference = BSplineKAN(4, 3, grid_size=40, backend="eager")
    reference.load_state_dict(layer.state_dict())
    torch.testing.assert_close(layer(x), reference(x), rtol=1e-5, atol=1e-6)


def test_small_calls_run_the_kernels_serial_twin_and_large_ones_the_parallel_kernel():
    """Below SERIAL_BELOW elements a sized kernel runs its twin compiled without ``parallel`` (built once, at the
    first small call), from SERIAL_BELOW on the parallel kernel; both compute the same."""
    parallel = cpu._dense_kernel(3)
    parallel_calls = []

    class Recorded:  # the parallel kernel, counting its calls
        py_func, targetoptions = parallel.py_func, parallel.targetoptions

        def __call__(self, *args):
            parallel_calls.append(1)
            return parallel(*args)

    kernel = cpu.sized_kernel(Recorded())
    grid = torch.linspace(-1, 1, 5 + 2 * 3 + 1, dtype=torch.float64).expand(7, -1).contiguous()
    grid_np, padded, inv_steps, steps, matrix = grid_constants(grid, 3)
    n_slots = 5 + 3 + 1

    def expand(call, n_rows):
        x = torch.rand(n_rows, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(n_rows)) * 2.4 - 1.2
        out = np.empty((n_rows, 7 * n_slots))
        empty, bits_like, constants = cpu.dense_arguments(np.dtype(np.float64))
        call(x.numpy(), grid_np, padded, inv_steps, steps, True, matrix, cpu.ACTIVATION_IDS["silu"], bits_like,
             constants, empty, out, empty, True, False)
        return out

    small = expand(kernel, 3)
    assert parallel_calls == [] and kernel.serial_kernel is not None
    assert kernel.serial_kernel.targetoptions["parallel"] is False
    np.testing.assert_array_equal(small, expand(parallel, 3))
    large_rows = -(-cpu.SERIAL_BELOW // (7 * n_slots))
    np.testing.assert_array_equal(expand(kernel, large_rows), expand(kernel.serial_kernel, large_rows))
    assert parallel_calls == [1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["silu", "tanh", "relu", "identity"])
def test_the_dense_kernels_base_activation_matches_pytorchs(name, dtype):
    """The base activation and its derivative, computed in the kernel's vectorized loops, against the registry's
    PyTorch functions: over a wide range, at zero, at infinities and NaN."""
    from kanlib.activations import get_activation

    gen = torch.Generator().manual_seed(3)
    x = torch.cat([torch.randn(301, generator=gen, dtype=torch.float64) * 6,
                   torch.tensor([0.0, -0.0, 1e-30, -1e-30, 30.0, -30.0, 200.0, -200.0, 1e4, -1e4,
                                 float("inf"), float("-inf"), float("nan")], dtype=torch.float64)]).to(dtype)
    base, base_grad, scratch = (np.empty(x.shape[0], dtype=x.numpy().dtype) for _ in range(3))
    _, bits_like, constants = cpu.dense_arguments(x.numpy().dtype)
    bits = np.empty(x.shape[0], dtype=bits_like.dtype)
    cpu.activation_row(x.numpy(), cpu.ACTIVATION_IDS[name], base, base_grad, scratch, bits, constants, True, True)
    entry = get_activation(name)
    # PyTorch writes SiLU as x / (1 + exp(-x)), the kernel as x * sigmoid(x): a few units in the last place of 1
    tolerance = {"rtol": 4e-15, "atol": 1e-15} if dtype == torch.float64 else {"rtol": 1e-6, "atol": 1e-7}
    known = ~torch.isnan(x)  # PyTorch's vectorized ReLU gives 0 or NaN for NaN by the length of the tensor
    torch.testing.assert_close(torch.from_numpy(base)[known], entry.function(x)[known], equal_nan=True, **tolerance)
    torch.testing.assert_close(torch.from_numpy(base_grad)[known], entry.derivative(x)[known], equal_nan=True,
                               **tolerance)
    assert np.isnan(base[~known.numpy()]).all()


@pytest.mark.parametrize("k", [0, 1, 2, 5, 6])  # 6: past SELECT_ORDERS, the zero fill and scattered window
@pytest.mark.parametrize("uniform", [True, False])
def test_the_dense_kernel_at_every_order(k, uniform):
    x, weight, grid, k, uniform = random_problem(7 + k, n=17, n_in=3, n_out=5, grid_size=4, k=k, uniform=uniform)
    grad_out = torch.randn(17, 5, generator=torch.Generator().manual_seed(k), dtype=torch.float64)
    results = []
    for compute in (lambda: spline_linear(x, weight, grid, k, uniform, "silu", "cpu"),
                    lambda: spline_linear_reference(x, weight, grid, k, "silu")):
        out = compute()
        results.append((out, *torch.autograd.grad(out, (x, weight), grad_out)))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_a_second_backward_through_the_kept_expansion_rebuilds_it():
    """retain_graph=True: the first backward hands the kept A on; the second rebuilds it and gets the same."""
    layer = BSplineKAN(5, 4).double()
    x = torch.randn(11, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    out = layer(x).square().sum()
    first = torch.autograd.grad(out, list(layer.parameters()), retain_graph=True)
    second = torch.autograd.grad(out, list(layer.parameters()))
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("uniform", [True, False])
def test_the_dense_kernel_at_knots_infinities_and_nan(uniform):
    """Inputs exactly on every knot (the first and last included), beyond the grid, NaN and infinite: the dense
    kernel's spans (counted on any grid, computed on uniform ones) and its outputs match the plain formula. At an
    infinite input the kernel gives the limit, the base branch's infinity (its bases are 0 beyond the grid), where
    the plain formula, as pykan, gives NaN (its recursion multiplies the infinity by a zero basis)."""
    gen = torch.Generator().manual_seed(11)
    grid = random_grid(3, 5, 3, gen, uniform=uniform, dtype=torch.float64)
    on_knots = grid.t()  # [G+2k+1, I]: row j puts every input on its own knot j
    special = torch.tensor([float("nan"), 1e30, -1e30], dtype=torch.float64)
    x = torch.cat([on_knots, special.unsqueeze(1).expand(-1, 3)]).requires_grad_()
    weight = torch.randn(3 * 9, 4, generator=gen, dtype=torch.float64).requires_grad_()
    finite = torch.isfinite(x.detach()).all(1)
    got = spline_linear(x, weight, grid, 3, uniform, "identity", "cpu")
    want = spline_linear_reference(x, weight, grid, 3, "identity")
    assert bool(torch.isnan(want[-3]).all())
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10, equal_nan=True)
    # one infinite input per row, the others on the grid: every output is that input's base weight times it
    infinite = torch.tensor([[float("inf"), 0.3, -0.2], [0.1, float("-inf"), 0.5], [0.0, 0.7, float("inf")]],
                            dtype=torch.float64)
    with torch.no_grad():
        got = spline_linear(infinite, weight, grid, 3, uniform, "identity", "cpu")
        assert bool(torch.isnan(spline_linear_reference(infinite, weight, grid, 3, "identity")).all())
    for row, i in enumerate((0, 1, 2)):
        sign = torch.sign(infinite[row, i] * weight.detach()[i * 9])
        assert torch.equal(got[row], sign * float("inf")), (row, got[row], sign)
    on_grid = x.detach()[finite].requires_grad_()  # gradients where they are defined: the finite inputs
    grads = [torch.autograd.grad(compute(on_grid).square().sum(), (on_grid, weight))
             for compute in (lambda v: spline_linear(v, weight, grid, 3, uniform, "identity", "cpu"),
                             lambda v: spline_linear_reference(v, weight, grid, 3, "identity"))]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("block_rows", [1, 4, 7, 40])
def test_rows_are_grouped_by_window_start_a_block_at_a_time(block_rows):
    """rows_by_start: each block of each input lists its own rows once, sorted by window start and, within a start,
    by row; offsets mark where each start's rows begin, the block's row count last."""
    gen = np.random.default_rng(block_rows)
    n_in, n_rows, n_starts = 3, 37, 5
    starts = gen.integers(0, n_starts, size=(n_in, n_rows)).astype(np.int32)
    starts[1] = 2  # one input whose rows all share a start
    n_blocks = -(-n_rows // block_rows)
    order = np.full((n_blocks, n_in, block_rows), -1, dtype=np.int32)
    offsets = np.full((n_blocks, n_in, n_starts + 1), -1, dtype=np.int32)
    cpu.rows_by_start(np.ascontiguousarray(starts.T), block_rows, order, offsets)  # the kernel takes them [N, I]
    for b in range(n_blocks):
        rows = np.arange(b * block_rows, min(n_rows, (b + 1) * block_rows))
        for i in range(n_in):
            want = sorted(rows, key=lambda n: (starts[i, n], n))
            assert order[b, i, :len(rows)].tolist() == want
            assert offsets[b, i].tolist() == [int((starts[i, rows] < s).sum()) for s in range(n_starts + 1)]


def _saved_shapes(run) -> list:
    """(shape, dtype) of every tensor autograd saves for backward while run() runs."""
    saved = []

    def pack(tensor):
        saved.append((tuple(tensor.shape), tensor.dtype))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run()
    return saved


@pytest.mark.parametrize("backend", ["sparse", "cpu"])
def test_what_backward_keeps_is_saved_where_autograd_sees_it(monkeypatch, backend):
    """The sparse path's windows (values and slopes [I, k+2, N], the rows' order and offsets) and the expansion A
    [N, I*S] that the dense path keeps while small go through ctx.save_for_backward, so saved-tensor hooks
    (checkpointing, offloading, memory accounting) see them; a large A is not kept."""
    layer = BSplineKAN(5, 7, grid_size=9, backend=backend, dtype=torch.float64)
    gen = torch.Generator().manual_seed(3)
    x = inputs_around(layer.grid, 23, gen, outside=0.3).requires_grad_()
    saved = _saved_shapes(lambda: layer(x))
    if backend == "sparse":
        windows = [entry for entry in saved if entry[0] in ((5, 5, 23), (1, 5, 23), (1, 5, 10))]
        assert sorted(windows) == sorted([((5, 5, 23), torch.float64)] * 2 + [((1, 5, 23), torch.int32),
                                                                              ((1, 5, 10), torch.int32)])
    else:
        assert ((23, 5 * 13), torch.float64) in saved
        monkeypatch.setattr(spline_linear_module, "KEEP_EXPANDED_BELOW", 23 * 5 * 13)
        assert ((23, 5 * 13), torch.float64) not in _saved_shapes(lambda: layer(x))
    torch.testing.assert_close(torch.autograd.grad(layer(x).sum(), x)[0],
                               torch.autograd.grad(_eager(layer)(x).sum(), x)[0])


@pytest.mark.parametrize("backend", ["sparse", "cpu"])
def test_the_assembled_weight_is_saved_only_for_the_input_gradient(backend):
    """Dense: the [I*S, O] weight assembled in forward is saved (where saved-tensor hooks see it) when x takes a
    gradient, which needs it, and not kept when only the parameters do. Sparse: the kernels assemble each input's
    weight rows in cache from the parameters, and no weight is ever saved. The gradients are right either way."""
    layer = BSplineKAN(5, 7, grid_size=9, backend=backend, dtype=torch.float64)
    eager = _eager(layer)
    x = inputs_around(layer.grid, 23, torch.Generator().manual_seed(4), outside=0.3)
    weight = ((5 * 13, 7), torch.float64)
    for x_grad in (True, False):
        leaf = x.clone().requires_grad_(x_grad)
        assert (weight in _saved_shapes(lambda: layer(leaf))) == (x_grad and backend == "cpu")
        leaves = [layer.coef, layer.scale_base, layer.scale_sp] + ([leaf] if x_grad else [])
        got = torch.autograd.grad(layer(leaf).sum(), leaves)
        want = torch.autograd.grad(eager(leaf).sum(), [eager.coef, eager.scale_base, eager.scale_sp] + leaves[3:])
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w)


def _eager(layer: BSplineKAN) -> BSplineKAN:
    """A copy of layer on the eager backend."""
    copy = BSplineKAN(layer.in_features, layer.out_features, grid_size=layer.grid_size, backend="eager",
                      dtype=layer.coef.dtype)
    copy.load_state_dict(layer.state_dict())
    return copy


def test_the_sparse_row_blocks_follow_the_level_2_cache(tmp_path):
    """A block's float32 output tile fills at most half of one core's L2 cache (read from Linux's sysfs), with 512
    rows at least and where the cache cannot be read."""
    for index, (level, kind, size) in enumerate([("1", "Data", "48K"), ("1", "Instruction", "32K"),
                                                 ("2", "Unified", "2048K"), ("3", "Unified", "32M")]):
        folder = tmp_path / f"index{index}"
        folder.mkdir()
        for name, text in (("level", level), ("type", kind), ("size", size)):
            (folder / name).write_text(text + "\n")
    assert spline_linear_module._l2_cache_bytes(str(tmp_path)) == 2 << 20
    assert spline_linear_module._l2_cache_bytes(str(tmp_path / "absent")) is None
    assert [spline_linear_module.group_rows(l2, 256) for l2 in (None, 256 << 10, 512 << 10, 1 << 20, 2 << 20)] == [
        512, 512, 512, 1024, 2048]
    assert spline_linear_module.group_rows(2 << 20, 64) == 8192
