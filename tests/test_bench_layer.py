"""The layer benchmark: the unfused reference, run_layer_benchmark's rows, and `python -m kanlib bench layer`."""
import functools
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
from kanlib.bench import layer as layer_benchmark
from kanlib.bench.candidates import (PEER_PACKAGES, Candidate, UnfusedKAN, bspline_weights, cuda_graphed,
                                     dense_candidate, flashkan_layer, inkan_layer, measure, nbytes, training_step)
from kanlib.bench.layer import CANDIDATES, GRAPHED_CANDIDATES, PIP_PEERS, TARGETS, run_layer_benchmark, target_report
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


def peer_inputs(layer, batch, seed):
    """x [batch + G+2k+1 + 2, I] (float64): inside the grid range and beyond it, on every knot, beyond the extended
    grid; and an output gradient."""
    gen = torch.Generator().manual_seed(seed)
    inside = torch.rand(batch, layer.in_features, generator=gen, dtype=torch.float64) * 2.4 - 1.2
    beyond_extended_grid = torch.tensor([[-4.0], [4.0]], dtype=torch.float64).expand(2, layer.in_features)
    x = torch.cat([inside, layer.grid.t(), beyond_extended_grid]).requires_grad_()
    return x, torch.randn(x.shape[0], layer.out_features, generator=gen, dtype=torch.float64)


def peer_weight_grads(name, module, grads):
    """A peer's parameter gradients as UnfusedKAN's (base_weight [O, I], spline_weight [O, I, G+k])."""
    if name == "flashkan":
        by_name = dict(zip((n for n, _ in module.named_parameters()), grads))
        return by_name["base_weight"], by_name["spline_weight"]
    [packed] = grads  # inkan: [O, I*(G+k) + I] = [spline weights | base weights]
    n_spline = module.in_features * module.n_bases
    return packed[:, n_spline:], packed[:, :n_spline].reshape(module.out_features, module.in_features, -1)


# flashkan keeps its basis starts in float32 and 1/6 as 0.16666667: float64 agrees to about 1e-7 of the output.
PEER_TOLERANCE = {"rtol": 1e-6, "atol": 1e-5}


@pytest.mark.parametrize("name, build", [("flashkan", flashkan_layer), ("inkan", inkan_layer)])
@pytest.mark.parametrize("batch, n_in, n_out, grid_size", [(7, 5, 3, 5), (9, 3, 6, 1)])
def test_each_peer_computes_bsplinekan_on_its_grid(name, build, batch, n_in, n_out, grid_size):
    layer = random_bspline(n_in, n_out, grid_size, 3, seed=grid_size)
    peer = build(layer)
    assert peer.same_function
    version = PEER_PACKAGES[name].split("==")[1]
    assert peer.built_as.startswith(f"{name} {version}: KANLayer({n_in}, {n_out}, grid_size={grid_size}, "
                                    "spline_order=3, grid_range=(-1.0, 1.0)); "), peer.built_as
    x, grad_out = peer_inputs(layer, batch, seed=grid_size)
    unfused = UnfusedKAN.from_bspline(layer)  # the same function, with its weights laid out as the peers'

    expected = layer(x)
    [expected_grad_x] = torch.autograd.grad(expected, x, grad_out)
    expected_weight_grads = torch.autograd.grad(unfused(x), (unfused.base_weight, unfused.spline_weight), grad_out)
    actual = peer.module(x)
    params = tuple(peer.module.parameters())
    actual_grad_x, *actual_param_grads = torch.autograd.grad(actual, (x, *params), grad_out)

    assert actual.dtype == torch.float64
    torch.testing.assert_close(actual, expected, **PEER_TOLERANCE)
    torch.testing.assert_close(actual_grad_x, expected_grad_x, **PEER_TOLERANCE, msg="gradient of x")
    for weight, got, want in zip(("base", "spline"), peer_weight_grads(name, peer.module, actual_param_grads),
                                 expected_weight_grads):
        torch.testing.assert_close(got, want, **PEER_TOLERANCE, msg=f"gradient of the {weight} weight")


