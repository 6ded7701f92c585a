"""Ranking the library's functions for one edge's samples (pykan's ``suggest_symbolic``)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from ..checks import check_int, is_real
from .fit import fit_affine
from .library import resolve_library

__all__ = ["Candidate", "EdgeChoice", "rank_candidates"]


class Candidate(NamedTuple):
    """One library function fitted to an edge: ``c * name(a x + b) + d`` with its R^2, complexity and score
    (lower is better). ``pandas.DataFrame(candidates)`` shows a list of them as a table."""
    name: str
    r2: float
    complexity: int
    score: float
    a: float
    b: float
    c: float
    d: float


class EdgeChoice(NamedTuple):
    """What ``KAN.auto_symbolic`` did with edge (l, i, j): ``name`` is the function it has or was offered
    (None when it was already fixed), ``r2`` its fit (None when not fitted), ``fixed`` whether this call fixed it."""
    l: int
    i: int
    j: int
    name: str | None
    r2: float | None
    fixed: bool


def score(r2: np.ndarray, complexity: np.ndarray, weight_simple: float) -> np.ndarray:
    """pykan's ranking loss: ``weight_simple * complexity + (1 - weight_simple) * log2(1 + 1e-5 - r2)``."""
    return weight_simple * complexity + (1 - weight_simple) * np.log2(1 + 1e-5 - r2)


def rank_candidates(x: torch.Tensor, y: torch.Tensor, lib: Sequence[str] | None = None, topk: int | None = 5,
                    a_range=(-10.0, 10.0), b_range=(-10.0, 10.0), weight_simple: float = 0.8) -> list[Candidate]:
    """Fit every function of ``lib`` (None: the whole library) to samples x, y [N] with :func:`fit_affine` and
    return the ``topk`` best (all when None), best first, ordered by :func:`score` as pykan orders them."""
    library = resolve_library(lib)
    if topk is not None:
        topk = check_int("topk", topk, 1)
    if not is_real(weight_simple) or not 0.0 <= float(weight_simple) <= 1.0:
        raise ValueError(f"weight_simple must be a number in [0, 1], got {weight_simple!r}")
    fits = [fit_affine(x, y, entry.torch, a_range, b_range) for entry in library.values()]
    r2 = np.array([fit.r2 for fit in fits], dtype=np.float64)
    complexity = np.array([entry.complexity for entry in library.values()], dtype=np.float64)
    scores = score(r2, complexity, float(weight_simple))
    order = np.argsort(scores)[:topk]
    entries = list(library.values())
    return [Candidate(entries[k].name, fits[k].r2, entries[k].complexity, float(scores[k]),
                      fits[k].a, fits[k].b, fits[k].c, fits[k].d) for k in order]
