"""Values derived from a tensor (a layer's knots, a lookup table's codes), kept until the tensor changes.

The kernels' launchers need constants computed from a layer's grid on every call (float32 copies, knot spacings,
whether the grid is uniform) and recompute them only when the grid changes. A cache entry is keyed by the
tensor's identity and holds a weak reference to it (the entry goes when the tensor does) and what identifies its
values: its version counter, which in-place operations bump, and its storage address, since assigning
``tensor.data`` (as pykan's code updates a grid) swaps the storage without bumping the version. Changes made
through ``tensor.data`` in place (``tensor.data.mul_(2)``) are seen by neither, and not by autograd either.
"""
from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable
from typing import Any

import torch

__all__ = ["derived"]


def derived(cache: dict, tensor: torch.Tensor, build: Callable[[], Any], *variant: Hashable) -> Any:
    """``build()`` for ``tensor`` (and ``variant``, extra hashable arguments the value depends on), cached in
    ``cache`` (a dict the caller owns) while the tensor's storage and version stay the same."""
    key = (id(tensor), *variant)
    identity = (tensor.data_ptr(), tensor._version)
    cached = cache.get(key)
    if cached is not None and cached[0]() is tensor and cached[1] == identity:
        return cached[2]
    value = build()
    cache[key] = (weakref.ref(tensor, lambda _: cache.pop(key, None)), identity, value)
    return value
