"""The book's verdict: every goal, its measured value, met or missed or not measured yet, for the landing page.

    goals = collect_goals(load_results(results_dir()), read_notebooks("notebooks"))
    goals_frame(goals)              # one line per goal: name, measured, goal, verdict, device, mode, section
    verdict_markdown(goals)         # the figure directive, how to read it, and the table (a link per row)
    plot_verdict(goals)             # a matplotlib Figure: measured against goal on a log axis
    write_verdict(stage / "book" / "intro.md", stage / "notebooks")   # what the site's stage() calls

Values come from the benchmarks' result files (through their ``target_report`` and
:func:`kanlib.book.results.layer_headline`) and from the values notebooks glued (:mod:`kanlib.book.glue`);
each is shown with the device and the mode of the run that measured it. Goals come from the benchmarks'
TARGETS and target reports, and from the notebooks' text where no code holds them (named below).
"""
from __future__ import annotations

import dataclasses
import html
import math
import numbers
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import nbformat
import pandas as pd

from ..bench import families, images, kernel, layer, prune, quant, threads, workflow
from ..bench.targets import DIRECTIONS, target_entry
from .glue import GlueError, glued, glued_value
from .paths import RESULTS_PATH
from .results import device_label, latest, latest_sweep, layer_headline
from .runner import RunStamp, find_notebooks

__all__ = ["FIGURE_NAME", "MARKER", "Goal", "VerdictError", "chapter_titles", "collect_goals", "figure_alt",
           "figure_caption", "goals_frame", "plot_verdict", "read_notebooks", "run_mode", "section_anchor",
           "verdict_markdown", "write_verdict"]

MARKER = "<!-- kanlib:verdict -->"
FIGURE_NAME = "verdict.svg"
MET, MISSED, NOT_MEASURED = "met", "missed", "not measured yet"
NEEDS_GPU = "needs a GPU run"
SYMBOLS = {"<=": "≤", ">=": "≥", "<": "<", ">": ">"}
TIMES, POINTS = "×", " points"

# Goals no benchmark's code holds, from the notebooks' text:
# 06 glues its epoch-time goal at equal test accuracy (images_goal_ratio), 03 states the same one for digits at
# equal parameter counts: at most twice the MLP's;
# 03 "Summary": params MLP / KAN above 1 favours the KAN, time to target KAN / MLP below 1 favours it.
EPOCH_TIME_GOAL = ("<=", 2.0)
PARAMS_GOAL = (">", 1.0)
TIME_TO_TARGET_GOAL = ("<", 1.0)
# The fused kernel's goals (kernel.TARGETS) applied to the layer benchmark's kanlib layer, as the findings do.
LAYER_DENSE_GOAL = (kernel.TARGETS[0][5], kernel.TARGETS[0][4])
LAYER_UNFUSED_GOAL = (kernel.TARGETS[1][5], kernel.TARGETS[1][4])

KERNEL_NAMES = {  # readable name, short name
    kernel.TARGETS[0][0]: ("Kernel's training step / dense product", "GPU kernel / dense"),
    kernel.TARGETS[1][0]: ("Unfused layer's training step / kernel's", "unfused / GPU kernel"),
    kernel.TARGETS[2][0]: ("Peak training memory / MLP of as many parameters", "GPU kernel memory / MLP"),
}
QUANT_NAMES = {  # readable name, short name, unit
    quant.TARGETS[0]: ("Digits accuracy lost, 3-bit table and 8-bit weights", "digits accuracy lost", POINTS),
    quant.TARGETS[1]: ("Symbolic test RMSE / float model's, 3-bit table and 8-bit weights", "symbolic RMSE / float",
                       TIMES),
    quant.TARGETS[2]: ("Digits model size, float / 8-bit", "size reduction at 8 bits", TIMES),
    quant.TARGETS[3]: ("Digits model size, float / 4-bit packed", "size reduction at 4 bits", TIMES),
    quant.TARGETS[4]: ("8-bit lookup-table layer's speed / float layer's", "table layer speedup", TIMES),
}
# The value notebook 05 glues for each quantization target, in quant.TARGETS order.
QUANT_GLUE = ("quant_digits_loss_table3", "quant_symbolic_ratio_table3", "quant_size_ratio_8", "quant_size_ratio_4",
              "quant_table8_speedup")

