"""kanlib.bench.images: the equal-accuracy comparison of the B-spline KAN and the MLP over hidden widths."""
import json

import pytest
import torch

from kanlib import load_digits
from kanlib.__main__ import main
from kanlib.bench import images


def run(family, width, seed, seconds, accuracy, parameters=100):
    return {"kind": "run", "family": family, "width": width, "seed": seed, "parameters": parameters,
            "epoch_seconds": seconds, "test_accuracy": accuracy}


def test_the_level_is_the_lower_best_less_the_tolerance_and_each_family_takes_its_cheapest_width():
    runs = [run("mlp", 16, 0, 1.0, 0.80), run("mlp", 16, 1, 3.0, 0.82),   # median 2.0, mean 0.81
            run("mlp", 64, 0, 4.0, 0.95), run("mlp", 64, 1, 6.0, 0.93),   # median 5.0, mean 0.94
            run("bspline", 4, 0, 7.0, 0.89), run("bspline", 4, 1, 9.0, 0.91),  # median 8.0, mean 0.90
            run("bspline", 8, 0, 12.0, 0.92), run("bspline", 8, 1, 14.0, 0.92)]  # median 13.0, mean 0.92
    rows = images.equal_accuracy(runs, dataset="toy", tolerance=0.02, device_type="cpu")
    widths = {(row["family"], row["width"]): row for row in rows if row["kind"] == "width"}
    assert widths[("mlp", 16)]["epoch_seconds"] == pytest.approx(2.0)
    assert widths[("mlp", 16)]["test_accuracy"] == pytest.approx(0.81)
    assert widths[("bspline", 8)]["epoch_seconds_q25"] == pytest.approx(12.5)
    summary = rows[-1]
    assert summary["kind"] == "summary" and summary["accuracy_level"] == pytest.approx(0.92 - 0.02)
    assert [widths[key]["reaches_level"] for key in widths] == [False, True, True, True]
    # the B-spline family's cheapest width at the level is 4 (8.0 s); the MLP's only one is 64 (5.0 s)
    assert (summary["mlp_width"], summary["bspline_width"]) == (64, 4)
    assert summary["time_ratio"] == pytest.approx(8.0 / 5.0)
    report = images.target_report(rows)
    assert [entry["value"] for entry in report] == [pytest.approx(1.6), None]
    assert [entry["met"] for entry in report] == [True, None]


def test_a_cuda_summary_is_checked_against_the_gpu_goal():
    runs = [run("mlp", 16, 0, 1.0, 0.9), run("bspline", 4, 0, 1.7, 0.9)]
    report = images.target_report(images.equal_accuracy(runs, dataset="toy", tolerance=0.0, device_type="cuda"))
    assert report[0]["value"] is None and report[1]["value"] == pytest.approx(1.7) and report[1]["met"] is False


@pytest.fixture(scope="module")
def small_digits():
    data = load_digits(seed=0)
    return {key: value[:300] if key.startswith("train") else value[:100] for key, value in data.items()}


def test_a_run_trains_every_width_and_seed_and_summarizes(small_digits):
    widths = {"mlp": (8, 5), "bspline": (3,)}
    rows = images.run_images_benchmark("cpu", small_digits, dataset="digits", widths=widths, seeds=(0, 1), epochs=1,
                                       batch_size=64)
    runs = [row for row in rows if row["kind"] == "run"]
    # seed by seed, the families' widths in turn
    assert [(row["seed"], row["family"], row["width"]) for row in runs] == [
        (seed, family, width) for seed in (0, 1) for family, width in (("mlp", 8), ("bspline", 3), ("mlp", 5))]
    assert all(row["epoch_seconds"] > 0 and 0.0 <= row["test_accuracy"] <= 1.0 for row in runs)
    mlp_5 = {row["parameters"] for row in runs if row["family"] == "mlp" and row["width"] == 5}
    assert mlp_5 == {64 * 5 + 5 + 5 * 10 + 10}
    assert [row["kind"] for row in rows[len(runs):]] == ["paired"] * 4 + ["width"] * 3 + ["summary"]
    summary = rows[-1]
    assert summary["device_type"] == "cpu" and summary["dataset"] == "digits"
    # the chosen widths trained again, one seed at a time; the same steps give the same accuracy as in the sweep
    paired = [row for row in rows if row["kind"] == "paired"]
    chosen = {family: summary[f"{family}_width"] for family in images.FAMILIES}
    assert [(row["seed"], row["family"], row["width"]) for row in paired] == [
        (seed, family, chosen[family]) for seed in (0, 1) for family in images.FAMILIES]
    sweep = {(row["family"], row["width"], row["seed"]): row for row in runs}
    for row in paired:
        assert row["test_accuracy"] == sweep[(row["family"], row["width"], row["seed"])]["test_accuracy"]
    assert summary["time_ratio"] == pytest.approx(summary["bspline_epoch_seconds"] / summary["mlp_epoch_seconds"])


