"""Figures the notebooks share: benchmark rows, staged training curves, learned activations, scaling laws.

Every function draws with seaborn on a matplotlib Axes (a new one when ``ax`` is None), labels both axes,
sets a title and returns what it drew on, so a notebook can adjust the details afterwards:

    ax = plot_rows(rows, x="grid", y="fwdbwd_median_ms", hue="candidate",
                   band=("fwdbwd_q25_ms", "fwdbwd_q75_ms"), ylabel="forward+backward (ms)")
    ax = plot_history(histories, labels=["G=3", "G=10"])          # one History per fit stage
    fig = plot_activations(model, x)                               # phi_{i,o} of every layer
    ax = plot_scaling(n_params, rmse, reference_exponent=-4)      # log-log with a N^-4 line

Needs matplotlib, seaborn and pandas (the ``book`` extra); kanlib itself does not import this module.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch

__all__ = [
    "fit_power_law",
    "history_frame",
    "label_log_axis",
    "plot_activations",
    "plot_history",
    "plot_rows",
    "plot_scaling",
]


def _one_two_five(value: float, _position=None) -> str:
    """``value`` in plain digits (0.02, not 2x10^-2) when it is 1, 2 or 5 times a power of ten, else no label."""
    if not np.isfinite(value) or value <= 0:
        return ""
    mantissa = value / 10 ** np.floor(np.log10(value))
    return f"{value:g}" if min(abs(mantissa - m) for m in (1, 2, 5, 10)) < 1e-6 else ""


def label_log_axis(axis) -> None:
    """Label a log-scaled matplotlib axis (``ax.xaxis``) at 1, 2 and 5 times each power of ten, in plain digits:
    matplotlib's own minor labels (2, 3, 4, 6 times a power, in powers-of-ten notation) collide when the axis spans
    about a decade."""
    from matplotlib.ticker import FuncFormatter

    axis.set_major_formatter(FuncFormatter(_one_two_five))
    axis.set_minor_formatter(FuncFormatter(_one_two_five))


def _new_axes(ax, figsize=(6.4, 4.0)):
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def _frame(rows, name: str = "rows") -> pd.DataFrame:
    if isinstance(rows, pd.DataFrame):
        frame = rows
    elif isinstance(rows, Sequence) and not isinstance(rows, (str, bytes)) and all(
            isinstance(row, Mapping) for row in rows):
        frame = pd.DataFrame(list(rows))
    else:
        raise TypeError(f"{name}: expected a list of dicts or a pandas DataFrame, got {type(rows).__name__}")
    if frame.empty:
        raise ValueError(f"{name}: expected at least one row, got none")
    return frame


def _require_columns(frame: pd.DataFrame, columns, name: str = "rows") -> None:
    missing = [column for column in columns if column is not None and column not in frame.columns]
    if missing:
        raise KeyError(f"{name}: expected columns {missing}; the rows have {sorted(frame.columns)}")


def plot_rows(rows, *, x: str, y: str, hue: str | None = None, style: str | None = None,
              band: tuple[str, str] | None = None, hue_order: Sequence | None = None, ax=None, title: str | None = None, xlabel: str | None = None,
              ylabel: str | None = None, logx: bool = False, logy: bool = True):
    """Line plot of ``y`` against ``x``, one line per ``hue`` (colour) and ``style`` (dashes) level, with
    an optional shaded ``band``.

    rows: a list of dicts (e.g. benchmark rows) or a DataFrame. band: two columns (low, high), e.g. the
    quartiles ``("fwdbwd_q25_ms", "fwdbwd_q75_ms")``, drawn as a shaded range in each line's colour.
    Returns the Axes.
    """
    frame = _frame(rows)
    if band is not None and (isinstance(band, str) or len(band) != 2):
        raise ValueError(f"band: expected two column names (low, high), got {band!r}")
    _require_columns(frame, [x, y, hue, style, *(band or ())])
    ax = _new_axes(ax)
    palette = None
    if hue is not None:
        levels = list(hue_order) if hue_order is not None else list(dict.fromkeys(frame[hue]))
        unknown = [level for level in levels if level not in set(frame[hue])]
        if unknown:
            raise ValueError(f"hue_order: {unknown} are not values of {hue!r}; it has {sorted(set(frame[hue]))}")
        palette = dict(zip(levels, sns.color_palette(n_colors=len(levels))))
        frame = frame[frame[hue].isin(levels)]
        hue_order = levels
    markers = {"markers": True} if style is not None else {"marker": "o"}
    sns.lineplot(data=frame, x=x, y=y, hue=hue, hue_order=hue_order, palette=palette, style=style,
                 errorbar=None, ax=ax, **markers)
    if band is not None:
        low, high = band
        keys = [key for key in (hue, style) if key is not None]
        groups = frame.groupby(keys, sort=False) if keys else [((None,), frame)]
        for level, group in groups:
            level = level if isinstance(level, tuple) else (level,)
            group = group.sort_values(x)
            color = palette[level[0]] if palette is not None else ax.lines[0].get_color()
            ax.fill_between(group[x], group[low], group[high], color=color, alpha=0.2, linewidth=0)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel or y)
    ax.set_title(title or f"{ylabel or y} against {xlabel or x}")
    return ax


def history_frame(histories, labels: Sequence[str] | None = None) -> pd.DataFrame:
    """Training histories of consecutive fit stages as one long table.

    histories: a `kanlib.training.History` or a list of them, one per stage (e.g. one per grid size);
    stage s's steps are shifted by the steps of the stages before it. Columns: ``step`` (cumulative),
    ``stage`` (its label; default "stage 0", ...), ``split`` ("train" or "test") and ``value`` (the
    history's metric, named in ``metric``).
    """
    histories = _histories(histories)
    if labels is None:
        labels = [f"stage {index}" for index in range(len(histories))]
    if len(labels) != len(histories):
        raise ValueError(f"labels: expected one per history ({len(histories)}), got {len(labels)}")
    records, offset = [], 0
    for history, label in zip(histories, labels):
        for split in ("train", "test"):
            values = getattr(history, f"{split}_metric")
            records.extend({"step": offset + step, "stage": label, "split": split, "value": value,
                            "metric": history.metric_name} for step, value in zip(history.step, values))
        offset += history.step[-1]
    return pd.DataFrame.from_records(records)


def _histories(histories) -> list:
    if hasattr(histories, "train_metric"):
        histories = [histories]
    if not isinstance(histories, Sequence) or not histories:
        raise ValueError(f"histories: expected a History or a non-empty list of them, got {histories!r}")
    for index, history in enumerate(histories):
        for name in ("step", "train_metric", "test_metric", "metric_name"):
            if not hasattr(history, name):
                raise TypeError(f"histories[{index}]: expected a kanlib History (with {name}), "
                                f"got {type(history).__name__}")
        if not history.step:
            raise ValueError(f"histories[{index}]: the History holds no evaluation")
    return list(histories)


def plot_history(histories, labels: Sequence[str] | None = None, *, ax=None, title: str | None = None,
                 logy: bool = True, ylabel: str | None = None):
    """Train and test metric over the optimizer steps of consecutive stages, a dashed line at each stage
    boundary labelled with the next stage's label (e.g. where the grid was refined). Returns the Axes."""
    frame = history_frame(histories, labels)
    histories = _histories(histories)
    ax = _new_axes(ax, figsize=(7.5, 4.0))
    sns.lineplot(data=frame, x="step", y="value", hue="split", hue_order=["train", "test"], ax=ax,
                 errorbar=None)
    stage_labels = list(dict.fromkeys(frame["stage"]))
    offset = 0
    for index, history in enumerate(histories):
        if index > 0:
            ax.axvline(offset, color="0.4", linestyle="--", linewidth=1)
            ax.annotate(stage_labels[index], (offset, 1.0), xycoords=("data", "axes fraction"),
                        xytext=(3, -12), textcoords="offset points", fontsize="small", color="0.3")
        offset += history.step[-1]
    if logy:
        ax.set_yscale("log")
    metric = histories[0].metric_name
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel or metric)
    ax.set_title(title or f"train and test {metric} over training")
    return ax


