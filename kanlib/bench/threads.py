"""Thread benchmark: the B-spline layer's training step with the thread settings a user never chose, against
explicit ones, alone and beside a second process that keeps every core busy.

kanlib's CPU path runs numba kernels between torch's products. Under numba's OpenMP layer the kernels run on an
OpenMP runtime: torch's own where numba's layer binds to it, or a second copy (numba's Linux wheel names the
system's ``libgomp.so.1.0.0``, which torch's wheel does not bundle under that name), and then on a second pool of
threads; each row records the runtimes its process had mapped (``openmp_runtimes``, their files joined by
RUNTIME_SEPARATOR). Numba's work-queue layer has its own threads. By default the kernels take torch's intra-op thread
count (``torch.set_num_threads``; see :func:`kanlib.ops.spline_linear.cpu.kernel_threads`), so one setting governs
both pools. This benchmark shows whether that default is as fast as the settings a careful user would pick.

Each configuration runs in a fresh Python process, since numba's threading layer is fixed per process. The
configurations take turns, ``rounds`` times, each turn a new process timing its share of the ``repeat`` steps, and
each row pools its configuration's turns: a machine whose speed drifts over minutes then slows every configuration
alike, instead of whichever ran during the slow minutes.

- ``default``: nothing set.
- ``one thread``: ``torch.set_num_threads(1)`` (the kernels follow).
- ``numba omp``, ``numba workqueue``: numba's OpenMP or its own work-queue threading layer
  (``NUMBA_THREADING_LAYER``), thread counts at their defaults.
- ``passive wait``: ``OMP_WAIT_POLICY=passive``, read by each OpenMP runtime when it loads (torch's at
  ``import torch``), so set in the environment the process starts with: a thread waiting for work sleeps at once
  instead of spinning first, and spinning threads take cores from other processes (and from the other pool's).
- ``no guard``: ``KANLIB_CONTENTION_GUARD=0``, the kernels on torch's thread count even while another process
  holds the cores (by default :mod:`kanlib.ops.contention` lowers their count then).

Every worker starts from this process's environment without the variables above, so ``default`` means nothing set.

Each runs alone and beside a neighbour: a second process multiplying 1024 x 1024 matrices in a loop on torch's
default thread count, started before and stopped after the measurement. Per grid size G (I = O = width,
batch B, k = 3, float32, ``backend="auto"``), the figures are the forward+backward step's time
(``fwdbwd_*_ms``: median, quartiles, min, max; ``torch.autograd.grad`` against the input and every parameter),
the same for the dense product of the performance model timed in alternation with it (``dense_fwdbwd_*_ms``:
X [B, K] @ W [K, O], K = I*(G+k+1), torch alone), ``ratio_to_dense`` (the layer's median over the product's),
and ``ratio_to_best``: the median over the fastest distinct configuration's median with the same neighbour and G.

Some configurations change nothing in some places: ``numba omp`` where numba picks its OpenMP layer by default,
``no guard`` alone (the guard acts only while the kernels' thread waits for a core). Such a twin of the default is
not a setting to beat: any gap between the two is the run's noise, from process to process. The fastest distinct
configuration leaves the twins out, and :func:`twin_spread` reports their gap beside the goals.

A busy neighbour slows torch's own product too (its threads wait for each other at every parallel region while
the neighbour holds the cores), so the goals separate what kanlib adds: alone, the default is as fast as the
best setting; beside the neighbour, the layer slows no more than torch's product does (``ratio_to_dense`` beside
it over ``ratio_to_dense`` alone, default settings).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence

import torch

from ..checks import check_int
from .candidates import GRID_RANGE, check_sizes
from .provenance import openmp_runtimes
from .targets import target_entry
from .timing import Timing, interleaved_samples

__all__ = ["CONFIGURATIONS", "NEIGHBOURS", "RUNTIME_SEPARATOR", "TABLE_COLUMNS", "TARGETS", "is_default_twin",
           "measure_here", "run_threads_benchmark", "target_report", "twin_spread"]

# name -> (environment variables, torch threads or None)
CONFIGURATIONS = {
    "default": ({}, None),
    "one thread": ({}, 1),
    "numba omp": ({"NUMBA_THREADING_LAYER": "omp"}, None),
    "numba workqueue": ({"NUMBA_THREADING_LAYER": "workqueue"}, None),
    "passive wait": ({"OMP_WAIT_POLICY": "passive"}, None),
    "no guard": ({"KANLIB_CONTENTION_GUARD": "0"}, None),
}
# What the configurations set: a worker starts without these, then takes its configuration's.
_SETTINGS = sorted({name for environment, _ in CONFIGURATIONS.values() for name in environment})
NEIGHBOURS = ("none", "busy")
TABLE_COLUMNS = ("neighbour", "grid", "configuration", "backend", "threading_layer", "kernel_threads",
                 "fwdbwd_median_ms", "fwdbwd_q25_ms", "fwdbwd_q75_ms", "dense_fwdbwd_median_ms", "ratio_to_dense",
                 "ratio_to_best")
# (name, goal, direction): alone, the default's median over the best distinct configuration's; beside the busy
# neighbour, the default layer's ratio to the dense product over that ratio alone. Each the worst grid size's.
TARGETS = (
    ("fwd+bwd time of default / best distinct configuration, alone", 1.1, "<="),
    ("layer / dense product beside a busy process, over the same alone (default settings)", 1.1, "<="),
)
_BUSY_LOOP = "import torch\na = torch.randn(1024, 1024)\nwhile True:\n    a @ a\n"
_WORKER = ("import json, sys\nfrom kanlib.bench.threads import measure_here\n"
           "print(json.dumps(measure_here(**json.loads(sys.argv[1]))))")


def _threading_layer() -> str | None:
    """numba's threading layer, or None when no parallel kernel has run in this process (calls below
    ``SERIAL_BELOW`` elements run the kernels' serial twins)."""
    import numba

    try:
        return numba.threading_layer()
    except ValueError:
        return None


