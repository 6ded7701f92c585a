"""The kernel benchmark: run_kernel_benchmark's rows, the MatrixKAN candidate, target_report, and
`python -m kanlib bench kernel`. Without a GPU the Triton candidates run under the interpreter (conftest) or
are reported missing."""
import math

import pytest
import torch

from kanlib import BSplineKAN
from kanlib.__main__ import main
from kanlib.bench import load_results
from kanlib.bench import kernel
from kanlib.bench.candidates import bspline_weights
from kanlib.ops.spline_linear.reference import unfused_kan

spline_linear_triton = pytest.importorskip("kanlib.ops.spline_linear.triton")

TINY = {"batches": [8], "widths": [4], "grids": [2], "repeat": 2, "warmup": 1}
TINY_CLI = ["bench", "kernel", "--device", "cpu", "--batch", "8", "--width", "4", "--grid", "2", "--repeat", "2",
            "--warmup", "1"]


@pytest.fixture(scope="module")
def tiny_rows():
    return kernel.run_kernel_benchmark("cpu", dtypes=[torch.float32], **TINY)


@pytest.fixture
def no_interpreter(monkeypatch):
    """As on a machine without CUDA where TRITON_INTERPRET is not set."""
    monkeypatch.setattr(spline_linear_triton, "INTERPRET", False)


def test_rows_cover_every_candidate_with_sane_figures(tiny_rows):
    assert [row["candidate"] for row in tiny_rows] == list(kernel.CANDIDATES)
    for row in tiny_rows:
        assert "skipped" not in row, row
        for stage in ("fwd", "fwdbwd"):
            median, q25, q75 = (row[f"{stage}_{key}_ms"] for key in ("median", "q25", "q75"))
            assert math.isfinite(median) and median > 0 and q25 <= median <= q75, row
        assert row["peak_bytes"] > row["state_bytes"] > 0, row
        assert row.get("interpreted", False) == (row["candidate"] in kernel.TRITON_CANDIDATES), row


def test_ratios_flops_and_memory_come_from_the_same_run(tiny_rows):
    rows = {row["candidate"]: row for row in tiny_rows}
    dense, mlp_params = rows["dense"], rows["mlp_params"]
    batch, width, order, grid = 8, 4, 3, 2
    dense_k = width * (grid + order + 1)
    hidden = BSplineKAN(width, width, grid_size=grid, spline_order=order)
    n_params = sum(p.numel() for p in hidden.parameters())
    for name, row in rows.items():
        assert row["ratio_to_dense"] == pytest.approx(row["fwdbwd_median_ms"] / dense["fwdbwd_median_ms"])
        assert row["fraction_of_dense"] == pytest.approx(dense["fwdbwd_median_ms"] / row["fwdbwd_median_ms"])
        assert row["memory_ratio_to_mlp_params"] == pytest.approx(row["peak_bytes"] / mlp_params["peak_bytes"])
        assert row["tflops_per_s"] == pytest.approx(row["flops"] / (row["fwdbwd_median_ms"] * 1e9))
        if name in ("dense", *kernel.KAN_CANDIDATES):
            assert row["flops"] == 6 * batch * dense_k * width, name
    assert rows["mlp"]["flops"] == 6 * batch * width * width
    # the cost model's slowdown these two rows imply: S = G + k + 1 slots per input, k + 2 of them touched
    local, dense_kernels = rows["triton_local_op"], rows["triton_op"]
    assert local["implied_sparse_slowdown"] == pytest.approx(
        local["fwdbwd_median_ms"] / dense_kernels["fwdbwd_median_ms"] * (grid + order + 1) / (order + 2))
    assert all("implied_sparse_slowdown" not in row for name, row in rows.items() if name != "triton_local_op")
    # I -> h -> O with about as many parameters as the KAN layer
    h = rows["mlp_params"]["flops"] // (6 * batch * 2 * width)
    assert abs(h * 2 * width + h + width - n_params) <= 2 * width + 1


def test_triton_is_reported_missing_without_cuda(no_interpreter):
    rows = kernel.run_kernel_benchmark("cpu", dtypes=[torch.float32], skip_pykan=True, **TINY)
    skipped = {row["candidate"]: row["skipped"] for row in rows if "skipped" in row}
    assert set(skipped) == {"triton_op", "triton_local_op", "triton", "pykan"}
    assert "needs a CUDA device (GPU figures missing" in skipped["triton"]
    assert skipped["pykan"] == "left out (skip_pykan)"
    assert not any("fwd_median_ms" in row for row in rows if "skipped" in row)
    assert kernel.target_report(rows)[0]["value"] is None