def plot_activations(model, x: torch.Tensor, *, title: str | None = None, max_outputs: int = 8,
                     panel_size: tuple[float, float] = (2.6, 2.0)):
    """Every learned activation phi_{i,o} of a KAN, one panel per (layer, input node), one line per output.

    model: a layer with ``activations(x) -> [N, I, O]`` (a `kanlib.BSplineKAN`) or a stack with
    ``layers`` of them (a `kanlib.KAN`). x [N, in_features]: samples; layer l is shown on the values
    that layers 0..l-1 give for them. Panels: a row per layer, a column per input node of that layer.
    At most ``max_outputs`` lines per panel. Returns the Figure.
    """
    layers = list(model.layers) if hasattr(model, "layers") else [model]
    if not all(callable(getattr(layer, "activations", None)) for layer in layers):
        raise TypeError(f"model: expected a layer with activations(x) or a stack of them, got {type(model).__name__}")
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ValueError(f"x: expected a tensor [N, in_features], got {getattr(x, 'shape', type(x).__name__)}")
    n_cols = max(layer.in_features for layer in layers)
    fig, axes = plt.subplots(len(layers), n_cols, squeeze=False,
                             figsize=(panel_size[0] * n_cols, panel_size[1] * len(layers)))
    values = x
    with torch.no_grad():
        for row, layer in enumerate(layers):
            phi = layer.activations(values).detach().cpu().double()  # [N, I, O]
            inputs = values.detach().cpu().double()
            colors = sns.color_palette(n_colors=min(layer.out_features, max_outputs))
            for i in range(n_cols):
                ax = axes[row, i]
                if i >= layer.in_features:
                    ax.set_axis_off()
                    continue
                order = torch.argsort(inputs[:, i])
                for o in range(min(layer.out_features, max_outputs)):
                    ax.plot(inputs[order, i].numpy(), phi[order, i, o].numpy(), color=colors[o],
                            label=f"o={o}")
                ax.set_title(f"layer {row}, input {i}", fontsize="small")
                ax.set_xlabel(f"$x_{{{row},{i}}}$")
                ax.set_ylabel(r"$\phi_{" + f"{row},{i}" + r",o}$")
            values = layer(values)
    if any(layer.out_features > 1 for layer in layers):
        handles, names = next((a.get_legend_handles_labels() for a in axes.flat
                               if len(a.get_legend_handles_labels()[0]) > 1), ([], []))
        if handles:
            fig.legend(handles, names, title="output o", loc="center right", fontsize="small")
    fig.suptitle(title or "learned activations of each layer")
    fig.tight_layout(rect=(0, 0, 0.92, 1) if any(layer.out_features > 1 for layer in layers) else None)
    return fig


