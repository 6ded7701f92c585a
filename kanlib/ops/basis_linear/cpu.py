"""Fused CPU kernel (numba) for the elementwise bases of :mod:`.reference`: one pass writes the expanded input
A [N, I*S] (BLAS then does the product) and/or turns the gradient of A into the gradient of x, writing A over
that gradient, so that backward holds one [N, I*S] buffer and forward keeps only x.

The basis is chosen by ``kind`` (a compile-time branch per element): Gaussian RBF (``grid`` [S], ``scale`` =
width), RSWAF (``grid``, ``scale`` = inverse width), ReLU bumps (``starts``, ``ends`` [I, S]) and Chebyshev
(S = degree + 1 polynomials of tanh x).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

__all__ = ["RBF", "RSWAF", "RELU_BUMP", "CHEBYSHEV", "KINDS", "expand"]

RBF, RSWAF, RELU_BUMP, CHEBYSHEV = 0, 1, 2, 3
KINDS = {"rbf": RBF, "rswaf": RSWAF, "relu": RELU_BUMP, "chebyshev": CHEBYSHEV}
MAX_BASES = 256  # the scratch arrays of one input value
ROWS_PER_CHUNK = 16  # the unit of parallel work
FASTMATH = {"reassoc", "contract", "arcp", "afn"}


@njit(inline="always", cache=True, fastmath=FASTMATH)
def _bases(value, i, kind, grid, scale, starts, ends, n_basis, values, slopes, with_slopes):
    """values[s] = phi_s(value) and, with_slopes, slopes[s] = phi_s'(value), s < n_basis."""
    if kind == CHEBYSHEV:
        t = math.tanh(value)
        dt = 1.0 - t * t
        previous, current = 1.0, t
        d_previous, d_current = 0.0, 1.0
        values[0] = 1.0
        slopes[0] = 0.0
        if n_basis > 1:
            values[1] = t
            slopes[1] = dt
        for s in range(2, n_basis):
            following = 2.0 * t * current - previous
            d_following = 2.0 * current + 2.0 * t * d_current - d_previous
            values[s] = following
            slopes[s] = d_following * dt
            previous, current = current, following
            d_previous, d_current = d_current, d_following
        return
    for s in range(n_basis):
        if kind == RBF:
            z = (value - grid[s]) / scale
            phi = math.exp(-z * z)
            values[s] = phi
            if with_slopes:
                slopes[s] = -2.0 * z / scale * phi
        elif kind == RSWAF:
            t = math.tanh((value - grid[s]) * scale)
            values[s] = 1.0 - t * t
            if with_slopes:
                slopes[s] = -2.0 * t * (1.0 - t * t) * scale
        else:
            start, end = starts[i, s], ends[i, s]
            rise = value - start if value > start else 0.0 * value
            fall = end - value if end > value else 0.0 * value
            r = 4.0 / ((end - start) * (end - start))
            v = r * rise * fall
            values[s] = v * v
            if with_slopes:
                d_rise = 1.0 if value > start else 0.0
                d_fall = -1.0 if end > value else 0.0
                slopes[s] = 2.0 * v * r * (d_rise * fall + rise * d_fall)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def expand(x, kind, grid, scale, starts, ends, n_basis, grad_expanded, out, grad_x, with_values, with_grad):
    """x [N, I]: with_grad, grad_x [N, I] = sum_s grad_expanded[n, i*S+s] * phi_s'(x); with_values, out
    [N, I*S] = phi_s(x) (out may be grad_expanded itself: each entry is read before it is written)."""
    n_rows, n_in = x.shape
    n_chunks = (n_rows + ROWS_PER_CHUNK - 1) // ROWS_PER_CHUNK
    for chunk in prange(n_chunks):
        values = np.empty(MAX_BASES, dtype=x.dtype)
        slopes = np.empty(MAX_BASES, dtype=x.dtype)
        for n in range(chunk * ROWS_PER_CHUNK, min(n_rows, (chunk + 1) * ROWS_PER_CHUNK)):
            for i in range(n_in):
                _bases(x[n, i], i, kind, grid, scale, starts, ends, n_basis, values, slopes, with_grad)
                offset = i * n_basis
                if with_grad:
                    acc = 0.0
                    for s in range(n_basis):
                        acc += grad_expanded[n, offset + s] * slopes[s]
                    grad_x[n, i] = acc
                if with_values:
                    for s in range(n_basis):
                        out[n, offset + s] = values[s]
