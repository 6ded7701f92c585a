"""Fused CPU kernel (numba) for the elementwise bases of :mod:`.reference`.

One pass over the rows writes the expanded input A for BLAS and/or turns the gradient of A into the gradients of
x and of the basis' own parameters, writing A over that gradient, so that backward holds one [N, S*I] buffer and
forward keeps only x. A is laid out basis-major, ``A[n, s*I + i] = phi_s(x[n, i])`` (the caller permutes the
weight's rows to match), so that every inner loop runs along the inputs and vectorizes.

The bases (``kind``): Gaussian RBF (``grid`` [S], ``scale`` = width), RSWAF (``grid``, ``scale`` = inverse
width), ReLU bumps (``starts``, ``ends`` [S, I], basis-major as A) and Chebyshev (S = degree + 1 polynomials of
tanh x). Every exponential they need has a non-positive argument (exp(-z^2); sech^2 a = 4e / (1 + e)^2 and
tanh |a| = (1 - e) / (1 + e) with e = exp(-2|a|)), which :func:`kanlib.ops.fast_exp.exp_nonpositive` evaluates
over a whole row in loops that LLVM vectorizes.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..fast_exp import exp_constants, exp_nonpositive

__all__ = ["RBF", "RSWAF", "RELU_BUMP", "CHEBYSHEV", "KINDS", "exp_constants", "expand"]

RBF, RSWAF, RELU_BUMP, CHEBYSHEV = 0, 1, 2, 3
KINDS = {"rbf": RBF, "rswaf": RSWAF, "relu": RELU_BUMP, "chebyshev": CHEBYSHEV}
ROWS_PER_CHUNK = 16  # the unit of parallel work
FASTMATH = {"contract"}  # no reassociation: it would undo fast_exp's two-part reduction by ln 2


@njit(inline="always", fastmath=FASTMATH)
def _rbf_row(x, grid, inv_width, phi, bits, constants, grad_a, grad_x, with_grad):
    """phi [S*I] <- exp(-((x_i - grid_s) / width)^2); with_grad, grad_x [I] <- sum_s grad_a * phi_s'(x_i)."""
    n_in, n_basis = x.shape[0], grid.shape[0]
    for s in range(n_basis):
        row, centre = phi[s * n_in:(s + 1) * n_in], grid[s]
        for i in range(n_in):
            z = (x[i] - centre) * inv_width
            row[i] = -z * z
    exp_nonpositive(phi, bits, n_basis * n_in, constants[0])
    if with_grad:
        grad_x[:] = 0.0
        for s in range(n_basis):
            row, grad_row, centre = phi[s * n_in:(s + 1) * n_in], grad_a[s * n_in:(s + 1) * n_in], grid[s]
            for i in range(n_in):
                grad_x[i] += grad_row[i] * (-2.0 * inv_width * inv_width) * (x[i] - centre) * row[i]


@njit(inline="always", fastmath=FASTMATH)
def _rswaf_row(x, grid, inv_width, phi, bits, constants, grad_a, grad_x, grad_scale, with_grad):
    """phi [S*I] <- 1 - tanh(a)^2, a = (x_i - grid_s) * inv_width; with_grad, grad_x [I] and grad_scale [I]
    (accumulated, summed over s) <- the gradient through phi_s(x_i) in x and in inv_width."""
    n_in, n_basis = x.shape[0], grid.shape[0]
    for s in range(n_basis):
        row, centre = phi[s * n_in:(s + 1) * n_in], grid[s]
        for i in range(n_in):
            row[i] = -2.0 * abs((x[i] - centre) * inv_width)
    exp_nonpositive(phi, bits, n_basis * n_in, constants[0])
    if with_grad:
        grad_x[:] = 0.0
    for s in range(n_basis):
        row, grad_row, centre = phi[s * n_in:(s + 1) * n_in], grad_a[s * n_in:(s + 1) * n_in], grid[s]
        for i in range(n_in):
            e = row[i]
            sech2 = 4.0 * e / ((1.0 + e) * (1.0 + e))
            if with_grad:
                delta = x[i] - centre
                tanh_a = (1.0 - e) / (1.0 + e)
                tanh_a = -tanh_a if delta < 0 else tanh_a
                d_phi = grad_row[i] * (-2.0 * tanh_a * sech2)  # the gradient's share through a
                grad_x[i] += d_phi * inv_width
                grad_scale[i] += d_phi * delta
            row[i] = sech2


@njit(inline="always", fastmath=FASTMATH)
def _relu_row(x, starts, ends, scales, inv_spans, phi, grad_a, grad_x, grad_starts, grad_ends, with_grad):
    """phi [S*I] <- (r relu(e - x) relu(x - s))^2 with starts, ends, scales r = 4 / (e - s)^2 and inv_spans
    1 / (e - s), all [S, I]; with_grad, grad_x [I] and grad_starts, grad_ends [S, I] (accumulated) <- the
    gradient through phi."""
    n_in, n_basis = x.shape[0], starts.shape[0]
    if with_grad:
        grad_x[:] = 0.0
    for s in range(n_basis):
        row, grad_row = phi[s * n_in:(s + 1) * n_in], grad_a[s * n_in:(s + 1) * n_in]
        start_row, end_row, scale_row, inv_span_row = starts[s], ends[s], scales[s], inv_spans[s]
        grad_start_row, grad_end_row = grad_starts[s], grad_ends[s]
        for i in range(n_in):
            value, start, end, r = x[i], start_row[i], end_row[i], scale_row[i]
            rise = value - start if value > start else 0.0 * value
            fall = end - value if end > value else 0.0 * value
            v = r * rise * fall
            if with_grad:
                g = grad_row[i] * 2.0 * v  # d phi = 2 v dv
                d_rise = 1.0 if value > start else 0.0
                d_fall = 1.0 if end > value else 0.0
                grad_x[i] += g * r * (d_rise * fall - rise * d_fall)
                # dr/dstart = 2 r / (e - s) = -dr/dend
                grad_start_row[i] += g * (-r * d_rise * fall + 2.0 * v * inv_span_row[i])
                grad_end_row[i] += g * (r * rise * d_fall - 2.0 * v * inv_span_row[i])
            row[i] = v * v