NB_FAST_PATH, NB_VS_MLP, NB_KERNELS = "02_fast_path.ipynb", "03_kan_vs_mlp.ipynb", "04_triton_kernels.ipynb"
NB_QUANT, NB_IMAGES, NB_FINDINGS = "05_quantization.ipynb", "06_kans_on_images.ipynb", "90_findings.ipynb"
NB_FORMULA, NB_PRUNE = "07_data_to_formula.ipynb", "09_pruning_and_sparsity.ipynb"
SECTIONS = {  # (notebook, heading) where each group of goals is measured
    "fast path": (NB_FAST_PATH, "The layers side by side"),
    "layer": (NB_FINDINGS, "The layer against its floor"),
    "kernel": (NB_KERNELS, "Against the dense product"),
    "params": (NB_VS_MLP, "The same RMSE: how big, how long"),
    "digits": (NB_VS_MLP, "Accuracy and time per epoch"),
    "quant notebook": (NB_QUANT, "The goals"),
    "quant benchmark": (NB_FINDINGS, "Quantization"),
    "images": (NB_IMAGES, "What it means"),
    "images gpu": (NB_IMAGES, "On a GPU"),
    "families": (NB_IMAGES, "Each family against the dense product"),
    "workflow": (NB_FORMULA, "Ten initializations: how often does fitting work?"),
    "sweep": (NB_PRUNE, "Time against the grid size"),
    "prune": (NB_PRUNE, "The goals"),
    "threads": (NB_PRUNE, "One thread setting"),
}
AREAS = {  # the heading each group of goals has in the table
    "fast path": "kanlib's layer against the dense product and the unfused layer",
    "layer": "kanlib's layer against the dense product and the unfused layer",
    "kernel": "The fused GPU kernel",
    "params": "KAN against MLP",
    "digits": "KAN against MLP",
    "quant notebook": "Quantization",
    "quant benchmark": "Quantization",
    "images": "KANs on images",
    "images gpu": "KANs on images",
    "families": "The other KAN families against the dense product",
    "workflow": "pykan's workflow",
    "sweep": "Sparsity: the grid's zeros, pruned edges, threads",
    "prune": "Sparsity: the grid's zeros, pruned edges, threads",
    "threads": "Sparsity: the grid's zeros, pruned edges, threads",
}
SWEEP_NAMES = {  # readable name, short name, unit (layer.TARGETS, on the CPU)
    layer.TARGETS[0][0]: ("Training step / dense product, G = 50 (local support, CPU)", "layer / dense, G = 50",
                          TIMES),
    layer.TARGETS[1][0]: ("Training step at G = 100 / at G = 50 (CPU)", "G = 100 / G = 50", TIMES),
    layer.TARGETS[2][0]: ("Training step at G = 200 / at G = 50 (CPU)", "G = 200 / G = 50", TIMES),
    layer.TARGETS[3][0]: ("Training step / dense product, G = 5, at most 1.15 (CPU)", "layer / dense, G = 5 (sweep)",
                          TIMES),
    layer.TARGETS[4][0]: ("Training step / the fastest pip-installable B-spline layer's (flashkan, inkan, pykan), "
                          "G = 5 (CPU)", "layer / fastest peer, G = 5", TIMES),
}
SWEEP_GPU_NAMES = {  # the same goals measured on CUDA, beside the CPU's
    name: (readable.replace("CPU)", "GPU)").replace(", at most 1.15 (GPU)", " (GPU)"), f"{short} (GPU)", unit)
    for name, (readable, short, unit) in SWEEP_NAMES.items()}
PRUNE_NAMES = {  # readable name, short name, unit
    prune.TARGETS[0]: ("Layer at 90% scattered edge sparsity: dense time / edge-sparse time", "edge-sparse speedup",
                       TIMES),
    prune.TARGETS[1]: ("Digits accuracy lost at 90% edge sparsity, fine-tuned", "pruned digits accuracy lost",
                       POINTS),
    prune.TARGETS[2]: ("Compacted model: largest difference / float32 rounding bound", "compacted error / bound",
                       TIMES),
    prune.TARGETS[3]: ("Edge-sparse model: largest difference / float32 rounding bound", "edge-sparse error / bound",
                       TIMES),
}
THREAD_NAMES = {  # readable name, short name, unit
    threads.TARGETS[0][0]: ("Training step with default threads / fastest setting that changes something, alone",
                            "default threads, alone", TIMES),
    threads.TARGETS[1][0]: ("Beside a busy process: the layer's slowdown over torch's dense product's (default "
                            "threads)", "slowdown vs torch's, busy", TIMES),
}
FAMILY_NAMES = {  # readable name, short name, unit (families.TARGETS, on the CPU)
    **{name: (f"{families.FAMILY_TITLES[family]} layer's training step / dense product of its K, G = 5 (CPU)",
              f"{families.FAMILY_TITLES[family]} / dense", TIMES)
       for name, _, family, reference, _, _ in families.TARGETS if reference == "dense"},
    families.TARGETS[-1][0]: ("RBFKAN's training step / fast-kan's layer's, G = 5 (CPU)", "RBFKAN / fast-kan",
                              TIMES),
}
WORKFLOW_NAMES = {  # readable name, short name, unit
    workflow.TARGETS[0]: ("Example 1: share of seeds reaching test RMSE 1e-3 at G = 20", "seeds reaching 1e-3", ""),
    workflow.TARGETS[1]: ("Example 1: seeds reaching 1e-3, kanlib / pykan", "seeds, kanlib / pykan", TIMES),
    workflow.TARGETS[2]: ("Example 1: median test RMSE at G = 20, kanlib / pykan", "median RMSE, kanlib / pykan",
                          TIMES),
    workflow.TARGETS[3]: ("Example 1: total time, kanlib / pykan", "time, kanlib / pykan", TIMES),
}


