import math

import matplotlib
import pandas as pd
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from kanlib.book import results as R  # noqa: E402
from kanlib.bench import load_results  # noqa: E402
from kanlib.book.notebook import results_dir  # noqa: E402
from kanlib.book.tables import MISSING  # noqa: E402

CANDIDATE_MS = {"dense": 10.0, "mlp": 2.0, "bsplinekan": 15.0, "unfused": 45.0, "pykan": 600.0}
CANDIDATE_PEAK = {"dense": 100, "mlp": 20, "bsplinekan": 120, "unfused": 480, "pykan": 6000}


def timing(prefix, median):
    return {f"{prefix}median_ms": median, f"{prefix}q25_ms": 0.9 * median, f"{prefix}q75_ms": 1.2 * median,
            f"{prefix}min_ms": 0.8 * median, f"{prefix}max_ms": 1.5 * median, f"{prefix}n": 20}


def layer_rows(grids=(5, 10, 50), scale=1.0, candidates=tuple(CANDIDATE_MS)):
    rows = []
    for grid in grids:
        for candidate in candidates:
            fwdbwd = CANDIDATE_MS[candidate] * grid / 5 * scale
            rows.append({"grid": grid, "candidate": candidate, "batch": 64, "width": 8, "dtype": "float32",
                         **timing("fwd_", fwdbwd / 3), **timing("fwdbwd_", fwdbwd),
                         "peak_bytes": CANDIDATE_PEAK[candidate] * grid * 2**20,
                         "flops": None,
                         "ratio_to_dense": CANDIDATE_MS[candidate] / CANDIDATE_MS["dense"],
                         "memory_ratio_to_dense": CANDIDATE_PEAK[candidate] / CANDIDATE_PEAK["dense"]})
    return rows


def result(benchmark, device_type, created, rows, commit="0123456789abcdef", params=None):
    name = "NVIDIA H100" if device_type == "cuda" else "AMD EPYC"
    return {"benchmark": benchmark, "params": params or {"batch": 64, "width": 8},
            "device": {"type": device_type, "name": name, "cpu_count": 2},
            "git": {"commit": commit, "dirty": False}, "created_utc": created, "rows": rows}


@pytest.fixture
def runs():
    return [
        result("layer", "cpu", "2026-01-01T00:00:00+00:00", layer_rows(scale=1.0)),
        result("layer", "cpu", "2026-02-01T00:00:00+00:00", layer_rows(scale=2.0)),  # the newest CPU run
        result("layer", "cuda", "2026-01-15T00:00:00+00:00", layer_rows(scale=0.1)),
        result("quant", "cpu", "2026-01-20T00:00:00+00:00",
               [{"bits": 8, "error": 0.01, "device": "x"}, {"bits": 4, "error": 0.05, "device": "y"}]),
    ]


def test_results_frame_has_one_line_per_row_with_device_and_benchmark(runs):
    frame = R.results_frame(runs)
    assert len(frame) == 3 * 15 + 2
    assert list(frame.columns[:len(R.META_COLUMNS)]) == list(R.META_COLUMNS)
    assert set(frame["benchmark"]) == {"layer", "quant"}
    assert set(frame["device"]) == {"AMD EPYC, 2 cores (cpu)", "NVIDIA H100 (cuda)"}
    assert frame.loc[frame.benchmark == "layer", "commit"].iloc[0] == "0123456789ab"
    # a row key that clashes with a meta column is kept under another name, never overwriting it
    quant = frame[frame.benchmark == "quant"]
    assert list(quant["row.device"]) == ["x", "y"]
    assert set(quant["device"]) == {"AMD EPYC, 2 cores (cpu)"}
    # figures a row lacks are NaN
    assert quant["fwd_median_ms"].isna().all()


def test_frames_of_nothing_are_empty_with_their_columns():
    frame = R.results_frame([])
    assert frame.empty and list(frame.columns) == list(R.META_COLUMNS)
    runs = R.runs_frame([])
    assert runs.empty and pd.api.types.is_datetime64_any_dtype(runs["created_utc"])
    assert R.plot_timings(frame) is None and R.plot_ratios(frame) is None
    assert R.latest_runs([]) == []


