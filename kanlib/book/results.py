"""Benchmark results as pandas tables and seaborn figures, for the findings page and any notebook.

`kanlib.bench.load_results` gives the runs as `write_results` wrote them (keys benchmark, params, device,
git, created_utc, rows). Here they become:

- `results_frame(results)`: one line per figure row, with its run's benchmark, device and date in front;
- `runs_frame(results)`: one line per run (what, where, when, which commit, its parameters);
- `latest(results, benchmark, device_type)`: the newest run; `latest_sweep(...)`: the newest one joined by the
  other grid sizes its commit measured in other processes; `latest_runs(results)`: that of each benchmark and
  device type;
- `table(frame)`: the rows to show: identification columns, medians with their quartiles, ratios, MiB;
- `timings_long(frame)`, `plot_timings(frame)`, `plot_ratios(frame)`: figures against the swept parameter
  (`sweep_column`), one line per candidate (`hue_column`), one panel per device;
- `layer_headline(result)`: the layer benchmark's headline figures at the small and the large grid, and
  `layer_summary(headline)`: the same in one sentence;
- `style(frame)`: a table for display (4 significant digits, no index).

Nothing here knows a benchmark's schema beyond the naming conventions of `kanlib.bench` (times
`<prefix>median_ms` with `<prefix>q25_ms` and `<prefix>q75_ms`, ratios ending in `RATIO_SUFFIXES`,
memory ending in `bytes`), so a new benchmark gets a table, and a figure where its rows allow one.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from ..bench.results import RATIO_SUFFIXES
from ..checks import MIB

__all__ = [
    "META_COLUMNS", "device_label", "hue_column", "latest", "latest_runs", "latest_sweep", "layer_headline",
    "layer_summary",
    "plot_ratios", "plot_timings", "ratio_columns", "readable_name", "results_frame", "runs_frame", "style",
    "sweep_column", "table", "timing_prefixes", "timings_long",
]

META_COLUMNS = ("benchmark", "device_type", "device", "created_utc", "commit", "run")
DEVICE_TYPES = ("cpu", "cuda")
MEDIAN_SUFFIX = "median_ms"
SPREAD_SUFFIXES = ("q25_ms", "q75_ms")
# Row columns that hold what was measured, not what was swept: never an x axis.
MEASURE_SUFFIXES = ("_ms", "_n", "bytes", "flops", "per_s", *RATIO_SUFFIXES)


def _check_results(results: object) -> list[Mapping[str, Any]]:
    expected = "a list of results as kanlib.bench.load_results returns them"
    if isinstance(results, Mapping) or not isinstance(results, Sequence):
        raise TypeError(f"results: expected {expected}, got {type(results).__name__}")
    for index, result in enumerate(results):
        if not isinstance(result, Mapping):
            raise TypeError(f"results[{index}]: expected a dict, got {type(result).__name__}")
        missing = [key for key in ("benchmark", "device", "created_utc", "rows") if key not in result]
        if missing:
            raise ValueError(f"results[{index}]: expected the keys of a result file, missing {missing}")
    return list(results)


def _check_device_type(device_type: object) -> None:
    if device_type is not None and device_type not in DEVICE_TYPES:
        raise ValueError(f"device_type: expected one of {DEVICE_TYPES} or None, got {device_type!r}")


def device_label(result: Mapping[str, Any]) -> str:
    """The device a run measured, in words: 'NVIDIA H100 80GB HBM3 (cuda)' or 'AMD EPYC, 2 cores (cpu)'."""
    device = result["device"]
    kind = device.get("type", "?")
    if kind == "cpu" and device.get("cpu_count"):
        return f"{device.get('name', '?')}, {device['cpu_count']} cores ({kind})"
    return f"{device.get('name', '?')} ({kind})"


def _run_id(result: Mapping[str, Any]) -> str:
    return f"{result['benchmark']}-{result['device'].get('type', '?')}-{result['created_utc']}"


def _meta(result: Mapping[str, Any]) -> dict[str, Any]:
    commit = (result.get("git") or {}).get("commit")
    return {
        "benchmark": result["benchmark"],
        "device_type": result["device"].get("type"),
        "device": device_label(result),
        "created_utc": pd.Timestamp(result["created_utc"]),
        "commit": commit[:12] if commit else None,
        "run": _run_id(result),
    }


def results_frame(results: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Every row of every run, one line each: META_COLUMNS, then the row's own figures.

    A row key that clashes with a META_COLUMNS name is kept as 'row.<key>'. Runs keep the order of
    `results`, rows their order within a run; a figure missing from a row is NaN.
    """
    lines = []
    for result in _check_results(results):
        meta = _meta(result)
        for row in result["rows"]:
            line = dict(meta)
            line.update({(f"row.{key}" if key in META_COLUMNS else key): value for key, value in row.items()})
            lines.append(line)
    if not lines:
        return pd.DataFrame(columns=list(META_COLUMNS))
    return pd.DataFrame(lines)


