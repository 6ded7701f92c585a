"""The pruning benchmark and its command line, on tiny settings."""
import json
import math

import pytest
import torch

from kanlib.__main__ import main
from kanlib.bench import prune
from kanlib.layers import BSplineKAN, SparseBSplineKAN

TINY = {"sparsities": (0.0, 0.5, 0.9), "digits_hidden": 8, "symbolic_hidden": 6, "grid_size": 3, "train_steps": 8,
        "rounds": 1, "prune_steps": 4, "finetune_steps": 4, "layer_width": 12, "layer_grid": 3, "layer_batch": 17}


@pytest.fixture(scope="module")
def rows():
    return prune.run_prune_benchmark("cpu", quick=True, repeat=2, warmup=1, **TINY)


def test_model_rows(rows):
    models = [r for r in rows if r["kind"] == "model"]
    assert [(r["task"], r["sparsity"]) for r in models] == [(task, s) for task in ("digits", "symbolic")
                                                             for s in TINY["sparsities"]]
    for row in models:
        widths = [64, 8, 10] if row["task"] == "digits" else [2, 6, 1]
        edges = sum(a * b for a, b in zip(widths, widths[1:]))
        assert row["widths"] == "-".join(map(str, widths)) and row["edges"] == edges
        assert row["live_edges"] == edges - round(row["sparsity"] * edges)
        assert row["achieved_sparsity"] == pytest.approx(1 - row["live_edges"] / edges)
        forms = ["dense", "masked", "sparse"]
        if row["compactable"]:
            forms.append("compact")
            # compaction drops dead-end hidden nodes with their (live) incoming edges
            assert 0 < row["compact_edges"] <= edges
            assert 0 <= row["compact_max_diff"] <= row["rounding_bound"]
        else:
            assert row["compact_edges"] is None and row["compact_max_diff"] is None
            assert row["compact_speedup"] is None and "compact_median_ms" not in row
        for form in forms:
            assert 0 < row[f"{form}_q25_ms"] <= row[f"{form}_median_ms"] <= row[f"{form}_q75_ms"]
            if form != "dense":
                assert row[f"{form}_speedup"] == pytest.approx(row["dense_median_ms"] / row[f"{form}_median_ms"])
        if row["task"] == "digits":
            assert row["metric"] == "accuracy" and 0 <= row["value"] <= 100 and row["batch"] == 360
        else:
            assert row["metric"] == "rmse" and row["value"] > 0 and row["batch"] == prune.SYMBOLIC_SAMPLES
    # [2, 6, 1] at 90%: 2 live edges of 18, one in each layer (every layer keeps one), and in this seeded run they
    # meet at one hidden node, so compaction builds the path
    assert [r["compactable"] for r in models] == [True, True, True, True, True, True]
    dense = [r for r in models if r["sparsity"] == 0.0]
    assert all(r["value"] == r["dense_value"] and r["compact_max_diff"] == 0.0 for r in dense)
    assert len({r["dense_value"] for r in models if r["task"] == "digits"}) == 1, "one dense model per task"


def test_layer_rows(rows):
    layers = [r for r in rows if r["kind"] == "layer"]
    width = TINY["layer_width"]
    assert [r["sparsity"] for r in layers] == list(TINY["sparsities"])
    for row in layers:
        assert (row["width"], row["grid_size"], row["batch"]) == (width, TINY["layer_grid"], TINY["layer_batch"])
        assert row["live_edges"] == width * width - round(row["sparsity"] * width * width)
        for form in ("dense", "sparse", "dense_step", "sparse_step"):
            assert 0 < row[f"{form}_q25_ms"] <= row[f"{form}_median_ms"] <= row[f"{form}_q75_ms"]
        assert row["speedup"] == pytest.approx(row["dense_median_ms"] / row["sparse_median_ms"])
        assert row["step_speedup"] == pytest.approx(row["dense_step_median_ms"] / row["sparse_step_median_ms"])
        assert 0 <= row["max_diff"] <= row["rounding_bound"]
    missing = [column for column in prune.TABLE_COLUMNS if not any(column in row for row in rows)]
    assert not missing


