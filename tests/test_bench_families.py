"""The families benchmark: fast-kan's formula against RBFKAN, run_families_benchmark's rows, its targets, and
`python -m kanlib bench families`."""
import math

import pytest
import torch

from kanlib import BSplineKAN
from kanlib.__main__ import build_parser, main
from kanlib.bench import families as families_benchmark
from kanlib.bench import load_results
from kanlib.bench.candidates import FastKANFormula, measure
from kanlib.bench.families import (CANDIDATES, FAMILIES, TARGETS, family_layer, run_families_benchmark,
                                   target_report)
from kanlib.layers import RBFKAN

TINY = {"batch": 7, "width": 3, "grids": [3], "repeat": 1, "warmup": 0}
TINY_CLI = ["bench", "families", "--device", "cpu", "--batch", "7", "--width", "3", "--grid", "3", "--repeat", "1",
            "--warmup", "0"]
FASTKAN_KEYS = {"layernorm.weight", "layernorm.bias", "rbf.grid", "spline_linear.weight"}
BASE_KEYS = {"base_linear.weight", "base_linear.bias"}


def random_rbfkan(n_in, n_out, grid_size, base, seed, width=None):
    """A float64 RBFKAN with random layer norm, weights, base weights and bias (base: silu branch and bias)."""
    torch.manual_seed(seed)
    layer = RBFKAN(n_in, n_out, grid_size=grid_size, width=width, base_activation="silu" if base else None,
                   bias=base, dtype=torch.float64)
    with torch.no_grad():
        layer.layernorm.weight.uniform_(0.5, 3.0)  # the normed inputs reach beyond the grid's ends
        layer.layernorm.bias.normal_()
        layer.weight.normal_()
        if base:
            layer.base_weight.normal_()
            layer.bias.normal_()
    return layer


def trainable(module):
    return dict((name, p) for name, p in module.named_parameters() if p.requires_grad)


@pytest.mark.parametrize("batch, n_in, n_out, grid_size, base, width", [
    (7, 5, 3, 5, True, None), (11, 3, 6, 2, False, None), (9, 1, 1, 7, True, 0.7), (13, 4, 5, 3, False, 1.9)])
def test_fastkan_formula_computes_rbfkan_output_and_gradients(batch, n_in, n_out, grid_size, base, width):
    layer = random_rbfkan(n_in, n_out, grid_size, base, seed=grid_size, width=width)
    formula = FastKANFormula.from_rbfkan(layer)
    gen = torch.Generator().manual_seed(batch)
    x = (torch.randn(batch, n_in, generator=gen, dtype=torch.float64) * 3).requires_grad_()
    normed = layer.layernorm(x)
    if n_in > 1:
        assert bool(((normed < -2) | (normed > 2)).any()) and bool((normed.abs() < 2).any()), "inside and outside"
    grad_out = torch.randn(batch, n_out, generator=gen, dtype=torch.float64)
    assert set(formula.state_dict()) == FASTKAN_KEYS | (BASE_KEYS if base else set())
    assert formula.spline_linear.weight.shape == (n_out, n_in * grid_size)
    assert formula.rbf.grid.requires_grad is False

    expected = layer(x)
    kan_params = trainable(layer)
    expected_grads = dict(zip(["x", *kan_params], torch.autograd.grad(expected, (x, *kan_params.values()),
                                                                     grad_out)))
    actual = formula(x)
    formula_params = trainable(formula)
    actual_grads = dict(zip(["x", *formula_params], torch.autograd.grad(actual, (x, *formula_params.values()),
                                                                       grad_out)))

    close = {"rtol": 1e-10, "atol": 1e-12}
    torch.testing.assert_close(actual, expected, **close)
    pairs = {"x": "x", "layernorm.weight": "layernorm.weight", "layernorm.bias": "layernorm.bias",
             "spline_linear.weight": "weight"}
    if base:
        pairs.update({"base_linear.weight": "base_weight", "base_linear.bias": "bias"})
    assert set(actual_grads) == set(pairs) and set(expected_grads) == set(pairs.values())
    for ours, theirs in pairs.items():
        want = expected_grads[theirs]
        torch.testing.assert_close(actual_grads[ours], want.t() if want.dim() == 2 and ours != "x" else want,
                                   **close, msg=f"gradient of {ours}")
    torch.testing.assert_close(RBFKAN.from_fastkan(formula)(x), expected, **close)  # fast-kan's layout, read back
    with torch.no_grad():  # the comparison sees a change of one spline weight
        formula.spline_linear.weight[0, -1] += 1e-6
        assert not torch.allclose(formula(x), expected, **close)


