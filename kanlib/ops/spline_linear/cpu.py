"""Fused CPU kernels (numba) for the B-spline KAN product.

The kernels evaluate the k + 1 nonzero bases of an input value from its knots; no [N, I, G+k] basis tensor is
ever stored:

- :func:`dense_kernel`: the expanded input A [N, I*S] (S = G + k + 1: base activation, then G + k bases)
  for the dense path, where BLAS does the product ``A @ W``, and dx [N, I] from the gradient of A (its
  backward), either or both in one pass, the base activation computed in it (:func:`activation_row`).
- the local-support kernels, touching only the k + 2 slots of each input that can be nonzero (its base
  activation and k + 1 consecutive bases; pays when G is large). :func:`window_spans` finds each value's span
  and the start of its window, :func:`rows_by_start` sorts each input's rows, a block at a time, by that start
  (rows with the same start meet the same k + 2 weight rows, which stay in L1 while those rows go by), and
  :func:`sorted_windows` writes the windows in that order, as [I, k+2, N] values whose size does not depend on G:
  a start's rows then find their windows side by side. :func:`sparse_forward`, :func:`sparse_backward` and
  :func:`sparse_grad_weight` run over tiles of row blocks and output columns (or of inputs and columns) in that
  order, along the columns in vectorized passes. The first two take the weight [I*S, O], or a B-spline layer's
  parameters, from which they assemble each input's weight rows in cache as they go (:func:`_input_weights`,
  prefetching the next input's coefficients meanwhile), so that no [I*S, O] matrix is written.

  - ``window_spans(x, grid, inv_steps, uniform, spline_order, n_basis, spans, starts)``: spans [N, I] int32, each
    value's span (-1 outside the grid or for NaN), and starts [N, I] int32, the first spline row (basis index) of
    its window. ``window_spans_uniform(x, grid, inv_steps, spline_order, n_basis, spans, starts)``: the same on
    uniform grids, in flat loops along each row that vectorize.
  - ``rows_by_start(starts, block_rows, order, offsets)``: order [B, I, block_rows] int32, the rows of each block of
    block_rows rows of each input sorted by start; offsets [B, I, G + 1] int32, where each of the G starts' rows
    begin in order (and the block's row count last).
  - ``sorted_windows(x, grid, padded, inv_steps, uniform, spline_order, matrix, activation, spans, order,
    offsets, values, slopes, with_slopes)``: values [I, k+2, N], values[i, :, b * block_rows + j] the window of
    row order[b, i, j]: the base activation then the bases starts..starts+k (zeros for bases that do not exist
    and outside the grid); slopes the same differentiated in x (when with_slopes).
  - ``sorted_windows_uniform(spline_order)(x, grid, inv_steps, steps, matrix, activation, bits_like, constants,
    spans, order, offsets, values, slopes, with_slopes)``: the same on uniform grids (k > 0), a block of one input's
    rows at a time gathered in their order, the base activation by :func:`activation_row` and the bases from their
    polynomials (:func:`window_polynomials`), in flat loops that vectorize (steps [I], the knot spacing; bits_like
    and constants as for :func:`dense_kernel`).
  - ``sparse_forward(order, offsets, values, weight, scale_base, scale_sp, mask, coef, out, block_rows, col_block,
    n_parts)``: out [N, O] = A @ W (W the weight, or the parameters' when the weight is empty [0, 0]), over tiles of
    one row block and col_block columns, each split into n_parts parts of the inputs whose sums are added at the end
    (so that there are tiles for every thread with the columns kept whole).
  - ``sparse_backward(order, offsets, values, slopes, grad_out, weight, scale_base, scale_sp, mask, coef, grad_x,
    grad_scale_base, grad_scale_sp, grad_coef, in_block, col_block)``: grad_x [N, I] (where not empty) and a
    B-spline layer's parameters' gradients (where grad_coef is not empty) in one pass over tiles of in_block inputs
    and col_block columns, the latter from the windows without the [I*S, O] weight gradient.
  - ``sparse_grad_weight(order, offsets, values, grad_out, grad_weight, in_block, col_block)``: grad_weight
    [I*S, O] = A^T @ grad_out.

Grids are pykan's ``[I, G + 2k + 1]`` knots; ``padded`` is the same grid extended by k more knots on
each side (the general triangular scheme reads knots up to k beyond a span); ``inv_steps`` [I] holds
1 / knot spacing of uniform grids. Spans are found arithmetically on uniform grids and by binary search or
counting otherwise. On grids that are not uniform the dense kernel skips spans altogether: it runs
Cox-de Boor's recursion for every basis at once (:func:`order_zero`, :func:`raise_order`), in loops along the inputs
that read the knots and the reciprocals of their differences in order (no gathers, no divisions); that costs
O(G k) per value, and the dense path only runs at small G. The reference is
:func:`kanlib.ops.spline_linear.reference.spline_linear_reference`.
"""
from __future__ import annotations

import functools
import math
import os
import types
from contextlib import contextmanager

import numba
import numpy as np
import torch
from numba import njit, prange

from ...activations import ACTIVATIONS, BASE_ACTIVATIONS, RELU_ID, SILU_ID, TANH_ID
from ..block_transpose import BLOCK, gradient_block, scaled_transpose_block, weight_and_gradient_block
from ..contention import guard_from_environment
from ..fast_exp import exp_constants, exp_nonpositive
from ..prefetch import PREFETCH_LINE, prefetch_lines

# numba reads module globals as compile-time constants
SILU, TANH, RELU = SILU_ID, TANH_ID, RELU_ID
ACTIVATION_IDS = {name: ACTIVATIONS[name].kernel_id for name in BASE_ACTIVATIONS}
FASTMATH = {"reassoc", "contract", "arcp"}
ROWS_PER_CHUNK = 16  # the dense kernel's unit of parallel work
# Layers of fewer inputs than BLOCK_BELOW put rows side by side, about BLOCK_LANES values in all, for the recursion
# over all bases (recursion_block_rows): its loops then run over that many values instead of a row's few. The
# closed form on uniform grids gains from it below CLOSED_FORM_BLOCK_BELOW inputs only (it writes A through a
# block's buffer instead of in place).
BLOCK_BELOW = 32
CLOSED_FORM_BLOCK_BELOW = 8
BLOCK_LANES = 128
WINDOW_ROWS = 256  # the window spans kernels' unit of parallel work (rows, every input)
# Calls whose largest array has fewer elements run on one thread: waking numba's thread pool costs more than
# the work (and far more when other processes hold the cores), e.g. in LBFGS on a small model.
SERIAL_BELOW = 1 << 16
# Lowers the kernels' thread count while other processes hold the cores (KANLIB_CONTENTION_GUARD=0: never).
CONTENTION = guard_from_environment()
os.register_at_fork(after_in_child=CONTENTION.reset)  # a forked child measures its own waiting afresh


def _numba_threads() -> int:
    """numba's thread count, leaving torch's as it was: numba's OpenMP layer, started by its first call, sets
    the OpenMP thread count, which torch reads as its own."""
    torch_threads = torch.get_num_threads()
    threads = numba.get_num_threads()
    if torch.get_num_threads() != torch_threads:
        torch.set_num_threads(torch_threads)
    return threads


def kernel_threads(work: int) -> int:
    """Threads a kernel call on ``work`` array elements uses: one below SERIAL_BELOW, else torch's intra-op
    count (``torch.set_num_threads``), so that one setting governs both libraries, capped by numba's own."""
    return _wanted_threads(work, _numba_threads())


def _wanted_threads(work: int, numba_threads: int) -> int:
    """:func:`kernel_threads` when numba has ``numba_threads``: fewer while other processes hold the cores
    (:data:`CONTENTION`)."""
    if work < SERIAL_BELOW:
        return 1
    return CONTENTION.threads(max(1, min(torch.get_num_threads(), numba_threads)))


def _enter_threads(work: int) -> tuple:
    """Sets numba's thread count for a call on ``work`` array elements (:func:`kernel_threads`) and starts timing
    it for :data:`CONTENTION`: what :func:`_leave_threads` takes."""
    threads = _numba_threads()
    wanted = _wanted_threads(work, threads)
    if wanted != threads:
        numba.set_num_threads(wanted)
    return threads, wanted, CONTENTION.start(wanted)


def _leave_threads(entered: tuple) -> None:
    """After the call: counts it for :data:`CONTENTION` and restores numba's thread count."""
    threads, wanted, started = entered
    CONTENTION.stop(started, wanted)
    if wanted != threads:
        numba.set_num_threads(threads)


@contextmanager
def threads_for(work: int):
    """Inside, numba's kernels use :func:`kernel_threads` threads for ``work`` array elements; torch's thread
    count is left as it was. The time inside counts for :data:`CONTENTION`."""
    entered = _enter_threads(work)
    try:
        yield
    finally:
        _leave_threads(entered)


def _call_with_threads(kernel, work: int, args: tuple):
    """kernel(*args) as :func:`threads_for` runs it, without a context manager's cost on small layers' calls."""
    entered = _enter_threads(work)
    try:
        return kernel(*args)
    finally:
        _leave_threads(entered)


def serial_twin(kernel):
    """The same kernel compiled without ``parallel``: small calls skip the thread pool's launch and the thread-count
    switches. Its own name (``<name>_serial``) gives it its own cache file: numba's cache index does not tell the
    two compilations of one function apart."""
    func = kernel.py_func
    twin = types.FunctionType(func.__code__, func.__globals__, f"{func.__name__}_serial", func.__defaults__,
                              func.__closure__)
    twin.__qualname__ = f"{func.__qualname__}_serial"
    options = {key: value for key, value in kernel.targetoptions.items() if key != "nopython"}
    return numba.njit(cache=True, **{**options, "parallel": False})(twin)


def specialized(template, suffix: str, constants: dict, **options):
    """``njit(cache=True, fastmath=FASTMATH, **options)`` of a copy of the plain function ``template`` whose globals
    also hold ``constants`` (compile-time constants to numba, callees included), named with ``suffix`` added, so that
    each specialization has its own cache file. Unlike a closure, it loads from numba's cache in the next process:
    the cache key of a closure hashes its cells, and a cell holding a compiled function pickles with an id drawn
    anew in every process, so such a closure was compiled again at every start."""
    namespace = {**template.__globals__, **constants}
    function = types.FunctionType(template.__code__, namespace, template.__name__ + suffix, template.__defaults__)
    function.__qualname__ = template.__qualname__ + suffix
    return numba.njit(cache=True, fastmath=FASTMATH, **options)(function)


def sized_kernel(kernel):
    """``kernel`` sized by its largest array argument: below SERIAL_BELOW elements its :func:`serial_twin` (compiled
    at the first such call; ``.serial_kernel``), else ``kernel`` under :func:`threads_for` (``.kernel``)."""
    @functools.wraps(kernel)
    def call(*args):
        work = max([a.size for a in args if isinstance(a, np.ndarray)] or [0])
        if work < SERIAL_BELOW:
            if call.serial_kernel is None:
                call.serial_kernel = serial_twin(kernel)
            return call.serial_kernel(*args)
        return _call_with_threads(kernel, work, args)

    call.kernel, call.serial_kernel = kernel, None
    return call


@njit(inline="always", cache=True, fastmath=FASTMATH)
def activation_at(value, kind):
    if kind == SILU:
        return value / (1.0 + math.exp(-value))
    if kind == TANH:
        return math.tanh(value)
    if kind == RELU:
        return value if value > 0.0 else 0.0 * value
    return value


@njit(inline="always", cache=True, fastmath=FASTMATH)
def activation_derivative_at(value, kind):
    if kind == SILU:
        s = 1.0 / (1.0 + math.exp(-value))
        return s * (1.0 + value * (1.0 - s))
    if kind == TANH:
        th = math.tanh(value)
        return 1.0 - th * th
    if kind == RELU:
        return 1.0 if value > 0.0 else 0.0
    return 1.0


@njit(inline="always", cache=True, fastmath=FASTMATH)
def find_span_at(value, grid, inv_steps, i, uniform, spline_order):
    """Span j with grid[i, j] <= value < grid[i, j+1], or -1 outside [grid[i, 0], grid[i, -1]) or NaN."""
    n_knots = grid.shape[1]
    if not (grid[i, 0] <= value < grid[i, n_knots - 1]):
        return -1
    if uniform and spline_order > 0:
        span = int((value - grid[i, 0]) * inv_steps[i])
        return min(max(span, 0), n_knots - 2)
    low, high = 0, n_knots - 1  # invariant: grid[low] <= value < grid[high]
    while high - low > 1:
        mid = (low + high) // 2
        if grid[i, mid] <= value:
            low = mid
        else:
            high = mid
    return low


