"""The layer benchmark: the unfused reference, run_layer_benchmark's rows, and `python -m kanlib bench layer`."""
import math
import os
import pathlib
import subprocess
import sys
import tempfile

import pytest
import torch

from kanlib import BSplineKAN
from kanlib.__main__ import build_parser, main
from kanlib.bench import can_retain_freed_memory, load_results
from kanlib.bench.candidates import UnfusedKAN, bspline_weights
from kanlib.bench.layer import CANDIDATES, TARGETS, run_layer_benchmark, target_report
from kanlib.ops.spline_linear.reference import unfused_kan

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = {"batch": 16, "width": 8, "grids": [3, 5], "repeat": 4, "warmup": 1}
TINY_CLI = ["bench", "layer", "--device", "cpu", "--batch", "16", "--width", "8", "--grid", "3", "--repeat", "3"]


def random_bspline(n_in, n_out, grid_size, order, seed):
    """A float64 BSplineKAN with random coef, scales and an edge mask with some edges off."""
    torch.manual_seed(seed)
    layer = BSplineKAN(n_in, n_out, grid_size=grid_size, spline_order=order, dtype=torch.float64)
    with torch.no_grad():
        layer.coef.normal_()
        layer.scale_base.normal_()
        layer.scale_sp.normal_()
        layer.mask.copy_((torch.rand(n_in, n_out) > 0.3).double())
    return layer


@pytest.mark.parametrize("batch, n_in, n_out, grid_size, order", [(7, 5, 3, 4, 3), (13, 3, 6, 1, 1), (9, 4, 4, 6, 2)])
def test_unfused_computes_bsplinekan_output_and_gradients(batch, n_in, n_out, grid_size, order):
    layer = random_bspline(n_in, n_out, grid_size, order, seed=grid_size)
    gen = torch.Generator().manual_seed(1)
    inside = torch.rand(batch, n_in, generator=gen, dtype=torch.float64) * 2.4 - 1.2
    beyond_extended_grid = torch.tensor([[-4.0] * n_in, [4.0] * n_in], dtype=torch.float64)
    on_every_knot = layer.grid.t()
    x = torch.cat([inside, on_every_knot, beyond_extended_grid]).requires_grad_()
    grad_out = torch.randn(x.shape[0], n_out, generator=gen, dtype=torch.float64)
    params = (layer.scale_base, layer.scale_sp, layer.coef)

    expected = layer(x)
    expected_grads = torch.autograd.grad(expected, (x, *params), grad_out)
    actual = unfused_kan(x, layer.grid, order, *bspline_weights(layer))
    actual_grads = torch.autograd.grad(actual, (x, *params), grad_out)

    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)
    for name, got, want in zip(("x", "scale_base", "scale_sp", "coef"), actual_grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12, msg=f"gradient of {name}")
    with torch.no_grad():
        torch.testing.assert_close(UnfusedKAN.from_bspline(layer)(x), expected, rtol=1e-10, atol=1e-12)


def test_unfused_keeps_the_basis_and_rejects_a_bias():
    saved_shapes = set()

    def record_shape(tensor):
        saved_shapes.add(tuple(tensor.shape))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(record_shape, lambda tensor: tensor):
        UnfusedKAN(3, 2, grid_size=5, spline_order=3)(torch.rand(4, 3, requires_grad=True))
    assert (4, 3 * 8) in saved_shapes  # the basis [B, I*(G+k)], kept for the spline weight's gradient
    with pytest.raises(ValueError, match="without bias"):
        UnfusedKAN.from_bspline(BSplineKAN(3, 2, bias=True))


@pytest.fixture(scope="module")
def tiny_rows():
    return run_layer_benchmark("cpu", TINY["batch"], TINY["width"], TINY["grids"], repeat=TINY["repeat"],
                               warmup=TINY["warmup"])


def test_rows_cover_every_grid_and_candidate(tiny_rows):
    assert [(row["grid"], row["candidate"]) for row in tiny_rows] == [
        (grid, name) for grid in TINY["grids"] for name in CANDIDATES]
    for row in tiny_rows:
        for stage in ("fwd", "fwdbwd"):
            median, q25, q75 = (row[f"{stage}_{key}_ms"] for key in ("median", "q25", "q75"))
            assert math.isfinite(median) and median > 0, row
            assert q25 <= median <= q75, row
        assert row["fwd_n"] == row["fwdbwd_n"] == (3 if row["candidate"] == "pykan" else TINY["repeat"])
        assert row["peak_bytes"] > row["state_bytes"] > 0, row