def test_a_candidate_out_of_memory_is_reported_and_the_rest_measured(no_interpreter, monkeypatch):
    def out_of_memory(self, x):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(kernel.UnfusedKAN, "forward", out_of_memory)
    rows = {row["candidate"]: row for row in
            kernel.run_kernel_benchmark("cpu", dtypes=[torch.float32], skip_pykan=True, **TINY)}
    assert rows["unfused"]["skipped"] == "out of GPU memory" and "fwd_median_ms" not in rows["unfused"]
    assert rows["matrixkan"]["ratio_to_dense"] > 0


def test_half_precision_runs_layers_under_autocast(no_interpreter, monkeypatch):
    monkeypatch.setattr(kernel, "PYKAN_MAX_ELEMENTS", 10)
    rows = kernel.run_kernel_benchmark("cpu", dtypes=[torch.bfloat16], **TINY)
    autocast = {row["candidate"]: row.get("autocast") for row in rows}
    assert autocast["dense"] is False and autocast["torch"] and autocast["unfused"] and autocast["mlp_params"]
    pykan = next(row for row in rows if row["candidate"] == "pykan")
    assert "B*I*O > 10" in pykan["skipped"]


def test_matrix_kan_layer_computes_the_unfused_function():
    torch.manual_seed(0)
    layer = BSplineKAN(5, 3, grid_size=4, spline_order=3, dtype=torch.float64)
    with torch.no_grad():
        layer.coef.normal_()
    x = (torch.rand(20, 5, dtype=torch.float64) * 3 - 1.5).requires_grad_()
    weights = bspline_weights(layer)
    got = kernel.matrix_kan_layer(x, layer.grid, 3, *weights)
    want = unfused_kan(x, layer.grid, 3, *weights)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.autograd.grad(got.sum(), x)[0], torch.autograd.grad(want.sum(), x)[0])


def target_rows(triton_ms, unfused_ms, triton_peak):
    base = dict(kernel.TARGET_CONFIGURATION)
    return [{**base, "candidate": "dense", "fwdbwd_median_ms": 1.0},
            {**base, "candidate": "triton", "fwdbwd_median_ms": triton_ms, "peak_bytes": triton_peak},
            {**base, "candidate": "unfused", "fwdbwd_median_ms": unfused_ms},
            {**base, "candidate": "mlp_params", "peak_bytes": 100},
            {**base, "grid": 10, "candidate": "dense", "fwdbwd_median_ms": 100.0}]


def test_target_report_checks_each_goal():
    assert [t["met"] for t in kernel.target_report(target_rows(1.2, 7.0, 110))] == [True, True, True]
    report = kernel.target_report(target_rows(1.5, 6.0, 130))
    assert [t["met"] for t in report] == [False, False, False]
    assert report[0]["value"] == pytest.approx(1.5) and report[1]["value"] == pytest.approx(4.0)


@pytest.mark.parametrize("change, message", [
    ({"batches": []}, "batches: expected a non-empty list"),
    ({"grids": [2, 2]}, "grids: expected distinct sizes"),
    ({"widths": [0]}, r"widths\[0\] must be an int >= 1, got 0"),
    ({"dtypes": [torch.int32]}, "dtypes: expected a non-empty list of"),
    ({"order": 0}, "order must be an int >= 1, got 0"),
])
def test_bad_arguments_are_named(change, message):
    with pytest.raises(ValueError, match=message):
        kernel.run_kernel_benchmark("cpu", **{**TINY, **change})


def test_cli_prints_the_table_and_targets_and_writes_a_result(tmp_path, capsys, no_interpreter):
    assert main([*TINY_CLI, "--dtype", "float32", "--skip-pykan", "--out-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "needs a CUDA device" in printed and "fwd+bwd time of triton / dense: missing (goal <= 1.3)" in printed
    [result] = load_results(tmp_path)
    assert result["benchmark"] == "kernel" and result["device"]["type"] == "cpu"
    assert result["params"]["batches"] == [8] and result["params"]["dtypes"] == ["float32"]
    assert [row["candidate"] for row in result["rows"]] == list(kernel.CANDIDATES)


@pytest.mark.parametrize("arguments, words", [
    (["--grid", "2"], "--grid: expected distinct values, got [2, 2]"),
    (["--dtype", "float64"], "invalid choice: 'float64'"),
    (["--batch", "0"], "expected an int >= 1, got '0'"),
])
def test_cli_names_a_bad_argument(arguments, words, capsys):
    with pytest.raises(SystemExit):
        main([*TINY_CLI, *arguments])
    assert words in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_cli_refuses_cuda_without_a_gpu(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "kernel", "--device", "cuda"])
    assert "torch.cuda.is_available() is False" in capsys.readouterr().err


def test_cli_cross_option_error_shows_the_kernel_usage(capsys):
    with pytest.raises(SystemExit):
        main([*TINY_CLI, "--grid", "2"])
    assert capsys.readouterr().err.startswith("usage: python -m kanlib bench kernel ")