class VerdictError(ValueError):
    """Input the verdict cannot use (a notebook without the value or heading it needs, a value that is no
    number, a page without the marker); names what was expected and what came."""


def section_anchor(heading: str) -> str:
    """The HTML id Sphinx gives a section with this heading: 'The same RMSE: how big' -> 'the-same-rmse-how-big'."""
    from docutils.nodes import make_id

    return make_id(heading)


@dataclasses.dataclass(frozen=True)
class Goal:
    """One goal: its value (None: not measured), the goal `direction` `target`, where and how it was measured."""

    area: str
    name: str
    short: str
    value: float | None
    direction: str
    target: float
    unit: str
    reason: str  # why it is not measured ('' when it is)
    device: str
    mode: str
    notebook: str
    section: str

    @property
    def status(self) -> str:
        """'met', 'missed' or 'not measured yet'."""
        met = target_entry(self.name, self.value, self.direction, self.target)["met"]
        return NOT_MEASURED if met is None else (MET if met else MISSED)

    @property
    def verdict(self) -> str:
        return f"{NOT_MEASURED}: {self.reason}" if self.status == NOT_MEASURED else self.status

    @property
    def goal_text(self) -> str:
        return f"{SYMBOLS[self.direction]} {self.target:g}{self.unit}"

    @property
    def value_text(self) -> str:
        return "–" if self.value is None else f"{self.value:.3g}{self.unit}"

    @property
    def href(self) -> str:
        """The section's address as seen from a page in book/: ../notebooks/NN_x.html#anchor."""
        return f"../notebooks/{pathlib.Path(self.notebook).stem}.html#{section_anchor(self.section)}"

    @property
    def score(self) -> float | None:
        """How far the value is from the goal, turned so that above 1 meets it (value/target for >=, >; its
        inverse for <=, <); inf or 0 when the value is 0 or below; None when not measured."""
        if self.value is None:
            return None
        if self.value <= 0:
            return math.inf if self.direction in ("<=", "<") else 0.0
        ratio = self.value / self.target
        return 1 / ratio if self.direction in ("<=", "<") else ratio


# --- reading the inputs -----------------------------------------------------------------------------------

def read_notebooks(folder: str | os.PathLike[str]) -> dict[str, nbformat.NotebookNode]:
    """{file name: notebook} of the book's notebooks (NN_topic.ipynb) in `folder`."""
    return {path.name: nbformat.read(path, as_version=4) for path in find_notebooks(folder)}


def _check_notebooks(notebooks: object) -> Mapping[str, nbformat.NotebookNode]:
    if not isinstance(notebooks, Mapping):
        raise TypeError(f"notebooks: expected a dict of file name -> notebook (read_notebooks), "
                        f"got {type(notebooks).__name__}")
    for name, nb in notebooks.items():
        if not isinstance(name, str) or not name.endswith(".ipynb"):
            raise TypeError(f"notebooks: expected file names like '03_kan_vs_mlp.ipynb' as keys, got {name!r}")
        if not hasattr(nb, "cells") or not hasattr(nb, "metadata"):
            raise TypeError(f"notebooks[{name!r}]: expected an nbformat notebook, got {type(nb).__name__}")
    return notebooks


def _heading_lines(nb: nbformat.NotebookNode) -> list[str]:
    """The markdown cells' heading lines ("## Text"), in order, leaving out fenced code blocks."""
    found, fenced = [], False
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        for line in cell.source.splitlines():
            if line.lstrip().startswith(("```", "~~~")):
                fenced = not fenced
            elif not fenced and line.startswith("#"):
                found.append(line)
    return found


def _headings(nb: nbformat.NotebookNode) -> list[str]:
    return [line.lstrip("#").strip() for line in _heading_lines(nb)]


def chapter_titles(notebooks: Mapping[str, nbformat.NotebookNode]) -> dict[str, str]:
    """{file name: title} of the notebooks that have a level-1 heading: their first one."""
    titles = {}
    for name, nb in _check_notebooks(notebooks).items():
        title = next((line[2:].strip() for line in _heading_lines(nb) if line.startswith("# ")), "")
        if title:
            titles[name] = title
    return titles