RUNTIME_SEPARATOR = "; "  # between the files of ``openmp_runtimes`` in a row (a result's figures are single values)


def _runtimes_figure() -> str | None:
    """The OpenMP runtimes mapped into this process (:func:`~kanlib.bench.provenance.openmp_runtimes`) as one
    string, RUNTIME_SEPARATOR between their files; None where they cannot be read."""
    runtimes = openmp_runtimes()
    return None if runtimes is None else RUNTIME_SEPARATOR.join(runtimes)


def measure_here(grids: Sequence[int], batch: int, width: int, repeat: int, warmup: int, seed: int,
                 torch_threads: int | None) -> list[dict]:
    """Time the layer's training step in this process, one dict per grid size (run by the benchmark's workers):
    the settings in force (``omp_wait_policy``: the environment's, None when unset; ``contention_guard``: whether
    :data:`~kanlib.ops.spline_linear.cpu.CONTENTION` may lower the kernels' threads) and the ``repeat`` run times of
    the layer and of the dense product (``layer_ms``, ``dense_ms``)."""
    from ..layers import BSplineKAN
    from ..ops.spline_linear import torch_backend
    from ..ops.spline_linear.cpu import CONTENTION, thread_count

    if torch_threads is not None:
        torch.set_num_threads(torch_threads)
    results = []
    for grid_size in grids:
        torch.manual_seed(seed)
        layer = BSplineKAN(width, width, grid_size=grid_size, grid_range=GRID_RANGE)
        generator = torch.Generator().manual_seed(seed)
        x = (torch.rand(batch, width, generator=generator) * 2.4 - 1.2).requires_grad_()
        grad_out = torch.randn(batch, width, generator=generator)
        leaves = [x, *(p for p in layer.parameters() if p.requires_grad)]
        expanded_width = width * (layer.n_basis + 1)
        dense_x = torch.rand(batch, expanded_width, generator=generator).requires_grad_()
        dense_w = (torch.randn(expanded_width, width, generator=generator) * expanded_width ** -0.5).requires_grad_()
        samples = interleaved_samples(
            {"layer": lambda: torch.autograd.grad(layer(x), leaves, grad_out),
             "dense": lambda: torch.autograd.grad(dense_x @ dense_w, (dense_x, dense_w), grad_out)},
            device="cpu", warmup=warmup, repeat=repeat)
        results.append({"grid": grid_size, "backend": torch_backend(x, layer.weight_matrix(), layer.spline_order),
                        "threading_layer": _threading_layer(), "kernel_threads": thread_count(),
                        "torch_threads": torch.get_num_threads(),
                        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                        "contention_guard": CONTENTION.enabled, "openmp_runtimes": _runtimes_figure(),
                        "layer_ms": samples["layer"], "dense_ms": samples["dense"]})
    return results