def test_bad_results_name_what_was_expected():
    with pytest.raises(TypeError, match="list of results"):
        R.results_frame({"benchmark": "layer"})
    with pytest.raises(ValueError, match="missing"):
        R.results_frame([{"benchmark": "layer"}])
    with pytest.raises(ValueError, match="device_type"):
        R.latest([], "layer", "gpu")


def test_runs_frame_has_one_line_per_run(runs):
    frame = R.runs_frame(runs)
    assert list(frame["rows"]) == [15, 15, 15, 2]
    assert frame["params"].iloc[0] == "batch=64, width=8"


def test_latest_picks_the_newest_run_of_a_benchmark_and_device(runs):
    assert R.latest(runs, "layer", "cpu") is runs[1]
    assert R.latest(runs, "layer", "cuda") is runs[2]
    assert R.latest(runs, "layer") is runs[1]
    assert R.latest(runs, "quant", "cuda") is None
    assert R.latest(runs, "kernel", "cpu") is None
    assert R.latest_runs(runs) == [runs[1], runs[2], runs[3]]


def test_latest_sweep_joins_the_grid_sizes_its_commit_measured_in_other_processes():
    def one_grid(grid, created, commit="c1", dtype="float32", scale=1.0):
        rows = [{**row, "dtype": dtype} for row in layer_rows(grids=(grid,), scale=scale)]
        return result("layer", "cuda", f"2026-03-0{created}T00:00:00+00:00", rows, commit=commit,
                      params={"batch": 64, "width": 8, "grids": [grid], "dtype": dtype})

    runs = [one_grid(5, 1, commit="old"), one_grid(100, 1, commit="old"),  # an older sweep
            one_grid(5, 2, scale=3.0), one_grid(50, 3), one_grid(5, 4),  # this commit's, G = 5 twice
            one_grid(50, 5, dtype="bfloat16")]  # newest of all, at another configuration
    sweep = R.latest_sweep(runs, "layer", "cuda", {"dtype": "float32", "batch": 64})
    assert sweep["created_utc"] == "2026-03-04T00:00:00+00:00" and sweep["params"]["grids"] == [5, 50]
    # G = 5 from the newest run that measured it, none from the older commit or the other dtype
    assert {(row["grid"], row["fwdbwd_median_ms"]) for row in sweep["rows"] if row["candidate"] == "dense"} == {
        (5, 10.0), (50, 100.0)}
    assert R.layer_headline(sweep)["grid_large"] == 50
    assert R.latest_sweep(runs, "layer", "cuda", {"dtype": "bfloat16"})["params"]["grids"] == [50]
    assert R.latest_sweep(runs, "layer", "cpu") is None
    assert R.latest_sweep(runs, "layer", "cuda", {"dtype": "float16"}) is None
    with pytest.raises(ValueError, match="device_type"):
        R.latest_sweep(runs, "layer", "tpu")


def test_latest_runs_reads_a_sweep_measured_one_process_per_grid_as_one_run():
    """The committed CPU sweep is four one-grid runs of one commit: the findings plot it against G."""
    def one_grid(grid, created, commit):
        return result("layer", "cpu", f"2026-04-0{created}T00:00:00+00:00", layer_rows(grids=(grid,)), commit=commit,
                      params={"batch": 64, "width": 8, "grids": [grid]})

    runs = [one_grid(5, 1, "old"), one_grid(50, 2, "old"), one_grid(5, 3, "new"), one_grid(50, 4, "new"),
            one_grid(200, 5, "new")]
    other_dtype = one_grid(100, 4, "new")
    other_dtype["params"]["dtype"] = "bfloat16"
    (sweep,) = R.latest_runs([*runs, other_dtype])
    assert sweep["created_utc"] == "2026-04-05T00:00:00+00:00" and sweep["params"]["grids"] == [5, 50, 200]
    frame = R.results_frame([sweep])
    assert R.sweep_column(frame) == "grid"
    assert len(R.fix_other_parameters(frame, "grid", R.hue_column(frame))[0]) == len(frame)