@njit(inline="always", cache=True, fastmath=FASTMATH)
def _window(value, span, grid, padded, inv_steps, i, uniform, spline_order, matrix, values, slopes, with_slopes,
            left, right):
    """Fill values[r] (and slopes[r]) with basis ``span - k + r`` at value and its derivative.

    left and right are scratch arrays of at least k + 1 entries.
    """
    k = spline_order
    if uniform:
        t = (value - grid[i, span]) * inv_steps[i]  # measured from the span's own knot
        t = min(max(t, 0.0), 1.0)
        for r in range(k + 1):
            acc = matrix[k, r]
            for p in range(k - 1, -1, -1):
                acc = acc * t + matrix[p, r]
            values[r] = acc
            if with_slopes:
                slope = 0.0
                for p in range(k, 0, -1):
                    slope = slope * t + p * matrix[p, r]
                slopes[r] = slope * inv_steps[i]
        return
    # Triangular de Boor scheme on the knots around the span (padded[i, j + k] is grid[i, j]).
    values[0] = 1.0
    for d in range(1, k + 1):
        left[d] = value - padded[i, span + k + 1 - d]
        right[d] = padded[i, span + k + d] - value
        saved = 0.0
        for r in range(d):
            den = right[r + 1] + left[d - r]
            temp = values[r] / den if den != 0.0 else 0.0
            if d == k and with_slopes:
                slopes[r] = temp  # order k-1 value over its knot width, used below
            values[r] = saved + right[r + 1] * temp
            saved = left[d - r] * temp
        values[d] = saved
    if with_slopes:
        if k == 0:
            slopes[0] = 0.0
            return
        # d/dx B_{m,k} = k * (B_{m,k-1}/(t_{m+k}-t_m) - B_{m+1,k-1}/(t_{m+k+1}-t_{m+1})); the scaled order
        # k-1 values were stashed in slopes[0..k-1] (slopes[r] is for basis span-k+1+r of order k-1).
        previous = 0.0
        for r in range(k):
            current = slopes[r]
            slopes[r] = k * (previous - current)
            previous = current
        slopes[k] = k * previous


@njit(inline="always", cache=True, fastmath=FASTMATH)
def _uniform_row(x_row, grid, steps, inv_steps, spans, coords):
    """Spans and coordinates of one row on uniform grids, as flat loops the compiler can vectorize.

    spans[i] is -1 outside the extended grid (or for NaN); coords[i] is measured from the span's knot
    (:func:`from_span_knot`).
    """
    n_knots = grid.shape[1]
    for i in range(x_row.shape[0]):
        value = x_row[i]
        low, high = grid[i, 0], grid[i, n_knots - 1]  # read outside the chained comparison (see uniform_span)
        u = (value - low) * inv_steps[i]
        span = int(min(max(u, 0.0), n_knots - 2.0))
        inside = low <= value < high
        spans[i] = span if inside else -1
        t = from_span_knot(value, low, steps[i], span) * inv_steps[i]
        coords[i] = min(max(t, 0.0), 1.0)


@njit(inline="always", cache=True, fastmath=FASTMATH)
def from_span_knot(value, low, step, span):
    """value minus the knot that starts span ``span`` of a uniform grid (first knot ``low``, spacing ``step``), as
    (value - low) - span * step: computed, not read from the grid, whose read at a different place for every value
    kept the row loops from vectorizing. It differs from value minus the stored knot by float rounding of the grid's
    range (not of the values' magnitude, so shifted grids lose nothing); a value on a knot then gets a coordinate of
    that rounding's size instead of exactly 0 or 1."""
    return (value - low) - span * step


@njit(inline="always", cache=True, fastmath=FASTMATH)
def _polynomials(coords, matrix, first_power, out):
    """out[r, i] = sum_{p >= first_power} matrix[p, r] * p!/(p-first_power)! * coords[i]**(p - first_power).

    first_power 0 gives the k + 1 window values, 1 their derivatives in t; loops run over i innermost.
    """
    k = matrix.shape[0] - 1
    for r in range(k + 1):
        for i in range(coords.shape[0]):
            out[r, i] = 0.0
        for p in range(k, first_power - 1, -1):
            factor = matrix[p, r] * (p if first_power == 1 else 1)
            for i in range(coords.shape[0]):
                out[r, i] = out[r, i] * coords[i] + factor


def dense_kernel(spline_order: int, slot_major: bool = False):
    """The dense path's kernel for one spline order (compiled with k as a constant, so its loops unroll).

    ``kernel(x, grid, padded, inv_steps, steps, uniform, matrix, activation, bits_like, constants, grad_expanded,
    out, grad_x, write_out, write_grad)``, x [N, I]; ``steps`` [I], the knot spacing of a uniform grid's rows (as
    :func:`~kanlib.ops.spline_linear.grid_constants` gives it):

    - write_out: write A [N, I*S] into out: the base activation (kernel id ``activation``) in slot 0 of each
      input, the G + k bases after it. Column i*S + s holds slot s of input i; ``slot_major``, column s*I + i,
      so that each slot is written for all inputs in one vectorized pass (the weight's rows then follow the
      same order: :func:`kanlib.ops.spline_linear.assembled_weight` with ``slot_major``).
    - write_grad: write grad_x [N, I] from grad_expanded [N, I*S] (the gradient of A, in the same layout).

    Both at once share the knot spans and the basis polynomials; out may then be grad_expanded itself
    (each row's gradient is read before A is written over it). Arrays a call does not use may be empty.
    ``bits_like`` is an empty integer array of x's width and ``constants`` (lowest,), the lowest
    argument :func:`~kanlib.ops.fast_exp.exp_constants` gives, for the base activation's exponentials.
    """
    return _sized_dense_kernel(int(spline_order), bool(slot_major))


@functools.cache
def _sized_dense_kernel(k, slot_major):
    return sized_kernel(_dense_kernel(k, slot_major))


@functools.cache
def dense_arguments(dtype: np.dtype) -> tuple:
    """(an empty [0, 0] array of dtype for the arrays a call does not use, ``bits_like`` and ``constants``) for
    :func:`dense_kernel` on arrays of dtype."""
    lowest, _, _, integer = exp_constants(dtype)
    return np.empty((0, 0), dtype), np.empty(0, integer), (lowest,)


@njit(inline="always", cache=True)
def activation_buffers(n_in, like, bits_like):
    """(base, base_grad, exponentials, bits), [n_in] each: one row's base activation, its derivative and
    :func:`activation_row`'s work arrays, in like's and bits_like's dtypes."""
    return (np.empty(n_in, dtype=like.dtype), np.empty(n_in, dtype=like.dtype), np.empty(n_in, dtype=like.dtype),
            np.empty(n_in, dtype=bits_like.dtype))


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def activation_row(x, kind, base, base_grad, scratch, bits, constants, with_value, with_grad):
    """base [I] <- b(x) (with_value) and base_grad [I] <- b'(x) (with_grad) for one row x [I], in loops that
    vectorize: SiLU from e = exp(-|x|) (:func:`~kanlib.ops.fast_exp.exp_nonpositive`, scratch [I] and bits [I]
    its work arrays). Compiled without reassociation, which would spoil the exponential. NaN gives NaN.
    """
    n = x.shape[0]
    real = x.dtype.type
    one, zero, limit = real(1.0), real(0.0), real(-constants[0])
    if kind == SILU:
        for i in range(n):
            scratch[i] = -abs(x[i])
        exp_nonpositive(scratch, bits, n, constants[0])
        for i in range(n):
            value, e = x[i], scratch[i]  # e read outside the select, so that the loop vectorizes (uniform_span)
            # past the exponential's lowest argument (and for NaN) e is 0, as PyTorch's underflows
            e = e if abs(value) <= limit else zero
            inverse = one / (one + e)
            sigmoid = inverse if value >= 0.0 else e * inverse
            if with_value:
                base[i] = value * sigmoid
            if with_grad:
                base_grad[i] = sigmoid * (one + value * (one - sigmoid))
    elif kind == TANH:  # (1 - e) / (1 + e) would lose tanh's relative precision near 0: the scalar call
        for i in range(n):
            tanh = math.tanh(x[i])
            if with_value:
                base[i] = tanh
            if with_grad:
                base_grad[i] = one - tanh * tanh
    elif kind == RELU:
        for i in range(n):
            value = x[i]
            if with_value:
                base[i] = value if value > 0.0 or value != value else zero
            if with_grad:
                base_grad[i] = one if value > 0.0 else 0.0
    else:
        for i in range(n):
            if with_value:
                base[i] = x[i]
            if with_grad:
                base_grad[i] = one


@njit(inline="always", cache=True)
def _existing_window(span, spline_order, n_basis):
    """range(first, stop) of the window entries r whose basis span - k + r exists (0 <= it < n_basis);
    empty for span -1 (outside the grid)."""
    k = spline_order
    if span < 0:
        return 0, 0
    return max(k - span, 0), min(n_basis + k - span, k + 1)


# Orders up to this one write an input's bases in one branch-free pass (:func:`_write_bases`).
SELECT_ORDERS = 5


@njit(inline="always", cache=True)
def _window_offset(span, n_basis, k):
    """The basis index of window entry 0 (span - k); for span -1 one that no basis m meets."""
    return span - k if span >= 0 else -2 * (n_basis + k + 1)


@njit(inline="always", cache=True)
def _window_registers(values, i, k):
    """Window entries 0..SELECT_ORDERS of input i from values [k+1, I] (entries past k repeat entry k)."""
    return (values[0, i], values[min(1, k), i], values[min(2, k), i], values[min(3, k), i], values[min(4, k), i],
            values[min(5, k), i])


@njit(inline="always", cache=True)
def _window_entry(window, d, k, zero):
    """window[d] for 0 <= d <= k, else zero, as selects (k is a compile-time constant: those past k fold away)."""
    value = window[0] if d == 0 else zero
    value = window[1] if (k >= 1 and d == 1) else value
    value = window[2] if (k >= 2 and d == 2) else value
    value = window[3] if (k >= 3 and d == 3) else value
    value = window[4] if (k >= 4 and d == 4) else value
    return window[5] if (k >= 5 and d == 5) else value


@njit(inline="always", cache=True, fastmath=FASTMATH)
def _write_bases(row, first, span, values, i, n_basis, k):
    """row[first + m] for every basis m: values[r, i] where m = span - k + r, else 0 (all 0 for span -1).

    For k <= SELECT_ORDERS in one pass along m of selects between the window's values held in registers (k is a
    compile-time constant, so the selects past k fold away), which vectorizes: about twice as fast as a zero fill
    followed by the window's scattered writes, which higher orders take.
    """
    if k > SELECT_ORDERS:
        row[first:first + n_basis] = 0.0
        lowest, stop = _existing_window(span, k, n_basis)
        for r in range(lowest, stop):
            row[first + span - k + r] = values[r, i]
        return
    offset = _window_offset(span, n_basis, k)
    window = _window_registers(values, i, k)
    for m in range(n_basis):
        row[first + m] = _window_entry(window, m - offset, k, row.dtype.type(0.0))


@njit(inline="always", cache=True, fastmath=FASTMATH)
def _dot_bases(row, first, span, slopes, i, n_basis, k):
    """sum_m row[first + m] * slopes[r, i] over the bases m = span - k + r (0 for span -1); for k <= SELECT_ORDERS
    one branch-free pass along m, as :func:`_write_bases`."""
    acc = row.dtype.type(0.0)
    if k > SELECT_ORDERS:
        lowest, stop = _existing_window(span, k, n_basis)
        for r in range(lowest, stop):
            acc += slopes[r, i] * row[first + span - k + r]
        return acc
    offset = _window_offset(span, n_basis, k)
    window = _window_registers(slopes, i, k)
    for m in range(n_basis):
        acc += _window_entry(window, m - offset, k, row.dtype.type(0.0)) * row[first + m]
    return acc


@njit(inline="always", cache=True)
def _slot_value(window, entry, i, k, zero):
    """window[entry, i] for entry in 0..k (a float), else zero, as selects (k is a compile-time constant)."""
    real = window.dtype.type
    value = zero
    for q in range(k + 1):
        # read before the select (see uniform_span): as a branch it was also mispredicted on scattered windows
        candidate = window[q, i]
        value = candidate if entry == real(q) else value
    return value