class _Notebook:
    """A notebook's stamp, glued values and headings, with errors that name the notebook."""

    def __init__(self, name: str, nb: nbformat.NotebookNode | None):
        self.name, self.nb = name, nb
        self.stamp = RunStamp.from_metadata(nb.metadata) if nb is not None else None
        self.values = glued(nb) if nb is not None else {}

    @property
    def missing_reason(self) -> str:
        """Why its values cannot be read ('' when they can)."""
        if self.nb is None:
            return f"{self.name} is not in this build"
        if self.stamp is None:
            return f"{self.name} was not executed by the runner"
        return ""

    @property
    def device(self) -> str:
        return f"{self.stamp.device_name} ({self.stamp.device})" if self.stamp else "–"

    @property
    def mode(self) -> str:
        return self.stamp.mode if self.stamp else "–"

    def number(self, key: str) -> float | None:
        """The glued number `key` (None for NaN). Raises VerdictError when the notebook lacks it or it is no number."""
        try:
            value = glued_value(self.values, key)
        except GlueError as error:
            raise VerdictError(f"{self.name}: {error}") from None
        if isinstance(value, str) and value.strip().lower() == "nan":
            return None
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise VerdictError(f"{self.name}: glue key {key!r}: expected a number, got {value!r}")
        return None if math.isnan(value) else float(value)

    def text(self, key: str) -> str:
        try:
            return str(glued_value(self.values, key))
        except GlueError as error:
            raise VerdictError(f"{self.name}: {error}") from None

    def check_heading(self, heading: str) -> None:
        if self.nb is not None and heading not in _headings(self.nb):
            raise VerdictError(f"{self.name}: expected a section headed {heading!r}, got the headings "
                               f"{_headings(self.nb)}")


def _goal(section: str, name: str, short: str, value: float | None, goal: tuple[str, float], unit: str, *,
          device: str, mode: str, reason: str = "") -> Goal:
    notebook, heading = SECTIONS[section]
    direction, target = goal
    if direction not in DIRECTIONS:
        raise VerdictError(f"goal of {name!r}: expected a direction among {tuple(DIRECTIONS)}, got {direction!r}")
    if value is not None and not math.isfinite(value):
        value = None
    if value is None and not reason:
        reason = "no value on file"
    return Goal(AREAS[section], name, short, value, direction, float(target), unit,
                "" if value is not None else reason, device, mode, notebook, heading)


def _parse_goal(text: str, where: str) -> tuple[str, float]:
    """'<= 0.5' (a target_entry's goal) -> ('<=', 0.5)."""
    direction, _, number = text.partition(" ")
    try:
        return direction, float(number)
    except ValueError:
        raise VerdictError(f"{where}: expected a goal like '<= 0.5', got {text!r}") from None


def _sizes(params: Mapping[str, Any]) -> str:
    batch, width = params.get("batch"), params.get("width")
    return f"B {batch}, I = O {width}" if batch is not None and width is not None else ""


def run_mode(result: Mapping[str, Any]) -> str:
    """'quick' or 'full' for a benchmark with modes; else the sizes it ran at ('sizes B 1024, I = O 256')."""
    params = result.get("params") or {}
    if "quick" in params:
        return "quick" if params["quick"] else "full"
    sizes = _sizes(params)
    return f"sizes {sizes}" if sizes else "benchmark defaults"


# --- the goals --------------------------------------------------------------------------------------------

def _layer_goals(results: Sequence[Mapping[str, Any]], fast_path: _Notebook) -> list[Goal]:
    goals = []
    reason = fast_path.missing_reason
    value = None if reason else fast_path.number("fastpath_kanlib_over_dense_g5")
    mode = fast_path.mode
    if not reason:
        mode = f"{mode} (B {fast_path.text('fastpath_batch')}, I = O {fast_path.text('fastpath_width')})"
    goals.append(_goal("fast path", "Training step / dense product, G = 5 (chapter 02)",
                       "layer / dense, G = 5 (02)", value, LAYER_DENSE_GOAL, TIMES, device=fast_path.device, mode=mode,
                       reason=reason))
    for device_type, where in (("cpu", "CPU"), ("cuda", "GPU")):
        run = layer_sweep(results, device_type)
        if run is None:
            reason = NEEDS_GPU if device_type == "cuda" else "needs `python -m kanlib bench layer`"
            goals.append(_goal("layer", f"Training step / dense product ({where})",
                               "layer / dense", None, LAYER_DENSE_GOAL, TIMES, device="–", mode="–",
                               reason=reason))
            goals.append(_goal("layer", f"Unfused layer's training step / kanlib's ({where})",
                               "unfused / layer", None, LAYER_UNFUSED_GOAL, TIMES, device="–", mode="–",
                               reason=reason))
            continue
        headline = layer_headline(run)
        device, mode = device_label(run), run_mode(run)
        for key, name, short, goal in (
                ("ratio_to_dense", "Training step / dense product", "layer / dense", LAYER_DENSE_GOAL),
                ("unfused_speedup", "Unfused layer's training step / kanlib's", "unfused / layer", LAYER_UNFUSED_GOAL)):
            for size in ("small", "large"):
                grid = headline[f"grid_{size}"]
                goals.append(_goal("layer", f"{name}, G = {grid} ({where})", f"{short}, G = {grid}",
                                   headline[f"{key}_{size}"], goal, TIMES, device=device, mode=mode))
    return goals