def test_ratios_come_from_the_medians_of_the_same_grid(tiny_rows):
    for grid in TINY["grids"]:
        rows = {row["candidate"]: row for row in tiny_rows if row["grid"] == grid}
        dense = rows["dense"]
        for row in rows.values():
            assert row["ratio_to_dense"] == pytest.approx(row["fwdbwd_median_ms"] / dense["fwdbwd_median_ms"])
            assert row["memory_ratio_to_dense"] == pytest.approx(row["peak_bytes"] / dense["peak_bytes"])


def test_flops_and_memory_accounting(tiny_rows):
    batch, width, order, float_bytes = TINY["batch"], TINY["width"], 3, 4
    for row in tiny_rows:
        grid = row["grid"]
        k_dense = width * (grid + order + 1)
        assert row["dense_k"] == k_dense
        if row["candidate"] in ("dense", "bsplinekan"):
            assert row["flops"] == 6 * batch * k_dense * width
            assert row["gflops_per_s"] == pytest.approx(row["flops"] / (row["fwdbwd_median_ms"] * 1e6))
        else:
            assert row["flops"] is None and row["gflops_per_s"] is None
        grad_out = batch * width
        if row["candidate"] == "dense":  # X [B, K], W [K, O], output gradient [B, O]
            assert row["state_bytes"] == float_bytes * (batch * k_dense + k_dense * width + grad_out)
        if row["candidate"] == "bsplinekan":  # x, coef, scale_base, scale_sp, mask, grid, output gradient
            layer_state = width * width * (grid + order + 3) + width * (grid + 2 * order + 1)
            assert row["state_bytes"] == float_bytes * (batch * width + layer_state + grad_out)


@pytest.mark.parametrize("change, message", [
    ({"batch": 0}, "batch must be an int >= 1, got 0"),
    ({"grids": []}, "grids: expected a non-empty list"),
    ({"grids": [3, 3]}, "grids: expected distinct grid sizes"),
    ({"grids": [3, 0]}, r"grids\[1\] must be an int >= 1, got 0"),
    ({"order": 0}, "order must be an int >= 1, got 0"),
    ({"dtype": torch.int32}, "dtype: expected one of"),
    ({"device": "tpu"}, "device: expected 'cpu', 'cuda' or 'auto', got 'tpu'"),
])
def test_run_layer_benchmark_names_a_bad_argument(change, message):
    arguments = {"device": "cpu", "batch": 4, "width": 2, "grids": [3], "repeat": 1, "warmup": 0, **change}
    with pytest.raises(ValueError, match=message):
        run_layer_benchmark(**arguments)


