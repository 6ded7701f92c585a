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

from .bench import RESULTS_DIR, device_info, git_commit, resolve_device

PROJECT_ROOT = pathlib.Path(__file__).resolve().parent.parent


def results_dir() -> pathlib.Path:
    """data/results of the checkout holding kanlib, whatever the notebook's working directory."""
    return PROJECT_ROOT / RESULTS_DIR


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
            f"cpu    : {info['cpu_model']}, {info['cpu_count']} logical cores, {info['torch_threads']} torch threads",
            f"torch  : {info['torch']}, triton {info['triton'] or 'not installed'}, CUDA {info['cuda'] or 'none'}",
            f"python : {info['python']} on {info['os']}",
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


def setup(device: str | torch.device = "auto", *, seed: int = 0, quick: bool = True,
          show: bool = True) -> NotebookEnvironment:
    """Resolve `device` ('auto', 'cpu', 'cuda'), seed everything, set the seaborn theme, print the environment."""
    if not isinstance(quick, bool):
        raise TypeError(f"quick: expected a bool, got {type(quick).__name__} {quick!r}")
    resolved = resolve_device(device)
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