@pytest.mark.parametrize("build", [flashkan_layer, inkan_layer])
def test_a_peer_at_another_order_is_the_cubic_layer_on_the_same_grid(build):
    layer = BSplineKAN(4, 3, grid_size=6, spline_order=2)
    peer = build(layer)
    assert not peer.same_function
    assert "KANLayer(4, 3, grid_size=6, spline_order=3, " in peer.built_as
    assert peer.module.spline_weight.shape == (3, 4, 6 + 3)
    x = torch.rand(5, 4, requires_grad=True)
    out = peer.module(x)
    assert out.shape == (5, 3)
    grads = torch.autograd.grad(out.sum(), (x, *peer.module.parameters()))
    assert all(bool(grad.abs().sum() > 0) for grad in grads)


@pytest.mark.parametrize("build", [flashkan_layer, inkan_layer])
def test_a_peer_refuses_a_layer_it_cannot_hold(build):
    with pytest.raises(ValueError, match="without bias"):
        build(BSplineKAN(3, 2, bias=True))
    with pytest.raises(ValueError, match="base_activation 'silu'"):
        build(BSplineKAN(3, 2, base_activation="identity"))
    with pytest.raises(ValueError, match=r"uniform grid on \(-1.0, 1.0\)"):
        build(BSplineKAN(3, 2, grid_range=(-2.0, 2.0)))


@pytest.mark.parametrize("name, build", [("flashkan", flashkan_layer), ("inkan", inkan_layer)])
def test_a_missing_peer_package_names_its_install(name, build, monkeypatch):
    monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
    with pytest.raises(ImportError, match=f"pip install {PEER_PACKAGES[name]}"):
        build(BSplineKAN(3, 2))


def test_a_peer_missing_or_failing_is_a_skipped_row(monkeypatch):
    def failing_build(layer):
        peer = flashkan_layer(layer)
        peer.module.register_forward_hook(lambda *args: (_ for _ in ()).throw(RuntimeError("no compiler\nmore")))
        return peer

    monkeypatch.setitem(sys.modules, "inkan", None)
    monkeypatch.setitem(layer_benchmark.PEER_BUILDERS, "flashkan", failing_build)
    rows = run_layer_benchmark("cpu", 4, 3, [2], repeat=1, warmup=0, skip_pykan=True)
    by_name = {row["candidate"]: row for row in rows}
    assert list(by_name) == [name for name in CANDIDATES if name != "pykan"]
    assert by_name["flashkan"]["skipped"] == "failed: RuntimeError: no compiler"
    assert by_name["inkan"]["skipped"].startswith("not installed: the inkan candidate needs inkan==0.5.2")
    for name in ("flashkan", "inkan"):
        assert "fwdbwd_median_ms" not in by_name[name] and "ratio_to_dense" not in by_name[name]
    assert by_name["flashkan"]["built_as"].startswith("flashkan 0.2.0: KANLayer(3, 3, grid_size=2, ")
    assert all(row["skipped"] is None and row["fwdbwd_median_ms"] > 0 for name, row in by_name.items()
               if name not in ("flashkan", "inkan"))


def test_the_compiled_candidate_runs_the_layer_s_kernels_under_torch_compile(monkeypatch):
    """bsplinekan_compiled is the same layer (same parameters) whose compiled graph calls the CPU kernels' operator
    (at G = 3 its dense path, :func:`kanlib.ops.spline_linear.fused_layer_product`)."""
    import kanlib.ops.spline_linear as spline_linear_module

    calls = []
    product = spline_linear_module.fused_layer_product
    monkeypatch.setattr(spline_linear_module, "fused_layer_product", lambda *args: calls.append(1) or product(*args))
    torch._dynamo.reset()
    layer = random_bspline(5, 4, 3, 3, seed=3).float()
    x = torch.rand(9, 5, requires_grad=True)
    grad_out = torch.randn(9, 4)
    candidates, _, skipped = layer_benchmark._peer_candidates(layer, x, grad_out)
    assert "bsplinekan_compiled" not in skipped
    compiled = next(candidate for candidate in candidates if candidate.name == "bsplinekan_compiled")
    assert compiled.leaves == (x, *(p for p in layer.parameters() if p.requires_grad))
    calls.clear()
    got = torch.autograd.grad(compiled.forward(), compiled.leaves, grad_out)
    assert calls, "the compiled layer did not run kanlib::spline_layer"
    want = torch.autograd.grad(layer(x), compiled.leaves, grad_out)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_a_compile_that_fails_is_a_skipped_row(monkeypatch):
    def failing_compile(module, **options):
        def run(*args):
            raise RuntimeError("inductor found no compiler\ndetails")
        return run

    monkeypatch.setattr(layer_benchmark.torch, "compile", failing_compile)
    monkeypatch.setitem(sys.modules, "inkan", None)
    monkeypatch.setitem(sys.modules, "flashkan", None)
    rows = run_layer_benchmark("cpu", 4, 3, [2], repeat=1, warmup=0, skip_pykan=True)
    by_name = {row["candidate"]: row for row in rows}
    assert by_name["bsplinekan_compiled"]["skipped"] == "failed: RuntimeError: inductor found no compiler"
    assert by_name["bsplinekan"]["skipped"] is None


