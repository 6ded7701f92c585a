"""The 8 x 8 block transposition intrinsics (kanlib.ops.block_transpose) against numpy's transpose."""
import numpy as np
import pytest
from numba import njit
from numba.core.errors import TypingError

from kanlib.ops.block_transpose import BLOCK, scaled_transpose_block, transpose_block


@njit
def _transpose(source, source_start, source_row, target, target_start, target_row):
    transpose_block(source, source_start, source_row, target, target_start, target_row)


@njit
def _scaled(source, source_start, source_row, target, target_start, target_row, scale, scale_start):
    scaled_transpose_block(source, source_start, source_row, target, target_start, target_row, scale, scale_start)


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