def test_sweep_and_hue_columns(runs):
    frame = R.results_frame(runs)
    layer = frame[frame.benchmark == "layer"]
    assert R.sweep_column(layer) == "grid"
    assert R.hue_column(layer) == "candidate"
    assert R.timing_prefixes(layer) == ["fwd_", "fwdbwd_"]
    assert R.ratio_columns(layer) == ["ratio_to_dense", "memory_ratio_to_dense"]
    quant = frame[frame.benchmark == "quant"].dropna(axis=1, how="all")
    assert R.sweep_column(quant) == "bits"
    assert R.hue_column(quant) == "row.device"
    assert R.timing_prefixes(quant) == []
    # a column constant within every run is no sweep, even if it differs between runs
    constant = R.results_frame([result("x", "cpu", "2026-01-01T00:00:00+00:00", [{"n": 1, "a_ms": 1.0}]),
                                result("x", "cpu", "2026-01-02T00:00:00+00:00", [{"n": 2, "a_ms": 2.0}])])
    assert R.sweep_column(constant) is None


def test_table_keeps_medians_quartiles_and_ratios_and_shows_memory_in_mib(runs):
    frame = R.results_frame(runs)
    shown = R.table(frame[frame.run == frame.run.iloc[0]])
    assert shown.columns[0] == "device"
    assert {"fwdbwd_median_ms", "fwdbwd_q25_ms", "fwdbwd_q75_ms", "ratio_to_dense"} <= set(shown.columns)
    assert not {"fwdbwd_min_ms", "fwdbwd_max_ms", "fwdbwd_n", "benchmark", "run", "flops"} & set(shown.columns)
    assert shown["peak_bytes (MiB)"].iloc[0] == CANDIDATE_PEAK["dense"] * 5


def test_timings_long_has_one_line_per_row_and_timing(runs):
    frame = R.results_frame(runs[:1])
    long = R.timings_long(frame)
    assert len(long) == 2 * len(frame)
    assert set(long["timing"]) == {"fwd", "fwdbwd"}
    fwdbwd = long[(long.timing == "fwdbwd") & (long.candidate == "dense") & (long.grid == 5)]
    assert fwdbwd["median_ms"].iloc[0] == pytest.approx(10.0)
    assert fwdbwd["q75_ms"].iloc[0] == pytest.approx(12.0)
    assert "fwd_median_ms" not in long.columns


def test_plots_return_a_figure_where_the_rows_allow_one(runs):
    frame = R.results_frame(runs)
    layer = frame[frame.benchmark == "layer"]
    grid = R.plot_timings(layer, title="layer")
    assert grid is not None and grid.axes.shape == (2, 2)  # fwd/fwdbwd x two devices
    assert grid.axes.flat[0].get_yscale() == "log" and grid.axes.flat[0].get_xscale() == "log"
    ratios = R.plot_ratios(layer)
    assert ratios is not None and ratios.axes.shape == (2, 2)  # two devices x two ratios
    quant = frame[frame.benchmark == "quant"].dropna(axis=1, how="all")
    assert R.plot_timings(quant) is None  # no times
    assert R.plot_ratios(quant) is None  # no ratios
    plt.close("all")


def test_ratio_plots_within_a_decade_label_no_minor_ticks():
    """Ratios between 0.4 and 6 (one decade): matplotlib would label the minor ticks, on top of each other."""
    rows = [{"grid": grid, "candidate": name, "ratio_to_dense": ratio * scale, "fwdbwd_median_ms": 1.0}
            for grid, scale in ((5, 1.0), (50, 1.5), (200, 1.2))
            for name, ratio in (("dense", 1.0), ("bsplinekan", 4.0), ("mlp", 0.4))]
    grid = R.plot_ratios(R.results_frame([result("layer", "cuda", "2026-05-01T00:00:00+00:00", rows)]))
    grid.figure.canvas.draw()
    (ax,) = grid.axes.flat
    assert [label.get_text() for label in ax.get_yticklabels(minor=True) if label.get_text()] == []
    plt.close("all")