def _kernel_goals(results: Sequence[Mapping[str, Any]]) -> list[Goal]:
    # the target configuration's rows, joined across the processes of one GPU run (one per grid size)
    run = latest_sweep(results, "kernel", "cuda", kernel.TARGET_CONFIGURATION) or latest(results, "kernel", "cuda")
    report = kernel.target_report(run["rows"] if run else [])
    config = kernel.TARGET_CONFIGURATION
    mode = f"{config['dtype']}, B {config['batch']}, I = O {config['width']}, G = {config['grid']}"
    device = device_label(run) if run else "–"
    reason = NEEDS_GPU if run is None else "the GPU run lacks the target configuration"
    goals = []
    for entry in report:
        name, short = KERNEL_NAMES.get(entry["target"], (entry["target"], entry["target"]))
        goals.append(_goal("kernel", name, short, entry["value"], _parse_goal(entry["goal"], entry["target"]), TIMES,
                           device=device, mode=mode, reason=reason))
    return goals


def _vs_mlp_goals(vs_mlp: _Notebook) -> list[Goal]:
    reason = vs_mlp.missing_reason
    specs = (
        ("params", "Parameters to reach the target RMSE, smallest MLP / smallest KAN", "MLP / KAN parameters",
         "vsmlp_param_ratio", PARAMS_GOAL),
        ("params", "Training time to the target RMSE, KAN / MLP", "KAN / MLP time to target", "vsmlp_time_ratio",
         TIME_TO_TARGET_GOAL),
        ("digits", "Digits epoch time, KAN / MLP of as many parameters", "digits epoch, KAN / MLP",
         "vsmlp_digits_epoch_ratio", EPOCH_TIME_GOAL),
    )
    return [_goal(section, name, short, None if reason else vs_mlp.number(key), goal, TIMES, device=vs_mlp.device,
                  mode=vs_mlp.mode, reason=reason) for section, name, short, key, goal in specs]


def _quant_goals(results: Sequence[Mapping[str, Any]], quantization: _Notebook) -> list[Goal]:
    goals = []
    reason = quantization.missing_reason
    for entry, key in zip(quant.target_report([]), QUANT_GLUE, strict=True):
        name, short, unit = QUANT_NAMES.get(entry["target"], (entry["target"], entry["target"], TIMES))
        goals.append(_goal("quant notebook", f"{name} (chapter 05)", f"{short} (05)",
                           None if reason else quantization.number(key), _parse_goal(entry["goal"], entry["target"]),
                           unit, device=quantization.device, mode=quantization.mode, reason=reason))
    runs = [run for run in (latest(results, "quant", kind) for kind in ("cpu", "cuda")) if run is not None]
    if not runs:
        for entry in quant.target_report([]):
            name, short, unit = QUANT_NAMES.get(entry["target"], (entry["target"], entry["target"], TIMES))
            goals.append(_goal("quant benchmark", f"{name} (benchmark)", f"{short} (benchmark)", None,
                               _parse_goal(entry["goal"], entry["target"]), unit, device="–", mode="–",
                               reason="needs `python -m kanlib bench quant`"))
    for run in runs:
        where = "GPU" if run["device"].get("type") == "cuda" else "CPU"
        for entry in quant.target_report(run["rows"]):
            name, short, unit = QUANT_NAMES.get(entry["target"], (entry["target"], entry["target"], TIMES))
            goals.append(_goal("quant benchmark", f"{name} (benchmark, {where})",
                               f"{short} (benchmark)", entry["value"],
                               _parse_goal(entry["goal"], entry["target"]), unit, device=device_label(run),
                               mode=run_mode(run), reason="the run lacks this setting"))
    return goals


def _workflow_goals(results: Sequence[Mapping[str, Any]]) -> list[Goal]:
    """The goals of `python -m kanlib bench workflow` (pykan's Example 1 over model seeds), from its newest run."""
    return _benchmark_goals(results, "workflow", "workflow", workflow.target_report, WORKFLOW_NAMES,
                            "python -m kanlib bench workflow", device_type=None)


def layer_sweep(results: Sequence[Mapping[str, Any]], device_type: str) -> Mapping[str, Any] | None:
    """The newest layer benchmark sweep on ``device_type`` at the goals' configuration (its grid sizes joined across
    the processes of one commit), else the newest layer run there, else None."""
    return (latest_sweep(results, "layer", device_type, layer.TARGET_CONFIGURATION)
            or latest(results, "layer", device_type))