def test_the_summary_takes_its_times_from_the_paired_runs_of_the_chosen_widths():
    runs = [run("mlp", 16, 0, 1.0, 0.80), run("mlp", 64, 0, 4.0, 0.95), run("bspline", 8, 0, 12.0, 0.95)]
    rows = images.equal_accuracy(runs, dataset="toy", tolerance=0.0, device_type="cpu")
    paired = [{**run("mlp", 64, seed, seconds, 0.95), "kind": "paired"} for seed, seconds in ((0, 5.0), (1, 7.0))]
    paired += [{**run("bspline", 8, seed, seconds, 0.95), "kind": "paired"} for seed, seconds in ((0, 9.0), (1, 15.0))]
    summary = images.with_paired_times(rows, paired)[-1]
    assert (summary["mlp_epoch_seconds"], summary["bspline_epoch_seconds"]) == (6.0, 12.0)
    assert (summary["mlp_sweep_epoch_seconds"], summary["bspline_sweep_epoch_seconds"]) == (4.0, 12.0)
    assert summary["time_ratio"] == pytest.approx(2.0)
    # per seed 9 / 5 and 15 / 7: their quartiles
    assert summary["time_ratio_q25"] == pytest.approx(1.8 + 0.25 * (15 / 7 - 1.8))
    assert summary["time_ratio_q75"] == pytest.approx(1.8 + 0.75 * (15 / 7 - 1.8))
    assert rows[-1]["time_ratio"] == pytest.approx(3.0)  # the sweep's rows are left as they were
    with pytest.raises(ValueError,
                       match=r"paired: expected runs of the mlp model of width 64, got \[\('bspline', 8\)\]"):
        images.with_paired_times(rows, paired[2:])


@pytest.mark.parametrize("change,words", [
    ({"widths": {"mlp": (8,)}}, r"widths: expected a dict with the keys \('mlp', 'bspline'\)"),
    ({"widths": {"mlp": (8,), "bspline": ()}}, r"widths\['bspline'\]: expected a non-empty list of hidden widths"),
    ({"widths": {"mlp": (8,), "bspline": (0,)}}, r"widths\['bspline'\]\[0\]"),
    ({"seeds": ()}, "seeds: expected a non-empty list of seeds, got"),
    ({"tolerance": 1.5}, r"tolerance: expected an accuracy difference in \[0, 1\), got 1.5"),
    ({"epochs": 0}, "epochs"),
])
def test_bad_settings_are_named(small_digits, change, words):
    settings = {"widths": {"mlp": (8,), "bspline": (3,)}, "seeds": (0,), "epochs": 1, **change}
    with pytest.raises(ValueError, match=words):
        images.run_images_benchmark("cpu", small_digits, dataset="digits", **settings)


def test_images_must_come_flattened(small_digits):
    square = {**small_digits, "train_input": small_digits["train_input"].view(-1, 1, 8, 8)}
    with pytest.raises(ValueError, match=r"data\['train_input'\]: expected flattened images \[N, P\], got shape "
                                         r"\(300, 1, 8, 8\)"):
        images.run_images_benchmark("cpu", square, dataset="digits")
    with pytest.raises(ValueError, match="data: expected a dict with the keys"):
        images.run_images_benchmark("cpu", {"train_input": torch.zeros(2, 2)}, dataset="digits")


def test_the_command_writes_its_rows_and_targets(tmp_path, capsys):
    assert main(["bench", "images", "--quick", "--seeds", "0", "--epochs", "1", "--device", "cpu",
                 "--out-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "epoch time at equal test accuracy, B-spline KAN / MLP, CPU:" in printed
    (written,) = tmp_path.glob("images-cpu-*.json")
    result = json.loads(written.read_text())
    assert result["params"]["widths"] == {family: list(widths) for family, widths in images.QUICK["widths"].items()}
    assert result["params"]["seeds"] == [0] and result["params"]["epochs"] == 1
    assert result["params"]["triton_autotune"] == "all"
    assert sum(row["kind"] == "summary" for row in result["rows"]) == 1


def test_the_command_refuses_a_dataset_without_its_files(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "images", "--dataset", "mnist", "--no-write"])
    assert "--dataset mnist: expected --data-root, the folder holding its files, got none" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "images", "--seeds", "1", "1", "--no-write"])
    assert "--seeds: expected distinct seeds, got [1, 1]" in capsys.readouterr().err


def test_an_empty_data_root_names_the_files_to_place_there(tmp_path, capsys):
    assert main(["bench", "images", "--dataset", "fashion-mnist", "--data-root", str(tmp_path), "--no-write"]) == 1
    error = capsys.readouterr().err
    assert str(tmp_path) in error and "train-images-idx3-ubyte" in error
