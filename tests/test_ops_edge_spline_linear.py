"""kanlib.ops.edge_spline_linear: every backend against the plain formula of its reference module and against the
dense masked BSplineKAN (an independent implementation of the same function), gradients in float64, the Triton
kernels under the interpreter (tests/conftest.py switches it on without a GPU).

Sizes are odd (I = 7, O = 5, N = 13 ...), inputs cover the extended grid and reach beyond it, masks leave 0%,
50%, 90% and 100% of the edges dead; uniform grids and the non-uniform ones ``update_grid`` leaves.
"""
import textwrap

import pytest
import torch
from conftest import HostReads, inputs_around, random_grid
from gpu_compile import SPILL_STORES, assert_compiles
from torch.func import vmap

from kanlib import BSplineKAN
from kanlib.ops.edge_spline_linear import EDGE_BACKENDS, edge_spline_linear, resolve_edge_backend
from kanlib.ops.edge_spline_linear.reference import edge_spline_linear_reference

CPU_BACKENDS = ("eager", "cpu", "auto")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def edges_of(mask: torch.Tensor):
    """(edge_inputs, edge_outputs, input_offsets) of the nonzero entries of mask [I, O]."""
    inputs, outputs = mask.nonzero(as_tuple=True)
    offsets = torch.zeros(mask.shape[0] + 1, dtype=torch.long, device=mask.device)
    offsets[1:] = torch.bincount(inputs, minlength=mask.shape[0]).cumsum(0)
    return inputs, outputs, offsets


def random_problem(seed, n=13, n_in=7, n_out=5, grid_size=5, k=3, uniform=True, dead=0.5, dtype=torch.float64,
                   device="cpu"):
    """Op arguments on random edges: (x, coef, scale_base, scale_sp) then the rest of the call."""
    gen = torch.Generator().manual_seed(seed)
    grid = random_grid(n_in, grid_size, k, gen, uniform=uniform, dtype=dtype)
    x = inputs_around(grid, n, gen, outside=0.25, dtype=dtype)
    mask = torch.rand(n_in, n_out, generator=gen) >= dead
    inputs, outputs, offsets = edges_of(mask)
    n_edges = inputs.numel()
    coef = torch.randn(n_edges, grid_size + k, generator=gen, dtype=dtype)
    scale_base, scale_sp = torch.randn(2, n_edges, generator=gen, dtype=dtype)
    tensors = [t.to(device) for t in (x, coef, scale_base, scale_sp)]
    rest = (grid.to(device), inputs.to(device), outputs.to(device), offsets.to(device), n_out, k, uniform)
    return tensors, rest


def reference(tensors, rest, activation="silu"):
    grid, inputs, outputs, _, n_out, k, uniform = rest
    return edge_spline_linear_reference(*tensors, grid, inputs, outputs, n_out, k, uniform, activation)


def outputs_and_grads(compute, tensors, gen_seed=0):
    """compute(*tensors) and the gradients of a random projection of it for every tensor."""
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    out = compute(*leaves)
    projection = torch.randn(out.shape, generator=torch.Generator().manual_seed(gen_seed), dtype=torch.float64)
    grads = torch.autograd.grad((out * projection.to(out)).sum(), leaves, allow_unused=True)
    return out, [torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads)]


