"""Layer benchmark: one B-spline KAN layer against the performance model's floor, an MLP layer, an
unfused layer, the exact B-spline layers a user can pip install (flashkan, inkan, pykan), all measured in the
same run.

For each grid size G, with batch B, I = O = width and spline order k, the candidates are:

- ``dense``: the floor, ``X @ W`` with X [B, K], W [K, O], K = I*(G+k+1); X and W require grad, as
  the expanded input and the weight of an unfused layer would.
- ``mlp``: ``silu(nn.Linear(I, O)(x))``, an MLP layer of the same width.
- ``bsplinekan``: ``kanlib.BSplineKAN(I, O, grid_size=G, spline_order=k)`` with ``backend="auto"``: the
  numba CPU kernels on the CPU (the local-support ones once G is large, see
  :func:`kanlib.ops.spline_linear.prefers_sparse`), the Triton kernels on CUDA.
- ``bsplinekan_compiled``: the same layer under ``torch.compile`` (default mode, as the peers compile): its kernels
  run as torch.library operators (:mod:`kanlib.ops.spline_linear.compiled`), the code around them compiled. The
  compiler's caches are reset for each grid size (see :func:`_peer_candidates`).
- ``unfused``: :class:`UnfusedKAN` (efficient-kan's layout) holding the same function as ``bsplinekan``;
  it keeps the [B, I, G+k] basis for backward.
- ``flashkan``, ``inkan``: the B-spline layers of the PyPI packages flashkan 0.2.0 and inkan 0.5.2
  (:func:`~kanlib.bench.candidates.flashkan_layer`, :func:`~kanlib.bench.candidates.inkan_layer`), with their
  default settings (torch.compile'd basis), holding the same function as ``bsplinekan`` at k = 3. Both compute
  only cubic bases: at another k they are built at k = 3 on the same grid (the row's ``built_as`` says so).
- ``pykan``: pykan's ``KANLayer(I, O, num=G, k=k)`` (its first output), timed with fewer repeats.
- ``dense_graphed``, ``bsplinekan_graphed`` (on CUDA only, ``GRAPHED_CANDIDATES``): ``dense`` and ``bsplinekan``
  with their forward and training step each recorded in a CUDA graph and replayed
  (:func:`~kanlib.bench.candidates.cuda_graphed`): the same kernels without the host's work of launching each one,
  so that a layer whose small kernels leave the GPU waiting for the host shows its device time. Their
  ``ratio_to_dense`` is over the eager ``dense``, as every row's; ``ratio_to_dense_graphed`` is bsplinekan_graphed's
  over dense_graphed's.

A peer whose package is not installed, or whose first training step fails (e.g. torch.compile without a C++
compiler), gets a row with its reason in ``skipped`` and no figures; the run goes on. Every other row has
``skipped`` None.

Inputs x [B, I] are uniform on the grid range widened by 10% of its width on each side, drawn from a
seeded torch.Generator; parameters are initialized after ``torch.manual_seed(seed)``.

Figures of each row (one row per grid size and candidate); times in ms:

- ``fwd_*_ms``: the forward pass as in training (autograd recording), median, quartiles, min, max.
- ``fwdbwd_*_ms``: forward, then ``torch.autograd.grad`` of the output against the input and every
  trainable parameter with a fixed random output gradient [B, O]. Gradients are returned, never
  accumulated into ``.grad``, so every run of every candidate starts from the same state.
- ``ratio_to_dense``: forward+backward median over dense's, same grid size, same run.
- ``peak_bytes``: peak training memory of one forward+backward step: the peak of what the step
  allocates (``kanlib.bench.peak_memory_bytes``) plus ``state_bytes``, the bytes of the tensors the step
  reads: its input, the output gradient, and the parameters and buffers. The dense product is thus
  charged for its X [B, K] and W exactly as a layer is charged for its x [B, I] and parameters.
- ``memory_ratio_to_dense``: peak_bytes over dense's.
- ``flops``, ``gflops_per_s`` (dense, bsplinekan and their graphed twins; None for the others): forward+backward
  counted as 3x the dense product's forward 2*B*K*O.
- ``sweep_fwdbwd_*_ms`` (bsplinekan rows, when the run measures several grid sizes): bsplinekan's
  forward+backward again, its steps at every grid size timed in alternation after the candidates, so that the
  grid sweep's ratios (its time at one G over another) come from steps that shared the machine's state, as each
  grid's ratios to dense do. A machine whose speed drifts over the minutes between two grid sizes' candidates
  would otherwise move those ratios.
- ``built_as`` (package and version, the constructor call with I, O, G, k and grid range, the basis and
  contraction) and ``same_function`` (whether the peer holds bsplinekan's weights, so computes its function):
  flashkan and inkan rows only.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import nn

from ..checks import check_int, resolve_device
from ..layers import BSplineKAN
from .candidates import (DTYPES, GRID_RANGE, INPUT_RANGE, Candidate, UnfusedKAN, check_sizes, cuda_graphed,
                         dense_candidate, failure_reason, flashkan_layer, inkan_layer, measure, module_candidate,
                         pykan_layer, training_step, training_step_failure, uniform_inputs)
from .targets import target_entry
from .timing import time_interleaved

__all__ = [
    "CANDIDATES",
    "DTYPES",
    "GRAPHED_CANDIDATES",
    "PEER_BUILDERS",
    "PIP_PEERS",
    "SWEEP_COLUMNS",
    "TABLE_COLUMNS",
    "TARGETS",
    "TARGET_CONFIGURATION",
    "run_layer_benchmark",
    "target_report",
]

CANDIDATES = ("dense", "mlp", "bsplinekan", "bsplinekan_compiled", "unfused", "flashkan", "inkan", "pykan")
GRAPHED_CANDIDATES = {"dense_graphed": "dense", "bsplinekan_graphed": "bsplinekan"}  # CUDA only: name -> eager one
PEER_BUILDERS = {"flashkan": flashkan_layer, "inkan": inkan_layer}
PIP_PEERS = ("flashkan", "inkan", "pykan")  # the exact B-spline KAN layers a user can pip install
TABLE_COLUMNS = (
    "grid", "candidate", "fwd_median_ms", "fwdbwd_median_ms", "fwdbwd_q25_ms", "fwdbwd_q75_ms",
    "ratio_to_dense", "peak_bytes", "memory_ratio_to_dense", "gflops_per_s", "skipped",
)
SWEEP_COLUMNS = ("grid", "sweep_fwdbwd_median_ms", "sweep_fwdbwd_q25_ms", "sweep_fwdbwd_q75_ms")
# The goals, for bsplinekan at TARGET_CONFIGURATION: (name, grid, reference, goal, direction); the reference is
# None for dense's figure at the same grid, a grid size for bsplinekan's figure at that grid, "peers" for the
# fastest of PIP_PEERS measured at the same grid. The grid sweep's: a layer near the nonzero work of its local
# support at large G (its time no longer growing with G), and near the dense product where the dense path runs;
# and faster than every pip-installable B-spline layer.
TARGETS = (
    ("fwd+bwd time of bsplinekan / dense at G = 50", 50, None, 0.35, "<="),
    ("fwd+bwd time of bsplinekan at G = 100 / at G = 50", 100, 50, 1.5, "<="),
    ("fwd+bwd time of bsplinekan at G = 200 / at G = 50", 200, 50, 1.5, "<="),
    ("fwd+bwd time of bsplinekan / dense at G = 5", 5, None, 1.15, "<="),
    ("fwd+bwd time of bsplinekan / fastest pip-installable B-spline peer at G = 5", 5, "peers", 1.0, "<"),
)
TARGET_CONFIGURATION = {"batch": 1024, "width": 256, "order": 3, "dtype": "float32"}


def target_report(rows: Sequence[dict]) -> list[dict]:
    """The goals (TARGETS) on rows measured at TARGET_CONFIGURATION; a value is None when its grid sizes were not
    measured. ``python -m kanlib bench layer --grid 5 50 100 200`` measures them all. A ratio of bsplinekan at two
    grid sizes comes from the alternated sweep (``sweep_fwdbwd_median_ms``) where both rows have it, else from their
    own medians (runs of one grid size per process, and runs written before the sweep)."""
    chosen = [row for row in rows if all(row.get(key) == value for key, value in TARGET_CONFIGURATION.items())]
    times = {(row["grid"], row["candidate"]): row["fwdbwd_median_ms"] for row in chosen
             if row.get("fwdbwd_median_ms") is not None}
    swept = {row["grid"]: row["sweep_fwdbwd_median_ms"] for row in chosen
             if row["candidate"] == "bsplinekan" and row.get("sweep_fwdbwd_median_ms") is not None}
    report = []
    for name, grid_size, reference, goal, direction in TARGETS:
        top = times.get((grid_size, "bsplinekan"))
        if reference == "peers":
            peers = [times[grid_size, peer] for peer in PIP_PEERS if (grid_size, peer) in times]
            bottom = min(peers) if peers else None
        elif reference is None:
            bottom = times.get((grid_size, "dense"))
        elif grid_size in swept and reference in swept:
            top, bottom = swept[grid_size], swept[reference]
        else:
            bottom = times.get((reference, "bsplinekan"))
        report.append(target_entry(name, top / bottom if top is not None and bottom else None, direction, goal))
    return report


def _peer_candidates(bspline: BSplineKAN, x: torch.Tensor, grad_out: torch.Tensor
                     ) -> tuple[list[Candidate], dict[str, dict], dict[str, str]]:
    """The compiled layer and the pip-installable peers beside ``bspline``: their candidates, the peers' row entries
    (built_as, same_function) and the reason of each one left out (not installed, or its training step fails, as
    torch.compile does without a C++ compiler)."""
    candidates, entries, skipped = [], {}, {}
    # Every configuration compiles afresh: torch.compile gives a function a few compiled versions (shapes, grid
    # sizes), then runs it uncompiled, which would time the eager layer under this candidate's name.
    torch._dynamo.reset()
    compiled = module_candidate("bsplinekan_compiled", bspline, x, forward=functools.partial(torch.compile(bspline), x))
    failure = training_step_failure(compiled, grad_out)
    if failure is None:
        candidates.append(compiled)
    else:
        skipped[compiled.name] = failure
    for name, build in PEER_BUILDERS.items():
        try:
            peer = build(bspline)
        except ImportError as error:
            skipped[name] = f"not installed: {error}"
            continue
        candidate = module_candidate(name, peer.module, x)
        entries[name] = {"built_as": peer.built_as, "same_function": peer.same_function}
        failure = training_step_failure(candidate, grad_out)
        if failure is None:
            candidates.append(candidate)
        else:
            skipped[name] = failure
    return candidates, entries, skipped


def _candidates(batch: int, width: int, grid_size: int, order: int, device: torch.device, dtype: torch.dtype,
                seed: int, skip_pykan: bool, grad_out: torch.Tensor
                ) -> tuple[list[Candidate], dict[str, dict], dict[str, str]]:
    """The candidates for one grid size, each with its own inputs drawn from the same seed; the peers' row entries
    and the reasons of the candidates left out (see :func:`_peer_candidates`)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    low, high = INPUT_RANGE
    x = uniform_inputs((batch, width), low, high, generator, device, dtype).requires_grad_()
    dense = dense_candidate("dense", batch, width * (grid_size + order + 1), width, low, high, generator, device,
                            dtype)

    torch.manual_seed(seed)
    mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU()).to(device=device, dtype=dtype)
    bspline = BSplineKAN(width, width, grid_size=grid_size, spline_order=order, grid_range=GRID_RANGE,
                         device=device, dtype=dtype)
    candidates = [
        dense,
        module_candidate("mlp", mlp, x),
        module_candidate("bsplinekan", bspline, x),
        module_candidate("unfused", UnfusedKAN.from_bspline(bspline), x),
    ]
    peers, entries, skipped = _peer_candidates(bspline, x, grad_out)
    candidates.extend(peers)
    if not skip_pykan:
        pykan = pykan_layer(width, grid_size, order, device, dtype)
        candidates.append(module_candidate("pykan", pykan, x, forward=lambda: pykan(x)[0]))
    if _records_cuda_graphs(device):
        graphed, graph_failures = _graphed_candidates(candidates, grad_out)
        candidates.extend(graphed)
        skipped.update(graph_failures)
    return candidates, entries, skipped