def test_targets_from_the_run(rows):
    report = prune.target_report(rows)
    assert [t["target"] for t in report] == list(prune.TARGETS)
    layer, digits, compact, sparse = report
    assert digits["value"] is not None and digits["met"] in (True, False)
    assert layer["value"] is not None and layer["met"] in (True, False)
    assert compact["met"] is True and sparse["met"] is True


def _hand_rows(layer_speedup, dense_accuracy, accuracy, compact_diff, sparse_diff, bound=1e-4):
    return [
        {"kind": "model", "task": "digits", "sparsity": 0.9, "dense_value": dense_accuracy, "value": accuracy,
         "compact_max_diff": compact_diff, "sparse_max_diff": sparse_diff, "rounding_bound": bound},
        {"kind": "model", "task": "symbolic", "sparsity": 0.9, "dense_value": 0.01, "value": 0.02,
         "compact_max_diff": 0.0, "sparse_max_diff": 0.0, "rounding_bound": bound},
        {"kind": "layer", "sparsity": 0.5, "speedup": 100.0},
        {"kind": "layer", "sparsity": 0.9, "speedup": layer_speedup},
    ]


def test_targets_met_and_not_met():
    met = prune.target_report(_hand_rows(4.5, 97.0, 96.5, 5e-5, 1e-4))
    assert [t["met"] for t in met] == [True, True, True, True]
    assert [t["value"] for t in met] == [4.5, pytest.approx(0.5), pytest.approx(0.5), pytest.approx(1.0)]
    missed = prune.target_report(_hand_rows(3.9, 97.0, 95.5, 2e-4, 3e-4))
    assert [t["met"] for t in missed] == [False, False, False, False]
    assert [t["value"] for t in missed] == [3.9, pytest.approx(1.5), pytest.approx(2.0), pytest.approx(3.0)]


def test_targets_missing():
    assert all(t["value"] is None and t["met"] is None for t in prune.target_report([]))
    # a run without the 90% setting: only the goals on the differences, taken over every sparsity, have a value
    rows = [{**row, "sparsity": 0.5} for row in _hand_rows(None, 97.0, 96.0, 0.0, 5e-5)]
    report = prune.target_report(rows)
    assert [t["value"] for t in report] == [None, None, 0.0, pytest.approx(0.5)]
    assert [t["met"] for t in report] == [None, None, True, True]


def test_rounding_bound():
    layers = [BSplineKAN(7, 3, grid_size=5, spline_order=3), BSplineKAN(3, 2, grid_size=4, spline_order=2)]
    output = torch.tensor([[0.5, -3.0]])
    # the longest contraction is the first layer's 7 * (5 + 3 + 1)
    assert prune.rounding_bound(layers, output) == pytest.approx(63 * 2.0 ** -24 * 4.0)
    assert prune.rounding_bound(layers, output.double()) == pytest.approx(63 * 2.0 ** -53 * 4.0)


def test_bad_settings():
    with pytest.raises(ValueError, match="unknown settings"):
        prune.run_prune_benchmark("cpu", quick=True, depth=3)
    with pytest.raises(ValueError, match="tasks must be"):
        prune.run_prune_benchmark("cpu", quick=True, tasks=("mnist",))
    for tasks, layer in (((), False), (("digits", "digits"), True), ("digits", True)):
        with pytest.raises(ValueError, match="tasks must be distinct names among"):
            prune.run_prune_benchmark("cpu", quick=True, tasks=tasks, layer=layer)
    for sparsities, message in (((0.0, 1.0), r"sparsities\[1\] must be a fraction in \[0, 1\), got 1.0"),
                                ((0.5, 0.5), "must be distinct"), ((), "non-empty"), ("0.5", "non-empty"),
                                ((True,), r"sparsities\[0\]")):
        with pytest.raises(ValueError, match=message):
            prune.run_prune_benchmark("cpu", quick=True, sparsities=sparsities)