@njit(inline="always", cache=True, fastmath=FASTMATH)
def window_polynomials(coords, matrix, k, n, derivative, factor, out, first=0, inside=None):
    """out[q, first + r] <- window entry q of a uniform grid's basis at coords[r] (r < n), or with ``derivative`` its
    derivative in t, times factor: sum_p matrix[p, q] t**p by Horner's rule, in out's dtype (a float64 constant
    would widen the loops). Given ``inside`` (n booleans), 0 where not inside[r]."""
    real = out.dtype.type
    zero = real(0.0)
    for q in range(k + 1):
        row = out[q, first:first + n]
        if k == 3:  # the terms as scalars: read from matrix inside the loop, they were read again for every r
            if derivative:
                m0, m1, m2, m3 = matrix[1, q], 2.0 * matrix[2, q], 3.0 * matrix[3, q], 0.0
            else:
                m0, m1, m2, m3 = matrix[0, q], matrix[1, q], matrix[2, q], matrix[3, q]
            m0, m1, m2, m3 = real(m0 * factor), real(m1 * factor), real(m2 * factor), real(m3 * factor)
            for r in range(n):
                t = coords[r]
                acc = ((m3 * t + m2) * t + m1) * t + m0
                if inside is None:
                    row[r] = acc
                else:
                    row[r] = acc if inside[r] else zero
            continue
        for r in range(n):
            row[r] = zero
        for p in range(k, int(derivative) - 1, -1):  # the derivative's terms from p = 1
            term = real(matrix[p, q] * (p if derivative else 1) * factor)
            for r in range(n):
                row[r] = row[r] * coords[r] + term
        if inside is not None:
            for r in range(n):
                current = row[r]  # read outside the select (see uniform_span)
                row[r] = current if inside[r] else zero


@njit(inline="always", cache=True, fastmath=FASTMATH)
def write_slots(slots, offsets, values, k, n):
    """slots[1 + m, r] <- values[m + offsets[r], r] when that entry is in the window (0..k), else 0, for every basis
    m and r < n: slots [S, >= n] holds the bases of n values in rows 1.. (row 0, the base activation, is left to
    the caller); offsets [n] (floats) the window entry of each value's basis 0."""
    zero = slots.dtype.type(0.0)
    for s in range(1, slots.shape[0]):
        shift = slots.dtype.type(s - 1)
        for r in range(n):
            slots[s, r] = _slot_value(values, offsets[r] + shift, r, k, zero)


@njit(inline="always", cache=True, fastmath=FASTMATH)
def _dot_slots(slots, offsets, slopes, k, acc):
    """acc[i] <- sum over the bases m of slots[1 + m, i] * slopes[m + offsets[i], i] (the window entries only)."""
    zero = acc.dtype.type(0.0)
    for i in range(acc.shape[0]):
        acc[i] = zero
    for s in range(1, slots.shape[0]):
        shift = slots.dtype.type(s - 1)
        for i in range(acc.shape[0]):
            acc[i] += slots[s, i] * _slot_value(slopes, offsets[i] + shift, i, k, zero)


@njit(inline="always", cache=True, fastmath=FASTMATH)
def _uniform_windows(x_row, n_knots, lows, highs, steps, inv_steps, k, n_basis, offsets, coords):
    """Per input i of one row on uniform grids of n_knots knots, in x's dtype: offsets[i], the window entry of its
    basis 0 (k minus its span; one past every window outside the grid or for NaN), and coords[i], its position in
    the span measured from the span's knot (:func:`from_span_knot`, as :func:`_uniform_row`)."""
    real = x_row.dtype.type
    for i in range(x_row.shape[0]):
        value = x_row[i]
        span, inside = uniform_span(value, i, lows, highs, inv_steps, n_knots)
        offsets[i] = real(k) - span if inside else real(n_basis + k + 1)
        coords[i] = min(max(from_span_knot(value, lows[i], steps[i], span) * inv_steps[i], real(0.0)), real(1.0))


@njit(inline="always", cache=True, fastmath=FASTMATH)
def uniform_span(value, i, lows, highs, inv_steps, n_knots):
    """(the span of value on input i's uniform grid of n_knots knots, as a whole number; whether value lies in
    [lows[i], highs[i])), in the dtype of lows, highs and inv_steps, so that loops over values vectorize (a float64
    constant would widen them). The span is 0 outside the grid and for NaN."""
    real = lows.dtype.type
    # every operand read first: a read inside a chained comparison (evaluated only when its first half holds) or a
    # select stays a branch, which keeps the callers' loops from vectorizing
    low, high, inv_step = lows[i], highs[i], inv_steps[i]
    inside = low <= value < high
    u = (value - low) * inv_step if inside else real(0.0)
    return np.floor(min(max(u, real(0.0)), real(n_knots - 2))), inside


@njit(cache=True)
def recursion_tables(grid, k, like):
    """(knots [J, I], reciprocals [k+1, J, I]) in like's dtype for the recursion over all bases at once
    (:func:`order_zero`, :func:`raise_order`): the grid [I, J] input-minor, and reciprocals[d, j, i] =
    1 / (grid[i, j+d] - grid[i, j]), 0 where those knots coincide (Cox-de Boor's 0/0 = 0) and for j + d >= J."""
    n_in, n_knots = grid.shape
    real = like.dtype.type
    knots = np.empty((n_knots, n_in), like.dtype)
    for j in range(n_knots):
        for i in range(n_in):
            knots[j, i] = grid[i, j]
    reciprocals = np.zeros((k + 1, n_knots, n_in), like.dtype)
    for d in range(1, k + 1):
        for j in range(n_knots - d):
            for i in range(n_in):
                width = knots[j + d, i] - knots[j, i]
                reciprocals[d, j, i] = real(1.0) / width if width != 0.0 else real(0.0)
    return knots, reciprocals


@njit(inline="always", cache=True, fastmath=FASTMATH)
def order_zero(x_row, knots, levels, clamped):
    """levels[j, i] <- 1 where knots[j, i] <= x_row[i] < knots[j+1, i], else 0 (all 0 outside the grid and for
    NaN): every order-0 basis of one row; clamped[i] <- x_row[i] inside the grid, else its first knot (the
    indicators being 0 there, a finite x keeps 0 * (x - t) from making NaN at infinities)."""
    n_knots = knots.shape[0]
    real = levels.dtype.type
    for i in range(x_row.shape[0]):
        value, low, high = x_row[i], knots[0, i], knots[n_knots - 1, i]  # read first (see uniform_span)
        clamped[i] = value if low <= value < high else low
    for j in range(n_knots - 1):
        for i in range(x_row.shape[0]):
            value, low, high = x_row[i], knots[j, i], knots[j + 1, i]
            levels[j, i] = real(1.0) if low <= value < high else real(0.0)


@njit(inline="always", cache=True, fastmath=FASTMATH)
def raise_order(levels, clamped, knots, reciprocals, d):
    """levels [J-1, I] from order d-1 to order d in place, for every basis at once along the inputs (Cox-de Boor:
    B_{j,d} = (x - t_j) / (t_{j+d} - t_j) B_{j,d-1} + (t_{j+d+1} - x) / (t_{j+d+1} - t_{j+1}) B_{j+1,d-1});
    rows j < J-1-d then hold order d."""
    n_knots = knots.shape[0]
    for j in range(n_knots - 1 - d):
        for i in range(clamped.shape[0]):
            value = clamped[i]
            levels[j, i] = ((value - knots[j, i]) * reciprocals[d, j, i] * levels[j, i]
                            + (knots[j + d + 1, i] - value) * reciprocals[d, j + 1, i] * levels[j + 1, i])


@njit(inline="always", cache=True, fastmath=FASTMATH)
def dot_derivatives(slots, levels, reciprocals, k, acc):
    """acc[i] <- sum over the bases j of slots[1 + j, i] * d/dx B_{j,k}(x_i), from levels [J-1, I] at order k-1:
    d/dx B_{j,k} = k (B_{j,k-1} / (t_{j+k} - t_j) - B_{j+1,k-1} / (t_{j+k+1} - t_{j+1})); 0 for k = 0."""
    real = acc.dtype.type
    for i in range(acc.shape[0]):
        acc[i] = real(0.0)
    if k == 0:
        return
    for j in range(slots.shape[0] - 1):
        for i in range(acc.shape[0]):
            slope = reciprocals[k, j, i] * levels[j, i] - reciprocals[k, j + 1, i] * levels[j + 1, i]
            acc[i] += slots[1 + j, i] * slope
    for i in range(acc.shape[0]):
        acc[i] *= real(k)


@njit(inline="always", cache=True, fastmath=FASTMATH)
def _gradient_from_levels(slots, levels, reciprocals, k, base_grad, spline, grad_x_row):
    """grad_x_row [I] from one row's gradient of A as slots [S, I] (any layout) and the levels at order k-1."""
    dot_derivatives(slots, levels, reciprocals, k, spline)
    for i in range(grad_x_row.shape[0]):
        grad_x_row[i] = base_grad[i] * slots[0, i] + spline[i]


@njit(inline="always", cache=True, fastmath=FASTMATH)
def _write_levels(slots, base, levels):
    """One row of A as slots [S, I] (any layout): the base activation, then the bases at order k from levels."""
    for i in range(base.shape[0]):
        slots[0, i] = base[i]
    for j in range(1, slots.shape[0]):
        for i in range(base.shape[0]):
            slots[j, i] = levels[j - 1, i]


@njit(cache=True, fastmath=FASTMATH)
def recursion_rows(x, knots, reciprocals, k, activation, bits_like, constants, grad_expanded, out, grad_x,
                   write_out, write_grad, slot_major, first_row, stop_row):
    """Rows first_row..stop_row of the dense kernel (:func:`dense_kernel`, either layout) on any grid: every basis by
    the recursion over all of them at once (knots [J, I] and reciprocals of :func:`recursion_tables`). grad_x's row
    is written from grad_expanded's before out's (which may be grad_expanded itself). A function of its own: inlined
    into the kernel's rows, its loops ran several times slower."""
    n_in = x.shape[1]
    n_slots = knots.shape[0] - k
    levels = np.empty((knots.shape[0] - 1, n_in), dtype=x.dtype)
    clamped = np.empty(n_in, dtype=x.dtype)
    spline = np.empty(n_in, dtype=x.dtype)
    base, base_grad, exponentials, bits = activation_buffers(n_in, x, bits_like)
    for n in range(first_row, stop_row):
        activation_row(x[n], activation, base, base_grad, exponentials, bits, constants, write_out, write_grad)
        order_zero(x[n], knots, levels, clamped)
        for d in range(1, k):
            raise_order(levels, clamped, knots, reciprocals, d)
        if write_grad:
            if slot_major:
                _gradient_from_levels(grad_expanded[n].reshape(n_slots, n_in), levels, reciprocals, k, base_grad,
                                      spline, grad_x[n])
            else:  # input-major: the row's [I, S] seen as [S, I]
                _gradient_from_levels(grad_expanded[n].reshape(n_in, n_slots).T, levels, reciprocals, k, base_grad,
                                      spline, grad_x[n])
        if write_out:
            if k > 0:
                raise_order(levels, clamped, knots, reciprocals, k)
            if slot_major:
                _write_levels(out[n].reshape(n_slots, n_in), base, levels)
            else:
                _write_levels(out[n].reshape(n_in, n_slots).T, base, levels)


@njit(cache=True)
def tiled_inputs(table, block):
    """table [..., I] repeated ``block`` times along its last axis: [..., block * I] (contiguous ``table``)."""
    n_in = table.shape[-1]
    flat = table.reshape(-1, n_in)
    tiled = np.empty((flat.shape[0], block * n_in), table.dtype)
    for j in range(flat.shape[0]):
        for b in range(block):
            for i in range(n_in):
                tiled[j, b * n_in + i] = flat[j, i]
    return tiled.reshape(table.shape[:-1] + (block * n_in,))


@njit(cache=True)
def rows_per_block(n_in, closed_form):
    """The rows a narrow layer's dense kernel puts side by side (:func:`recursion_block_rows`, or on uniform grids
    ``closed_form`` :func:`_uniform_block_rows`); 1 (row by row) from BLOCK_BELOW inputs on, on uniform grids from
    CLOSED_FORM_BLOCK_BELOW."""
    if n_in >= (CLOSED_FORM_BLOCK_BELOW if closed_form else BLOCK_BELOW):
        return 1
    return BLOCK_LANES // max(n_in, 1)