def _records_cuda_graphs(device: torch.device) -> bool:
    """Whether the run has GRAPHED_CANDIDATES: on CUDA devices."""
    return device.type == "cuda"


def _graphed_candidates(candidates: Sequence[Candidate], grad_out: torch.Tensor
                        ) -> tuple[list[Candidate], dict[str, str]]:
    """GRAPHED_CANDIDATES recorded from their eager candidates, and the reason of each one whose recording fails."""
    by_name = {candidate.name: candidate for candidate in candidates}
    graphed, skipped = [], {}
    for name, eager in GRAPHED_CANDIDATES.items():
        try:
            graphed.append(cuda_graphed(name, by_name[eager], grad_out))
        except Exception as error:  # whatever the capture raises is reported in the row, as a failing peer's
            skipped[name] = failure_reason(error)
    return graphed, skipped


def run_layer_benchmark(device: str | torch.device, batch: int, width: int, grids: Sequence[int], order: int = 3,
                        dtype: torch.dtype = torch.float32, repeat: int = 20, warmup: int = 3,
                        skip_pykan: bool = False, seed: int = 0) -> list[dict]:
    """Time every candidate (CANDIDATES) at each grid size in ``grids``; one row per grid and candidate.

    device: 'cpu', 'cuda' or 'auto'. batch B, width I = O, order k. pykan runs
    ``min(repeat, max(3, repeat // 10))`` times after at most one warm-up; with ``skip_pykan`` it has no row.
    A peer that is not installed or fails gets a row with ``skipped``. Row keys: see the module docstring.
    """
    device = resolve_device(device)
    check_int("batch", batch, 1)
    check_int("width", width, 1)
    check_int("order", order, 1)
    check_int("repeat", repeat, 1)
    check_int("warmup", warmup, 0)
    check_int("seed", seed, 0)
    check_sizes("grids", grids, "grid sizes")
    if dtype not in DTYPES.values():
        raise ValueError(f"dtype: expected one of {list(DTYPES.values())}, got {dtype!r}")

    dtype_name = str(dtype).removeprefix("torch.")
    grad_out = torch.randn(batch, width, generator=torch.Generator(device=device).manual_seed(seed + 1),
                           device=device, dtype=torch.float32).to(dtype)
    rows, sweep = [], {}
    for grid_size in grids:
        expanded_width = width * (grid_size + order + 1)
        forward_backward_flops = 3 * 2 * batch * expanded_width * width
        grid_rows = []
        candidates, peer_entries, skipped = _candidates(batch, width, grid_size, order, device, dtype, seed,
                                                        skip_pykan, grad_out)
        sweep[grid_size] = next(c for c in candidates if c.name == "bsplinekan")
        fast = [c for c in candidates if c.name != "pykan"]
        slow = [c for c in candidates if c.name == "pykan"]
        measured = measure(fast, grad_out, device, repeat, warmup)
        if slow:
            measured.update(measure(slow, grad_out, device, min(repeat, max(3, repeat // 10)), min(warmup, 1)))
        for name in (*CANDIDATES, *GRAPHED_CANDIDATES):
            if name not in measured and name not in skipped:
                continue
            row = {"grid": grid_size, "candidate": name, "batch": batch, "width": width, "order": order,
                   "dtype": dtype_name, "dense_k": expanded_width, **peer_entries.get(name, {})}
            if name in skipped:
                grid_rows.append({**row, "skipped": skipped[name]})
                continue
            figures = measured[name]
            counted = name in ("dense", "bsplinekan", *GRAPHED_CANDIDATES)
            grid_rows.append({
                **row, **figures,
                "flops": forward_backward_flops if counted else None,
                "gflops_per_s": forward_backward_flops / (figures["fwdbwd_median_ms"] * 1e6) if counted else None,
                "skipped": None,
            })
        dense = grid_rows[0]
        for row in grid_rows:
            if row["skipped"] is None:
                row["ratio_to_dense"] = row["fwdbwd_median_ms"] / dense["fwdbwd_median_ms"]
                row["memory_ratio_to_dense"] = row["peak_bytes"] / dense["peak_bytes"]
        graphed = {row["candidate"]: row for row in grid_rows
                   if row["candidate"] in GRAPHED_CANDIDATES and row["skipped"] is None}
        if len(graphed) == len(GRAPHED_CANDIDATES):
            graphed["bsplinekan_graphed"]["ratio_to_dense_graphed"] = (
                graphed["bsplinekan_graphed"]["fwdbwd_median_ms"] / graphed["dense_graphed"]["fwdbwd_median_ms"])
        rows.extend(grid_rows)
    if len(sweep) > 1:
        steps = {grid_size: training_step(candidate, grad_out) for grid_size, candidate in sweep.items()}
        swept = time_interleaved(steps, device=device, warmup=warmup, repeat=repeat)
        for row in rows:
            if row["candidate"] == "bsplinekan":
                row.update(swept[row["grid"]].as_dict("sweep_fwdbwd_"))
    return rows