@njit(inline="always", fastmath=FASTMATH)
def _chebyshev_row(x, n_basis, phi, slopes, t, bits, constants, grad_a, grad_x, with_grad):
    """phi [S*I] <- T_s(tanh x_i), s < S; with_grad, grad_x [I] <- sum_s grad_a * d T_s(tanh x_i) / dx_i.
    ``slopes`` [S*I] (dT_s / dt) and ``t`` [I] are scratch."""
    n_in = x.shape[0]
    for i in range(n_in):
        t[i] = -2.0 * abs(x[i])
    exp_nonpositive(t, bits, n_in, constants[0])
    for i in range(n_in):
        e = t[i]
        magnitude = (1.0 - e) / (1.0 + e)
        t[i] = -magnitude if x[i] < 0 else magnitude
    phi[:n_in] = 1.0
    slopes[:n_in] = 0.0
    if n_basis > 1:
        phi[n_in:2 * n_in] = t
        slopes[n_in:2 * n_in] = 1.0
    for s in range(2, n_basis):
        row, last, before = phi[s * n_in:(s + 1) * n_in], phi[(s - 1) * n_in:s * n_in], phi[(s - 2) * n_in:(s - 1) * n_in]
        d_row = slopes[s * n_in:(s + 1) * n_in]
        d_last, d_before = slopes[(s - 1) * n_in:s * n_in], slopes[(s - 2) * n_in:(s - 1) * n_in]
        for i in range(n_in):
            row[i] = 2.0 * t[i] * last[i] - before[i]
            d_row[i] = 2.0 * last[i] + 2.0 * t[i] * d_last[i] - d_before[i]
    if with_grad:
        grad_x[:] = 0.0
        for s in range(n_basis):
            grad_row, d_row = grad_a[s * n_in:(s + 1) * n_in], slopes[s * n_in:(s + 1) * n_in]
            for i in range(n_in):
                grad_x[i] += grad_row[i] * d_row[i]
        for i in range(n_in):
            grad_x[i] *= 1.0 - t[i] * t[i]


@njit(parallel=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def expand(x, kind, grid, scale, starts, ends, n_basis, bits_like, constants, grad_expanded, out, grad_x,
           grad_scale, grad_starts, grad_ends, with_values, with_grad):
    """x [N, I]; A [N, S*I] basis-major. with_values: out <- A (out may be grad_expanded itself: each row is read
    before it is written). with_grad: grad_x [N, I] <- the gradient of x from grad_expanded [N, S*I]; for RSWAF
    grad_scale [C, I], for ReLU grad_starts and grad_ends [C, S, I] <- each chunk's share of the parameters'
    gradients (C chunks of ROWS_PER_CHUNK rows; the caller sums them). ``bits_like`` is an empty integer array
    of x's width; ``constants`` = (lowest,), :func:`exp_constants`' lowest argument."""
    n_rows, n_in = x.shape
    width = n_basis * n_in
    n_chunks = (n_rows + ROWS_PER_CHUNK - 1) // ROWS_PER_CHUNK
    for chunk in prange(n_chunks):
        phi = np.empty(width, dtype=x.dtype)
        slopes = np.empty(width if kind == CHEBYSHEV else 0, dtype=x.dtype)
        inv_spans, scales = np.empty_like(starts), np.empty_like(starts)  # per chunk, not per value
        for s in range(starts.shape[0]):
            for i in range(starts.shape[1]):
                inv_spans[s, i] = 1.0 / (ends[s, i] - starts[s, i])
                scales[s, i] = 4.0 * inv_spans[s, i] * inv_spans[s, i]
        t = np.empty(n_in, dtype=x.dtype)
        bits = np.empty(width, dtype=bits_like.dtype)
        row_grad_x = np.zeros(n_in, dtype=x.dtype)
        for n in range(chunk * ROWS_PER_CHUNK, min(n_rows, (chunk + 1) * ROWS_PER_CHUNK)):
            grad_a = grad_expanded[n] if with_grad else phi
            if kind == RBF:
                _rbf_row(x[n], grid, 1.0 / scale, phi, bits, constants, grad_a, row_grad_x, with_grad)
            elif kind == RSWAF:
                _rswaf_row(x[n], grid, scale, phi, bits, constants, grad_a, row_grad_x, grad_scale[chunk] if
                           with_grad else t, with_grad)
            elif kind == RELU_BUMP:
                _relu_row(x[n], starts, ends, scales, inv_spans, phi, grad_a, row_grad_x, grad_starts[chunk] if with_grad else starts,
                          grad_ends[chunk] if with_grad else ends, with_grad)
            else:
                _chebyshev_row(x[n], n_basis, phi, slopes, t, bits, constants, grad_a, row_grad_x, with_grad)
            if with_grad:
                for i in range(n_in):
                    grad_x[n, i] = row_grad_x[i]
            if with_values:
                row = out[n]
                for j in range(width):
                    row[j] = phi[j]
