"""pykan's "Example 1" run the way pykan's tutorial runs it, by kanlib and by pykan, in one run on the same data.

f(x, y) = exp(sin(pi x) + y^2) on [-1, 1]^2 (pykan's ``create_dataset(f, n_var=2)``: 1000 train and 1000 test
points, dataset seed 0). Per model seed: a [2, 1, 1] KAN with grid ``grids[0]`` and k = 3, LBFGS for ``steps``
steps with each library's fit defaults, then for every further grid size ``model = model.refine(G)`` and
another fit. Each refine reads the inputs its library's fit ended with, pykan's the test inputs and kanlib's the
training inputs, which kanlib's refine is given since the test RMSE measured between the stages was kanlib's
last forward call. kanlib: ``KAN([2, 1, 1], grid_size=G, spline_order=3, seed=s)``, ``model.fit(data,
opt="LBFGS", steps=steps)``. pykan: ``KAN(width=[2, 1, 1], grid=G, k=3, seed=s, auto_save=False, ckpt_path=<temporary
folder>)``, ``model.fit(dataset, opt="LBFGS", steps=steps)`` (pykan's ``refine`` saves checkpoints even with
auto_save=False, so they go to that folder, removed after the run); its progress output is swallowed.

Rows (``kind``): ``"seed"``, one per (library, seed): the test RMSE after each grid (``rmse_g<G>``), the wall
seconds of each stage (``seconds_g<G>``: the refine and the fit) and ``seconds_total``; ``"summary"``, one per
library: the seeds whose last test RMSE is below ``RMSE_GOAL``, the median last RMSE, the summed seconds and
the seconds per seed's median and quartiles. Libraries alternate seed by seed, after one untimed warm-up each.
"""
from __future__ import annotations

import contextlib
import io
import math
import shutil
import tempfile
import time
from collections.abc import Sequence

import numpy as np
import torch

from ..checks import check_int, resolve_device
from ..models import KAN
from .targets import target_entry

__all__ = ["DEFAULTS", "QUICK", "LIBRARIES", "RMSE_GOAL", "TARGETS", "example1_data", "example1_function",
           "run_example1", "run_workflow_benchmark", "summarize", "table_columns", "target_report"]

DEFAULTS = {"seeds": tuple(range(10)), "grids": (3, 10, 20), "steps": 200}
QUICK = {"seeds": (0, 1), "grids": (3, 10), "steps": 20}
LIBRARIES = ("kanlib", "pykan")
RMSE_GOAL = 1e-3
DATASET_SEED = 0
TARGETS = (
    f"kanlib: share of seeds with last test RMSE < {RMSE_GOAL:g} >= 0.9",
    "kanlib / pykan: seeds below that RMSE >= 1",
    "kanlib / pykan: median last test RMSE <= 1",
    "kanlib / pykan: total seconds <= 0.333",
)


def example1_function(x: torch.Tensor) -> torch.Tensor:
    """exp(sin(pi x0) + x1^2): x [N, 2] -> [N, 1]."""
    return torch.exp(torch.sin(torch.pi * x[:, [0]]) + x[:, [1]] ** 2)


