"""The 8 x 8 block transposition intrinsics (kanlib.ops.block_transpose) against numpy's transpose."""
import numpy as np
import pytest
from numba import njit
from numba.core.errors import TypingError

from kanlib.ops.block_transpose import (BLOCK, gradient_block, scaled_transpose_block, transpose_block,
                                       weight_and_gradient_block)


@njit
def _transpose(source, source_start, source_row, target, target_start, target_row):
    transpose_block(source, source_start, source_row, target, target_start, target_row)


@njit
def _scaled(source, source_start, source_row, target, target_start, target_row, scale, scale_start):
    scaled_transpose_block(source, source_start, source_row, target, target_start, target_row, scale, scale_start)


@njit
def _gradient(with_rows, *args):
    if with_rows:
        weight_and_gradient_block(*args)
    else:
        gradient_block(*args)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_block_inside_larger_arrays_is_transposed_and_nothing_else_written(dtype):
    rng = np.random.default_rng(0)
    source = rng.standard_normal((11, 13)).astype(dtype)
    target = np.full((10, 12), 7.0, dtype)
    _transpose(source, 2 * 13 + 3, 13, target, 1 * 12 + 2, 12)
    want = np.full((10, 12), 7.0, dtype)
    want[1:1 + BLOCK, 2:2 + BLOCK] = source[2:2 + BLOCK, 3:3 + BLOCK].T
    assert np.array_equal(target, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_scaled_block_multiplies_each_written_row_by_the_scale(dtype):
    rng = np.random.default_rng(1)
    source = rng.standard_normal((9, 17)).astype(dtype)
    scale = rng.standard_normal(21).astype(dtype)
    target = np.zeros((BLOCK, 9), dtype)
    _scaled(source, 1 * 17 + 5, 17, target, 1, 9, scale, 4)
    assert np.array_equal(target[:, 1:], source[1:1 + BLOCK, 5:5 + BLOCK].T * scale[4:4 + BLOCK])
    assert not target[:, 0].any()


def test_the_starts_count_from_a_views_first_element():
    base = np.arange(20 * 30, dtype=np.float64).reshape(20, 30)
    view = base[4:, 6:]  # rows still 30 elements apart
    target = np.zeros((BLOCK, BLOCK))
    _transpose(view, 0, 30, target, 0, BLOCK)
    assert np.array_equal(target, base[4:4 + BLOCK, 6:6 + BLOCK].T)


def test_arrays_of_other_or_mixed_dtypes_are_refused():
    with pytest.raises(TypingError):
        _transpose(np.zeros((8, 8), np.float32), 0, 8, np.zeros((8, 8), np.float64), 0, 8)
    with pytest.raises(TypingError):
        _transpose(np.zeros((8, 8), np.int32), 0, 8, np.zeros((8, 8), np.int32), 0, 8)


@pytest.mark.parametrize("with_rows", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_gradient_block_is_folded_onto_the_coefficients_and_their_scale(dtype, with_rows):
    """coef [outputs, bases] and the weight's gradient [bases, outputs], blocks inside larger arrays: the
    coefficients' gradient (laid out as coef, scaled per output), the running sums of gradient * coefficient per output
    added to, and with the weight's rows the scaled transposed coefficients; nothing else written."""
    rng = np.random.default_rng(2)
    coef = rng.standard_normal((11, 13)).astype(dtype)  # block at outputs 2.., bases 4..
    gradient = rng.standard_normal((12, 15)).astype(dtype)  # block at bases 3.., outputs 5..
    scale = rng.standard_normal(20).astype(dtype)
    sums = rng.standard_normal(BLOCK).astype(dtype)
    target, rows = np.full((11, 13), 7.0, dtype), np.full((10, 14), 7.0, dtype)
    before = sums.copy()
    _gradient(with_rows, coef, 2 * 13 + 4, 13, gradient, 3 * 15 + 5, 15, target, rows, 1 * 14 + 6, 14, scale, 9,
              sums)
    c, g, s = coef[2:10, 4:12], gradient[3:11, 5:13], scale[9:17]  # c [output, basis], g [basis, output]
    want_target = np.full((11, 13), 7.0, dtype)
    want_target[2:10, 4:12] = g.T * s[:, None]
    assert np.array_equal(target, want_target)
    np.testing.assert_allclose(sums, before + (g.T * c).sum(axis=1), rtol=1e-5 if dtype == np.float32 else 1e-12)
    want_rows = np.full((10, 14), 7.0, dtype)
    if with_rows:
        want_rows[1:9, 6:14] = c.T * s
    assert np.array_equal(rows, want_rows)


def test_the_gradient_blocks_refuse_mixed_dtypes():
    arrays = [np.zeros((8, 8), np.float32) for _ in range(6)]
    arrays[2] = np.zeros((8, 8), np.float64)
    coef, gradient, target, rows, scale, sums = arrays
    with pytest.raises(TypingError):
        _gradient(True, coef, 0, 8, gradient, 0, 8, target, rows, 0, 8, scale, 0, sums)
