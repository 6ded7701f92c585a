"""The workflow benchmark (pykan's Example 1, kanlib and pykan side by side) in a tiny configuration."""
import json

import pytest
import torch

from kanlib.__main__ import main
from kanlib.bench import workflow


def test_example1_data_is_pykans_create_dataset_and_leaves_the_global_rng_alone():
    kan = pytest.importorskip("kan")
    state = torch.get_rng_state()
    ours = workflow.example1_data(seed=3, n_train=101, n_test=37)
    assert torch.equal(torch.get_rng_state(), state)
    theirs = kan.create_dataset(workflow.example1_function, n_var=2, train_num=101, test_num=37, seed=3)
    assert set(ours) == set(theirs)
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), key


@pytest.mark.parametrize("library", workflow.LIBRARIES)
def test_run_example1_gives_a_row_per_seed_with_every_stage(library):
    if library == "pykan":
        pytest.importorskip("kan")
    data = workflow.example1_data(n_train=64, n_test=32)
    row = workflow.run_example1(library, seed=1, grids=(3, 5), steps=2, data=data)
    assert row["kind"] == "seed" and row["library"] == library and row["seed"] == 1
    for grid in (3, 5):
        assert row[f"rmse_g{grid}"] > 0 and row[f"seconds_g{grid}"] > 0
    assert row["seconds_total"] == pytest.approx(row["seconds_g3"] + row["seconds_g5"])


def test_kanlib_and_pykan_start_from_the_same_model(monkeypatch):
    pytest.importorskip("kan")
    from kanlib import training

    # pykan's first step trains every layer; kanlib's trains the first layer alone unless told otherwise.
    monkeypatch.setitem(training.fit.__kwdefaults__, "first_layer_steps", 0)
    data = workflow.example1_data(n_train=64, n_test=32)
    rows = [workflow.run_example1(library, seed=2, grids=(3,), steps=1, data=data)
            for library in workflow.LIBRARIES]
    # One LBFGS step from the same initial parameters and grid schedule on the same data.
    assert rows[0]["rmse_g3"] == pytest.approx(rows[1]["rmse_g3"], rel=1e-3)


def test_kanlibs_refine_reads_the_training_inputs_its_fit_ended_with(monkeypatch):
    from kanlib import KAN

    samples = []
    refine = KAN.refine

    def recording_refine(model, grid_size, x=None):
        samples.append(model.samples(x, "refine"))
        return refine(model, grid_size, x)

    monkeypatch.setattr(KAN, "refine", recording_refine)
    data = workflow.example1_data(n_train=64, n_test=32)
    workflow.run_example1("kanlib", seed=0, grids=(3, 5, 7), steps=1, data=data)
    assert len(samples) == 2 and all(torch.equal(x, data["train_input"]) for x in samples)


@pytest.mark.parametrize("arguments,error,message", [
    (("numpy", 0), ValueError, r"library must be one of \('kanlib', 'pykan'\), got 'numpy'"),
    (("kanlib", -1), ValueError, r"seed must be an int >= 0, got -1"),
    (("kanlib", 0, ()), ValueError, r"grids must be a non-empty sequence of grid sizes, got \(\)"),
    (("kanlib", 0, (3, 0)), ValueError, r"grids\[1\] must be an int >= 1, got 0"),
    (("kanlib", 0, (3,), 0), ValueError, r"steps must be an int >= 1, got 0"),
])
def test_bad_arguments_are_named(arguments, error, message):
    with pytest.raises(error, match=message):
        workflow.run_example1(*arguments)


def seed_row(library, seed, rmse, seconds):
    return {"kind": "seed", "library": library, "seed": seed, "rmse_g3": rmse, "seconds_g3": seconds,
            "seconds_total": seconds}


def test_summary_and_targets():
    rows = [seed_row("kanlib", s, r, 1.0) for s, r in enumerate([1e-4, 2e-4, 5e-4, 0.5])]
    rows += [seed_row("pykan", s, r, 4.0) for s, r in enumerate([2e-4, 0.6, 3e-4, 0.5])]
    rows += workflow.summarize(rows, (3,))
    summary = {row["library"]: row for row in rows if row["kind"] == "summary"}
    assert summary["kanlib"]["seeds_below_goal"] == 3 and summary["pykan"]["seeds_below_goal"] == 2
    assert summary["kanlib"]["median_last_rmse"] == pytest.approx(3.5e-4)
    assert summary["pykan"]["seconds_total"] == 16.0
    report = workflow.target_report(rows)
    assert [entry["value"] for entry in report] == pytest.approx([0.75, 1.5, 3.5e-4 / 0.25015, 0.25])
    assert [entry["met"] for entry in report] == [False, True, True, True]


