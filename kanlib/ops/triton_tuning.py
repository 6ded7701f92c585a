"""Which tile configurations the Triton kernels' autotuners try on a GPU.

Every listed configuration by default. ``KANLIB_TRITON_AUTOTUNE=first`` keeps the first of each list alone: the
GPU reference run sets it for its tests and for ``bench images``, since compiling and timing every configuration
for every small shape they meet costs far more than the work itself; the other benchmarks tune over the whole
lists.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TypeVar

__all__ = ["AUTOTUNE_ENV", "AUTOTUNE_MODES", "tuned"]

AUTOTUNE_ENV = "KANLIB_TRITON_AUTOTUNE"
AUTOTUNE_MODES = ("all", "first")
T = TypeVar("T")


def tuned(configs: Sequence[T]) -> list[T]:
    """``configs``, or its first alone when ``KANLIB_TRITON_AUTOTUNE=first``; ValueError for another value."""
    mode = os.environ.get(AUTOTUNE_ENV, "all")
    if mode not in AUTOTUNE_MODES:
        raise ValueError(f"{AUTOTUNE_ENV}: expected one of {AUTOTUNE_MODES}, got {mode!r}")
    return list(configs[:1] if mode == "first" else configs)
