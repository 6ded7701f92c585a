"""The weighted-rows intrinsic (kanlib.ops.weighted_rows) against numpy's sums, entry by entry."""
import numpy as np
import pytest
from numba import njit
from numba.core.errors import TypingError

from kanlib.ops import weighted_rows
from kanlib.ops.weighted_rows import (VECTOR_BYTES, add_edge_gradients, add_weighted_rows, add_window_rows,
                                      vector_lanes, window_table)


def _adder(n_slots, n_vectors):
    """A jitted caller with n_slots and n_vectors as closure constants (literals, as the intrinsic requires)."""
    @njit
    def add(tile, tile_start, tile_row, slots, slot_start, slot_row, weights, weight_start, weight_row, edge_outputs,
            e0, e1):
        add_weighted_rows(tile, tile_start, tile_row, slots, slot_start, slot_row, weights, weight_start, weight_row,
                          edge_outputs, e0, e1, n_slots, n_vectors)

    return add


def _reference(tile, tile_start, tile_row, slots, slot_start, slot_row, weights, weight_start, weight_row, edge_outputs,
               e0, e1, n_slots, width):
    """The documented sums, one edge after another, each sum in the order of the slots (float64 for the check)."""
    flat_tile = tile.astype(np.float64).ravel()
    flat_slots, flat_weights = slots.astype(np.float64).ravel(), weights.astype(np.float64).ravel()
    for e in range(e0, e1):
        row = tile_start + int(edge_outputs[e]) * tile_row
        for s in range(n_slots):
            start = slot_start + s * slot_row
            weight = flat_weights[weight_start + e * weight_row + s]
            flat_tile[row:row + width] += weight * flat_slots[start:start + width]
    return flat_tile.reshape(tile.shape)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_slots, n_vectors", [(1, 1), (9, 2), (13, 1), (5, 3)])
@pytest.mark.parametrize("index_dtype", [np.int64, np.int32])
def test_each_edge_adds_its_weighted_slot_rows_to_its_output_row_only(dtype, n_slots, n_vectors, index_dtype):
    rng = np.random.default_rng(n_slots * 10 + n_vectors)
    width = n_vectors * vector_lanes(np.dtype(dtype).itemsize)
    n_out, tile_row, slot_row = 7, width + 11, width + 5  # rows longer than the stretch: the rest must stay as it was
    tile = rng.standard_normal((n_out, tile_row)).astype(dtype)
    slots = rng.standard_normal((n_slots + 2, slot_row)).astype(dtype)
    n_edges, weight_row, weight_start = 12, n_slots + 3, 2  # the edges' weights: columns 2 .. n_slots + 1 of each row
    weights = rng.standard_normal((n_edges, weight_row)).astype(dtype)
    edge_outputs = rng.integers(0, n_out, n_edges).astype(index_dtype)
    edge_outputs[3] = edge_outputs[4]  # two edges into one output row: the second adds to the first's sum
    tile_start, slot_start, e0, e1 = 3, slot_row + 2, 2, 11
    arguments = (tile_start, tile_row, slots, slot_start, slot_row, weights, weight_start, weight_row, edge_outputs,
                 e0, e1)
    want = _reference(tile, *arguments, n_slots, width)
    _adder(n_slots, n_vectors)(tile, *arguments)
    tolerance = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(tile, want, rtol=tolerance, atol=tolerance)
    untouched = np.ones(tile.shape, bool)
    for o in set(int(o) for o in edge_outputs[e0:e1]):
        untouched[o, tile_start:tile_start + width] = False
    assert np.array_equal(tile[untouched], want[untouched].astype(dtype))


def _window_adder(n_slots, order, n_vectors):
    @njit
    def add(tile, tile_start, tile_row, block, block_start, block_row, weights, weight_start, weight_row, edge_outputs,
            e0, e1):
        add_window_rows(tile, tile_start, tile_row, block, block_start, block_row, weights, weight_start, weight_row,
                        edge_outputs, e0, e1, n_slots, order, n_vectors)

    return add


def _slots_from_windows(block, order, n_slots):
    """The documented slot rows [n_slots, columns] of a window block [order + 3, columns], entry by entry."""
    slots = np.zeros((n_slots, block.shape[1]), block.dtype)
    slots[0] = block[0]
    for j in range(block.shape[1]):
        for m in range(n_slots - 1):
            q = m + block[1, j]
            if q == int(q) and 0 <= q <= order:
                slots[1 + m, j] = block[2 + int(q), j]
    return slots