def test_cuda_graphs_need_a_cuda_device():
    candidate = dense_candidate("dense", 4, 6, 3, -1.0, 1.0, torch.Generator().manual_seed(0), "cpu", torch.float32)
    with pytest.raises(ValueError, match="dense_graphed: CUDA graphs need a CUDA device, got grad_out on cpu"):
        cuda_graphed("dense_graphed", candidate, torch.zeros(4, 3))


def test_a_candidate_s_own_step_is_what_is_timed_and_its_recorded_peak_is_charged():
    x = torch.rand(5, 3, requires_grad=True)
    grad_out = torch.randn(5, 3)
    calls = []
    candidate = Candidate("replayed", lambda: 2 * x, (x,), 100, step=lambda: calls.append(1), step_peak_bytes=7)
    assert training_step(candidate, grad_out) is candidate.step
    figures = measure([candidate], grad_out, torch.device("cpu"), repeat=3, warmup=1)
    assert len(calls) == 1 + 3  # warm-up and timed runs; the peak comes from step_peak_bytes, not a run
    assert figures["replayed"]["peak_bytes"] == 100 + nbytes([grad_out]) + 7
    assert figures["replayed"]["fwdbwd_n"] == 3


def _stand_in_graphs(monkeypatch, record):
    """The run as on a CUDA device, each graphed candidate standing in as its eager one with a known peak: what
    the rows make of graphed candidates, checked where no CUDA graph can be recorded."""
    monkeypatch.setattr(layer_benchmark, "_records_cuda_graphs", lambda device: True)
    monkeypatch.setattr(layer_benchmark, "cuda_graphed", record)
    monkeypatch.setattr(layer_benchmark.torch, "compile", lambda module, **options: module)  # no compile wait
    monkeypatch.setitem(sys.modules, "inkan", None)
    monkeypatch.setitem(sys.modules, "flashkan", None)


def _eager_stand_in(name, candidate, grad_out, recorded=None):
    """A graphed candidate that runs its eager one, with a peak of 1000 bytes."""
    if recorded is not None:
        recorded.append((name, candidate.name))
    return Candidate(name, candidate.forward, candidate.leaves, candidate.state_bytes,
                     step=training_step(candidate, grad_out), step_peak_bytes=1000)


def test_graphed_rows_follow_their_eager_candidates(monkeypatch):
    recorded = []
    _stand_in_graphs(monkeypatch, functools.partial(_eager_stand_in, recorded=recorded))
    rows = run_layer_benchmark("cpu", 4, 3, [2, 3], repeat=2, warmup=0, skip_pykan=True)
    assert recorded == [*GRAPHED_CANDIDATES.items()] * 2
    for grid_size in (2, 3):
        by_name = {row["candidate"]: row for row in rows if row["grid"] == grid_size}
        assert list(by_name) == [*(name for name in CANDIDATES if name != "pykan"), *GRAPHED_CANDIDATES]
        dense, graphed_dense, graphed = by_name["dense"], by_name["dense_graphed"], by_name["bsplinekan_graphed"]
        for name, eager in GRAPHED_CANDIDATES.items():
            row = by_name[name]
            assert row["skipped"] is None and row["state_bytes"] == by_name[eager]["state_bytes"]
            assert row["peak_bytes"] == row["state_bytes"] + 1000
            assert row["ratio_to_dense"] == pytest.approx(row["fwdbwd_median_ms"] / dense["fwdbwd_median_ms"])
            assert row["gflops_per_s"] == pytest.approx(row["flops"] / (row["fwdbwd_median_ms"] * 1e6))
        assert graphed["ratio_to_dense_graphed"] == pytest.approx(
            graphed["fwdbwd_median_ms"] / graphed_dense["fwdbwd_median_ms"])
        assert [row["candidate"] for row in by_name.values() if "ratio_to_dense_graphed" in row] == [
            "bsplinekan_graphed"]