def dense_problem(seed, dead, uniform, k=3, n=13, n_in=7, n_out=5, grid_size=5, activation="silu"):
    """A float64 BSplineKAN with a random mask (a non-uniform grid after update_grid) and inputs around its grid."""
    torch.manual_seed(seed)
    layer = BSplineKAN(n_in, n_out, grid_size=grid_size, spline_order=k, base_activation=activation,
                       dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.mask.copy_((torch.rand(n_in, n_out, generator=gen) >= dead).double())
        layer.scale_sp.uniform_(-1, 1)
        layer.coef.normal_()
    if not uniform:
        layer.update_grid(torch.randn(64, n_in, generator=gen, dtype=torch.float64))
    assert layer.is_uniform() == uniform
    x = inputs_around(layer.grid, n, gen, outside=0.3, dtype=torch.float64)
    return layer, x


def sparse_arguments(layer: BSplineKAN):
    inputs, outputs, offsets = edges_of(layer.mask != 0)
    tensors = [layer.coef[inputs, outputs], layer.scale_base[inputs, outputs], layer.scale_sp[inputs, outputs]]
    return [t.detach() for t in tensors], (layer.grid, inputs, outputs, offsets, layer.out_features,
                                           layer.spline_order, layer.is_uniform())


@pytest.mark.parametrize("uniform", [True, False], ids=["uniform", "knots"])
@pytest.mark.parametrize("dead", [0.0, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_matches_the_dense_masked_layer(backend, dead, uniform):
    layer, x = dense_problem(1, dead, uniform)
    params, rest = sparse_arguments(layer)
    got = edge_spline_linear(x, *params, *rest, backend=backend)
    torch.testing.assert_close(got, layer(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("uniform", [True, False], ids=["uniform", "knots"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradients_match_the_dense_masked_layer(backend, uniform):
    """The live edges' coef and scale gradients are the dense layer's at those entries; x's is the same."""
    layer, x = dense_problem(2, 0.5, uniform)
    params, rest = sparse_arguments(layer)
    inputs, outputs = rest[1], rest[2]
    x_dense = x.clone().requires_grad_()
    projection = torch.randn(x.shape[0], layer.out_features, dtype=torch.float64)
    (layer(x_dense) * projection).sum().backward()
    leaves = [t.clone().requires_grad_() for t in [x, *params]]
    (edge_spline_linear(*leaves, *rest, backend=backend) * projection).sum().backward()
    torch.testing.assert_close(leaves[0].grad, x_dense.grad, rtol=1e-10, atol=1e-12)
    for leaf, name in zip(leaves[1:], ("coef", "scale_base", "scale_sp")):
        torch.testing.assert_close(leaf.grad, getattr(layer, name).grad[inputs, outputs], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("k", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("uniform", [True, False], ids=["uniform", "knots"])
def test_cpu_kernels_match_the_reference(uniform, k):
    tensors, rest = random_problem(10 + k, n=37, n_in=9, n_out=6, grid_size=4 + k, k=k, uniform=uniform, dead=0.4)
    want, want_grads = outputs_and_grads(lambda *t: reference(t, rest), tensors)
    got, got_grads = outputs_and_grads(lambda *t: edge_spline_linear(*t, *rest, backend="cpu"), tensors)
    torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-11)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("grid_size, k", [(5, 3), (14, 3), (21, 3), (13, 2), (20, 1)],
                         ids=["S9", "S18", "S25", "S16", "S22"])
@pytest.mark.parametrize("uniform", [True, False], ids=["uniform", "knots"])
def test_cpu_forward_over_row_blocks_and_slot_counts(uniform, grid_size, k):
    """Enough rows for the parallel kernel, five row blocks of which the last is partial (and ends inside a stretch of
    rows the edges add up as vectors), slot counts S = G + k + 1 that take one pass over the edges, two, and three
    (two of them one slot shorter), and non-finite inputs in two blocks: the reference's outputs, its NaN included."""
    tensors, rest = random_problem(50 + grid_size, n=1100, n_in=64, n_out=61, grid_size=grid_size, k=k,
                                   uniform=uniform, dead=0.9)
    grid, inputs, outputs, offsets, *config = rest
    kept = inputs != 9  # input 9 keeps no live edge: its NaN reaches every output of its row
    offsets = torch.cat([offsets.new_zeros(1), torch.bincount(inputs[kept], minlength=grid.shape[0]).cumsum(0)])
    tensors = [tensors[0], *(t[kept] for t in tensors[1:])]
    rest = (grid, inputs[kept], outputs[kept], offsets, *config)
    x = tensors[0]
    x[300, 5], x[1050, 7], x[1051, 2], x[700, 9] = float("nan"), float("inf"), -float("inf"), float("nan")
    got = edge_spline_linear(*tensors, *rest, backend="cpu")
    want = reference(tensors, rest)
    assert bool(torch.isnan(want[300]).any()) and bool(torch.isnan(want[1051]).any())
    assert bool(torch.isnan(want[700]).all())
    torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-11, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cpu_backward_tail_rows_hold_nothing_from_earlier_blocks(dtype):
    """The backward kernel sums whole stretches of rows, so the last, partial block reads rows past its end: an
    infinite input in the first block at the same row must not come back there (inf times the padded zero gradient
    is NaN). Every edge live, so that no output takes the dense layer's NaN of a dead edge; the reference's
    gradients, infinities and NaN included."""
    tensors, rest = random_problem(70, n=300, n_in=6, n_out=7, grid_size=5, dead=0.0, dtype=dtype)
    tensors[0][45, 2] = float("inf")  # 300 = 256 + 44 rows: row 45 lies in the last block's padded stretch
    want, want_grads = outputs_and_grads(lambda *t: reference(t, rest), tensors)
    got, got_grads = outputs_and_grads(lambda *t: edge_spline_linear(*t, *rest, backend="cpu"), tensors)
    assert bool(torch.isinf(want_grads[2]).any())  # the infinity reaches the gradients of its input's edges
    tolerance = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(got, want, equal_nan=True, **tolerance)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, equal_nan=True, **tolerance)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n_rows, n_cols, padded", [(13, 7, 13), (300, 37, 320), (1030, 67, 1056)])
def test_cpu_transpose_rows_pads_with_zeros(dtype, n_rows, n_cols, padded):
    """The backward's transposes (x and the output gradient): odd sizes, partial 8 x 8 blocks, serial and parallel
    calls (the largest above SERIAL_BELOW entries), the padding past the rows zero even where the target held NaN."""
    from kanlib.ops.edge_spline_linear import cpu

    source = torch.randn(n_rows, n_cols, generator=torch.Generator().manual_seed(n_rows), dtype=dtype)
    target = torch.full((n_cols, padded), float("nan"), dtype=dtype)
    cpu.transpose_rows(source.numpy(), target.numpy())
    assert torch.equal(target[:, :n_rows], source.t())
    assert not bool(target[:, n_rows:].any())


def test_cpu_kernels_are_built_once_per_order():
    """A small call runs the kernels' serial twins; a second call must reuse them, not load them again (which
    made a small edge-sparse model many times slower than the dense one)."""
    from kanlib.ops.edge_spline_linear import cpu

    tensors, rest = random_problem(60, n=9, n_in=5, n_out=4, grid_size=6, k=2, dead=0.3)
    outputs_and_grads(lambda *t: edge_spline_linear(*t, *rest, backend="cpu"), tensors)
    forward, backward = cpu.forward_kernel(2, 9), cpu.backward_kernel(2, 9)
    twins = forward.serial_kernel, backward.serial_kernel
    assert None not in twins
    outputs_and_grads(lambda *t: edge_spline_linear(*t, *rest, backend="cpu"), tensors)
    assert cpu.forward_kernel(2, 9) is forward and cpu.backward_kernel(2, 9) is backward
    assert (forward.serial_kernel, backward.serial_kernel) == twins


@pytest.mark.parametrize("grid_size", [5, 14, 28, 29], ids=["S9", "S18", "S32", "S33"])
@pytest.mark.parametrize("uniform", [True, False], ids=["uniform", "knots"])
def test_cpu_kernels_in_float32(uniform, grid_size):
    """Slot counts whose weights make one vector (S9), two (S18, S32: on AVX-512 the forward permutes them on uniform
    grids), and more (S33: the slot tiles)."""
    tensors, rest = random_problem(20, n=300, n_in=11, n_out=13, grid_size=grid_size, uniform=uniform, dead=0.7,
                                   dtype=torch.float32)
    want, want_grads = outputs_and_grads(lambda *t: reference([u.double() for u in t], rest), tensors)
    got, got_grads = outputs_and_grads(lambda *t: edge_spline_linear(*t, *rest, backend="cpu"), tensors)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g.double(), w.double(), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("activation", ["tanh", "relu", "identity"])
def test_other_base_activations(activation):
    layer, x = dense_problem(3, 0.5, True, activation=activation)
    params, rest = sparse_arguments(layer)
    for backend in ("eager", "cpu"):
        torch.testing.assert_close(edge_spline_linear(x, *params, *rest, activation, backend=backend), layer(x),
                                   rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("uniform", [True, False], ids=["uniform", "knots"])
@pytest.mark.parametrize("backend", ["eager", "cpu"])
def test_gradcheck_float64(backend, uniform):
    tensors, rest = random_problem(4, n=6, n_in=3, n_out=4, grid_size=4, uniform=uniform, dead=0.3)
    leaves = [t.clone().requires_grad_() for t in tensors]
    assert torch.autograd.gradcheck(lambda *t: edge_spline_linear(*t, *rest, backend=backend), leaves)


@pytest.mark.parametrize("backend", ["eager", "cpu"])
def test_second_derivatives_match_the_reference(backend):
    """create_graph=True: the fused path's gradients are themselves differentiable."""
    tensors, rest = random_problem(5, uniform=False)
    results = []
    for compute in (lambda *t: edge_spline_linear(*t, *rest, backend=backend), lambda *t: reference(t, rest)):
        leaves = [t.clone().requires_grad_() for t in tensors]
        grad_x, = torch.autograd.grad(compute(*leaves).sum(), leaves[0], create_graph=True)
        results.append(torch.autograd.grad((grad_x ** 2).sum(), leaves))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("backend", ["eager", "cpu"])
def test_nonfinite_inputs_give_the_dense_layers_nan_and_inf(backend):
    """NaN, inf and -inf (silu(-inf) is NaN) inputs: the dense layer's zero-masked weights make NaN of them on
    the outputs their input has no live edge to, its live edges carry them (inf stays inf). The gradient of x passes
    through those NaN outputs to the row's finite inputs, as the dense layer's does."""
    layer, x = dense_problem(6, 0.5, True)
    x[2, 0], x[5, 3], x[7, 1] = float("nan"), float("inf"), -float("inf")
    params, rest = sparse_arguments(layer)
    x_got, x_want = x.clone().requires_grad_(), x.clone().requires_grad_()
    got = edge_spline_linear(x_got, *params, *rest, backend=backend)
    want = layer(x_want)
    assert bool(torch.isinf(want).any()) and bool(torch.isnan(want[5]).any())  # the case is not trivial
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, equal_nan=True)
    grad_out = torch.randn(want.shape, generator=torch.Generator().manual_seed(6), dtype=want.dtype)
    grad_got, = torch.autograd.grad(got, x_got, grad_out)
    grad_want, = torch.autograd.grad(want, x_want, grad_out)
    finite = torch.isfinite(x)
    assert bool(grad_want[5][finite[5]].ne(0).all())  # the row of a dead edge's NaN: its other inputs' gradients
    torch.testing.assert_close(grad_got[finite], grad_want[finite], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["eager", "cpu"])
def test_no_live_edges_give_zeros_and_zero_gradients(backend):
    tensors, rest = random_problem(7, dead=1.0)
    assert tensors[1].shape[0] == 0
    out, grads = outputs_and_grads(lambda *t: edge_spline_linear(*t, *rest, backend=backend), tensors)
    assert torch.equal(out, torch.zeros(13, 5, dtype=torch.float64))
    assert not bool(grads[0].any())


def test_backend_errors():
    tensors, rest = random_problem(8)
    with pytest.raises(ValueError, match="backend"):
        edge_spline_linear(*tensors, *rest, backend="sparse")
    with pytest.raises(ValueError, match="float32 or float64"):
        edge_spline_linear(*(t.half() for t in tensors), *rest, backend="cpu")
    assert set(EDGE_BACKENDS) == {"auto", "eager", "cpu", "triton"}
    x = tensors[0]
    assert resolve_edge_backend("auto", x, 3) == "cpu" and resolve_edge_backend("auto", x.float(), 3) == "cpu"
    assert resolve_edge_backend("auto", x.bfloat16(), 3) == "eager"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert resolve_edge_backend("auto", x.float(), 3) == "eager"


def test_transforms_run_the_plain_formula():
    """Under torch.func "auto" computes the reference; "cpu" cannot run there and says so."""
    tensors, rest = random_problem(9)
    x, params = tensors[0], tensors[1:]

    def row(backend):
        return lambda x_row: edge_spline_linear(x_row.unsqueeze(0), *params, *rest, backend=backend)[0]

    torch.testing.assert_close(vmap(row("auto"))(x), reference(tensors, rest), rtol=1e-12, atol=1e-12)
    with pytest.raises(RuntimeError, match="torch.func"):
        vmap(row("cpu"))(x)


# ---------------------------------------------------------------------------------------------------------------
# Triton, under the interpreter without a GPU: tiny sizes.

TRITON_CASES = [  # (N, I, O, G, k, uniform, dead)
    (5, 3, 4, 3, 1, True, 0.3),
    (9, 5, 3, 4, 3, False, 0.5),
    (7, 4, 5, 2, 2, True, 0.0),
    (6, 3, 3, 2, 5, False, 0.2),
    (21, 3, 4, 9, 4, True, 0.4),
]


@pytest.mark.parametrize("case", TRITON_CASES, ids=lambda c: "N{}-I{}-O{}-G{}-k{}-{}-dead{}".format(*c))
def test_triton_matches_the_reference(case):
    pytest.importorskip("triton")
    n, n_in, n_out, grid_size, k, uniform, dead = case
    tensors, rest = random_problem(30 + k, n=n, n_in=n_in, n_out=n_out, grid_size=grid_size, k=k, uniform=uniform,
                                   dead=dead, dtype=torch.float32, device=DEVICE)
    want, want_grads = outputs_and_grads(lambda *t: reference([u.double() for u in t], rest), tensors)
    got, got_grads = outputs_and_grads(lambda *t: edge_spline_linear(*t, *rest, backend="triton"), tensors)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g.double(), w.double(), rtol=1e-4, atol=1e-4)


def test_triton_bfloat16_computes_in_float32():
    pytest.importorskip("triton")
    tensors, rest = random_problem(40, n=5, n_in=3, n_out=2, grid_size=3, dtype=torch.float32, device=DEVICE)
    rounded = [t.bfloat16() for t in tensors]
    got = edge_spline_linear(*rounded, *rest, backend="triton")
    assert got.dtype == torch.bfloat16
    want = reference([t.double() for t in rounded], rest)
    torch.testing.assert_close(got.double(), want, rtol=1e-2, atol=1e-2)


def test_triton_nan_rows_and_errors():
    pytest.importorskip("triton")
    tensors, rest = random_problem(41, n=4, n_in=3, n_out=2, grid_size=3, dtype=torch.float32, device=DEVICE)
    tensors[0][1, 2] = float("nan")
    got = edge_spline_linear(*tensors, *rest, backend="triton")
    want = reference(tensors, rest)
    assert bool(torch.isnan(want[1]).any())
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, equal_nan=True)
    with pytest.raises(TypeError, match="dtype"):
        edge_spline_linear(*(t.double() for t in tensors), *rest, backend="triton")
    grid, inputs, outputs, offsets, n_out, _, uniform = rest
    with pytest.raises(ValueError, match="spline_order"):
        edge_spline_linear(*tensors, grid, inputs, outputs, offsets, n_out, 7, uniform, backend="triton")


COMPILE_FOR_H100 = SPILL_STORES + textwrap.dedent("""
    import itertools
    import kanlib.ops.edge_spline_linear.triton as kernels

    POINTERS = {"_forward_kernel": 8, "_backward_kernel": 12}
    # the output and every gradient sum into float32, as does the grid; the edges' indices are int64
    FLOAT32 = {"grid_ptr", "out_ptr", "gx_ptr", "gcoef_ptr", "gbase_ptr", "gsp_ptr"}
    DTYPES = ("fp32", "bf16", "fp16")
    for (name, n_pointers), (index, (k, need_x)) in itertools.product(
            POINTERS.items(), enumerate(itertools.product((1, 2, 3, 4, 5), (True, False)))):
        function, dtype = getattr(kernels, name), DTYPES[index % len(DTYPES)]
        names = function.arg_names
        constants = {"K": k, "ACT": 1, "NEED_X": need_x, "BLOCK_M": kernels.BLOCK_ROWS,
                     "BLOCK_E": kernels.BLOCK_EDGES}
        constants = {n: value for n, value in constants.items() if n in names}
        if name == "_forward_kernel" and not need_x:
            continue
        signature = kernel_signature(names, n_pointers, lambda n: "*fp32" if n in FLOAT32 else "*i64" if n in (
            "inputs_ptr", "outputs_ptr") else f"*{dtype}", constants)
        spills = spill_stores(function, signature, constants, kernels.NUM_WARPS, 1)
        assert spills == [0], f"{name} {dtype} k={k} need_x={need_x}: spill stores {spills}"
    print("compiled")
""")


def test_triton_kernels_compile_for_an_h100_without_register_spills():
    """Every spline order's kernels, in each dtype, compiled for sm_90 at the tile they launch with on a GPU."""
    pytest.importorskip("triton")
    assert_compiles(COMPILE_FOR_H100)


def test_shape_and_index_errors_name_expected_and_got():
    tensors, rest = random_problem(42)
    x, coef, scale_base, scale_sp = tensors
    grid, inputs, outputs, offsets, n_out, k, uniform = rest
    with pytest.raises(ValueError, match=r"coef \(\d+, 7\) \(expected \(\d+, 8\)\)"):
        edge_spline_linear(x, coef[:, :7], scale_base, scale_sp, *rest)
    with pytest.raises(ValueError, match=r"x \(13, 6\) \(expected \(13, 7\)\)"):
        edge_spline_linear(x[:, :6], coef, scale_base, scale_sp, *rest)
    with pytest.raises(ValueError, match=r"input_offsets \(7,\) \(expected \(8,\)\)"):
        edge_spline_linear(*tensors, grid, inputs, outputs, offsets[:-1], n_out, k, uniform)
    with pytest.raises(TypeError, match="edge_outputs torch.int32"):
        edge_spline_linear(*tensors, grid, inputs, outputs.int(), offsets, n_out, k, uniform)


def test_triton_forward_reads_no_value_back_to_the_host():
    """A host read (bool(tensor), .item()) would stall a GPU stream on every forward and break CUDA graph capture:
    the forward marks the dead edges' NaN on the device. Also with a NaN and an inf in the batch."""
    pytest.importorskip("triton")
    tensors, rest = random_problem(42, n=5, n_in=4, n_out=3, grid_size=3, dtype=torch.float32, device=DEVICE)
    tensors[0][1, 2], tensors[0][3, 0] = float("nan"), float("inf")
    with HostReads() as mode:
        got = edge_spline_linear(*tensors, *rest, backend="triton")
    assert mode.reads == []
    want = reference(tensors, rest)
    assert bool(torch.isnan(want[1]).any()) and bool(torch.isnan(want[3]).any())
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, equal_nan=True)
    with HostReads() as mode:  # the dispatch mode sees host reads: the check above can fail
        bool(torch.isfinite(got).all())
    assert mode.reads


def test_marking_on_the_device_finds_the_outputs_the_index_add_count_finds():
    """The Triton path's count by a 0/1 product against the reference's index_add count, on random edge sets with
    rows of no, some and only non-finite base activations, inputs without edges included, under CPU autocast too."""
    from kanlib.ops.edge_spline_linear.reference import dead_edge_nans
    from kanlib.ops.edge_spline_linear.support import mark_dead_edge_nans

    generator = torch.Generator().manual_seed(43)
    # the last: every edge live, so that no output is marked, past 256 in a count (301 rounds in bfloat16)
    for n_in, n_out, n_live in ((5, 4, 7), (9, 3, 0), (300, 2, 150), (301, 1, 301)):
        live = torch.randperm(n_in * n_out, generator=generator)[:n_live].sort().values
        inputs, outputs = live // n_out, live % n_out
        base = torch.randn(6, n_in, generator=generator)
        chosen = torch.rand(6, n_in, generator=generator)
        base[chosen < 0.3] = float("nan")
        base[(chosen >= 0.3) & (chosen < 0.4)] = float("inf")
        base[4] = float("-inf")  # a row of only non-finite values: past 256 of them in the widest case
        base[5] = 1.0
        want = dead_edge_nans(base, inputs, outputs, n_out)
        assert bool(want.any()) == (n_live < n_in * n_out) and not bool(want[5].any())
        for autocast in (False, True):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                got = mark_dead_edge_nans(torch.zeros(6, n_out), base, inputs, outputs)
            assert torch.equal(torch.isnan(got), want), (n_in, n_out, n_live, autocast)
