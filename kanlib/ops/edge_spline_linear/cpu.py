"""Fused CPU kernels (numba) for the edge-sparse B-spline KAN product.

Live edges are sorted by input (CSR): the edges of input i are ``input_offsets[i] .. input_offsets[i+1] - 1``;
``edge_outputs[e]`` is the output of edge e; ``weights`` [E, S] (S = G + k + 1) holds per edge ``scale_base``
then ``scale_sp * coef``. Every row loop runs over contiguous memory: the forward kernel transposes x a group
of inputs and a block of rows at a time and computes the base activation along each transposed row (the dense
kernel's vectorized :func:`~kanlib.ops.spline_linear.cpu.activation_row`); the backward kernel takes x and the
output gradient transposed ([I, N], [O, N]: :func:`transpose_rows`) and computes the base activation and its
derivative along x's rows, a block of rows at a time.

For a block of rows and one input, the input's S slots (its base activation, then the G + k bases, of which
only the k + 1 of each value's window are nonzero) are expanded once into a tile of S rows (the forward's has k
padding rows at each end); then every live edge of the input is a weighted sum of that tile's rows. The work is
proportional to the live edges, and the row loops vectorize.

- :func:`forward_kernel`: out [N, O]. Parallel over row blocks; a block accumulates its [O, rows] output tile
  (in cache) over the inputs and their edges. The edges' sums run a stretch of rows at a time with the stretch's
  slot rows held in 64-byte vectors across all the input's edges, in passes of at most SLOTS_PER_PASS slots (the
  slot count is a compile-time constant). On uniform grids no slot is stored where the sums can work from each
  value's window (its span and k + 1 polynomials, :func:`~kanlib.ops.weighted_rows.add_window_rows`): with at most
  that many slots, the vectors are built from the windows by selects; on AVX-512, and up to 32 float32 or 16 float64
  slots, each window entry picks its edge's weight by a vector permute instead (the edges' weights then lie in rows
  of whole vectors). Otherwise the expansion writes each value's k + 1 window entries into a zeroed tile with padding
  rows at both ends, which the sums read (:func:`~kanlib.ops.weighted_rows.add_weighted_rows`). x and the output
  tile are transposed in 8 x 8 blocks.
Both are built once per spline order (and slot count): a sized kernel compiles, or loads from numba's cache, its
serial twin at its first small call, which a fresh wrapper per call would repeat every time.

- :func:`backward_kernel`: the gradients of the edge weights [E, S] (coef, scale_base and scale_sp follow from
  them) and of x, in one pass. Parallel over inputs: every gradient entry belongs to one input's edges. Each edge's
  sums over the rows run in 64-byte vectors, whole stretches of rows at a time
  (:func:`~kanlib.ops.weighted_rows.add_edge_gradients`), so the output gradient and grad_x come padded to whole
  stretches (:func:`padded_rows`).

Knot spans: arithmetic on uniform grids (the k + 1 window values then come from the closed form
``sum_p matrix[p, r] t**p`` of :func:`kanlib.basis.uniform_basis_matrix`). On other grids (adapted by
``update_grid``) both kernels compute every basis of an input at once along a block of rows, by the recursion
over all of them that the dense kernel uses (vectorized, and no span to search), the backward's slopes from its
order k - 1. Outside the extended grid (and for NaN) only the base slot is nonzero. The NaN that dead edges
give the dense layer for non-finite inputs are added by the caller (see :mod:`.reference`), when the forward
kernel reports a non-finite base activation.
"""
from __future__ import annotations

import functools

import numpy as np
from numba import njit, prange

from ..block_transpose import BLOCK, transpose_block
from ..spline_linear.cpu import (FASTMATH, activation_buffers, activation_row, recursion_tables, sized_kernel,
                                 window_polynomials, write_slots)
from ..weighted_rows import (TABLE_VECTORS, VECTOR_BYTES, add_edge_gradients, add_weighted_rows, add_window_rows,
                             permutes_on, window_table)