def test_fastkan_formula_gradcheck():
    formula = FastKANFormula.from_rbfkan(random_rbfkan(3, 2, 4, True, seed=0))
    x = (torch.randn(5, 3, dtype=torch.float64) * 2).requires_grad_()
    assert torch.autograd.gradcheck(formula, (x,))


def test_fastkan_formula_initializes_as_fastkan():
    torch.manual_seed(0)
    formula = FastKANFormula(4, 3, grid_min=-1.0, grid_max=3.0, num_grids=5, use_base_update=False)
    torch.testing.assert_close(formula.rbf.grid, torch.linspace(-1, 3, 5))
    assert formula.rbf.denominator == 1.0 and formula.base_linear is None
    assert formula.spline_linear.weight.shape == (3, 20) and formula.spline_linear.bias is None
    assert formula(torch.randn(2, 6, 4)).shape == (2, 6, 3)
    spline_std = FastKANFormula(64, 64, spline_weight_init_scale=0.3).spline_linear.weight.detach().std()
    assert abs(float(spline_std) - 0.3) < 0.01  # 32768 draws of a normal of std 0.3 (truncated at +-2)


@pytest.mark.parametrize("build, error, words", [
    (lambda: RBFKAN(3, 2, layernorm=False), ValueError, "layernorm=True"),
    (lambda: RBFKAN(3, 2, bias=False), ValueError, "base_activation='silu' with bias=True"),
    (lambda: RBFKAN(3, 2, base_activation="tanh"), ValueError, "got layernorm=True, base_activation='tanh'"),
    (lambda: RBFKAN(3, 2, base_activation=None, bias=True), ValueError, "base_activation=None with bias=False"),
    (lambda: BSplineKAN(3, 2), TypeError, "expected a kanlib RBFKAN, got BSplineKAN"),
])
def test_fastkan_formula_refuses_a_layer_it_cannot_hold(build, error, words):
    with pytest.raises(error, match=words):
        FastKANFormula.from_rbfkan(build())


@pytest.mark.parametrize("arguments, words", [
    ({"num_grids": 1}, "num_grids must be an int >= 2, got 1"),
    ({"grid_min": 1.0, "grid_max": 1.0}, "expected grid_min < grid_max"),
])
def test_fastkan_formula_names_a_bad_argument(arguments, words):
    with pytest.raises(ValueError, match=words):
        FastKANFormula(3, 2, **arguments)


@pytest.mark.parametrize("family, cls, n_basis", [("rbf", "RBFKAN", 6), ("rswaf", "RSWAFKAN", 6),
                                                  ("relu", "ReLUKAN", 9), ("chebyshev", "ChebyKAN", 6)])
def test_family_layer_sizes(family, cls, n_basis):
    layer = family_layer(family, 4, 6, backend="eager")
    assert type(layer).__name__ == cls and layer.n_basis == n_basis and layer.backend == "eager"
    assert layer.weight.shape == (4 * n_basis, 4)


@pytest.fixture(scope="module")
def tiny_rows():
    return run_families_benchmark("cpu", TINY["batch"], TINY["width"], TINY["grids"], repeat=TINY["repeat"],
                                  warmup=TINY["warmup"])


def expected_pairs(grids, families=FAMILIES):
    return [(None, "mlp")] + [(family, name) for grid in grids for family in families for name in CANDIDATES
                              if name != "fastkan" or family == "rbf"]


def test_rows_cover_every_family_and_candidate(tiny_rows):
    assert [(row["family"], row["candidate"]) for row in tiny_rows] == expected_pairs(TINY["grids"])
    width = TINY["width"]
    for row in tiny_rows:
        assert row["skipped"] is None, row
        assert {"batch": 7, "width": width, "dtype": "float32"}.items() <= row.items()
        for stage in ("fwd", "fwdbwd"):
            median, q25, q75 = (row[f"{stage}_{key}_ms"] for key in ("median", "q25", "q75"))
            assert math.isfinite(median) and median > 0 and q25 <= median <= q75, row
            assert row[f"{stage}_n"] == TINY["repeat"]
        assert row["peak_bytes"] > row["state_bytes"] > 0, row
        assert ("built_as" in row) == (row["candidate"] == "fastkan")
        if row["candidate"] == "mlp":
            assert row["grid"] is row["family"] is row["n_basis"] is row["dense_k"] is row["ratio_to_dense"] is None
            continue
        n_basis = 3 + 3 if row["family"] == "relu" else 3
        with_base = row["family"] == "rbf"  # RBFKAN's silu base branch adds I columns to the product
        assert row["grid"] == 3 and row["n_basis"] == n_basis and row["dense_k"] == width * (n_basis + with_base), row


