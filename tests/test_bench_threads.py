"""kanlib.bench.threads: the layer's step with default and explicit thread settings, alone and beside a busy
process, each configuration in its own process."""
import pytest

from kanlib.bench.results import load_results, write_results
from kanlib.bench.threads import (CONFIGURATIONS, NEIGHBOURS, RUNTIME_SEPARATOR, TARGETS, is_default_twin,
                                  run_threads_benchmark, target_report, twin_spread)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def tiny_rows(monkeypatch_module):
    # set here, they must not reach the workers: "default" means nothing set
    monkeypatch_module.setenv("OMP_WAIT_POLICY", "active")
    monkeypatch_module.setenv("KANLIB_CONTENTION_GUARD", "0")
    return run_threads_benchmark(grids=(3, 9), batch=16, width=8, repeat=3, warmup=1,
                                 configurations=("default", "one thread", "numba workqueue", "passive wait", "no guard"),
                                 rounds=2)


def test_rows_cover_every_neighbour_grid_and_configuration(tiny_rows):
    keys = [(row["neighbour"], row["grid"], row["configuration"]) for row in tiny_rows]
    assert sorted(keys) == sorted((n, g, c) for n in NEIGHBOURS for g in (3, 9)
                                  for c in ("default", "one thread", "numba workqueue", "passive wait", "no guard"))
    by_configuration = {(row["configuration"], row["grid"]): row for row in tiny_rows if row["neighbour"] == "none"}
    assert by_configuration["one thread", 3]["kernel_threads"] == 1
    assert by_configuration["one thread", 3]["torch_threads"] == 1
    assert by_configuration["numba workqueue", 9]["threading_layer"] == "workqueue"
    assert by_configuration["passive wait", 3]["omp_wait_policy"] == "passive"
    assert by_configuration["default", 3]["omp_wait_policy"] is None  # not inherited from this process
    assert by_configuration["default", 3]["contention_guard"] is True
    assert by_configuration["no guard", 3]["contention_guard"] is False
    assert {by_configuration["default", 3]["backend"], by_configuration["default", 9]["backend"]} == {"cpu", "sparse"}


def test_each_row_pools_its_configurations_turns(tiny_rows):
    # repeat 3 over 2 rounds: two turns of two steps each, one process per turn
    assert {row["fwdbwd_n"] for row in tiny_rows} == {4}
    assert {row["dense_fwdbwd_n"] for row in tiny_rows} == {4}
    assert not any("layer_ms" in row or "dense_ms" in row for row in tiny_rows)
    for row in tiny_rows:
        assert row["fwdbwd_min_ms"] <= row["fwdbwd_median_ms"] <= row["fwdbwd_max_ms"]


def test_ratios_are_to_the_fastest_distinct_configuration_of_the_same_neighbour_and_grid(tiny_rows):
    for neighbour in NEIGHBOURS:
        for grid in (3, 9):
            same = [row for row in tiny_rows if row["neighbour"] == neighbour and row["grid"] == grid]
            default = next(row for row in same if row["configuration"] == "default")
            distinct = [row for row in same if not is_default_twin(row, default)]
            best = min(row["fwdbwd_median_ms"] for row in distinct)
            for row in same:
                assert row["ratio_to_best"] == pytest.approx(row["fwdbwd_median_ms"] / best)
            assert min(row["ratio_to_best"] for row in distinct) == 1.0
            # alone, "no guard" is the default's twin and never the best; beside the busy process it counts
            assert ("no guard" in [row["configuration"] for row in distinct]) == (neighbour == "busy")


def _row(neighbour, configuration, grid, median, layer="omp"):
    return {"neighbour": neighbour, "configuration": configuration, "grid": grid, "fwdbwd_median_ms": median,
            "threading_layer": layer}


