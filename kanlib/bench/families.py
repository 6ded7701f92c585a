"""Families benchmark: the basis-expansion KAN layers (FastKAN's RBF, FasterKAN's RSWAF, ReLU-KAN, ChebyKAN)
against the performance model's floor, the dense product of the same K, and against their unfused reference, all
measured in the same run.

Each family's layer expands each of its I inputs into S basis values and multiplies the [B, I*S] expansion with a
[I*S, O] weight (:class:`kanlib.layers.basis_kan.BasisKAN`), plus, where the layer has a base branch (RBFKAN's
silu), a [B, I] @ [I, O] product; its floor is the dense product with K = I*S, or I*(S + 1) with a base branch (as
the layer benchmark's K = I*(G + k + 1) counts the B-spline layer's base branch). For
each grid size G, with batch B and I = O = width, the families (:func:`family_layer`) are:

- ``rbf``: ``RBFKAN(I, O, grid_size=G)`` (S = G), with its layer norm, silu base branch and bias;
- ``rswaf``: ``RSWAFKAN(I, O, grid_size=G)`` (S = G);
- ``relu``: ``ReLUKAN(I, O, grid_size=G)`` (S = G + 3, its spline order being 3);
- ``chebyshev``: ``ChebyKAN(I, O, degree=G - 1)`` (S = G).

and the candidates of each family:

- ``dense``: the floor, ``X @ W`` with X [B, K], W [K, O], K = I*S (+ I with a base branch); X and W require
  grad.
- ``kanlib``: the family's layer with ``backend="auto"``.
- ``eager``: the same layer (same parameters) with ``backend="eager"``, its unfused reference, which keeps the
  [B, I*S] expansion for backward.
- ``fastkan`` (rbf only): :class:`~kanlib.bench.candidates.FastKANFormula`, fast-kan's ``FastKANLayer`` forward in
  plain PyTorch holding the RBFKAN's weights (the same function).

Besides these, one ``mlp`` row per run: ``silu(nn.Linear(I, O)(x))``, measured with the first grid size's
candidates; it has no family, grid or dense product (those keys are None).

A candidate whose first training step raises gets a row with the reason in ``skipped`` and no figures; the run
goes on. Every other row has ``skipped`` None.

Inputs x [B, I] are uniform on the family's input range (INPUT_RANGES: the grid range of its default layer, which
the RBF and RSWAF layers see after their layer norm; (-1, 1) for ChebyKAN, whose tanh takes any input) widened by 10%
of its width on each side, drawn from a seeded torch.Generator; parameters are initialized after
``torch.manual_seed(seed)``.

Row keys: ``family``, ``n_basis`` (S), ``dense_k`` (K), ``candidate``, ``grid``, ``batch``, ``width``, ``dtype``;
times in ms, as in :mod:`kanlib.bench.layer`:

- ``fwd_*_ms``: the forward pass with autograd recording, median, quartiles, min, max, and ``fwd_n``.
- ``fwdbwd_*_ms``: forward, then ``torch.autograd.grad`` of the output against the input and every trainable
  parameter with a fixed random output gradient [B, O].
- ``ratio_to_dense``: forward+backward median over that of the same family's dense product, same grid, same run.
- ``peak_bytes``: peak training memory of one forward+backward step (what the step allocates plus
  ``state_bytes``, the bytes of its input, output gradient, parameters and buffers);
  ``memory_ratio_to_dense``: over the same family's dense product's.
- ``built_as`` (fastkan rows only): what was built.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..checks import check_int, resolve_device
from ..layers import RBFKAN, RSWAFKAN, ChebyKAN, ReLUKAN
from ..layers.basis_kan import BasisKAN
from .candidates import (DTYPES, GRID_RANGE, OUTSIDE_FRACTION, Candidate, FastKANFormula, check_sizes,
                         dense_candidate, measure, module_candidate, training_step_failure, uniform_inputs)
from .targets import target_entry

__all__ = [
    "CANDIDATES",
    "DTYPES",
    "FAMILIES",
    "FAMILY_TITLES",
    "INPUT_RANGES",
    "TABLE_COLUMNS",
    "TARGETS",
    "TARGET_CONFIGURATION",
    "family_layer",
    "run_families_benchmark",
    "target_report",
]

FAMILIES = ("rbf", "rswaf", "relu", "chebyshev")
FAMILY_TITLES = {"rbf": "FastKAN (RBF)", "rswaf": "FasterKAN (RSWAF)", "relu": "ReLU-KAN", "chebyshev": "ChebyKAN"}
CANDIDATES = ("dense", "kanlib", "eager", "fastkan")  # per family, in row order; fastkan for rbf only
INPUT_RANGES = {"rbf": (-2.0, 2.0), "rswaf": (-2.0, 2.0), "relu": (0.0, 1.0), "chebyshev": GRID_RANGE}
FASTKAN_BUILT_AS = ("fast-kan's FastKANLayer formula (Li 2024) in plain torch: LayerNorm, exp(-((x - grid) / h)^2), "
                    "Linear without bias over [B, I*S], plus Linear(silu(x)); holding the RBFKAN's weights")
TABLE_COLUMNS = (
    "grid", "family", "n_basis", "dense_k", "candidate", "fwd_median_ms", "fwdbwd_median_ms", "fwdbwd_q25_ms",
    "fwdbwd_q75_ms", "ratio_to_dense", "peak_bytes", "memory_ratio_to_dense", "skipped",
)
# The goals at TARGET_CONFIGURATION: (name, grid, family, reference candidate, goal, direction), each on the fwd+bwd
# median of the family's kanlib layer over that of the reference candidate of the same family and grid.
TARGETS = (
    *((f"fwd+bwd time of {family} layer / dense product of the same K at G = 5", 5, family, "dense", 1.3, "<=")
      for family in FAMILIES),
    ("fwd+bwd time of kanlib RBFKAN / fast-kan's formula at G = 5", 5, "rbf", "fastkan", 1.0, "<"),
)
TARGET_CONFIGURATION = {"batch": 1024, "width": 256, "dtype": "float32"}


def family_layer(family: str, width: int, grid_size: int, backend: str = "auto", device=None,
                 dtype=None) -> BasisKAN:
    """The family's layer, width -> width, at grid size G (ChebyKAN at degree G - 1); see the module docstring."""
    factory = {"backend": backend, "device": device, "dtype": dtype}
    if family == "rbf":
        return RBFKAN(width, width, grid_size=grid_size, **factory)
    if family == "rswaf":
        return RSWAFKAN(width, width, grid_size=grid_size, **factory)
    if family == "relu":
        return ReLUKAN(width, width, grid_size=grid_size, **factory)
    if family == "chebyshev":
        return ChebyKAN(width, width, degree=grid_size - 1, **factory)
    raise ValueError(f"family: expected one of {FAMILIES}, got {family!r}")