__all__ = ["forward_kernel", "backward_kernel", "padded_rows", "transpose_rows", "ROWS_PER_BLOCK"]

# Rows per block: long enough for the vectorized row loops to pay their set-up, short enough that the block's
# [O, ROWS_PER_BLOCK] output tile stays in L2 for O ~ 256.
ROWS_PER_BLOCK = 256
# Inputs the forward kernel transposes at a time: [INPUT_GROUP, ROWS_PER_BLOCK] stays in L1.
INPUT_GROUP = 16
# Vectors of 64 bytes per stretch of rows that the forward kernel's edges add up at a time, held while it runs
# over an input's edges (:func:`~kanlib.ops.weighted_rows.add_weighted_rows`): 32 float32 rows, 16 float64.
EDGE_VECTORS = 2
# Slots per such pass over the edges: their EDGE_VECTORS vectors each, the sums' and a weight's fit AVX-512's 32
# registers; more slots take several passes (held all at once, they spilled to memory and the sums ran slower).
SLOTS_PER_PASS = 12


def padded_rows(n_rows: int, itemsize: int) -> int:
    """n_rows rounded up to whole stretches of the rows the edges' sums take at a time, for items of itemsize
    bytes: the backward kernel's output gradient and grad_x rows have this length."""
    chunk = EDGE_VECTORS * VECTOR_BYTES // itemsize
    return -(-n_rows // chunk) * chunk


def _slot_passes(n_slots):
    """(slots of a long pass, long passes, short passes): passes of at most SLOTS_PER_PASS slots, as even as
    can be, the short ones one slot shorter."""
    n_passes = -(-n_slots // SLOTS_PER_PASS)
    long_pass = -(-n_slots // n_passes)
    n_long = n_slots - n_passes * (long_pass - 1)
    return long_pass, n_long, n_passes - n_long


@njit(inline="always", cache=True, fastmath=FASTMATH)
def _expand_block(x_t, base_row, i, r0, n_block, grid, inv_steps, uniform, k, matrix, knots, reciprocals, expanded,
                  slopes, with_slopes, spans, coords, polynomial, levels):
    """expanded[s, r] <- slot s of input i at row r0 + r: the base activation (base_row[r]) in slot 0,
    basis s - 1 after it (only the window of k + 1 can be nonzero); with_slopes, slopes[s, r] <- d(slot)/dx
    without the base activation's (slot 0 is left to the caller). Uniform grids (k > 0): each row's window from
    the closed form; other grids: the recursion over all bases (knots and reciprocals of
    :func:`~kanlib.ops.spline_linear.cpu.recursion_tables`). spans, coords [rows], polynomial [k+1, rows] and
    levels [J - 1, rows] are work arrays."""
    n_slots = expanded.shape[0]
    n_basis = n_slots - 1
    for r in range(n_block):
        expanded[0, r] = base_row[r]
    if uniform and k > 0:
        # flat loops over the rows (vectorized): each value's window, then each slot picks its row's window entry
        # (none outside the grid)
        _uniform_windows(x_t[i, r0:r0 + n_block], i, n_block, grid, inv_steps, k, matrix, spans, coords, polynomial)
        write_slots(expanded, spans, polynomial, k, n_block)
        if with_slopes:
            window_polynomials(coords, matrix, k, n_block, 1, inv_steps[i], polynomial)
            write_slots(slopes, spans, polynomial, k, n_block)
        return
    # other grids: every basis at once along the rows (the forward's recursion), the slopes from order k - 1
    x_row = x_t[i, r0:r0 + n_block]
    _order_zero_rows(x_row, i, n_block, knots, levels, 0, coords)
    for d in range(1, k):
        _raise_rows(levels, 0, coords, i, n_block, knots, reciprocals, d)
    if with_slopes:
        real = slopes.dtype.type
        for m in range(n_basis):
            row = slopes[1 + m]
            if k == 0:
                for r in range(n_block):
                    row[r] = real(0.0)
                continue
            left_scale, right_scale = real(k) * reciprocals[k, m, i], real(k) * reciprocals[k, m + 1, i]
            low, high = levels[m], levels[m + 1]
            for r in range(n_block):
                row[r] = left_scale * low[r] - right_scale * high[r]
    if k > 0:
        _raise_rows(levels, 0, coords, i, n_block, knots, reciprocals, k)
    for m in range(n_basis):
        row, level = expanded[1 + m], levels[m]
        for r in range(n_block):
            row[r] = level[r]


@njit(inline="always", cache=True, fastmath=FASTMATH)
def _uniform_windows(x_row, i, n_block, grid, inv_steps, k, matrix, offsets, coords, polynomial):
    """Each value's window on input i's uniform grid (k > 0), r < n_block: offsets[r] the window entry of basis 0 at
    x_row[r] (k minus its span; n_knots + k, past every window, outside the grid and for NaN), polynomial [k+1, rows]
    its window's values. coords [rows] is a work array."""
    n_knots = grid.shape[1]
    real = offsets.dtype.type
    low, high, inv = grid[i, 0], grid[i, n_knots - 1], inv_steps[i]
    for r in range(n_block):
        value = x_row[r]
        inside = low <= value < high
        u = (value - low) * inv if inside else real(0.0)
        span = np.floor(min(max(u, real(0.0)), real(n_knots - 2.0)))
        offsets[r] = real(k) - span if inside else real(n_knots + k)
        coords[r] = min(max(u - span, real(0.0)), real(1.0))
    window_polynomials(coords, matrix, k, n_block, 0, 1.0, polynomial)


@njit(inline="always", cache=True, fastmath=FASTMATH)
def _expand_into(x_row, base_row, i, n_block, grid, inv_steps, uniform, k, matrix, knots, reciprocals, slots, coords,
                 polynomial, offsets):
    """slots[k + s, r] <- slot s of input i at row r (slot 0 its base activation base_row[r], slot 1 + m its basis
    m at x_row[r]) for r < n_block; slots [G + 3k + 1, rows], row k the base activation's.

    Uniform grids (k > 0): each value's k + 1 window entries are written into rows span + 1 .. span + k + 1 after
    the basis rows are zeroed (no selects), so rows 0 .. k - 1 and the last k catch the entries of bases beyond the
    grid's ends. Other grids: every basis at once along the rows, by the recursion over all of them
    (:func:`_recursion_into`, knots and reciprocals of :func:`~kanlib.ops.spline_linear.cpu.recursion_tables`).
    coords [rows], polynomial [k+1, rows] and offsets [rows] are work arrays."""
    n_basis = grid.shape[1] - k - 1
    real = slots.dtype.type
    if uniform and k > 0:
        for m in range(n_basis):
            for r in range(n_block):
                slots[k + 1 + m, r] = real(0.0)
        _uniform_windows(x_row, i, n_block, grid, inv_steps, k, matrix, offsets, coords, polynomial)
        for r in range(n_block):
            if offsets[r] <= k:  # inside the grid: the window starts at row span + 1
                first = np.int64(k + 1 - offsets[r])
                for q in range(k + 1):
                    slots[first + q, r] = polynomial[q, r]
    else:
        _recursion_into(x_row, i, n_block, knots, reciprocals, k, slots, coords)
    for r in range(n_block):
        slots[k, r] = base_row[r]


@njit(inline="always", cache=True, fastmath=FASTMATH)
def _recursion_into(x_row, i, n_block, knots, reciprocals, k, slots, clamped):
    """slots[k + 1 + j, r] <- basis j of input i at x_row[r], for every basis j, by Cox-de Boor's recursion over all
    of them at once along the rows (:func:`_order_zero_rows`, :func:`_raise_rows`) in rows k + 1 .. k + J - 1
    (knots [J, I]); the rows past the G + k bases are left as work space. clamped [rows] is a work array."""
    _order_zero_rows(x_row, i, n_block, knots, slots, k + 1, clamped)
    for d in range(1, k + 1):
        _raise_rows(slots, k + 1, clamped, i, n_block, knots, reciprocals, d)


@njit(inline="always", cache=True, fastmath=FASTMATH)
def _order_zero_rows(x_row, i, n_block, knots, levels, first, clamped):
    """levels[first + j, r] <- 1 where knots[j, i] <= x_row[r] < knots[j + 1, i], else 0 (the J - 1 order-0
    bases of input i along the rows; all 0 outside the grid and for NaN); clamped[r] <- the value, or the first knot
    outside the grid, where the indicators are 0, so that infinities give no NaN."""
    n_knots = knots.shape[0]
    real = levels.dtype.type
    low, high = knots[0, i], knots[n_knots - 1, i]
    for r in range(n_block):
        value = x_row[r]
        clamped[r] = value if low <= value < high else low
    for j in range(n_knots - 1):
        left, right = knots[j, i], knots[j + 1, i]
        row = levels[first + j]
        for r in range(n_block):
            value = x_row[r]
            row[r] = real(1.0) if left <= value < right else real(0.0)


@njit(inline="always", cache=True, fastmath=FASTMATH)
def _raise_rows(levels, first, clamped, i, n_block, knots, reciprocals, d):
    """levels rows first.. from order d - 1 to order d in place along the rows: the dense kernel's
    :func:`~kanlib.ops.spline_linear.cpu.raise_order` with input i's knots and reciprocals (of
    :func:`~kanlib.ops.spline_linear.cpu.recursion_tables`) as scalars."""
    n_knots = knots.shape[0]
    for j in range(n_knots - 1 - d):
        left, right = knots[j, i], knots[j + d + 1, i]
        left_scale, right_scale = reciprocals[d, j, i], reciprocals[d, j + 1, i]
        row, above = levels[first + j], levels[first + j + 1]
        for r in range(n_block):
            value = clamped[r]
            row[r] = (value - left) * left_scale * row[r] + (right - value) * right_scale * above[r]


@njit(inline="always", cache=True, fastmath=FASTMATH)
def _copy_transposed(source, target, r0, n_block, c0, n_cols, into_source):
    """Between target [>= n_cols, rows] and the block rows r0 .. r0 + n_block, columns c0 .. c0 + n_cols of source
    [N, C], both C-contiguous: target[c, r] <- source[r0 + r, c0 + c], or with into_source the other way. In 8 x 8
    blocks through vector shuffles (:func:`~kanlib.ops.block_transpose.transpose_block`), eight rows of source at a
    time; the entries past the last full block one by one."""
    source_row, target_row = source.shape[1], target.shape[1]
    full_rows, full_cols = n_block - n_block % BLOCK, n_cols - n_cols % BLOCK
    for r in range(0, full_rows, BLOCK):
        for c in range(0, full_cols, BLOCK):
            at_source, at_target = (r0 + r) * source_row + c0 + c, c * target_row + r
            if into_source:
                transpose_block(target, at_target, target_row, source, at_source, source_row)
            else:
                transpose_block(source, at_source, source_row, target, at_target, target_row)
    for r in range(n_block):
        for j in range(0 if r >= full_rows else full_cols, n_cols):
            if into_source:
                source[r0 + r, c0 + j] = target[j, r]
            else:
                target[j, r] = source[r0 + r, c0 + j]


@functools.cache
def _forward_kernel(k, n_slots):
    long_pass, n_long, n_short = _slot_passes(n_slots)
    permutes = permutes_on()  # the window sums' largest table of weights, per dtype, is checked in the kernel
    short_pass = max(long_pass - 1, 1)  # a constant even where no short pass runs

    @njit(parallel=True, cache=True, fastmath=FASTMATH)
    def kernel(x, activation, bits_like, constants, grid, inv_steps, uniform, matrix, coef, scale_base,
               scale_sp, edge_outputs, input_offsets, out):
        n_rows, n_in = x.shape
        n_out = out.shape[1]
        n_blocks = (n_rows + ROWS_PER_BLOCK - 1) // ROWS_PER_BLOCK
        nonfinite = 0
        if uniform and k > 0:
            knots, reciprocals = np.empty((0, 0), dtype=out.dtype), np.empty((0, 0, 0), dtype=out.dtype)
        else:
            knots, reciprocals = recursion_tables(grid, k, out)
        # the slots built in the sums' vectors: by selects up to SLOTS_PER_PASS, by permutes up to their table's size
        in_vectors = uniform and k > 0 and (n_slots <= SLOTS_PER_PASS or (
            permutes and n_slots <= TABLE_VECTORS * (VECTOR_BYTES // out.itemsize)))
        # rows of whole vectors where the sums may read an edge's weights as a table
        weights = np.zeros((edge_outputs.shape[0], window_table(n_slots, out.itemsize) if in_vectors else n_slots),
                           dtype=out.dtype)
        for e in range(edge_outputs.shape[0]):
            weights[e, 0] = scale_base[e]
            for m in range(n_slots - 1):
                weights[e, 1 + m] = scale_sp[e] * coef[e, m]
        weight_row = weights.shape[1]
        chunk = EDGE_VECTORS * (VECTOR_BYTES // out.itemsize)
        for b in prange(n_blocks):
            r0 = b * ROWS_PER_BLOCK
            n_block = min(ROWS_PER_BLOCK, n_rows - r0)
            x_t = np.empty((INPUT_GROUP, ROWS_PER_BLOCK), dtype=out.dtype)
            base_row, base_grad, exponentials, bits = activation_buffers(ROWS_PER_BLOCK, out, bits_like)
            tile = np.zeros((n_out, ROWS_PER_BLOCK), dtype=out.dtype)
            slots = np.zeros((n_slots + 2 * k, ROWS_PER_BLOCK), dtype=out.dtype)  # rows past n_block stay finite
            windows = np.zeros((k + 3, ROWS_PER_BLOCK), dtype=out.dtype)  # as slots
            if in_vectors:
                base_row = windows[0]
            coords = np.empty(ROWS_PER_BLOCK, dtype=out.dtype)
            polynomial = np.empty((k + 1, ROWS_PER_BLOCK), dtype=out.dtype)
            offsets = np.empty(ROWS_PER_BLOCK, dtype=out.dtype)
            zero = check = out.dtype.type(0.0)
            for i0 in range(0, n_in, INPUT_GROUP):
                n_group = min(INPUT_GROUP, n_in - i0)
                _copy_transposed(x, x_t, r0, n_block, i0, n_group, False)
                for j in range(n_group):
                    i = i0 + j
                    e0, e1 = input_offsets[i], input_offsets[i + 1]
                    x_row = x_t[j, :n_block]
                    activation_row(x_row, activation, base_row, base_grad, exponentials, bits, constants, True,
                                   False)
                    for r in range(n_block):
                        check += base_row[r] * zero  # NaN once a base activation is inf or NaN
                    if e1 == e0:
                        continue
                    if in_vectors:
                        _uniform_windows(x_row, i, n_block, grid, inv_steps, k, matrix, windows[1], coords,
                                         windows[2:])
                        for c in range(0, n_block, chunk):
                            add_window_rows(tile, c, ROWS_PER_BLOCK, windows, c, ROWS_PER_BLOCK, weights, 0,
                                            weight_row, edge_outputs, e0, e1, n_slots, k, EDGE_VECTORS)
                        continue
                    _expand_into(x_row, base_row, i, n_block, grid, inv_steps, uniform, k, matrix, knots,
                                 reciprocals, slots, coords, polynomial, offsets)
                    # whole chunks, past n_block in the last block: the tile's rows there are never copied out
                    for c in range(0, n_block, chunk):
                        for p in range(n_long):
                            first = p * long_pass
                            add_weighted_rows(tile, c, ROWS_PER_BLOCK, slots, (k + first) * ROWS_PER_BLOCK + c,
                                              ROWS_PER_BLOCK, weights, first, weight_row, edge_outputs, e0, e1,
                                              long_pass, EDGE_VECTORS)
                        for p in range(n_short):
                            first = n_long * long_pass + p * short_pass
                            add_weighted_rows(tile, c, ROWS_PER_BLOCK, slots, (k + first) * ROWS_PER_BLOCK + c,
                                              ROWS_PER_BLOCK, weights, first, weight_row, edge_outputs, e0, e1,
                                              short_pass, EDGE_VECTORS)
            _copy_transposed(out, tile, r0, n_block, 0, n_out, True)
            if check != 0.0:
                nonfinite += 1
        return nonfinite

    return kernel


@functools.cache
def forward_kernel(spline_order: int, n_slots: int):
    """The forward kernel for one spline order and G + k + 1 slots per edge (compile-time constants, so the
    window and slot loops unroll).

    ``kernel(x, activation, bits_like, constants, grid, inv_steps, uniform, matrix, coef, scale_base,
    scale_sp, edge_outputs, input_offsets, out)``: x [N, I] (transposed in the kernel, a group of inputs at a
    time); the base activation's kernel id, ``bits_like`` and ``constants`` as the dense kernel takes them
    (:func:`~kanlib.ops.spline_linear.cpu.dense_arguments`); coef [E, G+k], scale_base and scale_sp [E]; out [N, O]
    (written). Returns how many row blocks met a non-finite base activation (0: out holds no NaN the dense layer
    would have had from dead edges).
    """
    return sized_kernel(_forward_kernel(int(spline_order), int(n_slots)))


@njit(parallel=True, cache=True)
def _transpose_rows(source, target):
    """target [C, >= N] <- source [N, C] transposed in 8 x 8 blocks (:func:`_copy_transposed`), target's columns past
    N set to 0; both C-contiguous, of one dtype. Parallel over groups of columns (``transpose_rows``: sized)."""
    n_rows, n_cols = source.shape
    group = 2 * BLOCK  # columns per task: a cache line of float32 entries of each row of source
    for g in prange((n_cols + group - 1) // group):
        c0 = g * group
        n_group = min(group, n_cols - c0)
        rows = target[c0:c0 + n_group]
        _copy_transposed(source, rows, 0, n_rows, c0, n_group, False)
        for c in range(n_group):
            for r in range(n_rows, target.shape[1]):
                rows[c, r] = 0.0


transpose_rows = sized_kernel(_transpose_rows)


@functools.cache
def _backward_kernel(k, n_slots):
    long_pass, n_long, n_short = _slot_passes(n_slots)
    short_pass = max(long_pass - 1, 1)  # a constant even where no short pass runs

    @njit(parallel=True, cache=True, fastmath=FASTMATH)
    def kernel(x_t, activation, bits_like, constants, grid, inv_steps, uniform, matrix, weights, edge_outputs,
               input_offsets, grad_out_t, need_x, grad_x_t, grad_weights):
        n_in, n_rows = x_t.shape
        chunk = EDGE_VECTORS * (VECTOR_BYTES // weights.itemsize)
        if uniform and k > 0:
            knots, reciprocals = np.empty((0, 0), dtype=weights.dtype), np.empty((0, 0, 0), dtype=weights.dtype)
        else:
            knots, reciprocals = recursion_tables(grid, k, weights)
        for i in prange(n_in):
            e0, e1 = input_offsets[i], input_offsets[i + 1]
            for e in range(e0, e1):
                for s in range(n_slots):
                    grad_weights[e, s] = 0.0
            if need_x:
                for n in range(grad_x_t.shape[1]):
                    grad_x_t[i, n] = 0.0
            if e1 == e0:
                continue
            expanded = np.empty((n_slots, ROWS_PER_BLOCK), dtype=weights.dtype)
            slopes = np.zeros((n_slots, ROWS_PER_BLOCK), dtype=weights.dtype)
            spans = np.empty(ROWS_PER_BLOCK, dtype=weights.dtype)
            coords = np.empty(ROWS_PER_BLOCK, dtype=weights.dtype)
            polynomial = np.empty((k + 1, ROWS_PER_BLOCK), dtype=weights.dtype)
            levels = np.empty((grid.shape[1] - 1, ROWS_PER_BLOCK), dtype=weights.dtype)
            base_row, base_slope, exponentials, bits = activation_buffers(ROWS_PER_BLOCK, weights, bits_like)
            for r0 in range(0, n_rows, ROWS_PER_BLOCK):
                n_block = min(ROWS_PER_BLOCK, n_rows - r0)
                activation_row(x_t[i, r0:r0 + n_block], activation, base_row, base_slope, exponentials, bits,
                               constants, True, need_x)
                _expand_block(x_t, base_row, i, r0, n_block, grid, inv_steps, uniform, k, matrix, knots, reciprocals,
                              expanded, slopes, need_x, spans, coords, polynomial, levels)
                if need_x:
                    for r in range(n_block):
                        slopes[0, r] = base_slope[r]
                # whole stretches of rows: past n_block the output gradient is 0 and the slots are set to 0 (not
                # left from an earlier block, where an infinite value times 0 would give NaN)
                n_chunks = (n_block + chunk - 1) // chunk
                for s in range(n_slots):
                    for r in range(n_block, n_chunks * chunk):
                        expanded[s, r] = 0.0
                for p in range(n_long):
                    first = p * long_pass
                    add_edge_gradients(expanded, slopes, first * ROWS_PER_BLOCK, ROWS_PER_BLOCK, grad_out_t, r0,
                                       grad_out_t.shape[1], weights, grad_weights, first, n_slots, grad_x_t,
                                       i * grad_x_t.shape[1] + r0, edge_outputs, e0, e1, n_chunks, need_x, long_pass,
                                       EDGE_VECTORS)
                for p in range(n_short):
                    first = n_long * long_pass + p * short_pass
                    add_edge_gradients(expanded, slopes, first * ROWS_PER_BLOCK, ROWS_PER_BLOCK, grad_out_t, r0,
                                       grad_out_t.shape[1], weights, grad_weights, first, n_slots, grad_x_t,
                                       i * grad_x_t.shape[1] + r0, edge_outputs, e0, e1, n_chunks, need_x,
                                       short_pass, EDGE_VECTORS)

    return kernel


@functools.cache
def backward_kernel(spline_order: int, n_slots: int):
    """The backward kernel for one spline order and G + k + 1 slots per edge (compile-time constants).

    ``kernel(x_t, activation, bits_like, constants, grid, inv_steps, uniform, matrix, weights, edge_outputs,
    input_offsets, grad_out_t, need_x, grad_x_t, grad_weights)``: x_t [I, N] (x transposed: :func:`transpose_rows`);
    the base activation's kernel id, ``bits_like`` and ``constants`` as :func:`forward_kernel` takes them (the base
    activation and its derivative are computed here, a block of rows at a time); weights [E, G+k+1] as in
    :func:`forward_kernel`; grad_out_t [O, N'] with N' = :func:`padded_rows` (N), zero past N; writes grad_weights
    [E, G+k+1] and, when need_x, grad_x_t [I, N'] (left as it is otherwise; its columns past N are work space). All
    C-contiguous.
    """
    return sized_kernel(_backward_kernel(int(spline_order), int(n_slots)))