# Rows side by side: a block of ``rows`` rows of x [N, I] (and of A's gradient) gathered into one row of rows * I
# values, and the block's A [S, rows * I] scattered back into its rows, in either layout of A.
@njit(inline="always", cache=True)
def _gather_rows(x, first, rows, values):
    """values[r * I + i] <- x[first + r, i]; values past rows * I <- 0 (a last, shorter block)."""
    n_in = x.shape[1]
    for r in range(rows):
        for i in range(n_in):
            values[r * n_in + i] = x[first + r, i]
    for j in range(rows * n_in, values.shape[0]):
        values[j] = values.dtype.type(0.0)


@njit(inline="always", cache=True)
def _gather_slots(grad_expanded, first, rows, n_in, slot_major, gathered):
    """gathered[s, r * I + i] <- slot s of input i in row first + r of grad_expanded [N, I*S]."""
    n_slots = gathered.shape[0]
    for r in range(rows):
        row = grad_expanded[first + r]
        for s in range(n_slots):
            if slot_major:
                for i in range(n_in):
                    gathered[s, r * n_in + i] = row[s * n_in + i]
            else:
                for i in range(n_in):
                    gathered[s, r * n_in + i] = row[i * n_slots + s]


@njit(inline="always", cache=True)
def _scatter_slots(out, first, rows, n_in, n_slots, slot_major, base, table, shift):
    """Rows first.. of A [N, I*S] from a block's values: slot 0 from base [rows * I], slot s >= 1 from
    table[s - shift]."""
    for r in range(rows):
        row = out[first + r]
        for s in range(n_slots):
            slot = base if s == 0 else table[s - shift]
            if slot_major:
                for i in range(n_in):
                    row[s * n_in + i] = slot[r * n_in + i]
            else:
                for i in range(n_in):
                    row[i * n_slots + s] = slot[r * n_in + i]


@njit(cache=True, fastmath=FASTMATH)
def recursion_block_rows(x, knots, reciprocals, k, block, activation, bits_like, constants, grad_expanded, out,
                         grad_x, write_out, write_grad, slot_major, first_row, stop_row):
    """:func:`recursion_rows` for narrow layers: ``block`` rows side by side as one row of block * I values, so
    that each of the recursion's loops runs over that many (knots [J, block*I] and reciprocals [k+1, J, block*I]:
    :func:`recursion_tables`' tiled by :func:`tiled_inputs`). A last, shorter block computes zeros in its unused
    places and drops them."""
    n_in = x.shape[1]
    lanes = block * n_in
    n_slots = knots.shape[0] - k
    values = np.empty(lanes, dtype=x.dtype)
    levels = np.empty((knots.shape[0] - 1, lanes), dtype=x.dtype)
    clamped = np.empty(lanes, dtype=x.dtype)
    spline = np.empty(lanes, dtype=x.dtype)
    grads = np.empty(lanes, dtype=x.dtype)
    gathered = np.zeros((n_slots if write_grad else 0, lanes), dtype=x.dtype)
    base, base_grad, exponentials, bits = activation_buffers(lanes, x, bits_like)
    for first in range(first_row, stop_row, block):
        rows = min(block, stop_row - first)
        _gather_rows(x, first, rows, values)
        activation_row(values, activation, base, base_grad, exponentials, bits, constants, write_out, write_grad)
        order_zero(values, knots, levels, clamped)
        for d in range(1, k):
            raise_order(levels, clamped, knots, reciprocals, d)
        if write_grad:  # gathered before out's rows are written: out may be grad_expanded itself
            _gather_slots(grad_expanded, first, rows, n_in, slot_major, gathered)
            _gradient_from_levels(gathered, levels, reciprocals, k, base_grad, spline, grads)
            for r in range(rows):
                for i in range(n_in):
                    grad_x[first + r, i] = grads[r * n_in + i]
        if write_out:
            if k > 0:
                raise_order(levels, clamped, knots, reciprocals, k)
            _scatter_slots(out, first, rows, n_in, n_slots, slot_major, base, levels, 1)


@njit(inline="always", cache=True)
def _closed_form_buffers(grid, inv_steps, row_steps, lanes, like, k):
    """The closed form's work arrays for ``lanes`` values, place j holding input j % I, in like's dtype: offsets,
    coords, windows [k+1, lanes], spline, and each place's first and last knot, step and inverse step (lows, highs,
    steps, inv_narrow)."""
    n_in, n_knots = grid.shape
    offsets, coords, spline = (np.empty(lanes, dtype=like.dtype), np.empty(lanes, dtype=like.dtype),
                               np.empty(lanes, dtype=like.dtype))
    windows = np.empty((k + 1, lanes), dtype=like.dtype)
    lows, highs, steps, inv_narrow = (np.empty(lanes, dtype=like.dtype), np.empty(lanes, dtype=like.dtype),
                                      np.empty(lanes, dtype=like.dtype), np.empty(lanes, dtype=like.dtype))
    for j in range(lanes):
        i = j % n_in
        lows[j], highs[j], steps[j], inv_narrow[j] = grid[i, 0], grid[i, n_knots - 1], row_steps[i], inv_steps[i]
    return offsets, coords, windows, spline, lows, highs, steps, inv_narrow


# The dense kernel's functions below are templates, compiled per spline order k and layout by :func:`_dense_kernel`
# with K, SLOT_MAJOR and their callees (UNIFORM_SLOT_ROWS, INPUT_MAJOR_ROWS, DENSE_ROWS) as globals, which numba
# takes as compile-time constants: with k a constant their loops unroll and the selects of _write_bases, _dot_bases
# and _slot_value fold away (inside numba's parallel loop a closure's k would be a run-time argument). Each scheme
# has its own function: inlined into one, their loops ran several times slower.
def _uniform_slot_rows(x, grid, inv_steps, row_steps, matrix, activation, bits_like, constants, grad_expanded, out,
                       grad_x, write_out, write_grad, first_row, stop_row):
    """Slot-major rows on uniform grids (K > 0): the windows in A's dtype, so that the loops run in one lane
    width."""
    n_in = x.shape[1]
    n_slots = (out.shape[1] if write_out else grad_expanded.shape[1]) // n_in
    n_basis = n_slots - 1
    base, base_grad, exponentials, bits = activation_buffers(n_in, x, bits_like)
    offsets, coords, windows, spline, lows, highs, steps, inv_narrow = _closed_form_buffers(grid, inv_steps, row_steps,
                                                                                           n_in, x, K)
    for n in range(first_row, stop_row):
        activation_row(x[n], activation, base, base_grad, exponentials, bits, constants, write_out, write_grad)
        _uniform_windows(x[n], grid.shape[1], lows, highs, steps, inv_narrow, K, n_basis, offsets, coords)
        if write_grad:  # before out's row is written: out may be grad_expanded itself
            slots = grad_expanded[n].reshape(n_slots, n_in)
            window_polynomials(coords, matrix, K, n_in, 1, 1.0, windows)
            _dot_slots(slots, offsets, windows, K, spline)
            for i in range(n_in):
                grad_x[n, i] = base_grad[i] * slots[0, i] + inv_steps[i] * spline[i]
        if write_out:
            slots = out[n].reshape(n_slots, n_in)
            for i in range(n_in):
                slots[0, i] = base[i]
            window_polynomials(coords, matrix, K, n_in, 0, 1.0, windows)
            write_slots(slots, offsets, windows, K, n_in)


def _uniform_block_rows(x, grid, inv_steps, row_steps, matrix, activation, bits_like, constants, grad_expanded, out,
                        grad_x, write_out, write_grad, block, first_row, stop_row):
    """:func:`_uniform_slot_rows` for narrow layers: ``block`` rows side by side as one row of block * I values (the
    grid's constants tiled to match), as :func:`recursion_block_rows` does."""
    n_in = x.shape[1]
    lanes = block * n_in
    n_slots = (out.shape[1] if write_out else grad_expanded.shape[1]) // n_in
    n_basis = n_slots - 1
    n_knots = grid.shape[1]
    base, base_grad, exponentials, bits = activation_buffers(lanes, x, bits_like)
    values = np.empty(lanes, dtype=x.dtype)
    offsets, coords, windows, spline, lows, highs, steps, inv_narrow = _closed_form_buffers(grid, inv_steps, row_steps,
                                                                                           lanes, x, K)
    slots = np.zeros((n_slots, lanes), dtype=x.dtype)
    inv_wide = np.empty(lanes, dtype=inv_steps.dtype)
    for j in range(lanes):
        inv_wide[j] = inv_steps[j % n_in]
    for first in range(first_row, stop_row, block):
        rows = min(block, stop_row - first)
        _gather_rows(x, first, rows, values)
        activation_row(values, activation, base, base_grad, exponentials, bits, constants, write_out, write_grad)
        _uniform_windows(values, n_knots, lows, highs, steps, inv_narrow, K, n_basis, offsets, coords)
        if write_grad:  # gathered before out's rows are written: out may be grad_expanded itself
            _gather_slots(grad_expanded, first, rows, n_in, True, slots)
            window_polynomials(coords, matrix, K, lanes, 1, 1.0, windows)
            _dot_slots(slots, offsets, windows, K, spline)
            for r in range(rows):
                for i in range(n_in):
                    j = r * n_in + i
                    grad_x[first + r, i] = base_grad[j] * slots[0, j] + inv_wide[j] * spline[j]
        if write_out:
            window_polynomials(coords, matrix, K, lanes, 0, 1.0, windows)
            write_slots(slots, offsets, windows, K, lanes)
            _scatter_slots(out, first, rows, n_in, n_slots, True, base, slots, 0)


def _input_major_rows(x, grid, inv_steps, steps, matrix, activation, bits_like, constants, grad_expanded, out, grad_x,
                     write_out, write_grad, first_row, stop_row):
    """Input-major rows on uniform grids (K > 0): the windows in float64 from the basis matrix."""
    n_in = x.shape[1]
    n_slots = (out.shape[1] if write_out else grad_expanded.shape[1]) // n_in
    n_basis = n_slots - 1
    spans = np.empty(n_in, dtype=np.int64)
    coords = np.empty(n_in, dtype=matrix.dtype)
    values = np.empty((K + 1, n_in), dtype=matrix.dtype)  # window r of input i at [r, i]
    slopes = np.empty((K + 1, n_in), dtype=matrix.dtype)
    base, base_grad, exponentials, bits = activation_buffers(n_in, x, bits_like)
    for n in range(first_row, stop_row):
        activation_row(x[n], activation, base, base_grad, exponentials, bits, constants, write_out, write_grad)
        _uniform_row(x[n], grid, steps, inv_steps, spans, coords)
        if write_out:
            _polynomials(coords, matrix, 0, values)
        if write_grad:
            _polynomials(coords, matrix, 1, slopes)  # derivatives in t, not yet in x
            row = grad_expanded[n]  # read before out's row is written: out may be grad_expanded itself
            for i in range(n_in):
                spline = _dot_bases(row, i * n_slots + 1, spans[i], slopes, i, n_basis, K)
                grad_x[n, i] = base_grad[i] * row[i * n_slots] + inv_steps[i] * spline
        if write_out:
            row = out[n]
            for i in range(n_in):
                row[i * n_slots] = base[i]
                _write_bases(row, i * n_slots + 1, spans[i], values, i, n_basis, K)


def _dense_rows(x, grid, knots, reciprocals, inv_steps, steps, uniform, matrix, activation, bits_like, constants,
                grad_expanded, out, grad_x, write_out, write_grad, block, first_row, stop_row):
    """Rows first_row..stop_row of the dense kernel by the scheme that fits the grid and layout, ``block`` rows side
    by side (:func:`rows_per_block`) where that scheme can."""
    if not (uniform and K > 0):
        if block > 1:
            recursion_block_rows(x, knots, reciprocals, K, block, activation, bits_like, constants, grad_expanded,
                                 out, grad_x, write_out, write_grad, SLOT_MAJOR, first_row, stop_row)
        else:
            recursion_rows(x, knots, reciprocals, K, activation, bits_like, constants, grad_expanded, out, grad_x,
                           write_out, write_grad, SLOT_MAJOR, first_row, stop_row)
    elif SLOT_MAJOR and block > 1:
        UNIFORM_BLOCK_ROWS(x, grid, inv_steps, steps, matrix, activation, bits_like, constants, grad_expanded, out,
                           grad_x, write_out, write_grad, block, first_row, stop_row)
    elif SLOT_MAJOR:
        UNIFORM_SLOT_ROWS(x, grid, inv_steps, steps, matrix, activation, bits_like, constants, grad_expanded, out,
                          grad_x, write_out, write_grad, first_row, stop_row)
    else:
        INPUT_MAJOR_ROWS(x, grid, inv_steps, steps, matrix, activation, bits_like, constants, grad_expanded, out,
                         grad_x, write_out, write_grad, first_row, stop_row)