def _benchmark_goals(results: Sequence[Mapping[str, Any]], section: str, benchmark: str, report, names: Mapping,
                     command: str, device_type: str | None = "cpu", run: Mapping[str, Any] | None = None) -> list[Goal]:
    """The goals of one benchmark's target report on ``run``, by default its newest run on ``device_type`` (None:
    any); ``names`` maps each target to its (readable name, short name, unit)."""
    run = run if run is not None else latest(results, benchmark, device_type)
    goals = []
    for entry in report(run["rows"] if run is not None else []):
        name, short, unit = names[entry["target"]]
        goals.append(_goal(section, name, short, entry["value"], _parse_goal(entry["goal"], entry["target"]), unit,
                           device=device_label(run) if run is not None else "–",
                           mode=run_mode(run) if run is not None else "–",
                           reason=f"needs `{command}`" if run is None else "no value on file"))
    return goals


def _sparsity_goals(results: Sequence[Mapping[str, Any]]) -> list[Goal]:
    """The grid sweep's goals (the newest CPU layer run), pruning's and the thread settings'."""
    return [*_benchmark_goals(results, "sweep", "layer", layer.target_report, SWEEP_NAMES,
                              "python -m kanlib bench layer --grid 5 50 100 200", run=layer_sweep(results, "cpu")),
            *_benchmark_goals(results, "sweep", "layer", layer.target_report, SWEEP_GPU_NAMES,
                              "python -m kanlib bench layer --device cuda --grid 5 50 100 200", device_type="cuda",
                              run=layer_sweep(results, "cuda")),
            *_benchmark_goals(results, "prune", "prune", prune.target_report, PRUNE_NAMES,
                              "python -m kanlib bench prune"),
            *_benchmark_goals(results, "threads", "threads", threads.target_report, THREAD_NAMES,
                              "python -m kanlib bench threads")]


def _family_goals(results: Sequence[Mapping[str, Any]]) -> list[Goal]:
    """The goals of `python -m kanlib bench families` (each basis family against its dense product), from its
    newest CPU run."""
    return _benchmark_goals(results, "families", "families", families.target_report, FAMILY_NAMES,
                            "python -m kanlib bench families")


def _images_goals(images: _Notebook) -> list[Goal]:
    reason = images.missing_reason
    value = None if reason else images.number("images_bspline_time_ratio")
    target = EPOCH_TIME_GOAL if reason else (EPOCH_TIME_GOAL[0], images.number("images_goal_ratio"))
    goal = _goal("images", "Epoch time at equal test accuracy, B-spline KAN / MLP",
                 "images epoch at equal accuracy, KAN / MLP", value, target, TIMES, device=images.device,
                 mode=images.mode, reason=reason)
    if not reason:
        said = images.text("images_target_met")
        if goal.status in (MET, MISSED) and said != goal.status:
            raise VerdictError(f"{images.name}: its glued verdict images_target_met is {said!r}, but "
                               f"{goal.value_text} against {goal.goal_text} is {goal.status!r}: expected the same "
                               "the notebook's images_target_met to compare with its images_goal_ratio")
    return [goal]


def _images_gpu_goals(results: Sequence[Mapping[str, Any]]) -> list[Goal]:
    """The equal-accuracy goal on a GPU, from the newest CUDA run of `python -m kanlib bench images`."""
    run = latest(results, "images", "cuda")
    (entry,) = images.target_report(run["rows"] if run else [], "cuda")
    summary = next((row for row in run["rows"] if row.get("kind") == "summary"), {}) if run else {}
    return [_goal("images gpu", "Epoch time at equal test accuracy, B-spline KAN / MLP (GPU)",
                  "images epoch at equal accuracy, KAN / MLP (GPU)", entry["value"],
                  _parse_goal(entry["goal"], entry["target"]), TIMES, device=device_label(run) if run else "–",
                  mode=f"{run_mode(run)}, {summary.get('dataset', '?')}" if run else "–",
                  reason=NEEDS_GPU if run is None else "no value on file")]


def collect_goals(results: Sequence[Mapping[str, Any]], notebooks: Mapping[str, nbformat.NotebookNode]) -> list[Goal]:
    """Every goal of the book, in reading order, from `results` (as kanlib.bench.load_results gives them) and
    `notebooks` ({file name: executed notebook}, as read_notebooks gives them).

    A notebook missing from `notebooks` or never executed by the runner leaves its goals 'not measured yet';
    one that lacks a value or section heading the verdict needs raises VerdictError.
    """
    latest(results, "layer")  # checks results, naming what was expected
    notebooks = _check_notebooks(notebooks)
    read = {name: _Notebook(name, notebooks.get(name))
            for name in (NB_FAST_PATH, NB_VS_MLP, NB_KERNELS, NB_QUANT, NB_IMAGES, NB_FORMULA, NB_PRUNE, NB_FINDINGS)}
    for name, heading in SECTIONS.values():
        read[name].check_heading(heading)
    return [*_layer_goals(results, read[NB_FAST_PATH]), *_kernel_goals(results), *_vs_mlp_goals(read[NB_VS_MLP]),
            *_quant_goals(results, read[NB_QUANT]), *_images_goals(read[NB_IMAGES]), *_images_gpu_goals(results),
            *_family_goals(results),
            *_workflow_goals(results),
            *_sparsity_goals(results)]