def test_ratios_are_to_the_same_familys_dense_product(tiny_rows):
    for family in FAMILIES:
        rows = {row["candidate"]: row for row in tiny_rows if row["family"] == family}
        dense = rows["dense"]
        batch, k, width = TINY["batch"], dense["dense_k"], TINY["width"]
        assert dense["state_bytes"] == 4 * (batch * k + k * width + batch * width)  # X, W, output gradient
        for row in rows.values():
            assert row["ratio_to_dense"] == pytest.approx(row["fwdbwd_median_ms"] / dense["fwdbwd_median_ms"])
            assert row["memory_ratio_to_dense"] == pytest.approx(row["peak_bytes"] / dense["peak_bytes"])


def test_the_layers_of_a_family_compute_one_function(monkeypatch):
    timed = {}

    def record(candidates, *args):
        timed.update((candidate.name, candidate) for candidate in candidates)
        return measure(candidates, *args)

    monkeypatch.setattr(families_benchmark, "measure", record)
    run_families_benchmark("cpu", 5, 4, [4], repeat=1, warmup=0)
    for family in FAMILIES:
        layers = [name for name in timed if name.startswith(f"{family}/") and name != f"{family}/dense"]
        assert len(layers) == (3 if family == "rbf" else 2), layers
        with torch.no_grad():
            outputs = [timed[name].forward() for name in layers]
        for name, output in zip(layers[1:], outputs[1:]):
            torch.testing.assert_close(output, outputs[0], msg=f"{name} against {layers[0]}")


def test_a_failing_candidate_is_a_skipped_row(monkeypatch):
    def fail(self, x):
        raise RuntimeError("no kernel\nmore")

    monkeypatch.setattr(FastKANFormula, "forward", fail)
    rows = run_families_benchmark("cpu", 4, 2, [2], families=["rbf"], repeat=1, warmup=0)
    by_name = {row["candidate"]: row for row in rows}
    assert list(by_name) == ["mlp", *CANDIDATES]
    assert by_name["fastkan"]["skipped"] == "failed: RuntimeError: no kernel"
    assert "fwdbwd_median_ms" not in by_name["fastkan"] and "ratio_to_dense" not in by_name["fastkan"]
    assert all(row["skipped"] is None for name, row in by_name.items() if name != "fastkan")


@pytest.mark.parametrize("change, error, message", [
    ({"families": ["rbf", "bspline"]}, ValueError,
     r"families\[1\]: expected one of \('rbf', 'rswaf', 'relu', 'chebyshev'\), got 'bspline'"),
    ({"families": "rbf"}, ValueError, "families: expected a non-empty list of names"),
    ({"families": []}, ValueError, "families: expected a non-empty list of names"),
    ({"families": ["relu", "relu"]}, ValueError, "families: expected distinct names"),
    ({"grids": [3, 1]}, ValueError, r"grids\[1\] must be a grid size >= 2 \(RBFKAN and RSWAFKAN need 2 points\), "
                                    "got 1"),
    ({"grids": [3, 3]}, ValueError, "grids: expected distinct grid sizes"),
    ({"grids": []}, ValueError, "grids: expected a non-empty list"),
    ({"batch": 0}, ValueError, "batch must be an int >= 1, got 0"),
    ({"width": 2.5}, TypeError, "width must be an int >= 1, got 2.5"),
    ({"dtype": torch.int32}, ValueError, "dtype: expected one of"),
    ({"device": "tpu"}, ValueError, "device: expected 'cpu', 'cuda' or 'auto', got 'tpu'"),
])
def test_run_families_benchmark_names_a_bad_argument(change, error, message):
    arguments = {"device": "cpu", "batch": 4, "width": 2, "grids": [3], "repeat": 1, "warmup": 0, **change}
    with pytest.raises(error, match=message):
        run_families_benchmark(**arguments)


def test_family_layer_names_an_unknown_family():
    with pytest.raises(ValueError, match="family: expected one of .*, got 'kaf'"):
        family_layer("kaf", 3, 5)


def hand_made_rows(times: dict, **configuration) -> list[dict]:
    """Rows {(grid, family, candidate): fwd+bwd median ms} at the target configuration unless changed."""
    base = {"batch": 1024, "width": 256, "dtype": "float32", **configuration}
    return [{**base, "grid": grid, "family": family, "candidate": candidate, "fwdbwd_median_ms": ms}
            for (grid, family, candidate), ms in times.items()]


FASTKAN_TARGET = "fwd+bwd time of kanlib RBFKAN / fast-kan's formula at G = 5"


