"""The kernels' exponential (kanlib.ops.fast_exp) against numpy's, in both precisions."""
import numpy as np
import pytest
from numba import njit

from kanlib.ops.fast_exp import exp_constants, exp_nonpositive


@njit
def _exp(values, bits, lowest):
    exp_nonpositive(values, bits, values.shape[0], lowest)


@pytest.mark.parametrize("dtype, rtol", [(np.float32, 2.5e-7), (np.float64, 5e-16)])
def test_exp_nonpositive_matches_numpy(dtype, rtol):
    """Fresh random arguments over the whole range (and an odd count, so that the vector loops have a remainder),
    integers and half-integers of ln 2 (the reduction's edges), 0, the lowest argument and past it, -inf and NaN."""
    lowest, _, _, int_dtype = exp_constants(np.dtype(dtype))
    rng = np.random.default_rng()
    random = rng.uniform(lowest, 0.0, size=1000)
    edges = -np.log(2.0) * np.arange(0.0, 120.0, 0.5)
    values = np.concatenate([random, edges[edges >= lowest], [0.0, -0.0, lowest]]).astype(dtype)
    got = values.copy()
    _exp(got, np.empty(len(got), dtype=int_dtype), lowest)
    np.testing.assert_allclose(got, np.exp(values.astype(np.float64)), rtol=rtol, atol=0)
    assert got.dtype == dtype

    special = np.array([lowest - 1.0, lowest - 500.0, -np.inf, np.nan], dtype=dtype)
    _exp(special, np.empty(4, dtype=int_dtype), lowest)
    np.testing.assert_array_equal(special[:3], [got[-1]] * 3)  # below the lowest argument: exp(lowest)
    assert np.isnan(special[3])