def fit_power_law(x, y) -> tuple[float, float]:
    """Least squares on log-log axes: ``(exponent, prefactor)`` with ``y ~ prefactor * x**exponent``."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 2:
        raise ValueError(f"x, y: expected two 1-d sequences of the same length >= 2, got shapes {x.shape}, {y.shape}")
    if not (np.all(x > 0) and np.all(y > 0) and np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("x, y: expected finite positive values (they are fitted on log-log axes)")
    if np.ptp(np.log(x)) == 0:
        raise ValueError("x: expected at least two distinct values")
    exponent, log_prefactor = np.polyfit(np.log(x), np.log(y), 1)
    return float(exponent), float(np.exp(log_prefactor))


def plot_scaling(n_params, errors, *, reference_exponent: float | None = -4.0, fit_until: int | None = None,
                 label: str = "measured", ax=None, title: str | None = None, xlabel: str = "parameters",
                 ylabel: str = "test RMSE"):
    """Errors against parameter counts on log-log axes, a fitted power law and a reference line.

    The fit uses the first ``fit_until`` points (all by default); the reference line
    ``C * N**reference_exponent`` goes through the first point (None: no reference). Returns
    ``(ax, exponent)`` with the fitted exponent.
    """
    n_params, errors = np.asarray(n_params, dtype=float), np.asarray(errors, dtype=float)
    used = slice(None) if fit_until is None else slice(0, fit_until)
    exponent, prefactor = fit_power_law(n_params[used], errors[used])
    ax = _new_axes(ax)
    sns.lineplot(x=n_params, y=errors, marker="o", label=label, ax=ax, errorbar=None)
    line = np.geomspace(n_params.min(), n_params.max(), 50)
    ax.plot(line, prefactor * line**exponent, linestyle=":", color="0.3", label=f"fit: $N^{{{exponent:.2f}}}$")
    if reference_exponent is not None:
        scale = errors[0] / n_params[0] ** reference_exponent
        ax.plot(line, scale * line**reference_exponent, linestyle="--", color="0.6",
                label=f"reference: $N^{{{reference_exponent:g}}}$")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title or f"{ylabel} against {xlabel}")
    ax.legend()
    return ax, exponent