def test_cli_prints_the_graphed_ratio(monkeypatch, capsys):
    _stand_in_graphs(monkeypatch, _eager_stand_in)
    assert main([*TINY_CLI, "--skip-pykan", "--no-write"]) == 0
    printed = capsys.readouterr().out
    graphed = printed.split("both replayed from CUDA graphs")[1].split("targets")[0]
    assert "ratio_to_dense_graphed" in graphed
    assert [line.split()[:2] for line in graphed.strip().splitlines()[3:]] == [["3", "bsplinekan_graphed"]], graphed


def test_a_graph_that_cannot_be_recorded_is_a_skipped_row(monkeypatch):
    def failing(name, candidate, grad_out):
        if name == "bsplinekan_graphed":
            raise RuntimeError("operation not permitted when stream is capturing\ndetails")
        return Candidate(name, candidate.forward, candidate.leaves, candidate.state_bytes,
                         step=training_step(candidate, grad_out), step_peak_bytes=0)

    _stand_in_graphs(monkeypatch, failing)
    rows = run_layer_benchmark("cpu", 4, 3, [2], repeat=1, warmup=0, skip_pykan=True)
    by_name = {row["candidate"]: row for row in rows}
    assert by_name["bsplinekan_graphed"]["skipped"] == (
        "failed: RuntimeError: operation not permitted when stream is capturing")
    assert "fwdbwd_median_ms" not in by_name["bsplinekan_graphed"]
    assert by_name["dense_graphed"]["skipped"] is None
    assert not any("ratio_to_dense_graphed" in row for row in rows)


@pytest.fixture(scope="module")
def tiny_rows():
    return run_layer_benchmark("cpu", TINY["batch"], TINY["width"], TINY["grids"], repeat=TINY["repeat"],
                               warmup=TINY["warmup"])


def test_rows_cover_every_grid_and_candidate(tiny_rows):
    assert [(row["grid"], row["candidate"]) for row in tiny_rows] == [
        (grid, name) for grid in TINY["grids"] for name in CANDIDATES]
    for row in tiny_rows:
        assert row["skipped"] is None, row  # the dev extra installs the peers
        assert ("built_as" in row) == (row["candidate"] in ("flashkan", "inkan")), row
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
    assert "in alternation" not in printed  # one grid size: no sweep
    assert not out_dir.exists()


def test_cli_prints_the_alternated_sweep_of_several_grid_sizes(capsys):
    two_grids = [*TINY_CLI[:TINY_CLI.index("--grid") + 2], "2", *TINY_CLI[TINY_CLI.index("--grid") + 2:]]
    assert main([*two_grids, "--skip-pykan", "--no-write"]) == 0
    printed = capsys.readouterr().out
    sweep = printed.split("in alternation")[1].split("targets")[0]
    assert "sweep_fwdbwd_median_ms" in sweep
    assert [line.split()[0] for line in sweep.strip().splitlines()[3:]] == ["3", "2"], sweep


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


PEERS_TARGET = "fwd+bwd time of bsplinekan / fastest pip-installable B-spline peer at G = 5"