def example1_data(seed: int = DATASET_SEED, n_train: int = 1000, n_test: int = 1000,
                  device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The tensors pykan's ``create_dataset(example1_function, n_var=2, train_num=n_train, test_num=n_test,
    seed=seed)`` makes (float32, inputs uniform in [-1, 1]), drawn from a private generator: the global RNG
    is left alone. Keys train_input [n_train, 2], train_label [n_train, 1], test_input, test_label."""
    check_int("seed", seed, 0)
    check_int("n_train", n_train, 1)
    check_int("n_test", n_test, 1)
    generator = torch.Generator().manual_seed(seed)
    train, test = torch.zeros(n_train, 2), torch.zeros(n_test, 2)
    for column in range(2):  # pykan's order: per variable, the train column then the test column
        train[:, column] = torch.rand(n_train, generator=generator) * 2.0 - 1.0
        test[:, column] = torch.rand(n_test, generator=generator) * 2.0 - 1.0
    data = {"train_input": train, "train_label": example1_function(train),
            "test_input": test, "test_label": example1_function(test)}
    return {key: value.to(device) for key, value in data.items()}


def _rmse(model, data) -> float:
    with torch.no_grad():
        pred = model(data["test_input"])
    return float(torch.sqrt(torch.mean((pred - data["test_label"]) ** 2)))


def _check_grids(grids: Sequence[int]) -> tuple[int, ...]:
    if isinstance(grids, (str, bytes)) or not isinstance(grids, Sequence) or not grids:
        raise ValueError(f"grids must be a non-empty sequence of grid sizes, got {grids!r}")
    return tuple(check_int(f"grids[{index}]", grid, 1) for index, grid in enumerate(grids))


def _kanlib_stages(seed: int, grids: tuple[int, ...], steps: int, data: dict):
    """Yield after each stage of kanlib's run: the model."""
    model = KAN([2, 1, 1], grid_size=grids[0], spline_order=3, seed=seed).to(data["train_input"].device)
    for index, grid in enumerate(grids):
        if index:
            model = model.refine(grid, data["train_input"])
        model.fit(data, opt="LBFGS", steps=steps, progress=False)
        yield model


def _pykan_stages(seed: int, grids: tuple[int, ...], steps: int, data: dict):
    """Yield after each stage of pykan's run: the model (pykan's output swallowed, checkpoints in a temporary
    folder removed at the end)."""
    from kan import KAN as PykanKAN

    folder = tempfile.mkdtemp(prefix="kanlib-pykan-ckpt-")
    device = str(data["train_input"].device)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            model = PykanKAN(width=[2, 1, 1], grid=grids[0], k=3, seed=seed, auto_save=False, ckpt_path=folder,
                             device=device)
        for index, grid in enumerate(grids):
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                if index:
                    model = model.refine(grid)
                model.fit(data, opt="LBFGS", steps=steps)
            yield model
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run_example1(library: str, seed: int, grids: Sequence[int] = DEFAULTS["grids"], steps: int = DEFAULTS["steps"],
                 data: dict[str, torch.Tensor] | None = None) -> dict:
    """One seed of Example 1 with ``library`` ("kanlib" or "pykan"): the row {"kind": "seed", "library",
    "seed", "rmse_g<G>" and "seconds_g<G>" per grid, "seconds_total"}. data: default ``example1_data()``.

    A pykan run that raises (its spline refit fails once a fit has diverged to NaN) is a failed fit: the row
    gets "failed" (the error) and None for the grids it did not reach. kanlib's errors propagate."""
    if library not in LIBRARIES:
        raise ValueError(f"library must be one of {LIBRARIES}, got {library!r}")
    check_int("seed", seed, 0)
    check_int("steps", steps, 1)
    grids = _check_grids(grids)
    data = example1_data() if data is None else data
    stages = (_kanlib_stages if library == "kanlib" else _pykan_stages)(seed, grids, steps, data)
    row = {"kind": "seed", "library": library, "seed": seed}
    total = 0.0
    for grid in grids:
        start = time.perf_counter()
        try:
            model = next(stages)
        except Exception as error:  # noqa: BLE001 - any error of pykan's is a failed fit of this seed
            if library == "kanlib":
                raise
            total += time.perf_counter() - start
            row["failed"] = f"at G = {grid}: {type(error).__name__}: {error}"
            row.update({f"{kind}_g{unreached}": None for unreached in grids[grids.index(grid):]
                        for kind in ("rmse", "seconds")})
            break
        seconds = time.perf_counter() - start
        total += seconds
        row[f"rmse_g{grid}"] = _rmse(model, data)
        row[f"seconds_g{grid}"] = seconds
    stages.close()
    row["seconds_total"] = total
    return row


