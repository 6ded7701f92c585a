"""kanlib.bench.results: result files written, read back and printed."""
import datetime
import json
import platform
import re

import numpy as np
import pytest
import torch

from kanlib.bench import results as bench_results
from kanlib.bench import timing as bench_timing

MIB = 2**20


def make_rows():
    mlp, kan = bench_timing.Timing.from_samples([1, 2, 4]), bench_timing.Timing.from_samples([2, 3])
    return [
        {"layer": "mlp", "batch": 64, **mlp.as_dict(), "peak_bytes": 3 * MIB},
        {"layer": "fastkan", "batch": np.int64(64), **kan.as_dict(), "speedup": 0.5},
    ]


def test_write_then_load_round_trip(tmp_path):
    params = {"sizes": [64, 128], "quick": True, "seed": 0}
    before = datetime.datetime.now(datetime.timezone.utc)
    path = bench_results.write_results("layer-sweep", params, make_rows(), "cpu", out_dir=tmp_path / "results")

    assert path.parent == tmp_path / "results"
    assert re.fullmatch(r"layer-sweep-cpu-\d{8}T\d{6}\.\d{6}Z\.json", path.name)
    (result,) = bench_results.load_results(tmp_path / "results")
    assert result == json.loads(path.read_text())
    assert tuple(result) == bench_results.RESULT_KEYS
    assert result["benchmark"] == "layer-sweep"
    assert result["params"] == params
    assert result["rows"][1]["batch"] == 64
    assert result["rows"][0]["median_ms"] == 2.0 and result["rows"][0]["q75_ms"] == 3.0
    created = datetime.datetime.fromisoformat(result["created_utc"])
    assert created.utcoffset() == datetime.timedelta(0)
    assert before <= created <= datetime.datetime.now(datetime.timezone.utc)
    device = result["device"]
    assert device["type"] == "cpu"
    assert isinstance(device["name"], str) and device["name"]
    assert device["cpu_count"] >= 1
    assert device["torch"] == torch.__version__
    assert device["cuda"] == torch.version.cuda
    assert device["python"] == platform.python_version()
    assert device["triton"] is None or isinstance(device["triton"], str)
    assert set(result["git"]) == {"commit", "dirty"}


def test_relative_out_dir_is_taken_from_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = bench_results.write_results("probe", {}, make_rows(), torch.device("cpu"), out_dir="out")
    assert path.parent == tmp_path / "out"
    assert len(bench_results.load_results("out")) == 1


@pytest.mark.parametrize(
    "row, message",
    [
        ({"median_ms": float("nan"), "q25_ms": 1.0, "q75_ms": 1.0}, r"rows\[0\]\['median_ms'\].*finite"),
        ({"time_ms": 1.0}, r"rows\[0\]\['time_ms'\].*<prefix>median_ms"),
        ({"kan_median_ms": 1.0}, r"missing \['kan_q25_ms', 'kan_q75_ms'\]"),
        ({"sizes": [1, 2]}, r"rows\[0\]\['sizes'\].*single figure"),
        ({"loss": torch.ones(3)}, r"rows\[0\]\['loss'\].*shape \(3,\)"),
    ],
)
def test_write_results_rejects_rows_that_are_not_figures(tmp_path, row, message):
    with pytest.raises((ValueError, TypeError), match=message):
        bench_results.write_results("bad", {}, [row], "cpu", out_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_load_results_names_the_malformed_file(tmp_path):
    bench_results.write_results("fine", {}, make_rows(), "cpu", out_dir=tmp_path)
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="broken.json"):
        bench_results.load_results(tmp_path)
    (tmp_path / "broken.json").write_text(json.dumps({"benchmark": "x", "rows": []}))
    missing = r"broken.json.*missing \['params', 'device', 'git', 'created_utc'\]"
    with pytest.raises(ValueError, match=missing):
        bench_results.load_results(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        bench_results.load_results(tmp_path / "nowhere")


def test_format_table_aligns_and_formats_by_column_name():
    rows = [
        {"layer": "mlp", "median_ms": 0.012345, "speedup": 1.0, "peak_bytes": 3 * MIB, "n": 30},
        {"layer": "fastkan", "median_ms": 123.456, "speedup": 2.346, "peak_bytes": 1536},
        {"layer": "efficient-kan", "median_ms": 9.996, "speedup": None, "peak_bytes": np.int64(5 * MIB), "n": 7},
    ]
    expected = (
        "layer          median_ms  speedup   peak_bytes   n\n"
        "-------------  ---------  -------  -----------  --\n"
        "mlp               0.0123     1.00     3.00 MiB  30\n"
        "fastkan              123     2.35  0.00146 MiB   -\n"
        "efficient-kan       10.0        -     5.00 MiB   7"
    )
    assert bench_results.format_table(rows, ["layer", "median_ms", "speedup", "peak_bytes", "n"]) == expected
    assert bench_results.format_table(rows) == expected
    with pytest.raises(KeyError, match="'mean_ms'"):
        bench_results.format_table(rows, ["layer", "mean_ms"])