def test_targets_without_pykan_are_missing_not_met():
    rows = [seed_row("kanlib", 0, 1e-4, 1.0)]
    report = workflow.target_report(rows + workflow.summarize(rows, (3,)))
    assert [entry["met"] for entry in report] == [True, None, None, None]


def test_command_line_runs_and_writes_the_result(tmp_path, capsys, monkeypatch):
    pytest.importorskip("kan")
    monkeypatch.setattr(workflow, "example1_data", lambda **kwargs: _example1_small())
    status = main(["bench", "workflow", "--seeds", "0", "--grid", "3", "4", "--steps", "1",
                   "--out-dir", str(tmp_path)])
    assert status == 0
    out = capsys.readouterr().out
    assert "rmse_g3" in out and "targets:" in out
    (path,) = tmp_path.glob("workflow-*.json")
    result = json.loads(path.read_text())
    assert result["params"]["seeds"] == [0] and result["params"]["grids"] == [3, 4]
    assert result["params"]["pykan"]["auto_save"] is False
    kinds = [(row["kind"], row["library"]) for row in result["rows"]]
    assert kinds == [("seed", "kanlib"), ("seed", "pykan"), ("summary", "kanlib"), ("summary", "pykan")]


def _example1_small():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(48, 2, generator=generator) * 2 - 1
    y = workflow.example1_function(x)
    return {"train_input": x, "train_label": y, "test_input": x, "test_label": y}


def test_command_line_refuses_repeated_seeds(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "workflow", "--seeds", "1", "1", "--no-write"])
    assert "--seeds: expected distinct seeds, got [1, 1]" in capsys.readouterr().err


@pytest.mark.parametrize("ours,theirs,met", [([1e-4], [0.5], True), ([0.5], [0.5], True), ([0.5], [1e-4], False)])
def test_as_many_seeds_as_pykan_when_pykan_has_none(ours, theirs, met):
    rows = [seed_row("kanlib", s, r, 1.0) for s, r in enumerate(ours)]
    rows += [seed_row("pykan", s, r, 4.0) for s, r in enumerate(theirs)]
    report = workflow.target_report(rows + workflow.summarize(rows, (3,)))
    assert report[1]["met"] is met


def test_a_pykan_run_that_raises_is_a_failed_seed_not_a_crash(monkeypatch):
    """pykan's spline refit can raise once a fit diverged to NaN: that seed fails, the benchmark goes on."""

    def diverging(seed, grids, steps, data):
        yield torch.nn.Linear(2, 1)
        raise UnboundLocalError("cannot access local variable 'coef' where it is not associated with a value")

    monkeypatch.setattr(workflow, "_pykan_stages", diverging)
    data = workflow.example1_data(n_train=16, n_test=8)
    row = workflow.run_example1("pykan", seed=0, grids=(3, 5, 10), steps=1, data=data)
    assert row["failed"].startswith("at G = 5: UnboundLocalError")
    assert row["rmse_g3"] > 0 and row["rmse_g5"] is None and row["seconds_g10"] is None
    rows = [row, seed_row("pykan", 1, 2e-4, 1.0), seed_row("pykan", 2, 3e-4, 1.0)]
    rows = [{**r, "rmse_g10": r.get("rmse_g10", r.get("rmse_g3"))} for r in rows]
    [summary] = workflow.summarize(rows, (3, 5, 10))
    assert summary["failed"] == 1 and summary["seeds_below_goal"] == 2
    assert summary["median_last_rmse"] == pytest.approx(3e-4)  # the failed seed counts as above every value


def test_a_kanlib_error_is_not_hidden(monkeypatch):
    def broken(seed, grids, steps, data):
        raise RuntimeError("a bug")
        yield

    monkeypatch.setattr(workflow, "_kanlib_stages", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        workflow.run_example1("kanlib", seed=0, grids=(3,), steps=1, data=workflow.example1_data(n_train=16, n_test=8))