def test_family_targets():
    rows = hand_made_rows({(5, "rbf", "dense"): 10.0, (5, "rbf", "kanlib"): 12.0, (5, "rbf", "eager"): 1.0,
                           (5, "rbf", "fastkan"): 15.0, (5, "rswaf", "dense"): 10.0, (5, "rswaf", "kanlib"): 13.0,
                           (5, "relu", "dense"): 20.0, (5, "relu", "kanlib"): 30.0, (5, "chebyshev", "dense"): 4.0,
                           (50, "chebyshev", "kanlib"): 4.0, (5, None, "mlp"): 0.1})
    rows.append({"batch": 1024, "width": 256, "dtype": "float32", "grid": 5, "family": "chebyshev",
                 "candidate": "kanlib", "skipped": "failed: RuntimeError"})  # no times: missing
    report = {entry["target"]: entry for entry in target_report(rows)}
    assert list(report) == [target[0] for target in TARGETS]
    values = [entry["value"] for entry in report.values()]
    assert values == [pytest.approx(1.2), pytest.approx(1.3), pytest.approx(1.5), None, pytest.approx(0.8)]
    assert [entry["met"] for entry in report.values()] == [True, True, False, None, True]
    assert [entry["goal"] for entry in report.values()] == ["<= 1.3"] * 4 + ["< 1.0"]


def test_fastkan_target_is_strict_and_needs_the_configuration():
    as_fast = hand_made_rows({(5, "rbf", "kanlib"): 15.0, (5, "rbf", "fastkan"): 15.0})
    assert target_report(as_fast)[-1] == {"target": FASTKAN_TARGET, "value": 1.0, "goal": "< 1.0", "met": False}
    other = hand_made_rows({(5, "rbf", "kanlib"): 1.0, (5, "rbf", "fastkan"): 15.0, (5, "rbf", "dense"): 1.0},
                           batch=512)
    assert all(entry["value"] is None for entry in target_report(other))


def test_cli_prints_every_candidate_and_writes_one_result(tmp_path, capsys):
    assert main([*TINY_CLI, "--family", "rbf", "chebyshev", "--out-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    [path] = tmp_path.glob("families-cpu-*.json")
    assert printed.strip().endswith(f"wrote {path}")
    assert FASTKAN_TARGET in printed and "rswaf" not in printed.split("targets")[0]
    [result] = load_results(tmp_path)
    assert result["benchmark"] == "families" and result["device"]["type"] == "cpu"
    assert result["params"] == {"batch": 7, "width": 3, "grids": [3], "families": ["rbf", "chebyshev"],
                                "dtype": "float32", "repeat": 1, "warmup": 0, "seed": 0}
    pairs = [(row["family"], row["candidate"]) for row in result["rows"]]
    assert pairs == expected_pairs([3], ["rbf", "chebyshev"])


def test_cli_no_write_writes_nothing(tmp_path, capsys):
    out_dir = tmp_path / "results"
    assert main([*TINY_CLI, "--family", "relu", "--no-write", "--out-dir", str(out_dir)]) == 0
    assert "relu" in capsys.readouterr().out and not out_dir.exists()


def test_cli_defaults_and_lists():
    parser = build_parser()
    args = parser.parse_args(["bench", "families"])
    assert (args.batch, args.width, args.grids, args.families, args.dtype) == (1024, 256, None, None, "float32")
    args = parser.parse_args(["bench", "families", "--grid", "5", "--grid", "10", "20", "--family", "rbf", "relu"])
    assert args.grids == [5, 10, 20] and args.families == ["rbf", "relu"]


@pytest.mark.parametrize("arguments, message", [
    (["--grid", "1"], "argument --grid: expected an int >= 2, got '1'"),
    (["--family", "bspline"], "argument --family: invalid choice: 'bspline'"),
    (["--family", "rbf", "rbf"], "--family: expected distinct values, got ['rbf', 'rbf']"),
    (["--grid", "5", "5"], "--grid: expected distinct values, got [5, 5]"),
    (["--batch", "0"], "argument --batch: expected an int >= 1, got '0'"),
    (["--dtype", "float8"], "argument --dtype: invalid choice: 'float8'"),
])
def test_cli_bad_argument_exits_naming_it(arguments, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(families_benchmark, "run_families_benchmark", lambda *a, **k: pytest.fail("measured"))
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "families", "--device", "cpu", "--out-dir", str(tmp_path), *arguments])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert message in err and err.startswith("usage: python -m kanlib bench families ")
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_an_out_dir_that_is_a_file_before_measuring(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(families_benchmark, "run_families_benchmark", lambda *a, **k: pytest.fail("measured"))
    out = tmp_path / "a_file"
    out.write_text("not a folder")
    assert main([*TINY_CLI, "--out-dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"got {out}, which exists and is not a folder" in err, err