# --- rendering ----------------------------------------------------------------------------------------------

def goals_frame(goals: Sequence[Goal]) -> pd.DataFrame:
    """One line per goal: area, goal, measured, target, verdict, device, mode, section (notebook › heading), link."""
    return pd.DataFrame([{"area": goal.area, "goal": goal.name, "measured": goal.value_text, "target": goal.goal_text,
                          "verdict": goal.verdict, "device": goal.device, "mode": goal.mode,
                          "section": f"{goal.notebook} › {goal.section}", "link": goal.href} for goal in goals],
                        columns=["area", "goal", "measured", "target", "verdict", "device", "mode", "section", "link"])


def _counts(goals: Sequence[Goal]) -> dict[str, int]:
    return {status: sum(goal.status == status for goal in goals) for status in (MET, MISSED, NOT_MEASURED)}


def figure_alt(goals: Sequence[Goal]) -> str:
    """The figure's alt text: what it shows and what it says, in one paragraph."""
    counts = _counts(goals)
    missed = "; ".join(f"{goal.short} ({goal.mode}): {goal.value_text}, goal {goal.goal_text}"
                       for goal in goals if goal.status == MISSED)
    text = (f"Dot chart, one row per measured goal, on a logarithmic axis of how far each measurement is from its "
            f"goal, the goal at 1. {counts[MET]} goals met, {counts[MISSED]} missed, {counts[NOT_MEASURED]} not "
            "measured yet.")
    return text + (f" Missed: {missed}." if missed else "")


def figure_caption(goals: Sequence[Goal]) -> str:
    """The figure's caption: how to read it, and which goals it cannot show."""
    counts = _counts(goals)
    caption = (f"The goals at a glance: {counts[MET]} met, {counts[MISSED]} missed, {counts[NOT_MEASURED]} not "
               "measured yet. Each dot is one goal, at the factor by which its measurement beats the goal (right of "
               "the dashed line, blue circles) or falls short of it (left, orange crosses), on a log scale; each "
               "label on the left names the device type and the mode of the run (quick mode: small sizes on a CPU), "
               "and the column on the right gives the measurement and its goal.")
    waiting = sorted({goal.reason for goal in goals if goal.status == NOT_MEASURED})
    if waiting:
        caption += " Not shown, not measured yet: " + "; ".join(
            f"{', '.join(goal.short for goal in goals if goal.reason == reason)} ({reason})"
            for reason in waiting) + "."
    return caption


def _device_type(goal: Goal) -> str:
    return "GPU" if "(cuda)" in goal.device else "CPU" if "(cpu)" in goal.device else goal.device


def _mode_word(goal: Goal) -> str:
    """'quick', 'full', or 'benchmark' for a run that has no mode but sizes."""
    word = goal.mode.split(" (")[0]
    return word if word in ("quick", "full") else "benchmark"