def test_layer_targets_from_the_grid_sweep():
    rows = _sweep_rows({(5, "dense"): 10.0, (5, "bsplinekan"): 11.0, (50, "dense"): 100.0, (50, "bsplinekan"): 30.0,
                        (100, "bsplinekan"): 44.0, (200, "bsplinekan"): 46.0, (5, "flashkan"): 20.0,
                        (5, "inkan"): 12.5, (5, "pykan"): 500.0, (5, "unfused"): 5.0, (50, "inkan"): 1.0})
    report = {entry["target"]: entry for entry in target_report(rows)}
    assert [entry[0] for entry in TARGETS] == list(report)
    assert report["fwd+bwd time of bsplinekan / dense at G = 50"]["value"] == pytest.approx(0.3)
    assert report["fwd+bwd time of bsplinekan at G = 100 / at G = 50"]["value"] == pytest.approx(44 / 30)
    assert report["fwd+bwd time of bsplinekan at G = 200 / at G = 50"]["met"] is False
    assert report["fwd+bwd time of bsplinekan / dense at G = 5"]["value"] == pytest.approx(1.1)
    assert report[PEERS_TARGET]["value"] == pytest.approx(11 / 12.5)  # the fastest peer; unfused is no peer
    assert [entry["met"] for entry in report.values()] == [True, True, False, True, True]


def test_grid_ratios_come_from_the_alternated_sweep_where_both_rows_have_it():
    rows = _sweep_rows({(50, "bsplinekan"): 30.0, (100, "bsplinekan"): 60.0, (200, "bsplinekan"): 36.0})
    by_grid = {row["grid"]: row for row in rows}
    by_grid[50]["sweep_fwdbwd_median_ms"] = 20.0
    by_grid[200]["sweep_fwdbwd_median_ms"] = 34.0  # G = 100 has no sweep figure: its own medians are used
    report = {entry["target"]: entry["value"] for entry in target_report(rows)}
    assert report["fwd+bwd time of bsplinekan at G = 200 / at G = 50"] == pytest.approx(34 / 20)
    assert report["fwd+bwd time of bsplinekan at G = 100 / at G = 50"] == pytest.approx(60 / 30)


def test_the_sweep_times_bsplinekan_at_every_grid_size_in_alternation(tiny_rows):
    for row in tiny_rows:
        swept = [key for key in row if key.startswith("sweep_")]
        if row["candidate"] != "bsplinekan":
            assert not swept, row
            continue
        assert row["sweep_fwdbwd_n"] == TINY["repeat"], row
        assert 0 < row["sweep_fwdbwd_q25_ms"] <= row["sweep_fwdbwd_median_ms"] <= row["sweep_fwdbwd_q75_ms"], row


def test_a_run_of_one_grid_size_has_no_sweep():
    rows = run_layer_benchmark("cpu", 8, 4, [3], repeat=2, warmup=0, skip_pykan=True)
    assert not [key for row in rows for key in row if key.startswith("sweep_")]


@pytest.mark.parametrize("peer_times, value, met", [
    ({"flashkan": 10.0, "inkan": 30.0}, 1.1, False),  # not met: a peer is faster
    ({"inkan": 11.0}, 1.0, False),  # not met: as fast is not faster
    ({"pykan": 22.0}, 0.5, True),  # pykan alone counts
    ({}, None, None),  # missing: no peer measured
])
def test_layer_peer_target(peer_times, value, met):
    rows = _sweep_rows({(5, "bsplinekan"): 11.0, **{(5, name): ms for name, ms in peer_times.items()}})
    rows += [{"batch": 1024, "width": 256, "order": 3, "dtype": "float32", "grid": 5, "candidate": name,
              "skipped": "not installed"} for name in PIP_PEERS if name not in peer_times]  # skipped: no times
    [entry] = [entry for entry in target_report(rows) if entry["target"] == PEERS_TARGET]
    assert entry["value"] == (None if value is None else pytest.approx(value))
    assert entry["met"] is met and entry["goal"] == "< 1.0"


def test_layer_targets_are_missing_without_their_grids_or_configuration():
    assert all(entry["value"] is None for entry in target_report(_sweep_rows({(5, "dense"): 1.0})))
    other = _sweep_rows({(5, "dense"): 10.0, (5, "bsplinekan"): 11.0}, width=128)
    assert all(entry["met"] is None for entry in target_report(other))