def _dense_rows_kernel(x, grid, padded, inv_steps, steps, uniform, matrix, activation, bits_like, constants,
                       grad_expanded, out, grad_x, write_out, write_grad):
    """The dense kernel (:func:`dense_kernel`): chunks of rows in parallel."""
    n_rows = x.shape[0]
    closed_form = uniform and K > 0
    block = rows_per_block(x.shape[1], closed_form)
    if closed_form:
        knots, reciprocals = np.empty((0, 0), dtype=padded.dtype), np.empty((0, 0, 0), dtype=padded.dtype)
    else:  # once per call: the knots input-minor and the reciprocals of their differences, tiled for blocks
        knots, reciprocals = recursion_tables(grid, K, padded)
        if block > 1:
            knots, reciprocals = tiled_inputs(knots, block), tiled_inputs(reciprocals, block)
    chunk = ROWS_PER_CHUNK * ((block + ROWS_PER_CHUNK - 1) // ROWS_PER_CHUNK)  # whole blocks
    n_chunks = (n_rows + chunk - 1) // chunk
    for c in prange(n_chunks):
        DENSE_ROWS(x, grid, knots, reciprocals, inv_steps, steps, uniform, matrix, activation, bits_like, constants,
                   grad_expanded, out, grad_x, write_out, write_grad, block, c * chunk, min(n_rows, (c + 1) * chunk))


@functools.cache
def _dense_kernel(k, slot_major=False):
    """The parallel dense kernel for spline order k and one layout, from the templates above."""
    layout = "slot_major" if slot_major else "input_major"
    constants = {"K": k, "SLOT_MAJOR": slot_major, **_uniform_rows(k)}
    constants["DENSE_ROWS"] = specialized(_dense_rows, f"_k{k}_{layout}", constants)
    return specialized(_dense_rows_kernel, f"_k{k}_{layout}", constants, parallel=True)


@functools.cache
def _uniform_rows(k):
    """The uniform-grid row functions for spline order k, shared by both layouts' kernels: UNIFORM_SLOT_ROWS,
    UNIFORM_BLOCK_ROWS and INPUT_MAJOR_ROWS for :func:`_dense_rows`."""
    return {"UNIFORM_SLOT_ROWS": specialized(_uniform_slot_rows, f"_k{k}", {"K": k}),
            "UNIFORM_BLOCK_ROWS": specialized(_uniform_block_rows, f"_k{k}", {"K": k}),
            "INPUT_MAJOR_ROWS": specialized(_input_major_rows, f"_k{k}", {"K": k})}


@njit(inline="always", cache=True)
def _blocks(total, block, index):
    """The range (start, stop) of block ``index`` when ``total`` items are cut into blocks of ``block``."""
    start = index * block
    return start, min(total, start + block)


@njit(inline="always", cache=True)
def _spread_rows(width, itemsize):
    """The row length (elements) of a scratch tile for rows of ``width`` entries: rounded up to an odd number of
    64-byte cache lines. The 8 x 8 blocks walk down a tile's columns, and with a power-of-two row length every row of a
    column maps to the same few L1 cache sets, so a line is evicted before the next strip of columns reads the rest
    of it; an odd number of lines spreads the rows over all the sets."""
    per_line = max(1, PREFETCH_LINE // itemsize)
    lines = (width + per_line - 1) // per_line
    return (lines + 1 - lines % 2) * per_line


@njit(inline="always", cache=True)
def _tile_count(n_first, first_block, n_columns, col_block):
    """Tiles of first_block items (rows or inputs) by col_block columns."""
    return ((n_first + first_block - 1) // first_block) * ((n_columns + col_block - 1) // col_block)


@njit(inline="always", cache=True)
def _tile_ranges(tile, n_first, first_block, n_columns, col_block):
    """(first, stop, c0, c1, column block) of tile number ``tile`` (see :func:`_tile_count`)."""
    n_col_blocks = (n_columns + col_block - 1) // col_block
    first, stop = _blocks(n_first, first_block, tile // n_col_blocks)
    c0, c1 = _blocks(n_columns, col_block, tile % n_col_blocks)
    return first, stop, c0, c1, tile % n_col_blocks


@njit(inline="always", cache=True)
def _window_row(q, base, first):
    """The weight row of window slot q: the base activation's row, then the spline rows from ``first``."""
    return base if q == 0 else first + q - 1


@njit(inline="always", cache=True)
def _five_rows(matrix, base, first, c0, c1):
    """Columns c0:c1 of a k = 3 window's five rows: the base activation's, then the spline rows first..first+3."""
    return (matrix[base, c0:c1], matrix[first, c0:c1], matrix[first + 1, c0:c1], matrix[first + 2, c0:c1],
            matrix[first + 3, c0:c1])


# The helpers below combine a window's k + 2 weight rows in one pass over the columns when k = 3 (five rows, the
# coefficients held as scalars, so that the loop vectorizes) and one pass per row for other orders, which the
# compiler cannot keep in registers as well.
@njit(inline="always", cache=True, fastmath=FASTMATH)
def _add_window_rows(acc, weight, base, first, coefficients, c0, c1):
    """acc [c1 - c0] += sum_q coefficients[q] * weight[row q, c0:c1] over the window's k + 2 rows."""
    if coefficients.shape[0] == 5:
        a, b, c, d, e = coefficients[0], coefficients[1], coefficients[2], coefficients[3], coefficients[4]
        wa, wb, wc, wd, we = _five_rows(weight, base, first, c0, c1)
        for o in range(c1 - c0):
            acc[o] += a * wa[o] + b * wb[o] + c * wc[o] + d * wd[o] + e * we[o]
        return
    for q in range(coefficients.shape[0]):
        a = coefficients[q]
        wa = weight[_window_row(q, base, first), c0:c1]
        for o in range(c1 - c0):
            acc[o] += a * wa[o]


@njit(inline="always", cache=True, fastmath=FASTMATH)
def _dot_five_rows(g, wa, wb, wc, wd, we, a, b, c, d, e):
    """sum_o g[o] * (a * wa[o] + b * wb[o] + c * wc[o] + d * wd[o] + e * we[o]), in g's dtype (a k = 3 window)."""
    result = g.dtype.type(0.0)
    for o in range(g.shape[0]):
        result += g[o] * (a * wa[o] + b * wb[o] + c * wc[o] + d * wd[o] + e * we[o])
    return result


@njit(inline="always", cache=True, fastmath=FASTMATH)
def _dot_window_rows(g, weight, base, first, coefficients, c0, c1):
    """sum_q coefficients[q] * (g . weight[row q, c0:c1]) over the window's k + 2 rows; g [c1 - c0]. The sums are
    kept in g's dtype: a float64 sum of float32 terms keeps the compiler from vectorizing the loop."""
    if coefficients.shape[0] == 5:
        wa, wb, wc, wd, we = _five_rows(weight, base, first, c0, c1)
        return _dot_five_rows(g, wa, wb, wc, wd, we, coefficients[0], coefficients[1], coefficients[2],
                              coefficients[3], coefficients[4])
    result = g.dtype.type(0.0)
    for q in range(coefficients.shape[0]):
        wa = weight[_window_row(q, base, first), c0:c1]
        dot = g.dtype.type(0.0)
        for o in range(c1 - c0):
            dot += g[o] * wa[o]
        result += coefficients[q] * dot
    return result


@njit(inline="always", cache=True)
def _five(values, i, p):
    """values[i, 0..4, p], a k = 3 window's five coefficients, as scalars (which the column loops keep in registers)."""
    return values[i, 0, p], values[i, 1, p], values[i, 2, p], values[i, 3, p], values[i, 4, p]


@njit(inline="always", cache=True)
def _four_windows(values, i, p):
    """The five coefficients of the windows at positions p, .., p + 3 (k = 3), window after window, as 20 scalars."""
    return (values[i, 0, p], values[i, 1, p], values[i, 2, p], values[i, 3, p], values[i, 4, p],
            values[i, 0, p + 1], values[i, 1, p + 1], values[i, 2, p + 1], values[i, 3, p + 1], values[i, 4, p + 1],
            values[i, 0, p + 2], values[i, 1, p + 2], values[i, 2, p + 2], values[i, 3, p + 2], values[i, 4, p + 2],
            values[i, 0, p + 3], values[i, 1, p + 3], values[i, 2, p + 3], values[i, 3, p + 3], values[i, 4, p + 3])


# The group helpers below take the rows of one window start's group (see :func:`_rows_by_start`), whose windows meet
# the same k + 2 weight rows, and p0, the position of the first one's window (the windows are stored in the rows'
# sorted order, so the group's lie side by side from p0). With k = 3 they go through four rows per pass over the
# columns, so that each weight (or accumulator) row is read once for the four rows: measured faster than one or two
# rows per pass (AVX-512 Xeon).
@njit(inline="always", cache=True, fastmath=FASTMATH)
def _add_group_rows(acc, r0, weight, base, first, values, i, order, b, g0, g1, col0, col1):
    """acc[n - r0, :] += sum_q values[i, q, r0 + j] * weight[row q, col0:col1] for each n = order[b, i, j],
    g0 <= j < g1 (r0 = b * block_rows, the block's first row and its windows' first position). Indexed in place,
    without views of the arrays: each view a loop makes costs two reference count updates (atomic) that the compiler
    does not always remove."""
    width = col1 - col0
    j = g0
    if values.shape[1] == 5:
        while j + 4 <= g1:
            a0, a1, a2, a3, a4, b0, b1, b2, b3, b4, c0, c1, c2, c3, c4, d0, d1, d2, d3, d4 = _four_windows(
                values, i, r0 + j)
            na, nb = order[b, i, j] - r0, order[b, i, j + 1] - r0
            nc, nd = order[b, i, j + 2] - r0, order[b, i, j + 3] - r0
            for o in range(width):
                w0, w1, w2 = weight[base, col0 + o], weight[first, col0 + o], weight[first + 1, col0 + o]
                w3, w4 = weight[first + 2, col0 + o], weight[first + 3, col0 + o]
                acc[na, o] += a0 * w0 + a1 * w1 + a2 * w2 + a3 * w3 + a4 * w4
                acc[nb, o] += b0 * w0 + b1 * w1 + b2 * w2 + b3 * w3 + b4 * w4
                acc[nc, o] += c0 * w0 + c1 * w1 + c2 * w2 + c3 * w3 + c4 * w4
                acc[nd, o] += d0 * w0 + d1 * w1 + d2 * w2 + d3 * w3 + d4 * w4
            j += 4
        if j + 2 <= g1:  # two of the last rows in one pass too: at large G a group holds a few rows
            a0, a1, a2, a3, a4 = _five(values, i, r0 + j)
            b0, b1, b2, b3, b4 = _five(values, i, r0 + j + 1)
            na, nb = order[b, i, j] - r0, order[b, i, j + 1] - r0
            for o in range(width):
                w0, w1, w2 = weight[base, col0 + o], weight[first, col0 + o], weight[first + 1, col0 + o]
                w3, w4 = weight[first + 2, col0 + o], weight[first + 3, col0 + o]
                acc[na, o] += a0 * w0 + a1 * w1 + a2 * w2 + a3 * w3 + a4 * w4
                acc[nb, o] += b0 * w0 + b1 * w1 + b2 * w2 + b3 * w3 + b4 * w4
            j += 2
        while j < g1:
            a0, a1, a2, a3, a4 = _five(values, i, r0 + j)
            na = order[b, i, j] - r0
            for o in range(width):
                acc[na, o] += (a0 * weight[base, col0 + o] + a1 * weight[first, col0 + o]
                               + a2 * weight[first + 1, col0 + o] + a3 * weight[first + 2, col0 + o]
                               + a4 * weight[first + 3, col0 + o])
            j += 1
        return
    for rest in range(g0, g1):
        _add_window_rows(acc[order[b, i, rest] - r0], weight, base, first, values[i, :, r0 + rest], col0, col1)


@njit(inline="always", cache=True, fastmath=FASTMATH)
def _dot_group_rows(grad_row, i, grad_out, c0, c1, weight, w0, base, first, slopes, order, b, g0, g1):
    """grad_row[n] += sum_q slopes[i, q, b * block_rows + j] * (grad_out[n, c0:c1] . weight[row q, w0:w0 + c1 - c0]) for
    each n = order[b, i, j], g0 <= j < g1, the sums in grad_out's dtype (:func:`_dot_window_rows`); grad_row [N]
    holds input i's entries of grad_x."""
    j = g0
    width = c1 - c0
    r0 = b * order.shape[2]  # the block's windows' first position
    if slopes.shape[1] == 5:
        wa, wb, wc, wd, we = _five_rows(weight, base, first, w0, w0 + width)
        zero = grad_out.dtype.type(0.0)
        while j + 4 <= g1:
            n0, n1, n2, n3 = order[b, i, j], order[b, i, j + 1], order[b, i, j + 2], order[b, i, j + 3]
            a0, a1, a2, a3, a4, b0, b1, b2, b3, b4, e0, e1, e2, e3, e4, d0, d1, d2, d3, d4 = _four_windows(
                slopes, i, r0 + j)
            ga, gb, gc, gd = grad_out[n0, c0:c1], grad_out[n1, c0:c1], grad_out[n2, c0:c1], grad_out[n3, c0:c1]
            sa, sb, sc, sd = zero, zero, zero, zero
            for o in range(width):
                v0, v1, v2, v3, v4 = wa[o], wb[o], wc[o], wd[o], we[o]
                sa += ga[o] * (a0 * v0 + a1 * v1 + a2 * v2 + a3 * v3 + a4 * v4)
                sb += gb[o] * (b0 * v0 + b1 * v1 + b2 * v2 + b3 * v3 + b4 * v4)
                sc += gc[o] * (e0 * v0 + e1 * v1 + e2 * v2 + e3 * v3 + e4 * v4)
                sd += gd[o] * (d0 * v0 + d1 * v1 + d2 * v2 + d3 * v3 + d4 * v4)
            grad_row[n0] += sa
            grad_row[n1] += sb
            grad_row[n2] += sc
            grad_row[n3] += sd
            j += 4
        if j + 2 <= g1:  # two of the last rows in one pass too: at large G a group holds a few rows
            n0, n1 = order[b, i, j], order[b, i, j + 1]
            a0, a1, a2, a3, a4 = _five(slopes, i, r0 + j)
            b0, b1, b2, b3, b4 = _five(slopes, i, r0 + j + 1)
            ga, gb = grad_out[n0, c0:c1], grad_out[n1, c0:c1]
            sa, sb = zero, zero
            for o in range(width):
                v0, v1, v2, v3, v4 = wa[o], wb[o], wc[o], wd[o], we[o]
                sa += ga[o] * (a0 * v0 + a1 * v1 + a2 * v2 + a3 * v3 + a4 * v4)
                sb += gb[o] * (b0 * v0 + b1 * v1 + b2 * v2 + b3 * v3 + b4 * v4)
            grad_row[n0] += sa
            grad_row[n1] += sb
            j += 2
        if j < g1:
            n0 = order[b, i, j]
            a0, a1, a2, a3, a4 = _five(slopes, i, r0 + j)
            grad_row[n0] += _dot_five_rows(grad_out[n0, c0:c1], wa, wb, wc, wd, we, a0, a1, a2, a3, a4)
            j += 1
    for rest in range(j, g1):
        n = order[b, i, rest]
        grad_row[n] += _dot_window_rows(grad_out[n, c0:c1], weight, base, first, slopes[i, :, r0 + rest], w0,
                                        w0 + width)


@njit(inline="always", cache=True, fastmath=FASTMATH)
def _scatter_five_rows(t0, t1, t2, t3, t4, values, i, rows, p0, grad_out, col0, col1):
    """t_q [col1 - col0] += values[i, q, p0 + j] * grad_out[rows[j], col0:col1] over the rows (k = 3): four rows
    per pass over the columns, then the last one to three in one more pass (at large G a group holds a few rows,
    and each pass reads and writes all five accumulator rows). The ifs below are written as measured: the same
    passes as an if-elif chain ran the backward kernel much slower (numba 0.68)."""
    j = 0
    while j + 4 <= rows.shape[0]:
        n0, n1, n2, n3 = rows[j], rows[j + 1], rows[j + 2], rows[j + 3]
        a0, a1, a2, a3, a4, b0, b1, b2, b3, b4, c0, c1, c2, c3, c4, d0, d1, d2, d3, d4 = _four_windows(
            values, i, p0 + j)
        ga, gb = grad_out[n0, col0:col1], grad_out[n1, col0:col1]
        gc, gd = grad_out[n2, col0:col1], grad_out[n3, col0:col1]
        for o in range(col1 - col0):
            ua, ub, uc, ud = ga[o], gb[o], gc[o], gd[o]
            t0[o] += a0 * ua + b0 * ub + c0 * uc + d0 * ud
            t1[o] += a1 * ua + b1 * ub + c1 * uc + d1 * ud
            t2[o] += a2 * ua + b2 * ub + c2 * uc + d2 * ud
            t3[o] += a3 * ua + b3 * ub + c3 * uc + d3 * ud
            t4[o] += a4 * ua + b4 * ub + c4 * uc + d4 * ud
        j += 4
    if j + 3 <= rows.shape[0]:
        n0, n1, n2 = rows[j], rows[j + 1], rows[j + 2]
        a0, a1, a2, a3, a4 = _five(values, i, p0 + j)
        b0, b1, b2, b3, b4 = _five(values, i, p0 + j + 1)
        c0, c1, c2, c3, c4 = _five(values, i, p0 + j + 2)
        ga, gb, gc = grad_out[n0, col0:col1], grad_out[n1, col0:col1], grad_out[n2, col0:col1]
        for o in range(col1 - col0):
            ua, ub, uc = ga[o], gb[o], gc[o]
            t0[o] += a0 * ua + b0 * ub + c0 * uc
            t1[o] += a1 * ua + b1 * ub + c1 * uc
            t2[o] += a2 * ua + b2 * ub + c2 * uc
            t3[o] += a3 * ua + b3 * ub + c3 * uc
            t4[o] += a4 * ua + b4 * ub + c4 * uc
        j += 3
    if j + 2 <= rows.shape[0]:
        n0, n1 = rows[j], rows[j + 1]
        a0, a1, a2, a3, a4 = _five(values, i, p0 + j)
        b0, b1, b2, b3, b4 = _five(values, i, p0 + j + 1)
        ga, gb = grad_out[n0, col0:col1], grad_out[n1, col0:col1]
        for o in range(col1 - col0):
            ua, ub = ga[o], gb[o]
            t0[o] += a0 * ua + b0 * ub
            t1[o] += a1 * ua + b1 * ub
            t2[o] += a2 * ua + b2 * ub
            t3[o] += a3 * ua + b3 * ub
            t4[o] += a4 * ua + b4 * ub
        j += 2
    for rest in range(j, rows.shape[0]):
        n0 = rows[rest]
        a0, a1, a2, a3, a4 = _five(values, i, p0 + rest)
        ga = grad_out[n0, col0:col1]
        for o in range(col1 - col0):
            ua = ga[o]
            t0[o] += a0 * ua
            t1[o] += a1 * ua
            t2[o] += a2 * ua
            t3[o] += a3 * ua
            t4[o] += a4 * ua


@njit(inline="always", cache=True, fastmath=FASTMATH)
def _scatter_row(target, values, i, q, rows, p0, grad_out, col0, col1):
    """target [col1 - col0] += values[i, q, p0 + j] * grad_out[rows[j], col0:col1] over the rows, two rows per pass
    over the columns."""
    j = 0
    while j + 2 <= rows.shape[0]:
        n0, n1 = rows[j], rows[j + 1]
        a, b = values[i, q, p0 + j], values[i, q, p0 + j + 1]
        g0, g1 = grad_out[n0, col0:col1], grad_out[n1, col0:col1]
        for o in range(col1 - col0):
            target[o] += a * g0[o] + b * g1[o]
        j += 2
    if j < rows.shape[0]:
        n0 = rows[j]
        a = values[i, q, p0 + j]
        g0 = grad_out[n0, col0:col1]
        for o in range(col1 - col0):
            target[o] += a * g0[o]


# Compiled as a function of its own, not inlined into the kernels that call it once per input: inlined into the
# local-support backward, its passes for a group's last rows made that kernel slower instead of faster (measured).
@njit(cache=True, fastmath=FASTMATH)
def _window_gradients(block, base, col0, i, order, offsets, values, grad_out, c0, c1, written, written_lines):
    """block[base + slot, col0:col0 + c1 - c0] += sum over the rows n of input i of their window's entry q *
    grad_out[n, c0:c1], slot the window entry q's (0, the base activation's, for q = 0; start + q otherwise): input
    i's rows of A^T @ grad_out for columns c0..c1, one group of rows with the same window start at a time (see
    :func:`_rows_by_start`), so that the group's k + 2 accumulator rows stay in L1. Meanwhile the lines of
    ``written`` in written_lines (start, stop, lines per group, as :func:`_input_lines` gives) are prefetched for
    writing. The rows start from zero, each zeroed where the first group reaches it (while it is in cache) rather
    than beforehand."""
    window = values.shape[1]
    col1 = col0 + c1 - c0
    n_starts = offsets.shape[2] - 1
    block[base:base + window - 1, col0:col1] = 0.0  # the base activation's and the first start's window but its last
    if offsets.shape[0] == 0:  # no rows (an empty batch): no first group zeroes the other rows
        block[base + window - 1:base + window - 1 + n_starts, col0:col1] = 0.0
    for b in range(offsets.shape[0]):
        order_row = order[b, i]
        for s in range(n_starts):
            prefetch_lines(written, written_lines[0], written_lines[1], (b * n_starts + s) * written_lines[2],
                           written_lines[2], True)
            if b == 0:  # the last row of start s's window, which no earlier start reaches
                block[base + window - 1 + s, col0:col1] = 0.0
            first, stop = offsets[b, i, s], offsets[b, i, s + 1]
            if first == stop:
                continue
            rows, p0 = order_row[first:stop], b * order.shape[2] + first
            if window == 5:
                _scatter_five_rows(block[base, col0:col1], block[base + 1 + s, col0:col1],
                                   block[base + 2 + s, col0:col1], block[base + 3 + s, col0:col1],
                                   block[base + 4 + s, col0:col1], values, i, rows, p0, grad_out, c0, c1)
                continue
            for q in range(window):
                _scatter_row(block[_window_row(q, base, base + 1 + s), col0:col1], values, i, q, rows, p0, grad_out,
                             c0, c1)


@njit(inline="always", cache=True)
def _window_start(span, k, n_basis):
    """The first basis of the window of a value in span ``span`` (-1: outside the grid, and then 0): its k + 1
    bases are kept inside the grid's n_basis, so near an end the window starts further in than span - k."""
    return min(max(span - k, 0), n_basis - k - 1) if span >= 0 else 0


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _window_spans(x, grid, inv_steps, uniform, spline_order, n_basis, spans, starts):
    n_rows, n_in = x.shape
    n_chunks = (n_rows + WINDOW_ROWS - 1) // WINDOW_ROWS
    for chunk in prange(n_chunks):
        first_row, stop_row = _blocks(n_rows, WINDOW_ROWS, chunk)
        for n in range(first_row, stop_row):
            for i in range(n_in):
                span = find_span_at(x[n, i], grid, inv_steps, i, uniform, spline_order)
                spans[n, i] = span
                starts[n, i] = _window_start(span, spline_order, n_basis)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _window_spans_uniform(x, grid, inv_steps, spline_order, n_basis, spans, starts):
    n_rows, n_in = x.shape
    n_knots = grid.shape[1]
    real = x.dtype.type
    # in x's dtype: a float64 spacing would halve the vectors
    lows, highs, invs = np.empty(n_in, x.dtype), np.empty(n_in, x.dtype), np.empty(n_in, x.dtype)
    for i in range(n_in):
        lows[i], highs[i], invs[i] = grid[i, 0], grid[i, n_knots - 1], real(inv_steps[i])
    n_chunks = (n_rows + WINDOW_ROWS - 1) // WINDOW_ROWS
    for chunk in prange(n_chunks):
        first_row, stop_row = _blocks(n_rows, WINDOW_ROWS, chunk)
        for n in range(first_row, stop_row):
            x_row, span_row, start_row = x[n], spans[n], starts[n]
            for i in range(n_in):  # a flat loop along the row's inputs: vectorized
                whole, inside = uniform_span(x_row[i], i, lows, highs, invs, n_knots)
                span = int(whole) if inside else -1
                span_row[i] = span
                start_row[i] = _window_start(span, spline_order, n_basis)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _sorted_windows(x, grid, padded, inv_steps, uniform, spline_order, matrix, activation, spans, order, offsets,
                    values, slopes, with_slopes):
    n_blocks, n_in, block_rows = order.shape
    k = spline_order
    n_basis = offsets.shape[2] - 1 + k
    for task in prange(n_blocks * n_in):
        b, i = task // n_in, task % n_in
        scratch = np.empty((4, k + 1), dtype=matrix.dtype)
        for j in range(offsets[b, i, offsets.shape[2] - 1]):
            n, position = order[b, i, j], b * block_rows + j
            value = x[n, i]
            values[i, 0, position] = activation_at(value, activation)
            if with_slopes:
                slopes[i, 0, position] = activation_derivative_at(value, activation)
            span = spans[n, i]
            if span >= 0:
                _window(value, span, grid, padded, inv_steps, i, uniform, k, matrix, scratch[0], scratch[1],
                        with_slopes, scratch[2], scratch[3])
            shift = _window_start(span, k, n_basis) - (span - k)  # entries the window starts further in
            for q in range(k + 1):
                r = q + shift
                inside = span >= 0 and 0 <= r <= k
                values[i, 1 + q, position] = scratch[0, r] if inside else 0.0
                if with_slopes:
                    slopes[i, 1 + q, position] = scratch[1, r] if inside else 0.0


@njit(inline="always", cache=True)
def _shift_window(target, i, position, shift, held):
    """Moves the window entries at ``position`` of input i ``shift`` places (entry q takes entry q + shift; zeros
    past the window): a window that starts further in near the grid's ends (see :func:`_window_start`)."""
    k = target.shape[1] - 2
    for q in range(k + 1):
        held[q] = target[i, 1 + q, position]
    for q in range(k + 1):
        entry = q + shift
        target[i, 1 + q, position] = held[entry] if 0 <= entry <= k else 0.0


# A template like the dense kernel's, compiled per spline order K by :func:`sorted_windows_uniform` (so that the
# polynomials' loops unroll).
def _sorted_windows_uniform(x, grid, inv_steps, steps, matrix, activation, bits_like, constants, spans, order, offsets,
                            values, slopes, with_slopes):
    n_blocks, n_in, block_rows = order.shape
    n_basis = offsets.shape[2] - 1 + K
    real = x.dtype.type
    for task in prange(n_blocks * n_in):
        b, i = task // n_in, task % n_in
        count, first = offsets[b, i, offsets.shape[2] - 1], b * block_rows
        gathered, coords = np.empty(count, dtype=x.dtype), np.empty(count, dtype=x.dtype)
        shifts = np.empty(count, dtype=np.int64)
        inside = np.empty(count, dtype=np.bool_)
        held = np.empty(K + 1, dtype=x.dtype)
        _, _, exponentials, bits = activation_buffers(count, x, bits_like)
        # in x's dtype, the knot computed and not read (see :func:`_uniform_windows`)
        low, inv, step = grid[i, 0], real(inv_steps[i]), real(steps[i])
        for j in range(count):  # the rows in their order: gathers
            n = order[b, i, j]
            span = spans[n, i]
            value = x[n, i]
            gathered[j] = value
            inside[j] = span >= 0
            coords[j] = min(max(from_span_knot(value, low, step, real(span)) * inv, real(0.0)), real(1.0))
            shifts[j] = _window_start(span, K, n_basis) - (span - K) if span >= 0 else 0
        base = values[i, 0, first:first + count]
        activation_row(gathered, activation, base, slopes[i, 0, first:first + count] if with_slopes else base,
                       exponentials, bits, constants, True, with_slopes)
        window_polynomials(coords, matrix, K, count, 0, 1.0, values[i, 1:], first, inside)
        if with_slopes:
            window_polynomials(coords, matrix, K, count, 1, inv, slopes[i, 1:], first, inside)
        for j in range(count):
            if shifts[j] != 0:
                _shift_window(values, i, first + j, shifts[j], held)
                if with_slopes:
                    _shift_window(slopes, i, first + j, shifts[j], held)


@functools.cache
def sorted_windows_uniform(spline_order: int):
    """The uniform grids' sorted windows kernel for spline order k > 0 (see the module's docstring)."""
    k = int(spline_order)
    return sized_kernel(specialized(_sorted_windows_uniform, f"_k{k}", {"K": k}, parallel=True))


@njit(parallel=True, cache=True)
def _rows_by_start(starts, block_rows, order, offsets):
    """Each input's rows in blocks of block_rows, sorted by window start (stably): order[b, i, :] the rows of block b
    of input i (its first offsets[b, i, -1] entries), offsets[b, i, s] the first of those whose window starts at s
    (starts [N, I] int32, each in 0 .. offsets.shape[2] - 2)."""
    n_rows, n_in = starts.shape
    n_starts = offsets.shape[2] - 1
    n_blocks = offsets.shape[0]
    for task in prange(n_blocks * n_in):
        b, i = task // n_in, task % n_in
        r0, r1 = _blocks(n_rows, block_rows, b)
        cursor = np.zeros(n_starts + 1, dtype=np.int64)
        for n in range(r0, r1):
            cursor[starts[n, i] + 1] += 1
        for s in range(n_starts):
            cursor[s + 1] += cursor[s]
        for s in range(n_starts + 1):
            offsets[b, i, s] = cursor[s]
        for n in range(r0, r1):
            s = starts[n, i]
            order[b, i, cursor[s]] = n
            cursor[s] += 1


# The local-support kernels below take either the assembled weight [I*S, O] (and then empty [0, 0] parameters) or the
# layer's parameters scale_base, scale_sp, mask [I, O] and coef [I, O, G+k] (and then an empty [0, 0] weight). From the
# parameters, each input's weight rows are assembled for the columns at hand into a tile that stays in cache
# (:func:`_input_weights`, blocked), so that the [I*S, O] weight is never written to memory: at G = 200 it outgrows
# the last-level cache, and writing it, then reading it back in forward and backward, cost more than the products.
@njit(inline="always", cache=True)
def _input_lines(array, i, c0, c1, n_steps):
    """(start, stop, lines per step): the flat range of input i's entries for columns c0..c1 of array [I, O, G+k]
    (empty where the array is), and how many of its cache lines each of n_steps steps prefetches for all of them to
    be asked for."""
    if array.size == 0:
        return 0, 0, 0
    row = array.strides[1] // array.itemsize
    start = i * (array.strides[0] // array.itemsize) + c0 * row
    lines = ((c1 - c0) * row * array.itemsize + PREFETCH_LINE - 1) // PREFETCH_LINE
    return start, start + (c1 - c0) * row, (lines + n_steps - 1) // max(1, n_steps)


@njit(inline="always", cache=True)
def _next_input(coef, i, i1, c0, c1, n_steps):
    """:func:`_input_lines` of input i + 1's coefficients, empty when i + 1 reaches i1."""
    return (0, 0, 0) if i + 1 >= i1 else _input_lines(coef, i + 1, c0, c1, n_steps)


@njit(inline="always", cache=True, fastmath=FASTMATH)
def _add_input_rows(acc, r0, b, i, matrix, base, w0, order, offsets, values, ahead, ahead_range):
    """acc[n - r0, :] += the window of input i of each row n of row block b (first row r0) times its k + 2 weight
    rows, matrix[base:base + S, w0:w0 + acc.shape[1]]; meanwhile the flat range of ``ahead`` in ahead_range (start,
    stop, lines per window start) is prefetched."""
    ahead_start, ahead_stop, per_step = ahead_range
    for s in range(offsets.shape[2] - 1):
        prefetch_lines(ahead, ahead_start, ahead_stop, s * per_step, per_step)
        first, stop = offsets[b, i, s], offsets[b, i, s + 1]
        _add_group_rows(acc, r0, matrix, base, base + 1 + s, values, i, order, b, first, stop, w0,
                        w0 + acc.shape[1])


@njit(inline="always", cache=True, fastmath=FASTMATH)
def _add_partial_sums(row, partial, n):
    """row += partial[p, n] for every p: the sums of the parts after the first, added to the first's row n."""
    for p in range(partial.shape[0]):
        summand = partial[p, n]
        for o in range(row.shape[0]):
            row[o] += summand[o]


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _sparse_forward(order, offsets, values, weight, scale_base, scale_sp, mask, coef, out, block_rows, col_block,
                    n_parts):
    """out [N, O] = A @ W from the sorted windows (the weight or the parameters, see above), in tiles of a row block
    by col_block columns; each tile's inputs in n_parts parts, whose sums are added at the end."""
    n_in, n_rows = values.shape[0], values.shape[2]
    n_out = out.shape[1]
    n_slots = offsets.shape[2] + values.shape[1] - 2
    n_tiles = _tile_count(n_rows, block_rows, n_out, col_block)
    part_inputs = (n_in + n_parts - 1) // n_parts
    partial = np.empty((n_parts - 1, n_rows, n_out), dtype=out.dtype)  # the sums of parts 1.. (part 0's: out)
    given = weight.size > 0
    for task in prange(n_tiles * n_parts):
        tile, part = task // n_parts, task % n_parts
        r0, r1, c0, c1, _ = _tile_ranges(tile, n_rows, block_rows, n_out, col_block)
        b = r0 // block_rows
        acc = np.zeros((r1 - r0, c1 - c0), dtype=out.dtype)
        rows = np.empty((0 if given else n_slots, _spread_rows(c1 - c0, out.itemsize)), dtype=out.dtype)
        scale = np.empty(c1 - c0, dtype=out.dtype)
        i0, i1 = _blocks(n_in, part_inputs, part)
        for i in range(i0, i1):
            # from the parameters, the next input's coefficients are prefetched while this one's rows go by
            ahead = _next_input(coef, i, i1, c0, c1, offsets.shape[2] - 1)
            if given:
                _add_input_rows(acc, r0, b, i, weight, i * n_slots, c0, order, offsets, values, coef, ahead)
            else:
                _input_weights(scale_base, scale_sp, mask, coef, i, c0, c1, scale, rows, True)
                _add_input_rows(acc, r0, b, i, rows, 0, 0, order, offsets, values, coef, ahead)
        if part == 0:
            out[r0:r1, c0:c1] = acc
        else:
            partial[part - 1, r0:r1, c0:c1] = acc
    if n_parts > 1:
        for n in prange(n_rows):
            _add_partial_sums(out[n], partial, n)


@njit(inline="always", cache=True, fastmath=FASTMATH)
def _weights_and_gradients(block, i, c0, c1, scale_base, scale_sp, mask, coef, scale, rows, with_rows,
                           grad_scale_base, grad_scale_sp, grad_coef, sums):
    """Input i's parameters' gradients for outputs c0..c1 from block [S, >= c1 - c0], its rows of the weight
    gradient, and with ``with_rows`` its S rows of the assembled weight into rows [S, >= c1 - c0] (as
    :func:`_input_weights`), the coefficients read once for both (scale: scratch [>= c1 - c0]; sums: scratch [BLOCK]).

    In 8 x 8 blocks of 8 outputs by 8 bases (:func:`kanlib.ops.block_transpose.weight_and_gradient_block`), the
    8 outputs' strip across all bases before the next: the coefficients' block is read once and transposed into the
    weight's rows, the gradient's block transposed straight into grad_coef's rows, and the 8 outputs' sums for
    grad_scale_sp kept in one vector. The edges go entry by entry, and everything so where rows do not lie side by
    side in memory. (One pass, rather than the weight's rows first and then the gradient transposed into a tile and
    written from it: that reads the coefficients twice and writes and reads the tile.)
    """
    n_basis, width = coef.shape[2], c1 - c0
    for o in range(width):
        edge_mask = mask[i, c0 + o]
        scale[o] = scale_sp[i, c0 + o] * edge_mask
        grad_scale_base[i, c0 + o] = block[0, o] * edge_mask
        if with_rows:
            rows[0, o] = scale_base[i, c0 + o] * edge_mask
    item = coef.itemsize
    side_by_side = (coef.strides[2] == item and grad_coef.strides == coef.strides and block.strides[1] == item
                    and (rows.strides[1] == item or not with_rows))
    out_end = width - width % BLOCK if side_by_side else 0
    basis_end = n_basis - n_basis % BLOCK
    source_row, block_row, rows_row = coef.strides[1] // item, block.strides[0] // item, rows.strides[0] // item
    source = i * (coef.strides[0] // item) + c0 * source_row
    for o0 in range(0, out_end, BLOCK):
        sums[:] = 0.0
        for j0 in range(0, basis_end, BLOCK):
            at, row = source + o0 * source_row + j0, (1 + j0) * rows_row + o0
            if with_rows:
                weight_and_gradient_block(coef, at, source_row, block, (1 + j0) * block_row + o0, block_row, grad_coef,
                                          rows, row, rows_row, scale, o0, sums)
            else:
                gradient_block(coef, at, source_row, block, (1 + j0) * block_row + o0, block_row, grad_coef,
                               rows, row, rows_row, scale, o0, sums)
        for o in range(o0, o0 + BLOCK):
            acc = _gradients_one_by_one(block, i, c0 + o, o, basis_end, coef, scale[o], rows, with_rows, grad_coef,
                                        sums[o - o0])
            grad_scale_sp[i, c0 + o] = acc * mask[i, c0 + o]
    zero = block.dtype.type(0.0)
    for o in range(out_end, width):
        acc = _gradients_one_by_one(block, i, c0 + o, o, 0, coef, scale[o], rows, with_rows, grad_coef, zero)
        grad_scale_sp[i, c0 + o] = acc * mask[i, c0 + o]


@njit(inline="always", cache=True, fastmath=FASTMATH)
def _gradients_one_by_one(block, i, output, o, first_basis, coef, scale, rows, with_rows, grad_coef, acc):
    """What :func:`_weights_and_gradients` does for bases first_basis.. of one output, entry by entry: acc plus
    that output's sum for grad_scale_sp over them."""
    for j in range(first_basis, coef.shape[2]):
        gradient, coefficient = block[1 + j, o], coef[i, output, j]
        if with_rows:
            rows[1 + j, o] = scale * coefficient
        grad_coef[i, output, j] = scale * gradient
        acc += gradient * coefficient
    return acc


@njit(inline="always", cache=True)
def _untranspose_rows(transposed, out, n0, n1):
    """out[n, i] <- the sum over p of transposed[p, i, n] for n0 <= n < n1 (transposed [P, I, N], out [N, I]), input
    after input: the rows' entries stay in L1 while the inputs go by."""
    for i in range(transposed.shape[1]):
        for n in range(n0, n1):
            total = transposed[0, i, n]
            for p in range(1, transposed.shape[0]):
                total += transposed[p, i, n]
            out[n, i] = total


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _sparse_backward(order, offsets, values, slopes, grad_out, weight, scale_base, scale_sp, mask, coef, grad_x,
                     grad_scale_base, grad_scale_sp, grad_coef, in_block, col_block):
    """The local-support backward from the sorted windows, in tiles of in_block inputs by col_block columns:
    grad_x [N, I] = the slopes' products with grad_out @ W^T (where grad_x is not empty), and, from the
    parameters (see above) where grad_coef is not empty, grad_scale_base, grad_scale_sp [I, O] and grad_coef
    [I, O, G+k], through each input's rows of A^T @ grad_out accumulated in a block [S, col_block] in cache, so that
    the [I*S, O] weight gradient is never stored."""
    n_in, n_rows = offsets.shape[1], grad_x.shape[0]
    n_out = grad_out.shape[1]
    n_slots = offsets.shape[2] + values.shape[1] - 2
    n_starts = offsets.shape[2] - 1
    given, need_x, need_parameters = weight.size > 0, grad_x.size > 0, grad_coef.size > 0
    n_col_blocks = (n_out + col_block - 1) // col_block
    # grad_x transposed, one [I, N] for each column block: an input's sums go along one row, which stays in cache as
    # its rows go by (grad_x's column, one entry per cache line, did not); summed and transposed into grad_x at the end
    transposed = np.zeros((n_col_blocks if need_x else 0, n_in, n_rows), dtype=grad_out.dtype)
    for task in prange(_tile_count(n_in, in_block, n_out, col_block)):
        i0, i1, c0, c1, column_block = _tile_ranges(task, n_in, in_block, n_out, col_block)
        width = _spread_rows(c1 - c0, grad_out.itemsize)
        rows = np.empty((0 if given or not need_x else n_slots, width), dtype=grad_out.dtype)
        scale = np.empty(c1 - c0, dtype=grad_out.dtype)
        block = np.empty((n_slots if need_parameters else 0, width), dtype=grad_out.dtype)
        sums = np.empty(BLOCK, dtype=grad_out.dtype)
        for i in range(i0, i1):
            # input i's coefficients are read once, for its weight rows and its parameters' gradients together
            if need_parameters:
                # input i's lines of grad_coef are asked for while its sums accumulate: a store into a line
                # that is not in the cache waits for it to be read from memory
                _window_gradients(block, 0, 0, i, order, offsets, values, grad_out, c0, c1, grad_coef,
                                  _input_lines(grad_coef, i, c0, c1, order.shape[0] * n_starts))
                _weights_and_gradients(block, i, c0, c1, scale_base, scale_sp, mask, coef, scale, rows, need_x,
                                       grad_scale_base, grad_scale_sp, grad_coef, sums)
            elif need_x and not given:
                _input_weights(scale_base, scale_sp, mask, coef, i, c0, c1, scale, rows, True)
            if need_x:
                matrix, base, w0 = (weight, i * n_slots, c0) if given else (rows, 0, 0)
                ahead_start, ahead_stop, per_step = _next_input(coef, i, i1, c0, c1, order.shape[0] * n_starts)
                grad_row = transposed[column_block, i]
                for b in range(order.shape[0]):
                    for s in range(n_starts):
                        prefetch_lines(coef, ahead_start, ahead_stop, (b * n_starts + s) * per_step, per_step)
                        first, stop = offsets[b, i, s], offsets[b, i, s + 1]
                        _dot_group_rows(grad_row, i, grad_out, c0, c1, matrix, w0, base, base + 1 + s, slopes, order,
                                        b, first, stop)
    if need_x:
        for chunk in prange((n_rows + ROWS_PER_CHUNK - 1) // ROWS_PER_CHUNK):
            _untranspose_rows(transposed, grad_x, chunk * ROWS_PER_CHUNK, min(n_rows, (chunk + 1) * ROWS_PER_CHUNK))


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _sparse_grad_weight(order, offsets, values, grad_out, grad_weight, in_block, col_block):
    n_in = values.shape[0]
    n_slots = grad_weight.shape[0] // n_in
    for tile in prange(_tile_count(n_in, in_block, grad_weight.shape[1], col_block)):
        i0, i1, c0, c1, _ = _tile_ranges(tile, n_in, in_block, grad_weight.shape[1], col_block)
        for i in range(i0, i1):
            _window_gradients(grad_weight, i * n_slots, c0, i, order, offsets, values, grad_out, c0, c1, grad_weight,
                              (0, 0, 0))


def thread_count() -> int:
    """Threads a large kernel call uses now (:func:`kernel_threads`)."""
    return kernel_threads(SERIAL_BELOW)


# An input's coefficients [O, G+k] are read across the basis axis while the weight's rows run along the outputs.
# Above this size (a core's L1 data cache) they can instead be transposed in blocks: which way is faster depends on
# the CPU (see :func:`~kanlib.ops.spline_linear.assembled_weight`).
ASSEMBLY_TILE_ABOVE = 1 << 15


@njit(inline="always", cache=True)
def _input_weights(scale_base, scale_sp, mask, coef, i, c0, c1, scale, tile, blocked):
    """tile[:, :c1 - c0] <- columns c0..c1 of input i's S rows of the assembled weight: ``scale_base * mask``, then the
    G + k rows ``scale_sp * mask * coef`` (scale_base, scale_sp, mask [I, O]; coef [I, O, G+k]; tile [S, >= c1 - c0];
    scale: scratch [>= c1 - c0]).

    Straight (``blocked`` False): each basis row is written along the outputs, reading the coefficients across the
    basis axis. Blocked: 8 x 8 blocks of the coefficients (8 outputs by 8 bases) are transposed through vector
    shuffles and scaled (:mod:`kanlib.ops.block_transpose`), the edges entry by entry; where the coefficients' bases or
    the tile's columns do not lie side by side in memory, straight. Both write the same products.
    """
    n_basis, width = coef.shape[2], c1 - c0
    for o in range(width):
        tile[0, o] = scale_base[i, c0 + o] * mask[i, c0 + o]
        scale[o] = scale_sp[i, c0 + o] * mask[i, c0 + o]
    if not (blocked and tile.strides[1] == tile.itemsize and coef.strides[2] == coef.itemsize):
        for j in range(n_basis):
            for o in range(width):
                tile[1 + j, o] = scale[o] * coef[i, c0 + o, j]
        return
    source_row, target_row = coef.strides[1] // coef.itemsize, tile.strides[0] // tile.itemsize
    source = i * (coef.strides[0] // coef.itemsize) + c0 * source_row
    basis_end, out_end = n_basis - n_basis % BLOCK, width - width % BLOCK
    for o0 in range(0, out_end, BLOCK):
        for j0 in range(0, basis_end, BLOCK):
            scaled_transpose_block(coef, source + o0 * source_row + j0, source_row,
                                   tile, (1 + j0) * target_row + o0, target_row, scale, o0)
        for j in range(basis_end, n_basis):
            for o in range(o0, o0 + BLOCK):
                tile[1 + j, o] = scale[o] * coef[i, c0 + o, j]
    for j in range(n_basis):
        for o in range(out_end, width):
            tile[1 + j, o] = scale[o] * coef[i, c0 + o, j]


@njit(parallel=True, cache=True)
def _assemble_weights(scale_base, scale_sp, mask, coef, out, blocked):
    """out [I, S, O]: each input's rows of the weight (:func:`_input_weights`, straight or blocked)."""
    n_in, n_out = coef.shape[:2]
    for i in prange(n_in):
        _input_weights(scale_base, scale_sp, mask, coef, i, 0, n_out, np.empty(n_out, dtype=out.dtype), out[i],
                       blocked)


@njit(parallel=True, cache=True)
def _assemble_weights_grad(scale_sp, mask, coef, grad, grad_scale_base, grad_scale_sp, grad_coef):
    """The gradients of :func:`assemble_weights` from grad [I, S, O], the gradient of its output: from BLOCK bases on,
    and where grad's outputs lie side by side, in 8 x 8 blocks as the local-support backward folds them
    (:func:`_weights_and_gradients`), else output by output across the bases."""
    n_in, n_out, n_basis = coef.shape
    if n_basis >= BLOCK and grad.strides[2] == grad.itemsize:
        no_rows = np.empty((0, 0), dtype=grad.dtype)
        for i in prange(n_in):
            # scale_sp stands in for scale_base, which only the weight's rows (not written here) would read
            _weights_and_gradients(grad[i], i, 0, n_out, scale_sp, scale_sp, mask, coef, np.empty(n_out, grad.dtype),
                                   no_rows, False, grad_scale_base, grad_scale_sp, grad_coef,
                                   np.empty(BLOCK, grad.dtype))
        return
    for i in prange(n_in):
        for o in range(n_out):
            grad_scale_base[i, o] = grad[i, 0, o] * mask[i, o]
            scale = scale_sp[i, o] * mask[i, o]
            acc = grad.dtype.type(0.0)
            for j in range(n_basis):
                g = grad[i, 1 + j, o]
                grad_coef[i, o, j] = scale * g
                acc += g * coef[i, o, j]
            grad_scale_sp[i, o] = acc * mask[i, o]


window_spans = sized_kernel(_window_spans)
window_spans_uniform = sized_kernel(_window_spans_uniform)
sorted_windows = sized_kernel(_sorted_windows)
rows_by_start = sized_kernel(_rows_by_start)
sparse_forward = sized_kernel(_sparse_forward)
sparse_backward = sized_kernel(_sparse_backward)
sparse_grad_weight = sized_kernel(_sparse_grad_weight)
assemble_weights = sized_kernel(_assemble_weights)
assemble_weights_grad = sized_kernel(_assemble_weights_grad)