def plot_verdict(goals: Sequence[Goal]):
    """A matplotlib Figure: one row per measured goal at its `score` (log x, the goal at 1), met and missed in two
    colours and markers, a rule between areas; the goals named on the left, each measured value and goal on the
    right (in a column of their own, so that no text meets a dot, the goal line or the names)."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    shown = [goal for goal in goals if goal.status != NOT_MEASURED]
    figure = Figure(figsize=(9.0, 0.3 * max(len(shown), 1) + 1.2), layout="constrained")
    ax = figure.add_subplot()
    if not shown:
        ax.set_axis_off()
        ax.text(0.5, 0.5, "No goal measured yet", ha="center", va="center", transform=ax.transAxes)
        return figure
    finite = [goal.score for goal in shown if 0 < goal.score < math.inf]
    low = min([*finite, 1.0]) / 2
    high = max([*finite, 1.0]) * 2
    for row, goal in enumerate(shown):
        met = goal.status == MET
        score = min(max(goal.score, low), high)
        ax.plot(score, row, marker="o" if met else "X", markersize=8, linestyle="none",
                color="#1f77b4" if met else "#e66100")
        ax.hlines(row, 1.0, score, color="0.75", linewidth=1, zorder=0)
        if row and goal.area != shown[row - 1].area:
            ax.axhline(row - 0.5, color="0.6", linewidth=0.8)
    ax.axvline(1.0, color="0.3", linestyle="--", linewidth=1)
    ax.legend(handles=[Line2D([], [], marker="o", color="#1f77b4", linestyle="none", label="met"),
                       Line2D([], [], marker="X", color="#e66100", linestyle="none", label="missed"),
                       Line2D([], [], color="0.3", linestyle="--", label="goal")],
              loc="lower right", fontsize=8, framealpha=0.9)
    ax.set_xscale("log")
    ax.set_xlim(low / 1.5, high * 1.5)
    ax.set_ylim(len(shown) - 0.5, -0.5)
    ax.set_yticks(range(len(shown)), [f"{goal.short} · {_device_type(goal)}, {_mode_word(goal)}" for goal in shown],
                  fontsize=8.5)
    values = ax.secondary_yaxis("right")
    values.set_yticks(range(len(shown)), [f"{goal.value_text} (goal {goal.goal_text})" for goal in shown], fontsize=8)
    for label, goal in zip(values.get_yticklabels(), shown):
        label.set_color("0.2" if goal.status == MET else "#b34700")
    ax.tick_params(axis="x", labelsize=8.5)
    ax.set_xlabel("measurement against its goal (log scale; right of 1: met, left: missed)", fontsize=9)
    counts = _counts(goals)
    ax.set_title(f"{counts[MET]} goals met, {counts[MISSED]} missed, {counts[NOT_MEASURED]} not measured yet",
                 fontsize=10)
    ax.grid(axis="x", which="major", color="0.9")
    return figure


def _text(text: str) -> str:
    return html.escape(text, quote=False)


def _verdict_cell(goal: Goal) -> str:
    if goal.status == MET:
        return '<span style="color:#1f6fb4">✔&nbsp;met</span>'
    if goal.status == MISSED:
        return '<strong style="color:#c04f00">✘&nbsp;missed</strong>'
    return f"– {_text(goal.verdict)}"


def verdict_markdown(goals: Sequence[Goal], figure: str | None = FIGURE_NAME,
                     titles: Mapping[str, str] | None = None) -> str:
    """MyST markdown for a page in book/: the figure (when `figure` names its file), a sentence on how to read
    the verdict, and an HTML table: a heading row per area, then one row per goal (class 'kanlib-goal') with a
    link to the section that measures it, named by its chapter's title from `titles` (file name -> title, see
    :func:`chapter_titles`) or else by the notebook's file name."""
    counts = _counts(goals)
    parts = []
    if figure:
        parts.append(f"```{{figure}} {figure}\n:alt: {figure_alt(goals)}\n:name: fig-verdict\n:width: 100%\n\n"
                     f"{figure_caption(goals)}\n```")
    parts.append(
        f"Of the {len(goals)} goals below, {counts[MET]} are met, {counts[MISSED]} missed and {counts[NOT_MEASURED]} "
        "not measured yet. Each row gives the measured value, the goal, and the device and mode of the run that "
        "measured it: a quick-mode run uses small sizes on a CPU to check that everything works, and its timings "
        "are dominated by fixed overhead; a full-mode run is the reference; a benchmark without modes names its "
        "sizes. Values of different modes are never compared with each other. Each row links to the section that "
        "measures it.")
    columns = ("Goal", "Measured", "Target", "Verdict", "Device", "Mode", "Measured in")
    lines = ['<table class="table kanlib-verdict" style="font-size: 0.85em">',
             "<thead><tr>" + "".join(f'<th scope="col">{name}</th>' for name in columns) + "</tr></thead>", "<tbody>"]
    area = None
    for goal in goals:
        if goal.area != area:
            area = goal.area
            lines.append(f'<tr class="kanlib-verdict-area"><th colspan="{len(columns)}" scope="colgroup">'
                         f"{_text(area)}</th></tr>")
        chapter = (titles or {}).get(goal.notebook) or pathlib.Path(goal.notebook).stem
        link = f'<a href="{html.escape(goal.href)}">{_text(chapter)} › {_text(goal.section)}</a>'
        cells = (_text(goal.name), _text(goal.value_text), _text(goal.goal_text), _verdict_cell(goal),
                 _text(goal.device), _text(goal.mode), link)
        lines.append('<tr class="kanlib-goal">' + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    lines += ["</tbody>", "</table>"]
    parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def write_verdict(page: str | os.PathLike[str], notebooks_dir: str | os.PathLike[str],
                  results_folder: str | os.PathLike[str] = RESULTS_PATH) -> list[Goal]:
    """Replace MARKER in `page` (a staged book page) with the verdict of the notebooks in `notebooks_dir` and the
    results in `results_folder`; the figure goes beside the page as FIGURE_NAME. Returns the goals."""
    from ..bench import load_results

    page = pathlib.Path(page)
    text = page.read_text()
    if MARKER not in text:
        raise VerdictError(f"{page}: expected the marker {MARKER!r}, found none")
    notebooks = read_notebooks(notebooks_dir)
    goals = collect_goals(load_results(results_folder), notebooks)
    figure = plot_verdict(goals)
    import matplotlib

    with matplotlib.rc_context({"svg.hashsalt": "kanlib-verdict"}):
        figure.savefig(page.parent / FIGURE_NAME, format="svg", metadata={"Date": None})
    page.write_text(text.replace(MARKER, verdict_markdown(goals, FIGURE_NAME, chapter_titles(notebooks))))
    return goals
