"""A vectorizable exponential for the numba kernels, for non-positive arguments.

numba's ``math.exp`` is a scalar call per value (the pip llvmlite has no vector math library), several times
slower than a loop LLVM can vectorize. Every exponential the kernels need has a non-positive argument: a Gaussian
exp(-z^2), and sigmoid, tanh and sech^2 written with e = exp(-|a|) or exp(-2|a|). :func:`exp_nonpositive`
evaluates a whole array of them: Cody-Waite reduction by ln 2 (Cody and Waite, "Software Manual for the Elementary
Functions", 1980), a Taylor polynomial on |r| <= ln 2 / 2 and 2^k written into the exponent bits. The polynomial's
degree follows the precision: 13 in float64 (truncation below 1e-17 relative), 7 in float32 (below 6e-9, a tenth
of float32's rounding unit), where the six terms more only cost time.

Callers compile it with ``fastmath={"contract"}`` at most: reassociation would undo the two-part reduction.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = ["exp_constants", "exp_nonpositive"]

LOG2E = 1.4426950408889634
LN2_HI = 0.693145751953125  # ln 2 in its high 16 bits: k * LN2_HI is exact for |k| < 2^8 in float32
LN2_LO = 1.4286068203094173e-06  # ln 2 - LN2_HI
TAYLOR = tuple(1.0 / math.factorial(n) for n in range(14))
DEGREE_DOUBLE, DEGREE_SINGLE = 13, 7


# IEEE 754's exponent bias and mantissa bits: float32, float64
BIAS_SINGLE, SHIFT_SINGLE = 127, 23
BIAS_DOUBLE, SHIFT_DOUBLE = 1023, 52


def exp_constants(dtype: np.dtype) -> tuple[float, int, int, np.dtype]:
    """(lowest argument, exponent bias, mantissa bits, integer dtype of the same width) of a float dtype; below
    the lowest argument exp gives exp(lowest), the smallest normal number's order (the reference gives that or
    less: an absolute difference under 1.2e-38 in float32)."""
    if dtype == np.float32:
        return -87.0, BIAS_SINGLE, SHIFT_SINGLE, np.dtype(np.int32)
    return -708.0, BIAS_DOUBLE, SHIFT_DOUBLE, np.dtype(np.int64)


@njit(inline="always", fastmath={"contract"})
def exp_nonpositive(values, bits, count, lowest):
    """values[:count] <- exp(values[:count]) for arguments <= 0 (lowest: :func:`exp_constants`'); NaN stays NaN.
    ``bits`` is an integer array of the values' width, read back as floats (2^k)."""
    powers = bits.view(values.dtype)
    real = values.dtype.type  # constants of the values' own precision keep float32 loops in float32
    whole = bits.dtype.type
    # float32 (1e-8 is below half its unit at 1): a constant to LLVM, so the polynomial's loop unrolls, and the
    # exponent's shift is a constant amount, which lets LLVM keep the integers at their width (numba widens int32
    # arithmetic to 64 bits; a shift by a run-time amount kept it there, 1.5x slower in float32)
    single = real(1.0) + real(1e-8) == real(1.0)
    degree = DEGREE_SINGLE if single else DEGREE_DOUBLE
    bias = BIAS_SINGLE if single else BIAS_DOUBLE
    shift = SHIFT_SINGLE if single else SHIFT_DOUBLE
    lowest, log2e, half, ln2_hi, ln2_lo = real(lowest), real(LOG2E), real(0.5), real(LN2_HI), real(LN2_LO)
    for j in range(count):
        t = values[j]
        t = lowest if t < lowest else t
        k = np.floor(t * log2e + half)
        r = (t - k * ln2_hi) - k * ln2_lo
        p = real(TAYLOR[degree])
        for n in range(degree - 1, -1, -1):
            p = p * r + real(TAYLOR[n])
        values[j] = p
        # converted at the integers' own width: AVX2 converts packed floats to int32, not to int64
        bits[j] = ((whole(k) if k == k else whole(0)) + whole(bias)) << whole(shift)
    for j in range(count):
        values[j] = values[j] * powers[j]
