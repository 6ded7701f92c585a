"""Runs the cases of tests/test_distributed.py with fit(distributed=True), one process per rank:

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/distributed_fit.py OUT [CASE ...]

Each rank writes OUT/<case>-rank<r>.pt: {"state": the model's state_dict, "history": History.as_dict()}, or
{"error": "<type>: <message>"} when fit raised. The test imports this file for `build`, to fit the same
model on the same data in one process.
"""
from __future__ import annotations

import math
import pathlib
import sys

import torch
import torch.distributed as dist

from kanlib import KAN, QATConfig, fit
from kanlib.distributed import training_group

N_TRAIN = 101  # odd: the two ranks' shards of the full batch hold 51 and 50 samples
N_TEST = 37


def regression_data(n_train: int = N_TRAIN) -> dict[str, torch.Tensor]:
    """f(x, y) = exp(sin(pi x) + y^2) (pykan's Example 1) on [-1, 1]^2, float64."""
    generator = torch.Generator().manual_seed(7)
    x = torch.rand(n_train + N_TEST, 2, generator=generator, dtype=torch.float64) * 2 - 1
    y = torch.exp(torch.sin(math.pi * x[:, :1]) + x[:, 1:] ** 2)
    return {"train_input": x[:n_train], "train_label": y[:n_train],
            "test_input": x[n_train:], "test_label": y[n_train:]}


def classification_data() -> dict[str, torch.Tensor]:
    """Three classes by the angle of a point in [-1, 1]^3's first two coordinates, float64 inputs."""
    generator = torch.Generator().manual_seed(8)
    x = torch.rand(N_TRAIN + N_TEST, 3, generator=generator, dtype=torch.float64) * 2 - 1
    angle = torch.atan2(x[:, 1], x[:, 0]) + math.pi
    labels = (angle / (2 * math.pi / 3)).long().clamp(max=2)
    return {"train_input": x[:N_TRAIN], "train_label": labels[:N_TRAIN],
            "test_input": x[N_TRAIN:], "test_label": labels[N_TRAIN:]}


def kan(widths, seed=0) -> KAN:
    return KAN(widths, grid_size=5, seed=seed).double()


def symbolic_and_pruned() -> KAN:
    """A KAN with edge (0, 0, 1) fixed to sin (its spline masked off) and edge (1, 2, 0) removed."""
    model = kan([2, 3, 1], seed=1)
    model.fix_symbolic(0, 0, 1, "sin", fit_params=False)
    model.remove_edge(1, 2, 0)
    return model


# name -> (model, data, fit's keyword arguments, whether the global RNG is seeded per rank before fit).
# LBFGS fits are short: a line search amplifies rounding differences (those of another summation order)
# to percents within a few steps, so longer ones would compare the amplification, not the fit.
CASES = {
    # the first-layer LBFGS for one step, then the joint one; a grid update before each step
    "lbfgs": lambda: (kan([2, 5, 1]), regression_data(),
                      dict(opt="lbfgs", steps=2, first_layer_steps=1, update_grid_every=1), False),
    # the sparsity penalty, computed on the whole batch on every rank
    "lbfgs_penalty": lambda: (kan([2, 3, 1]), regression_data(),
                              dict(opt="lbfgs", steps=1, first_layer_steps=0, lamb=0.01), False),
    # minibatches of 24: 24, 24, 24, 24 and 5 per epoch (shards of 3 and 2); seed None, so rank 0 draws the
    # order from its RNG, which is seeded differently on the other rank
    "adam_minibatch": lambda: (kan([2, 4, 1]), regression_data(),
                               dict(opt="adam", batch_size=24, steps=12, update_grid_every=4), True),
    "symbolic_pruned": lambda: (symbolic_and_pruned(), regression_data(), dict(opt="adam", steps=6), False),
    "classification": lambda: (kan([3, 4, 3]), classification_data(), dict(opt="adam", steps=8), False),
    # quantization-aware: the callback swaps the layers in before the model is wrapped
    "qat": lambda: (kan([2, 3, 1]), regression_data(), dict(opt="adam", steps=5, qat=QATConfig()), False),
    # refused: the last minibatch of an epoch (101 = 2 * 50 + 1) has one sample for two ranks
    "tiny_last_batch": lambda: (kan([2, 3, 1]), regression_data(), dict(opt="adam", batch_size=50, steps=3), False),
    # refused: rank 1 holds other training labels
    "different_data": lambda: (kan([2, 3, 1]), regression_data(), dict(opt="adam", steps=2), False),
    # rank 1's model starts elsewhere (other coefficients, another grid): rank 0's state is copied to it
    "different_models": lambda: (kan([2, 3, 1]), regression_data(), dict(opt="adam", steps=3, update_grid=False),
                                 False),
}
RNG_SEED = 100  # the global RNG seed of rank r is RNG_SEED + r in the cases seeded per rank


def build(name: str, rank: int = 0):
    """(model, data, fit keyword arguments) of case `name` as rank `rank` sees them, the global RNG seeded."""
    model, data, kwargs, seeded_per_rank = CASES[name]()
    if seeded_per_rank:
        torch.manual_seed(RNG_SEED + rank)
    if name == "different_data" and rank == 1:
        data = dict(data, train_label=data["train_label"] + 1e-12)
    if name == "different_models" and rank == 1:
        model = KAN([2, 3, 1], grid_size=5, grid_range=(-2.0, 3.0), seed=5).double()
    return model, data, dict(kwargs, progress=False)


def agree(rank: int) -> dict:
    """Only rank 1 has a problem: every rank must raise (none may wait alone in a later collective)."""
    try:
        training_group().agree("rank 1's problem" if rank == 1 else None)
    except ValueError as error:
        return {"error": f"{type(error).__name__}: {error}"}
    return {}


def main(out: pathlib.Path, names: list[str]) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    try:
        torch.save(agree(rank), out / f"agree-rank{rank}.pt")
        for name in names:
            model, data, kwargs = build(name, rank)
            try:
                history = fit(model, data, distributed=True, **kwargs)
                result = {"state": model.state_dict(), "history": history.as_dict()}
            except (ValueError, TypeError, RuntimeError) as error:
                result = {"error": f"{type(error).__name__}: {error}"}
            torch.save(result, out / f"{name}-rank{rank}.pt")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]), sys.argv[2:] or list(CASES))