def summarize(rows: Sequence[dict], grids: Sequence[int]) -> list[dict]:
    """One "summary" row per library in the "seed" rows: seeds, seeds below RMSE_GOAL at the last grid, median
    last RMSE, summed seconds and the per-seed seconds' median and quartiles."""
    last = f"rmse_g{grids[-1]}"
    summaries = []
    for library in LIBRARIES:
        mine = [row for row in rows if row.get("kind") == "seed" and row["library"] == library]
        if not mine:
            continue
        finals = [math.inf if row[last] is None else row[last] for row in mine]  # a failed fit never got there
        seconds = [row["seconds_total"] for row in mine]
        q25, median, q75 = np.percentile(seconds, [25, 50, 75])
        median_last = float(np.median(finals))
        summaries.append({"kind": "summary", "library": library, "seeds": len(mine),
                          "seeds_below_goal": sum(value < RMSE_GOAL for value in finals),
                          "failed": sum("failed" in row for row in mine),
                          "median_last_rmse": median_last if math.isfinite(median_last) else None,
                          "seconds_total": float(sum(seconds)),
                          "seconds_per_seed_median": float(median), "seconds_per_seed_q25": float(q25),
                          "seconds_per_seed_q75": float(q75)})
    return summaries


def run_workflow_benchmark(device: str | torch.device = "cpu", seeds: Sequence[int] | None = None,
                           grids: Sequence[int] | None = None, steps: int | None = None, quick: bool = False,
                           libraries: Sequence[str] = LIBRARIES) -> list[dict]:
    """The "seed" rows of every library and seed (libraries alternating seed by seed, after an untimed warm-up
    of each), then the "summary" rows. Unset seeds/grids/steps come from QUICK or DEFAULTS."""
    settings = QUICK if quick else DEFAULTS
    seeds = tuple(settings["seeds"] if seeds is None else seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and at least one, got {list(seeds)}")
    for index, seed in enumerate(seeds):
        check_int(f"seeds[{index}]", seed, 0)
    grids = _check_grids(settings["grids"] if grids is None else grids)
    steps = check_int("steps", settings["steps"] if steps is None else steps, 1)
    bad = [library for library in libraries if library not in LIBRARIES]
    if bad or not libraries:
        raise ValueError(f"libraries must be a non-empty subset of {LIBRARIES}, got {list(libraries)}")
    data = example1_data(device=resolve_device(device))
    for library in libraries:  # warm-up: compilation, first-call allocations
        run_example1(library, seeds[0], grids[:1], 2, data)
    rows = [run_example1(library, seed, grids, steps, data) for seed in seeds for library in libraries]
    return rows + summarize(rows, grids)


def table_columns(grids: Sequence[int]) -> list[str]:
    """The columns of the "seed" rows' table, in order."""
    return ["library", "seed", *[f"rmse_g{grid}" for grid in grids], *[f"seconds_g{grid}" for grid in grids],
            "seconds_total"]


def _summary(rows: Sequence[dict], library: str) -> dict | None:
    return next((row for row in rows if row.get("kind") == "summary" and row["library"] == library), None)


def _seed_ratio(ours: int, theirs: int) -> float:
    """ours / theirs successful seeds; at least as many as none is 1 (both 0) or inf."""
    if theirs == 0:
        return 1.0 if ours == 0 else float("inf")
    return ours / theirs


def target_report(rows: Sequence[dict]) -> list[dict]:
    """The goals (TARGETS) on these rows: one :func:`~kanlib.bench.targets.target_entry` per target; a value is
    None when a library's summary is missing."""
    ours, theirs = _summary(rows, "kanlib"), _summary(rows, "pykan")
    share = ours and ours["seeds_below_goal"] / ours["seeds"]
    both = ours is not None and theirs is not None
    more = both and _seed_ratio(ours["seeds_below_goal"], theirs["seeds_below_goal"])
    median = both and (ours["median_last_rmse"] / theirs["median_last_rmse"]
                       if ours["median_last_rmse"] is not None and theirs["median_last_rmse"] else None)
    seconds = both and ours["seconds_total"] / theirs["seconds_total"]
    checks = ((share, ">=", 0.9), (more if both else None, ">=", 1.0),
              (median if both else None, "<=", 1.0), (seconds if both else None, "<=", 0.333))
    return [target_entry(name, value, direction, goal) for name, (value, direction, goal) in zip(TARGETS, checks)]