@pytest.mark.parametrize("permuted", [True, False], ids=["permutes", "selects"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_slots, order, n_vectors",
                         [(9, 3, 2), (7, 1, 1), (12, 4, 2), (2, 0, 1), (16, 3, 1), (17, 3, 2), (32, 2, 1)])
def test_window_rows_add_what_the_slots_built_from_the_windows_would(dtype, n_slots, order, n_vectors, permuted,
                                                                    monkeypatch):
    """Both ways of building the slots (permuting each edge's table of weights on AVX-512, selects elsewhere); the
    table's entries past an edge's weights are NaN, which no sum may pick up."""
    monkeypatch.setattr(weighted_rows, "PERMUTED_WINDOWS", permuted)
    rng = np.random.default_rng(n_slots + 10 * order)
    width = n_vectors * vector_lanes(np.dtype(dtype).itemsize)
    columns = width + 6
    block = rng.standard_normal((order + 3, columns)).astype(dtype)
    # offsets as a uniform grid gives them: order minus the span, for spans before, inside and past the bases, and
    # one past every window (a value outside the grid)
    block[1] = rng.integers(-(n_slots + 1), order + 2, columns).astype(dtype)
    block[1, :3] = [order, -(n_slots - 1 - 1), n_slots + order + 5]
    n_out, n_edges = 5, 9
    tile = rng.standard_normal((n_out, columns + 3)).astype(dtype)
    weight_row = 1 + window_table(n_slots, np.dtype(dtype).itemsize)  # each edge's weights: entries 1 .. n_slots
    weights = np.full((n_edges, weight_row), np.nan, dtype)
    weights[:, 1:n_slots + 1] = rng.standard_normal((n_edges, n_slots))
    edge_outputs = rng.integers(0, n_out, n_edges).astype(np.int64)
    slots = _slots_from_windows(block, order, n_slots)
    arguments = (tile.shape[1], weights, 1, weight_row, edge_outputs, 1, 8)
    want = _reference(tile, 2, arguments[0], slots, 1, columns, *arguments[1:], n_slots, width)
    _window_adder(n_slots, order, n_vectors)(tile, 2, tile.shape[1], block, 1, columns, *arguments[1:])
    tolerance = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(tile, want, rtol=tolerance, atol=tolerance)
    # built in vectors, the same slots read from memory give the same sums, bit for bit
    base = rng.standard_normal(tile.shape).astype(dtype)
    from_windows, from_slots = base.copy(), base.copy()
    _window_adder(n_slots, order, n_vectors)(from_windows, 2, tile.shape[1], block, 1, columns, *arguments[1:])
    _adder(n_slots, n_vectors)(from_slots, 2, tile.shape[1], slots, 1, columns, *arguments[1:])
    assert np.array_equal(from_windows, from_slots)


@pytest.mark.parametrize("dtype, n_slots, instructions", [
    (np.float32, 9, ("vpermps",)), (np.float32, 20, ("vpermi2ps", "vpermt2ps")),
    (np.float64, 8, ("vpermpd",)), (np.float64, 9, ("vpermi2pd", "vpermt2pd"))])
def test_window_rows_permute_the_weights_where_the_cpu_has_avx512(dtype, n_slots, instructions):
    """One table of weights where an edge's fit one vector, two up to TABLE_VECTORS; none without AVX-512."""
    features = weighted_rows.target_features()
    if "+avx512f" not in features.split(","):
        pytest.skip("the CPU has no AVX-512: the window sums build their slots by selects")
    assert weighted_rows.permutes_windows(32, 4, features) and not weighted_rows.permutes_windows(33, 4, features)
    assert weighted_rows.permutes_windows(16, 8, features) and not weighted_rows.permutes_windows(17, 8, features)
    assert not weighted_rows.permutes_windows(9, 4, features.replace("+avx512f", "-avx512f"))
    add = _window_adder(n_slots, 3, 2)
    block, tile = np.zeros((6, 64), dtype), np.zeros((4, 64), dtype)
    add(tile, 0, 64, block, 0, 64, np.zeros((3, 32), dtype), 0, 32, np.zeros(3, np.int64), 0, 3)
    assembly = "".join(add.inspect_asm().values())
    assert any(instruction in assembly for instruction in instructions)


def _gradient_adder(n_slots, n_vectors):
    @njit
    def add(slots, slopes, slot_start, slot_row, grads, grad_start, grad_row, weights, grad_weights, weight_start,
            weight_row, grad_x, grad_x_start, edge_outputs, e0, e1, n_chunks, need_x):
        add_edge_gradients(slots, slopes, slot_start, slot_row, grads, grad_start, grad_row, weights, grad_weights,
                           weight_start, weight_row, grad_x, grad_x_start, edge_outputs, e0, e1, n_chunks, need_x,
                           n_slots, n_vectors)

    return add


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_slots, n_vectors, n_chunks", [(9, 2, 3), (1, 1, 1), (12, 2, 2), (5, 3, 2)])
@pytest.mark.parametrize("need_x", [True, False])
def test_edge_gradients_are_the_documented_sums_and_nothing_else_changes(dtype, n_slots, n_vectors, n_chunks, need_x):
    rng = np.random.default_rng(n_slots + 7 * n_vectors + n_chunks)
    n = n_chunks * n_vectors * vector_lanes(np.dtype(dtype).itemsize)
    slot_row, grad_row, n_out, n_edges, weight_row = n + 5, n + 9, 6, 10, n_slots + 2
    slots = rng.standard_normal((n_slots + 1, slot_row)).astype(dtype)
    slopes = rng.standard_normal((n_slots + 1, slot_row)).astype(dtype)
    grads = rng.standard_normal((n_out, grad_row)).astype(dtype)
    weights = rng.standard_normal((n_edges, weight_row)).astype(dtype)
    grad_weights = rng.standard_normal((n_edges, weight_row)).astype(dtype)
    grad_x = rng.standard_normal(n + 7).astype(dtype)
    edge_outputs = rng.integers(0, n_out, n_edges).astype(np.int32)
    slot_start, grad_start, weight_start, grad_x_start, e0, e1 = slot_row + 3, 4, 1, 2, 2, 9
    want_weights, want_x = grad_weights.astype(np.float64), grad_x.astype(np.float64)
    s64, d64, g64, w64 = (a.astype(np.float64).ravel() for a in (slots, slopes, grads, weights))
    for e in range(e0, e1):
        g = g64[grad_start + int(edge_outputs[e]) * grad_row:][:n]
        rows = [slot_start + s * slot_row for s in range(n_slots)]
        for s, row in enumerate(rows):
            want_weights[e, weight_start + s] += g @ s64[row:row + n]
        if need_x:
            slope = sum(w64[e * weight_row + weight_start + s] * d64[row:row + n] for s, row in enumerate(rows))
            want_x[grad_x_start:grad_x_start + n] += g * slope
    _gradient_adder(n_slots, n_vectors)(slots, slopes, slot_start, slot_row, grads, grad_start, grad_row, weights,
                                        grad_weights, weight_start, weight_row, grad_x, grad_x_start, edge_outputs,
                                        e0, e1, n_chunks, need_x)
    tolerance = 2e-4 if dtype == np.float32 else 1e-11
    np.testing.assert_allclose(grad_weights, want_weights, rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(grad_x, want_x, rtol=tolerance, atol=tolerance)


def test_an_empty_edge_range_writes_nothing():
    tile = np.full((3, 64), 2.0, np.float32)
    slots = np.ones((4, 64), np.float32)
    _adder(4, 2)(tile, 0, 64, slots, 0, 64, np.ones((5, 4), np.float32), 0, 4, np.zeros(5, np.int64), 3, 3)
    assert (tile == 2.0).all()


def test_the_sums_of_float32_entries_are_fused_multiply_adds_in_slot_order():
    # a = 1 + 2**-12: a * a = 1 + 2**-11 + 2**-24 rounds to 1 + 2**-11 in float32, so only a fused multiply-add of
    # the second slot onto the first's -a gives a * a - a = 2**-12 + 2**-24 (exact in float32); the other order, or a
    # rounded product, gives 2**-12
    a = 1.0 + 2.0 ** -12
    tile = np.zeros((1, 16), np.float32)
    slots = np.full((2, 16), a, np.float32)
    weights = np.array([[-1.0, a]], np.float32)
    _adder(2, 1)(tile, 0, 16, slots, 0, 16, weights, 0, 2, np.zeros(1, np.int64), 0, 1)
    assert (tile == np.float32(2.0 ** -12 + 2.0 ** -24)).all()


def test_a_vector_is_sixty_four_bytes():
    assert VECTOR_BYTES == 64
    assert vector_lanes(4) == 16 and vector_lanes(8) == 8


def test_counts_that_are_not_compile_time_constants_and_mixed_dtypes_are_refused():
    @njit
    def runtime_count(tile, slots, weights, outputs, count):
        add_weighted_rows(tile, 0, 16, slots, 0, 16, weights, 0, 1, outputs, 0, 1, count, 1)

    tile, slots = np.zeros((1, 16), np.float32), np.zeros((1, 16), np.float32)
    outputs = np.zeros(1, np.int64)
    with pytest.raises(TypingError):
        runtime_count(tile, slots, np.zeros((1, 1), np.float32), outputs, 1)
    with pytest.raises(TypingError):
        _adder(1, 1)(tile, 0, 16, slots, 0, 16, np.zeros((1, 1), np.float64), 0, 1, outputs, 0, 1)