def target_report(rows: Sequence[dict]) -> list[dict]:
    """The goals (TARGETS) on rows measured at TARGET_CONFIGURATION; a value is None when its rows are missing.
    ``python -m kanlib bench families`` (its defaults) measures them all."""
    times = {(row["grid"], row["family"], row["candidate"]): row["fwdbwd_median_ms"] for row in rows
             if all(row.get(key) == value for key, value in TARGET_CONFIGURATION.items())
             and row.get("fwdbwd_median_ms") is not None}
    report = []
    for name, grid_size, family, reference, goal, direction in TARGETS:
        top = times.get((grid_size, family, "kanlib"))
        bottom = times.get((grid_size, family, reference))
        report.append(target_entry(name, top / bottom if top is not None and bottom else None, direction, goal))
    return report


def _check_families(families: Sequence[str]) -> None:
    if isinstance(families, (str, bytes)) or not isinstance(families, Sequence) or not families:
        raise ValueError(f"families: expected a non-empty list of names from {FAMILIES}, got {families!r}")
    for index, family in enumerate(families):
        if family not in FAMILIES:
            raise ValueError(f"families[{index}]: expected one of {FAMILIES}, got {family!r}")
    if len(set(families)) != len(families):
        raise ValueError(f"families: expected distinct names, got {list(families)}")


