"""What every notebook does first: resolve the device, seed, set the figure style, print the environment.

    device = "auto"; quick = True; seed = 0          # the cell tagged `parameters`
    env = setup(device, seed=seed, quick=quick)      # the next cell; prints what the run is on
    env.device                                       # torch.device('cpu') or torch.device('cuda')
"""
from __future__ import annotations

import dataclasses
import pathlib
import random
from typing import Any

import numpy as np
import torch

from ..bench.provenance import can_retain_freed_memory, device_info, git_commit, retain_freed_memory
from ..checks import resolve_device
from .paths import PROJECT_ROOT, RESULTS_PATH

__all__ = ["PROJECT_ROOT", "NotebookEnvironment", "results_dir", "seed_everything", "set_cpu_threads", "setup"]


def results_dir() -> pathlib.Path:
    """data/results of the checkout holding kanlib, whatever the notebook's working directory."""
    return RESULTS_PATH


@dataclasses.dataclass(frozen=True)
class NotebookEnvironment:
    """The resolved device, the mode and what the machine is, as printed by `setup`."""

    device: torch.device
    quick: bool
    seed: int
    info: dict[str, Any]
    commit: str | None

    @property
    def mode(self) -> str:
        return "quick" if self.quick else "full"

    def summary(self) -> str:
        """A few lines: device, mode, library versions and commit."""
        info = self.info
        lines = [
            f"device : {self.device} ({info['name']})",
            f"mode   : {self.mode}, seed {self.seed}",
            f"cpu    : {info['cpu_model']}, {info['cpu_count']} logical cores, {info['torch_threads']} torch threads"
            + (f", {info['simd']}" if info["simd"] else ""),
            f"torch  : {info['torch']}, triton {info['triton'] or 'not installed'}, CUDA {info['cuda'] or 'none'}",
            f"python : {info['python']} on {info['os']}, malloc {info['malloc']}",
            f"kanlib : commit {self.commit[:12] if self.commit else 'unknown'}",
        ]
        return "\n".join(lines)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (all devices)."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed: expected an int >= 0, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_cpu_threads(count: int) -> None:
    """Use ``count`` CPU threads in torch and in numba (kanlib's kernels follow torch's count by themselves; numba's
    caps it)."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"threads: expected an int >= 1 or None, got {count!r}")
    import numba

    numba.set_num_threads(min(count, numba.config.NUMBA_NUM_THREADS))
    torch.set_num_threads(count)  # after numba's: setting numba's count resets torch's OpenMP count


def setup(device: str | torch.device = "auto", *, seed: int = 0, quick: bool = True, threads: int | None = None,
          malloc: str | None = None, show: bool = True) -> NotebookEnvironment:
    """Resolve `device` ('auto', 'cpu', 'cuda'), seed everything, set the seaborn theme, print the environment.

    ``threads``: CPU threads for torch and the numba kernels (:func:`set_cpu_threads`); None keeps the defaults.
    ``malloc``: "retain" (:func:`kanlib.bench.retain_freed_memory`, as the benchmarks do) or "default"; None
    means "retain" where the C library is glibc, else "default".
    """
    if not isinstance(quick, bool):
        raise TypeError(f"quick: expected a bool, got {type(quick).__name__} {quick!r}")
    if malloc not in (None, "retain", "default"):
        raise ValueError(f"malloc: expected 'retain', 'default' or None, got {malloc!r}")
    resolved = resolve_device(device)
    if threads is not None:
        set_cpu_threads(threads)
    if malloc == "retain" or (malloc is None and can_retain_freed_memory()):
        retain_freed_memory()
    seed_everything(seed)
    _set_figure_style()
    env = NotebookEnvironment(resolved, quick, seed, device_info(resolved), git_commit())
    if show:
        print(env.summary())
    return env


def _set_figure_style() -> None:
    import matplotlib as mpl
    import seaborn as sns

    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")
    mpl.rcParams["figure.dpi"] = 110
    mpl.rcParams["savefig.bbox"] = "tight"