def test_ratio_plot_with_a_column_named_value():
    frame = pd.DataFrame({"device": ["cpu"] * 3, "run": ["r1"] * 3, "bits": [2, 4, 8], "value": [0.5, 0.2, 0.1],
                          "size_ratio": [16.0, 8.0, 4.0]})
    grid = R.plot_ratios(frame, x="bits")
    assert grid is not None and grid.axes.shape == (1, 1)
    plt.close("all")


def test_layer_headline_figures(runs):
    headline = R.layer_headline(runs[1])
    assert headline["grid_small"] == 5 and headline["grid_large"] == 50
    assert headline["ratio_to_dense_small"] == pytest.approx(1.5)
    assert headline["ratio_to_dense_large"] == pytest.approx(1.5)
    assert headline["mlp_ratio_small"] == pytest.approx(7.5)
    assert headline["unfused_speedup_large"] == pytest.approx(3.0)
    assert headline["pykan_speedup_small"] == pytest.approx(40.0)
    assert headline["memory_ratio_to_dense_small"] == pytest.approx(1.2)
    assert headline["unfused_memory_ratio_large"] == pytest.approx(4.0)
    assert headline["device"] == "AMD EPYC, 2 cores (cpu)" and headline["batch"] == 64


def test_layer_headline_without_pykan_or_grid_5_uses_nan_and_the_smallest_grid():
    run = result("layer", "cpu", "2026-01-01T00:00:00+00:00",
                 layer_rows(grids=(8, 16), candidates=("dense", "mlp", "bsplinekan", "unfused")))
    headline = R.layer_headline(run)
    assert headline["grid_small"] == 8 and headline["grid_large"] == 16
    assert math.isnan(headline["pykan_speedup_small"])
    assert headline["unfused_speedup_small"] == pytest.approx(3.0)


def test_layer_headline_rejects_other_results(runs):
    with pytest.raises(ValueError, match="expected a 'layer' result"):
        R.layer_headline(runs[3])
    with pytest.raises(ValueError, match="no 'triton' rows"):
        R.layer_headline(runs[0], kanlib="triton")


def test_the_committed_results_load_into_frames():
    results = load_results(results_dir())
    frame = R.results_frame(results)
    assert len(frame) == sum(len(result["rows"]) for result in results)
    assert isinstance(frame["created_utc"].iloc[0], pd.Timestamp)
    layer = R.latest(results, "layer", "cpu")
    if layer is not None:
        headline = R.layer_headline(layer)
        assert headline["ratio_to_dense_small"] > 0


def test_layer_summary_states_the_headline_in_words(runs):
    text = R.layer_summary(R.layer_headline(runs[1]))
    assert text.startswith("On AMD EPYC, 2 cores (cpu), measured 2026-02-01 (batch 64, width 8)")
    assert "takes 1.50 and 1.50 times the dense product's" in text
    assert "G = 5 and G = 50" in text
    assert "the pykan layer takes 40 and 40 times as long as kanlib's" in text
    assert "did not time" not in text and "n/a" not in text
    no_pykan = result("layer", "cpu", "2026-01-01T00:00:00+00:00",
                      layer_rows(candidates=("dense", "mlp", "bsplinekan", "unfused")))
    text = R.layer_summary(R.layer_headline(no_pykan))
    assert "pykan layer takes" not in text and "n/a" not in text
    assert "the unfused layer takes" in text and text.endswith("This run did not time pykan.")


def test_style_formats_floats_and_missing_values():
    html = R.style(pd.DataFrame({"a": [1.23456789, math.nan], "b": ["x", None]})).to_html()
    assert "1.235" in html and "1.23456789" not in html and MISSING in html