def _family_candidates(family: str, batch: int, width: int, grid_size: int, device: torch.device,
                       dtype: torch.dtype, seed: int) -> tuple[int, dict[str, Candidate]]:
    """The family's S, its dense product's K and its candidates at one grid size, by candidate name (CANDIDATES
    order)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    low, high = INPUT_RANGES[family]
    margin = OUTSIDE_FRACTION * (high - low)
    x = uniform_inputs((batch, width), low - margin, high + margin, generator, device, dtype).requires_grad_()
    torch.manual_seed(seed)
    layer = family_layer(family, width, grid_size, "auto", device, dtype)
    eager = family_layer(family, width, grid_size, "eager", device, dtype)
    eager.load_state_dict(layer.state_dict())
    expanded_width = width * (layer.n_basis + (layer.base_weight is not None))
    candidates = {
        "dense": dense_candidate(f"{family}/dense", batch, expanded_width, width, low - margin, high + margin,
                                 generator, device, dtype),
        "kanlib": module_candidate(f"{family}/kanlib", layer, x),
        "eager": module_candidate(f"{family}/eager", eager, x),
    }
    if family == "rbf":
        candidates["fastkan"] = module_candidate(f"{family}/fastkan", FastKANFormula.from_rbfkan(layer), x)
    return layer.n_basis, expanded_width, candidates


def _mlp_candidate(batch: int, width: int, device: torch.device, dtype: torch.dtype, seed: int) -> Candidate:
    generator = torch.Generator(device=device).manual_seed(seed)
    x = uniform_inputs((batch, width), *GRID_RANGE, generator, device, dtype).requires_grad_()
    torch.manual_seed(seed)
    mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU()).to(device=device, dtype=dtype)
    return module_candidate("mlp", mlp, x)


def _with_ratios(rows: list[dict]) -> list[dict]:
    """rows of one family and grid (dense first), each measured one given its ratios to dense's figures."""
    dense = rows[0]
    for row in rows:
        if row["skipped"] is None:
            row["ratio_to_dense"] = row["fwdbwd_median_ms"] / dense["fwdbwd_median_ms"]
            row["memory_ratio_to_dense"] = row["peak_bytes"] / dense["peak_bytes"]
    return rows


def run_families_benchmark(device: str | torch.device, batch: int, width: int, grids: Sequence[int] = (5,),
                           families: Sequence[str] = FAMILIES, dtype: torch.dtype = torch.float32, repeat: int = 20,
                           warmup: int = 3, seed: int = 0) -> list[dict]:
    """Time every family's candidates (CANDIDATES) at each grid size in ``grids`` (each >= 2), and one MLP layer.

    device: 'cpu', 'cuda' or 'auto'. batch B, width I = O. The candidates of one grid size (with the MLP at the
    first) are timed in alternation. Rows: the mlp row, then per grid, per family, its candidates; keys in the
    module docstring.
    """
    device = resolve_device(device)
    check_int("batch", batch, 1)
    check_int("width", width, 1)
    check_int("repeat", repeat, 1)
    check_int("warmup", warmup, 0)
    check_int("seed", seed, 0)
    check_sizes("grids", grids, "grid sizes")
    for index, grid_size in enumerate(grids):
        check_int(f"grids[{index}]", grid_size, 2, expected="a grid size >= 2 (RBFKAN and RSWAFKAN need 2 points)")
    _check_families(families)
    if dtype not in DTYPES.values():
        raise ValueError(f"dtype: expected one of {list(DTYPES.values())}, got {dtype!r}")

    dtype_name = str(dtype).removeprefix("torch.")
    common = {"batch": batch, "width": width, "dtype": dtype_name}
    grad_out = torch.randn(batch, width, generator=torch.Generator(device=device).manual_seed(seed + 1),
                           device=device, dtype=torch.float32).to(dtype)
    rows = []
    for grid_index, grid_size in enumerate(grids):
        built = {family: _family_candidates(family, batch, width, grid_size, device, dtype, seed)
                 for family in families}
        timed = [candidate for *_, candidates in built.values() for candidate in candidates.values()]
        if grid_index == 0:
            timed.append(_mlp_candidate(batch, width, device, dtype, seed))
        skipped = {}
        for candidate in timed:
            failure = None if candidate.name.endswith("/dense") else training_step_failure(candidate, grad_out)
            if failure is not None:
                skipped[candidate.name] = failure
        measured = measure([c for c in timed if c.name not in skipped], grad_out, device, repeat, warmup)
        if grid_index == 0:
            row = {"grid": None, "family": None, "n_basis": None, "dense_k": None, "candidate": "mlp", **common}
            rows.append({**row, "skipped": skipped["mlp"]} if "mlp" in skipped else
                        {**row, **measured["mlp"], "ratio_to_dense": None, "memory_ratio_to_dense": None,
                         "skipped": None})
        for family, (n_basis, dense_k, candidates) in built.items():
            family_rows = []
            for name, candidate in candidates.items():
                row = {"grid": grid_size, "family": family, "n_basis": n_basis, "dense_k": dense_k,
                       "candidate": name, **common}
                if name == "fastkan":
                    row["built_as"] = FASTKAN_BUILT_AS
                if candidate.name in skipped:
                    family_rows.append({**row, "skipped": skipped[candidate.name]})
                else:
                    family_rows.append({**row, **measured[candidate.name], "skipped": None})
            rows.extend(_with_ratios(family_rows))
    return rows