def test_sparse_forms_are_exact(rows):
    for row in rows:
        if row["kind"] == "model":
            assert 0 <= row["sparse_max_diff"] <= row["rounding_bound"]
            assert row["sparse_speedup"] == pytest.approx(row["dense_median_ms"] / row["sparse_median_ms"])


def _record_sparse_forwards(monkeypatch) -> dict[int, int]:
    """Patch SparseBSplineKAN.forward to record each layer that runs: id -> its stored edges."""
    ran = {}
    forward = SparseBSplineKAN.forward

    def recording_forward(self, x):
        ran[id(self)] = self.n_edges
        return forward(self, x)

    monkeypatch.setattr(SparseBSplineKAN, "forward", recording_forward)
    return ran


def test_layer_sweep_alone_and_a_single_task(monkeypatch):
    # the edge-sparse forms are SparseBSplineKAN layers storing exactly the live edges
    ran = _record_sparse_forwards(monkeypatch)
    rows = prune.run_prune_benchmark("cpu", quick=True, repeat=1, warmup=0, tasks=(),
                                     **{**TINY, "sparsities": (0.25,)})
    assert [r["kind"] for r in rows] == ["layer"] and rows[0]["live_edges"] == 144 - 36
    assert list(ran.values()) == [144 - 36]
    assert 0 <= rows[0]["max_diff"] <= rows[0]["rounding_bound"]
    ran.clear()
    rows = prune.run_prune_benchmark("cpu", quick=True, repeat=1, warmup=0, tasks=("symbolic",), layer=False,
                                     **{**TINY, "sparsities": (0.4,)})
    assert [(r["kind"], r["task"]) for r in rows] == [("model", "symbolic")]
    assert len(ran) == 2 and sum(ran.values()) == rows[0]["live_edges"] == 18 - round(0.4 * 18)
    assert 0 <= rows[0]["sparse_max_diff"] <= rows[0]["rounding_bound"] and rows[0]["sparse_speedup"] > 0
    assert math.isclose(rows[0]["achieved_sparsity"], 7 / 18)  # round(0.4 * 18) = 7 of the 18 edges dead


def test_command_line_writes_results(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(prune, "QUICK", {**prune.QUICK, **TINY})
    assert main(["bench", "prune", "--device", "cpu", "--quick", "--repeat", "2", "--warmup", "1",
                 "--sparsity", "0", "0.9", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "targets:" in out and prune.TARGETS[1] in out
    written = list(tmp_path.glob("prune-cpu-*.json"))
    assert len(written) == 1
    result = json.loads(written[0].read_text())
    assert result["benchmark"] == "prune" and result["params"]["quick"] is True
    assert result["params"]["sparsities"] == [0.0, 0.9] and result["params"]["digits_hidden"] == TINY["digits_hidden"]
    assert result["device"]["type"] == "cpu"
    assert {(r["kind"], r["sparsity"]) for r in result["rows"]} == {("model", 0.0), ("model", 0.9), ("layer", 0.0),
                                                                     ("layer", 0.9)}
    assert all(r["sparse_median_ms"] > 0 for r in result["rows"])


@pytest.mark.parametrize("values", [["1.0"], ["0.5", "0.5"], ["-0.1"]])
def test_command_line_rejects_bad_sparsities(values, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["bench", "prune", "--device", "cpu", "--quick", "--out-dir", str(tmp_path), "--sparsity", *values])
    assert "--sparsity: expected distinct fractions in [0, 1)" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_command_line_refuses_an_out_dir_that_is_a_file_before_measuring(tmp_path, monkeypatch, capsys):
    def not_measured(*args, **kwargs):
        raise AssertionError("measured although the results could not be written")

    monkeypatch.setattr(prune, "run_prune_benchmark", not_measured)
    out = tmp_path / "a_file"
    out.write_text("not a folder")
    assert main(["bench", "prune", "--device", "cpu", "--quick", "--out-dir", str(out)]) == 1
    assert f"got {out}, which exists and is not a folder" in capsys.readouterr().err