def test_twins_are_the_configurations_that_change_nothing_there():
    default = _row("none", "default", 5, 10.0)
    assert is_default_twin(_row("none", "numba omp", 5, 9.0), default)
    assert not is_default_twin(_row("none", "numba omp", 5, 9.0, layer="tbb"), default)
    assert is_default_twin(_row("none", "no guard", 5, 9.0), default)
    assert not is_default_twin(_row("busy", "no guard", 5, 9.0), {**default, "neighbour": "busy"})
    for configuration in ("default", "one thread", "numba workqueue", "passive wait"):
        assert not is_default_twin(_row("none", configuration, 5, 9.0), default)
    assert not is_default_twin(_row("none", "numba omp", 5, 9.0), None)


def test_twin_spread_is_the_largest_gap_between_the_default_and_a_twin_alone():
    rows = [_row("none", "default", 5, 10.0), _row("none", "numba omp", 5, 8.0), _row("none", "no guard", 5, 11.0),
            _row("none", "default", 50, 20.0), _row("none", "no guard", 50, 21.0),
            _row("none", "one thread", 5, 5.0), _row("busy", "default", 5, 30.0), _row("busy", "numba omp", 5, 60.0)]
    assert twin_spread(rows) == pytest.approx(10.0 / 8.0)
    assert twin_spread([row for row in rows if row["configuration"] in ("default", "one thread")]) is None


def test_rows_name_the_openmp_runtimes_their_process_mapped(tiny_rows):
    for row in tiny_rows:
        runtimes = row["openmp_runtimes"]
        assert runtimes is None or all("omp" in path for path in runtimes.split(RUNTIME_SEPARATOR))


def test_rows_are_written_as_a_result(tiny_rows, tmp_path):
    write_results("threads", {"grids": [3, 9]}, tiny_rows, "cpu", out_dir=tmp_path)
    assert load_results(tmp_path)[0]["rows"] == tiny_rows


def test_targets_take_the_defaults_worst_grid():
    rows = [{**_row(n, c, g, median), "ratio_to_dense": dense}
            for n, c, g, median, dense in [("none", "default", 5, 10.0, 1.2), ("none", "default", 50, 21.0, 0.3),
                                           ("none", "passive wait", 50, 20.0, 0.3),
                                           ("none", "numba omp", 50, 15.0, 0.3),  # a twin: not the best
                                           ("busy", "default", 5, 24.0, 1.32), ("busy", "default", 50, 1.0, 0.36),
                                           ("busy", "one thread", 5, 10.0, 0.9)]]
    report = target_report(rows)
    assert [entry["target"] for entry in report] == [target[0] for target in TARGETS]
    assert [entry["value"] for entry in report] == pytest.approx([1.05, 1.2])  # 21 / 20; 0.36 / 0.3 at G = 50
    assert [entry["met"] for entry in report] == [True, False]
    assert all(entry["value"] is None for entry in target_report(rows[-1:]))


def test_the_dense_product_is_timed_beside_the_layer(tiny_rows):
    for row in tiny_rows:
        assert row["dense_fwdbwd_median_ms"] > 0
        assert row["ratio_to_dense"] == pytest.approx(row["fwdbwd_median_ms"] / row["dense_fwdbwd_median_ms"])


@pytest.mark.parametrize("change,message", [
    ({"configurations": ("fast",)}, r"configurations: expected a non-empty selection of \('default'"),
    ({"neighbours": ()}, "neighbours: expected a non-empty selection"),
    ({"grids": ()}, "grids"),
    ({"repeat": 0}, "repeat"),
    ({"rounds": 0}, "rounds"),
])
def test_bad_arguments_are_named(change, message):
    with pytest.raises(ValueError, match=message):
        run_threads_benchmark(**{"grids": (3,), "batch": 4, "width": 2, **change})


def test_every_configuration_is_named_in_the_table():
    assert set(CONFIGURATIONS) == {"default", "one thread", "numba omp", "numba workqueue", "passive wait",
                                   "no guard"}