def test_kernel_like_rows_plot_one_line_per_candidate_with_the_other_sweeps_held_fixed():
    """Rows sweeping batch, width, grid and dtype: the figure's lines must not mix widths or dtypes."""
    rows = []
    for width in (256, 1024):
        for dtype in ("float32", "bfloat16"):
            for row in layer_rows(candidates=("dense", "bsplinekan")):
                slower = (width / 256) * (2 if dtype == "float32" else 1)
                rows.append({**row, "width": width, "dtype": dtype,
                             "fwdbwd_median_ms": row["fwdbwd_median_ms"] * slower})
    frame = R.results_frame([result("kernel", "cuda", "2026-03-01T00:00:00+00:00", rows)])
    assert R.hue_column(frame) == "candidate"
    x = R.sweep_column(frame)
    kept, caption = R.fix_other_parameters(frame, x, "candidate")
    assert len(kept) == len(layer_rows(candidates=("dense", "bsplinekan")))
    held = [column for column in ("grid", "width", "dtype") if column != x]
    assert all(kept[column].nunique() == 1 for column in held)
    assert all(f"{column} = " in caption for column in held)
    grid = R.plot_timings(frame)
    assert grid is not None and caption in grid.figure._suptitle.get_text()
    plt.close("all")


def test_a_column_derived_from_the_swept_one_is_not_held_fixed():
    """The layer benchmark's rows carry dense_k = width*(G+k+1): it follows the grid, so holding it fixed would
    leave one grid on the axis. Every grid measured must stay, before and after an independent sweep."""
    def with_k(rows, width=8):
        return [{**row, "width": width, "dense_k": width * (row["grid"] + 4)} for row in rows]

    grids = (5, 10, 20, 50)
    frame = R.results_frame([result("layer", "cpu", "2026-03-01T00:00:00+00:00", with_k(layer_rows(grids=grids)))])
    x, hue = R.sweep_column(frame), R.hue_column(frame)
    assert (x, hue) == ("grid", "candidate")
    kept, caption = R.fix_other_parameters(frame, x, hue)
    assert sorted(set(kept["grid"])) == list(grids) and len(kept) == len(frame)
    assert caption == ""
    # K ahead of a truly swept width: the width is held fixed, K is not, and no grid is lost
    rows = [{"dense_k": row["dense_k"], **row} for width in (8, 16) for row in with_k(layer_rows(grids=grids), width)]
    frame = R.results_frame([result("layer", "cpu", "2026-03-01T00:00:00+00:00", rows)])
    kept, caption = R.fix_other_parameters(frame, "grid", "candidate")
    assert sorted(set(kept["grid"])) == list(grids) and set(kept["width"]) == {8}
    assert caption == "width = 8"
    for figure in (R.plot_timings(frame, x="grid"), R.plot_ratios(frame, x="grid")):
        ticks = sorted({tick for ax in figure.axes.flat for tick in ax.get_xticks()})
        assert ticks == list(grids), "the x axis is ticked at every grid measured"
    plt.close("all")


def test_the_committed_layer_runs_plot_every_grid_they_measured():
    layer_runs = [run for run in R.latest_runs(load_results(results_dir())) if run["benchmark"] == "layer"]
    if not layer_runs:
        pytest.skip("no layer benchmark on file")
    frame = R.results_frame(layer_runs)
    kept, _ = R.fix_other_parameters(frame, R.sweep_column(frame), R.hue_column(frame))
    assert set(kept["grid"]) == set(frame["grid"])


@pytest.mark.parametrize("column, header", [("fwdbwd_median_ms", "fwdbwd median (ms)"), ("fwd_q25_ms", "fwd 25th pct (ms)"),
                                            ("peak_bytes", "peak (bytes)"), ("dense_k", "dense k"),
                                            ("ratio_to_dense", "ratio to dense"), ("candidate", "candidate")])
def test_style_gives_benchmark_columns_readable_headers(column, header):
    assert R.readable_name(column) == header
    assert f">{header}</th>" in R.style(pd.DataFrame({column: [1.0]})).to_html()