def test_cli_prints_every_candidate_and_writes_one_result(tmp_path):
    done = subprocess.run([sys.executable, "-m", "kanlib", *TINY_CLI, "--out-dir", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    table_candidates = {line.split()[1] for line in done.stdout.splitlines() if line.strip().startswith("3 ")}
    assert table_candidates == set(CANDIDATES), done.stdout
    [result] = load_results(tmp_path)
    assert done.stdout.strip().endswith(str(next(tmp_path.glob("layer-cpu-*.json"))))
    assert result["benchmark"] == "layer" and result["params"]["grids"] == [3]
    assert result["device"]["type"] == "cpu" and result["device"]["torch"] == torch.__version__
    assert ("retained" in result["device"]["malloc"]) == can_retain_freed_memory()  # --malloc retain by default
    assert [row["candidate"] for row in result["rows"]] == list(CANDIDATES)


def test_cli_no_write_writes_nothing(tmp_path, capsys):
    out_dir = tmp_path / "results"
    assert main([*TINY_CLI, "--skip-pykan", "--no-write", "--out-dir", str(out_dir)]) == 0
    printed = capsys.readouterr().out
    assert "bsplinekan" in printed and "pykan" not in printed and "wrote" not in printed
    assert not out_dir.exists()


@pytest.mark.parametrize("arguments, message", [
    (["--batch", "0"], "argument --batch: expected an int >= 1, got '0'"),
    (["--width", "two"], "argument --width: expected an int >= 1, got 'two'"),
    (["--warmup", "-1"], "argument --warmup: expected an int >= 0, got '-1'"),
    (["--dtype", "float8"], "argument --dtype: invalid choice: 'float8'"),
    (["--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
    (["--grid", "5", "5"], "--grid: expected distinct grid sizes, got [5, 5]"),
    pytest.param(["--device", "cuda"], "torch.cuda.is_available() is False",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")),
])
def test_cli_bad_argument_exits_naming_it(arguments, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "layer", "--batch", "4", "--width", "2", "--out-dir", str(tmp_path), *arguments])
    assert exit_info.value.code != 0
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_cli_needs_a_command_and_shows_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench"])
    assert exit_info.value.code != 0 and "benchmark" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--help"])
    assert exit_info.value.code == 0 and "layer" in capsys.readouterr().out
    done = subprocess.run([sys.executable, "-m", "kanlib", "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and "bench" in done.stdout


def test_cli_grid_sizes_accumulate():
    parser = build_parser()
    assert parser.parse_args(["bench", "layer", "--grid", "5", "--grid", "10", "20"]).grids == [5, 10, 20]
    assert parser.parse_args(["bench", "layer", "--grid", "10"]).grids == [10]


def test_cli_cross_option_error_shows_the_layer_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "layer", "--grid", "5", "5"])
    assert exit_info.value.code != 0
    assert capsys.readouterr().err.startswith("usage: python -m kanlib bench layer ")


def not_measured(*args, **kwargs):
    raise AssertionError("measured although the results could not be written")


@pytest.mark.parametrize("where, problem", [
    ("a_file", "which exists and is not a folder"),
    ("a_file/sub", "cannot be created"),
    ("read_only", "is not writable"),
])
def test_cli_refuses_an_unusable_out_dir_before_measuring(where, problem, tmp_path, monkeypatch, capsys):
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "read_only").mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: pathlib.Path(path).name != "read_only"
                        and real_access(path, mode, **kw))
    monkeypatch.setattr("kanlib.__main__.run_layer_benchmark", not_measured)
    out = tmp_path / where
    assert main([*TINY_CLI, "--skip-pykan", "--out-dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"--out-dir: expected a writable folder, got {out}" in err, err
    assert problem in err


def test_cli_keeps_the_results_when_writing_fails_at_the_end(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    out = tmp_path / "results"

    def measure_then_lose_the_folder(*args, **kwargs):
        rows = run_layer_benchmark(*args, **kwargs)
        out.write_text("the folder went")
        return rows

    monkeypatch.setattr("kanlib.__main__.run_layer_benchmark", measure_then_lose_the_folder)
    assert main(["bench", "layer", "--device", "cpu", "--batch", "4", "--width", "2", "--grid", "3", "--repeat", "1",
                 "--warmup", "0", "--skip-pykan", "--out-dir", str(out)]) == 1
    captured = capsys.readouterr()
    assert "bsplinekan" in captured.out, "the table is printed"
    [kept] = list((tmp_path / "tmp").rglob("layer-cpu-*.json"))
    assert len(captured.err.strip().splitlines()) == 1 and str(out) in captured.err and str(kept) in captured.err
    [result] = load_results(kept.parent)
    assert result["params"]["grids"] == [3] and "bsplinekan" in [row["candidate"] for row in result["rows"]]


def _sweep_rows(times: dict, **configuration) -> list[dict]:
    """Hand-made layer rows: {(grid, candidate): fwd+bwd median ms} at the target configuration unless changed."""
    base = {"batch": 1024, "width": 256, "order": 3, "dtype": "float32", **configuration}
    return [{**base, "grid": grid, "candidate": candidate, "fwdbwd_median_ms": ms}
            for (grid, candidate), ms in times.items()]


def test_layer_targets_from_the_grid_sweep():
    rows = _sweep_rows({(5, "dense"): 10.0, (5, "bsplinekan"): 11.0, (50, "dense"): 100.0, (50, "bsplinekan"): 30.0,
                        (100, "bsplinekan"): 44.0, (200, "bsplinekan"): 46.0})
    report = {entry["target"]: entry for entry in target_report(rows)}
    assert [entry[0] for entry in TARGETS] == list(report)
    assert report["fwd+bwd time of bsplinekan / dense at G = 50"]["value"] == pytest.approx(0.3)
    assert report["fwd+bwd time of bsplinekan at G = 100 / at G = 50"]["value"] == pytest.approx(44 / 30)
    assert report["fwd+bwd time of bsplinekan at G = 200 / at G = 50"]["met"] is False
    assert report["fwd+bwd time of bsplinekan / dense at G = 5"]["value"] == pytest.approx(1.1)
    assert [entry["met"] for entry in report.values()] == [True, True, False, True]


def test_layer_targets_are_missing_without_their_grids_or_configuration():
    assert all(entry["value"] is None for entry in target_report(_sweep_rows({(5, "dense"): 1.0})))
    other = _sweep_rows({(5, "dense"): 10.0, (5, "bsplinekan"): 11.0}, width=128)
    assert all(entry["met"] is None for entry in target_report(other))