def runs_frame(results: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One line per run: benchmark, device_type, device, created_utc, commit, run, dirty, rows, params (text)."""
    lines = []
    for result in _check_results(results):
        params = result.get("params") or {}
        lines.append({**_meta(result), "dirty": (result.get("git") or {}).get("dirty"),
                      "rows": len(result["rows"]),
                      "params": ", ".join(f"{key}={value}" for key, value in params.items())})
    frame = pd.DataFrame(lines, columns=[*META_COLUMNS, "dirty", "rows", "params"])
    frame["created_utc"] = pd.to_datetime(frame["created_utc"], utc=True)
    return frame


def _runs_of(results: Sequence[Mapping[str, Any]], benchmark: str,
             device_type: str | None) -> list[Mapping[str, Any]]:
    """The (checked) runs of `benchmark` on `device_type` (None: any)."""
    _check_device_type(device_type)
    return [result for result in _check_results(results)
            if result["benchmark"] == benchmark
            and (device_type is None or result["device"].get("type") == device_type)]


def latest(results: Sequence[Mapping[str, Any]], benchmark: str,
           device_type: str | None = None) -> Mapping[str, Any] | None:
    """The newest run (by created_utc) of `benchmark` on `device_type` ('cpu', 'cuda'; None: any), or None."""
    matching = _runs_of(results, benchmark, device_type)
    if not matching:
        return None
    return max(matching, key=lambda result: pd.Timestamp(result["created_utc"]))


def latest_sweep(results: Sequence[Mapping[str, Any]], benchmark: str, device_type: str | None = None,
                 configuration: Mapping[str, Any] | None = None) -> Mapping[str, Any] | None:
    """The newest run of `benchmark` on `device_type` with rows at `configuration` ({row column: value}; None: any),
    joined by the rows of the other runs of the same commit at that configuration for the grid sizes it lacks: a
    sweep measured one process per grid size reads as one run. Rows outside the configuration are dropped;
    ``params["grids"]`` lists the grid sizes joined. The newest run itself when nothing was joined or dropped; None
    when no run qualifies."""
    configuration = dict(configuration or {})

    def at_configuration(row: Mapping[str, Any]) -> bool:
        return all(row.get(key) == value for key, value in configuration.items())

    matching = sorted((result for result in _runs_of(results, benchmark, device_type)
                       if any(at_configuration(row) for row in result["rows"])),
                      key=lambda result: pd.Timestamp(result["created_utc"]), reverse=True)
    if not matching:
        return None
    newest = matching[0]
    commit = (newest.get("git") or {}).get("commit")
    rows, grids = [], []
    for result in matching:
        if result is not newest and (commit is None or (result.get("git") or {}).get("commit") != commit):
            continue
        chosen = [row for row in result["rows"] if at_configuration(row) and row.get("grid") not in grids]
        grids += list(dict.fromkeys(row.get("grid") for row in chosen))
        rows += chosen
    if len(rows) == len(newest["rows"]) and all(a is b for a, b in zip(rows, newest["rows"])):
        return newest  # nothing joined, nothing dropped
    params = {**(newest.get("params") or {})}
    if "grids" in params or any(row.get("grid") is not None for row in rows):
        params["grids"] = sorted(grid for grid in grids if grid is not None)
    return {**newest, "params": params, "rows": rows}


def latest_runs(results: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The newest run of each (benchmark, device type), benchmarks in order of first appearance, CPU first; each
    joined, as :func:`latest_sweep` joins it, by the rows of its commit's other runs with the same parameters for
    the grid sizes it lacks (a sweep measured one process per grid size reads as one run; another dtype does not
    join)."""
    results = _check_results(results)
    benchmarks = list(dict.fromkeys(result["benchmark"] for result in results))
    types = sorted({result["device"].get("type") for result in results},
                   key=lambda kind: (DEVICE_TYPES.index(kind) if kind in DEVICE_TYPES else len(DEVICE_TYPES),
                                     str(kind)))
    chosen = []
    for benchmark in benchmarks:
        for kind in types:
            matching = [result for result in results
                        if result["benchmark"] == benchmark and result["device"].get("type") == kind]
            if matching:
                newest = max(matching, key=lambda result: pd.Timestamp(result["created_utc"]))
                alike = [result for result in matching if _configuration(result) == _configuration(newest)]
                chosen.append(latest_sweep(alike, benchmark))
    return chosen


def _configuration(result: Mapping[str, Any]) -> dict:
    """A run's parameters but its grid sizes: runs that differ only there are one sweep."""
    return {key: value for key, value in (result.get("params") or {}).items() if key not in ("grid", "grids")}


def _row_columns(frame: pd.DataFrame) -> list[str]:
    return [column for column in frame.columns if column not in META_COLUMNS]


def timing_prefixes(frame: pd.DataFrame) -> list[str]:
    """Prefixes p with a '<p>median_ms' column holding a value, in column order ('fwd_', 'fwdbwd_', ...)."""
    return [column[: -len(MEDIAN_SUFFIX)] for column in _row_columns(frame)
            if column.endswith(MEDIAN_SUFFIX) and frame[column].notna().any()]


def ratio_columns(frame: pd.DataFrame) -> list[str]:
    """Columns ending in a ratio suffix (kanlib.bench.RATIO_SUFFIXES) that hold a value."""
    return [column for column in _row_columns(frame)
            if column.endswith(RATIO_SUFFIXES) and frame[column].notna().any()]


def _is_numeric(series: pd.Series) -> bool:
    values = series.dropna()
    return len(values) > 0 and all(isinstance(value, numbers.Real) and not isinstance(value, bool)
                                   for value in values)


def _varies(frame: pd.DataFrame, column: str) -> bool:
    """Whether `column` takes more than one value within some run."""
    return bool((frame.groupby("run")[column].nunique() > 1).any())


def sweep_column(frame: pd.DataFrame) -> str | None:
    """The swept parameter, the x axis of the figures: the first numeric column, in column order, that
    is not a measurement (MEASURE_SUFFIXES) and varies within a run; None if there is none."""
    for column in _row_columns(frame):
        if column.endswith(MEASURE_SUFFIXES) or not _is_numeric(frame[column]):
            continue
        if _varies(frame, column):
            return column
    return None


def hue_column(frame: pd.DataFrame) -> str | None:
    """What tells a run's lines apart: 'candidate' when it varies, else the first text column varying
    within a run."""
    if "candidate" in frame.columns and _varies(frame, "candidate"):
        return "candidate"
    for column in _row_columns(frame):
        values = frame[column].dropna()
        if len(values) and all(isinstance(value, str) for value in values) and _varies(frame, column):
            return column
    return None


def table(frame: pd.DataFrame) -> pd.DataFrame:
    """The figures worth showing: device, the row's parameters, each time's median and quartiles (ms),
    ratios, memory in MiB ('<name> (MiB)'); min, max and run counts of times left out, as are the
    benchmark, run, commit and date (shown in the runs table) and columns empty in every row."""
    frame = frame.dropna(axis=1, how="all")
    prefixes = timing_prefixes(frame)
    hidden = {f"{prefix}{suffix}" for prefix in prefixes for suffix in ("min_ms", "max_ms", "n")}
    columns = ["device"] + [column for column in _row_columns(frame) if column not in hidden]
    shown = frame[[column for column in columns if column in frame.columns]].copy()
    for column in list(shown.columns):
        if column.endswith("bytes") and _is_numeric(shown[column]):
            shown[column] = shown[column] / MIB
            shown = shown.rename(columns={column: f"{column} (MiB)"})
    return shown.reset_index(drop=True)


def timings_long(frame: pd.DataFrame) -> pd.DataFrame:
    """Times in long form: the non-time columns of each row, then 'timing' (the prefix without its '_',
    'time' for an empty one) and its 'median_ms', 'q25_ms', 'q75_ms'; one line per row and timing."""
    prefixes = timing_prefixes(frame)
    time_columns = {f"{prefix}{suffix}" for prefix in prefixes
                    for suffix in ("median_ms", "q25_ms", "q75_ms", "min_ms", "max_ms", "n")}
    keep = [column for column in frame.columns if column not in time_columns]
    parts = []
    for prefix in prefixes:
        part = frame[keep].copy()
        part["timing"] = prefix.rstrip("_") or "time"
        for suffix in ("median_ms", *SPREAD_SUFFIXES):
            column = f"{prefix}{suffix}"
            part[suffix] = frame[column] if column in frame.columns else math.nan
        parts.append(part[part["median_ms"].notna()])
    if not parts:
        return pd.DataFrame(columns=[*keep, "timing", "median_ms", *SPREAD_SUFFIXES])
    return pd.concat(parts, ignore_index=True)


def _wide_range(values: pd.Series) -> bool:
    values = values.dropna()
    return len(values) > 0 and bool((values > 0).all()) and values.max() / values.min() >= 8


def _set_x_axis(grid, values: pd.Series) -> None:
    """A log x axis when `values` span a factor of 8 or more, ticked at the measured values (at most 12)."""
    if not _wide_range(values):
        return
    from matplotlib.ticker import NullFormatter, NullLocator

    grid.set(xscale="log")
    ticks = sorted(set(values.dropna()))
    for ax in grid.axes.flat:
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
        if len(ticks) <= 12:
            ax.set_xticks(ticks, [f"{tick:g}" for tick in ticks])


def _finish_log_grid(grid, x_values: pd.Series, x: str, y_label: str, hue: str | None, title: str | None):
    """Log y axis (decades labelled; a panel spanning less than one would label its minor ticks on top of each
    other), the x axis of `_set_x_axis`, labels, panel titles, legend and title of a FacetGrid."""
    from matplotlib.ticker import NullFormatter

    grid.set(yscale="log")
    for ax in grid.axes.flat:
        ax.yaxis.set_minor_formatter(NullFormatter())
    _set_x_axis(grid, x_values)
    grid.set_axis_labels(x, y_label)
    grid.set_titles(row_template="{row_name}", col_template="{col_name}")
    if hue is not None:
        grid.add_legend(title=hue)
    if title:
        grid.figure.suptitle(title, y=1.02)
    return grid


def _draw_median_with_quartiles(data: pd.DataFrame, x: str, color=None, label=None, **kwargs) -> None:
    import matplotlib.pyplot as plt

    data = data.sort_values(x)
    lower = (data["median_ms"] - data["q25_ms"]).clip(lower=0).fillna(0)
    upper = (data["q75_ms"] - data["median_ms"]).clip(lower=0).fillna(0)
    plt.gca().errorbar(data[x], data["median_ms"], yerr=[lower, upper], color=color, label=label,
                       marker="o", markersize=4, capsize=3, **kwargs)


def _follows(frame: pd.DataFrame, column: str, keys: list[str]) -> bool:
    """Whether `column` takes at most one value for each value of `keys` within each run (e.g. the dense
    product's K = I*(G+k+1) follows the grid G): it is derived from them, not swept beside them."""
    return bool((frame.groupby(["run", *keys], dropna=False)[column].nunique() <= 1).all())


def fix_other_parameters(frame: pd.DataFrame, x: str, hue: str | None) -> tuple[pd.DataFrame, str]:
    """The rows where every swept parameter other than `x` and `hue` takes its first value, so that each
    line of a figure is one `hue` value; and a caption naming the values held fixed ('' when none).

    A column derived from `x` and `hue` (one value per x, hue and run), or one whose first value would drop
    some measured x (it changes with x), is not held fixed: every x measured stays on the axis.
    """
    fixed = []
    keys = [x] if hue is None else [x, hue]
    for column in _row_columns(frame):
        if column in (x, hue) or column.endswith(MEASURE_SUFFIXES) or not _varies(frame, column):
            continue
        values = frame[column].dropna()
        if values.empty or not all(isinstance(v, (str, int, float, bool)) for v in values):
            continue
        if _follows(frame, column, keys):
            continue
        first = values.iloc[0]
        kept = frame[frame[column] == first]
        if set(kept[x].dropna()) != set(frame[x].dropna()):
            continue
        frame = kept
        fixed.append(f"{column} = {first}")
    return frame, ", ".join(fixed)


def _with_caption(title: str | None, caption: str) -> str | None:
    if not caption:
        return title
    return f"{title} ({caption})" if title else caption


def plot_timings(frame: pd.DataFrame, x: str | None = None, hue: str | None = None, title: str | None = None):
    """Median time (ms, log scale) against the swept parameter `x`, the error bars spanning the quartiles;
    one line per `hue` value, one column of panels per device, one row per timing (fwd, fwdbwd, ...).

    x and hue default to `sweep_column` and `hue_column`. Returns the seaborn FacetGrid, or None when
    the rows allow no such figure (no time, or no swept numeric parameter).
    """
    import seaborn as sns

    x = x or sweep_column(frame)
    if x is None or x not in frame.columns:
        return None
    hue = hue if hue is not None else hue_column(frame)
    frame, caption = fix_other_parameters(frame, x, hue)
    title = _with_caption(title, caption)
    long = timings_long(frame).dropna(subset=[x])
    if long.empty:
        return None
    timings = list(dict.fromkeys(long["timing"]))
    grid = sns.FacetGrid(long, row="timing" if len(timings) > 1 else None, col="device", hue=hue,
                         sharey=False, height=3.0, aspect=1.4, margin_titles=True)
    grid.map_dataframe(_draw_median_with_quartiles, x=x)
    return _finish_log_grid(grid, long[x], x, "median time (ms)", hue, title)


def plot_ratios(frame: pd.DataFrame, x: str | None = None, hue: str | None = None, title: str | None = None):
    """Every ratio column (e.g. ratio_to_dense, memory_ratio_to_dense) against the swept parameter `x`,
    log scale with a line at 1; one column of panels per ratio, one row per device. None when the rows
    allow no such figure."""
    import seaborn as sns

    x = x or sweep_column(frame)
    ratios = ratio_columns(frame)
    if x is None or x not in frame.columns or not ratios:
        return None
    hue = hue if hue is not None else hue_column(frame)
    frame, caption = fix_other_parameters(frame, x, hue)
    title = _with_caption(title, caption)
    keep = [column for column in ("device", x, hue) if column is not None]
    value = "ratio_value"  # not a column name a benchmark uses, so the melt cannot clash with one
    long = frame.melt(id_vars=keep, value_vars=ratios, var_name="ratio", value_name=value).dropna(subset=[value, x])
    long = long[long[value] > 0]
    if long.empty:
        return None
    devices = list(dict.fromkeys(long["device"]))
    grid = sns.FacetGrid(long, col="ratio", row="device" if len(devices) > 1 else None, hue=hue,
                         sharey=False, height=3.0, aspect=1.3, margin_titles=True)
    grid.map_dataframe(sns.lineplot, x=x, y=value, marker="o", estimator=None)
    for ax in grid.axes.flat:
        ax.axhline(1.0, color="0.4", linestyle="--", linewidth=1)
    return _finish_log_grid(grid, long[x], x, "ratio", hue, title)


def layer_headline(result: Mapping[str, Any], kanlib: str = "bsplinekan", small_grid: int = 5,
                   time: str = "fwdbwd_median_ms") -> dict[str, Any]:
    """The layer benchmark's headline figures from one run, at a small grid (`small_grid` if measured,
    else the smallest) and at the largest grid measured:

    - grid_small, grid_large;
    - ratio_to_dense_{small,large}: kanlib's `time` over the dense product's (the performance floor);
    - mlp_ratio_{small,large}: kanlib's time over an MLP layer's of the same width;
    - unfused_speedup_{small,large}, pykan_speedup_{small,large}: their time over kanlib's;
    - memory_ratio_to_dense_{small,large}: kanlib's peak training memory over the dense product's;
    - unfused_memory_ratio_{small,large}: the unfused layer's peak memory over kanlib's;
    - device, device_type, created_utc, batch, width.

    A figure whose candidate or column is missing from the run is NaN. Raises ValueError when the run is
    not a layer run or has no row for `kanlib`.
    """
    if result.get("benchmark") != "layer":
        raise ValueError(f"layer_headline: expected a 'layer' result, got {result.get('benchmark')!r}")
    rows = pd.DataFrame(result["rows"])
    for column in ("grid", "candidate"):
        if column not in rows.columns:
            raise ValueError(f"layer_headline: expected rows with a {column!r} column, got {list(rows.columns)}")
    if kanlib not in set(rows["candidate"]):
        raise ValueError(f"layer_headline: no {kanlib!r} rows; candidates are {sorted(set(rows['candidate']))}")
    grids = sorted(set(rows.loc[rows["candidate"] == kanlib, "grid"]))
    grid_small = small_grid if small_grid in grids else grids[0]
    params = result.get("params") or {}
    headline: dict[str, Any] = {
        "device": device_label(result), "device_type": result["device"].get("type"),
        "created_utc": result["created_utc"], "batch": params.get("batch"), "width": params.get("width"),
        "grid_small": int(grid_small), "grid_large": int(grids[-1]),
    }

    def figure(grid: int, candidate: str, column: str) -> float:
        match = rows[(rows["grid"] == grid) & (rows["candidate"] == candidate)]
        if match.empty or column not in match.columns or pd.isna(match[column].iloc[0]):
            return math.nan
        return float(match[column].iloc[0])

    for size, grid in (("small", grid_small), ("large", grids[-1])):
        kan_time, kan_peak = figure(grid, kanlib, time), figure(grid, kanlib, "peak_bytes")
        headline[f"ratio_to_dense_{size}"] = _ratio(kan_time, figure(grid, "dense", time))
        headline[f"mlp_ratio_{size}"] = _ratio(kan_time, figure(grid, "mlp", time))
        headline[f"unfused_speedup_{size}"] = _ratio(figure(grid, "unfused", time), kan_time)
        headline[f"pykan_speedup_{size}"] = _ratio(figure(grid, "pykan", time), kan_time)
        headline[f"memory_ratio_to_dense_{size}"] = _ratio(kan_peak, figure(grid, "dense", "peak_bytes"))
        headline[f"unfused_memory_ratio_{size}"] = _ratio(figure(grid, "unfused", "peak_bytes"), kan_peak)
    return headline


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator; NaN when either is NaN or the denominator is 0."""
    if math.isnan(numerator) or math.isnan(denominator) or denominator == 0:
        return math.nan
    return numerator / denominator


def _times(value: float) -> str:
    """A ratio in words: 2 decimals below 10, none above; 'n/a' for NaN."""
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:.2f}" if value < 10 else f"{value:.0f}"


def layer_summary(headline: Mapping[str, Any]) -> str:
    """One sentence stating a `layer_headline`: where and when it was measured, then kanlib's layer
    against the dense product, the unfused layer and pykan at the small and the large grid; a candidate the
    run did not time is named as such instead of given figures."""
    small, large = headline["grid_small"], headline["grid_large"]
    date = str(headline["created_utc"])[:10]
    shape = ""
    if headline.get("batch") is not None and headline.get("width") is not None:
        shape = f" (batch {headline['batch']}, width {headline['width']})"

    def measured(key: str) -> bool:
        return any(not math.isnan(headline[f"{key}_{size}"]) for size in ("small", "large"))

    def pair(key: str) -> str:
        return f"{_times(headline[f'{key}_small'])} and {_times(headline[f'{key}_large'])}"

    peers, untimed = [], []
    for layer, name, key in (("the unfused layer", "the unfused layer", "unfused_speedup"),
                             ("the pykan layer", "pykan", "pykan_speedup")):
        if measured(key):
            peers.append(f"{layer} takes {pair(key)} times as long as kanlib's")
        else:
            untimed.append(name)
    memory = f"kanlib's peak training memory is {pair('memory_ratio_to_dense')} times the dense product's"
    if measured("unfused_memory_ratio"):
        memory += f", the unfused layer's {pair('unfused_memory_ratio')} times kanlib's"
    return (f"On {headline['device']}, measured {date}{shape}, kanlib's layer takes {pair('ratio_to_dense')} "
            f"times the dense product's forward+backward time at G = {small} and G = {large}"
            + "".join(f"; {peer}" for peer in peers) + f"; {memory}."
            + (f" This run did not time {' or '.join(untimed)}." if untimed else ""))


# Column-name endings of the benchmarks' rows and how a reader reads them.
_READABLE_ENDINGS = (("_median_ms", " median (ms)"), ("_q25_ms", " 25th pct (ms)"), ("_q75_ms", " 75th pct (ms)"),
                     ("_bytes", " (bytes)"), ("_MiB", " (MiB)"))


def readable_name(column: str) -> str:
    """A benchmark column as a table header: 'fwdbwd_median_ms' -> 'fwdbwd median (ms)', 'dense_k' -> 'dense k'."""
    for ending, readable in _READABLE_ENDINGS:
        if column.endswith(ending):
            return column[: -len(ending)].replace("_", " ") + readable
    return column.replace("_", " ")


def style(frame: pd.DataFrame):
    """`frame` for display, as every table of the book is shown (:func:`kanlib.book.tables.show_table`): readable
    headers, floats with 4 significant digits, missing values as a dash, no index."""
    from .tables import show_table

    return show_table(frame.rename(columns=lambda column: readable_name(str(column))))