def _run_worker(configuration: str, arguments: dict) -> list[dict]:
    environment, torch_threads = CONFIGURATIONS[configuration]
    inherited = {name: value for name, value in os.environ.items() if name not in _SETTINGS}
    done = subprocess.run([sys.executable, "-c", _WORKER, json.dumps({**arguments, "torch_threads": torch_threads})],
                          env={**inherited, **environment}, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"the {configuration!r} worker failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _neighbour(kind: str) -> subprocess.Popen | None:
    """The busy neighbour process, running once this returns (None for "none")."""
    if kind == "none":
        return None
    process = subprocess.Popen([sys.executable, "-c", _BUSY_LOOP], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    time.sleep(2.0)  # past its import, into the loop
    if process.poll() is not None:
        raise RuntimeError(f"the busy neighbour process exited at once (exit {process.returncode})")
    return process


def _pooled_row(neighbour: str, configuration: str, turns: Sequence[dict]) -> dict:
    """One row from a configuration's turns at one grid size: the settings of its first turn, the timings of all."""
    layer = Timing.from_samples([ms for turn in turns for ms in turn["layer_ms"]])
    dense = Timing.from_samples([ms for turn in turns for ms in turn["dense_ms"]])
    settings = {key: value for key, value in turns[0].items() if key not in ("layer_ms", "dense_ms")}
    return {"neighbour": neighbour, "configuration": configuration, **settings, **layer.as_dict("fwdbwd_"),
            **dense.as_dict("dense_fwdbwd_"), "ratio_to_dense": layer.median_ms / dense.median_ms}


def run_threads_benchmark(grids: Sequence[int] = (5, 50), batch: int = 1024, width: int = 256, repeat: int = 20,
                          warmup: int = 3, seed: int = 0, configurations: Sequence[str] = tuple(CONFIGURATIONS),
                          neighbours: Sequence[str] = NEIGHBOURS, rounds: int = 3) -> list[dict]:
    """One row per neighbour, grid size and configuration (CPU only), from ``rounds`` turns of each configuration
    timing ``ceil(repeat / rounds)`` steps apiece. Row keys: see the module docstring."""
    check_sizes("grids", grids, "grid sizes")
    for name, value, minimum in (("batch", batch, 1), ("width", width, 1), ("repeat", repeat, 1),
                                 ("warmup", warmup, 0), ("seed", seed, 0), ("rounds", rounds, 1)):
        check_int(name, value, minimum)
    for name, chosen, allowed in (("configurations", configurations, CONFIGURATIONS),
                                  ("neighbours", neighbours, NEIGHBOURS)):
        unknown = [value for value in chosen if value not in allowed]
        if unknown or not chosen:
            raise ValueError(f"{name}: expected a non-empty selection of {tuple(allowed)}, got {list(chosen)}")
    arguments = {"grids": list(grids), "batch": batch, "width": width, "repeat": -(-repeat // rounds),
                 "warmup": warmup, "seed": seed}
    rows = []
    for neighbour in neighbours:
        process = _neighbour(neighbour)
        try:
            turns = {configuration: [] for configuration in configurations}
            for _ in range(rounds):
                for configuration in configurations:
                    turns[configuration].append(_run_worker(configuration, arguments))
            measured = [_pooled_row(neighbour, configuration, [turn[g] for turn in turns[configuration]])
                        for configuration in configurations for g in range(len(grids))]
        finally:
            if process is not None:
                process.kill()
                process.wait()
        best = {grid_size: _fastest_distinct_ms(measured, neighbour, grid_size) for grid_size in grids}
        for row in measured:
            row["ratio_to_best"] = row["fwdbwd_median_ms"] / best[row["grid"]]
        rows.extend(measured)
    return rows


def _fastest_distinct_ms(rows: Sequence[dict], neighbour: str, grid: int) -> float:
    """The fastest median among the rows of one neighbour and grid size that are not the default's twins."""
    same = [row for row in rows if row["neighbour"] == neighbour and row["grid"] == grid]
    default = next((row for row in same if row["configuration"] == "default"), None)
    return min(row["fwdbwd_median_ms"] for row in same if not is_default_twin(row, default))


def is_default_twin(row: dict, default: dict | None) -> bool:
    """Whether a row's configuration changes nothing against the default row of the same neighbour and grid:
    ``numba omp`` under the default's threading layer, ``no guard`` alone."""
    if default is None or row["configuration"] == "default":
        return False
    if row["configuration"] == "numba omp":
        return row["threading_layer"] == default["threading_layer"]
    return row["configuration"] == "no guard" and row["neighbour"] == "none"


def twin_spread(rows: Sequence[dict]) -> float | None:
    """The run's noise alone: the largest ratio, slower over faster, between the default's median and a twin's
    (:func:`is_default_twin`) at the same grid size; None without twins."""
    default = {row["grid"]: row for row in rows if row["neighbour"] == "none" and row["configuration"] == "default"}
    ratios = []
    for row in rows:
        if row["neighbour"] == "none" and is_default_twin(row, default.get(row["grid"])):
            twin, own = row["fwdbwd_median_ms"], default[row["grid"]]["fwdbwd_median_ms"]
            ratios.append(max(twin, own) / min(twin, own))
    return max(ratios) if ratios else None


def target_report(rows: Sequence[dict]) -> list[dict]:
    """The goals (TARGETS), each the worst over the grid sizes measured; None when its rows are missing."""
    default = {(row["neighbour"], row["grid"]): row for row in rows if row["configuration"] == "default"}
    # from the medians, not the rows' ratio_to_best: runs written before the twins were left out counted them
    alone = [row["fwdbwd_median_ms"] / _fastest_distinct_ms(rows, "none", grid)
             for (neighbour, grid), row in default.items() if neighbour == "none"]
    busy = [row["ratio_to_dense"] / default["none", grid]["ratio_to_dense"]
            for (neighbour, grid), row in default.items() if neighbour == "busy" and ("none", grid) in default]
    values = (max(alone) if alone else None, max(busy) if busy else None)
    return [target_entry(name, value, direction, goal) for (name, goal, direction), value in zip(TARGETS, values)]
