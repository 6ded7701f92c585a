"""The quantization benchmark and its command line, on tiny settings."""
import json

import pytest

from kanlib.__main__ import main
from kanlib.bench import quant

TINY = {"bits": (8, 4), "granularities": ("channel",), "calibrations": ("minmax",), "table_bits": (0, 3),
        "width": 16, "batch": 32, "train_steps": 16, "qat_steps": 4}


def test_rows_and_targets():
    rows = quant.run_quant_benchmark("cpu", quick=True, repeat=2, warmup=1, **TINY)
    accuracy = [r for r in rows if r["kind"] == "accuracy"]
    # per task: the float row, bits x table_bits PTQ rows, bits x table_bits QAT rows
    assert len(accuracy) == 2 * (1 + 2 * 2 + 2 * 2)
    assert {r["method"] for r in accuracy} == {"float", "ptq", "qat"}
    digits = [r for r in accuracy if r["task"] == "digits"]
    assert all(0 <= r["value"] <= 100 for r in digits)
    ptq8 = next(r for r in digits if r["method"] == "ptq" and r["bits"] == 8 and r["table_bits"] == 0)
    assert ptq8["size_ratio"] == ptq8["float_size_bytes"] / ptq8["size_bytes"] > 1
    assert ptq8["bitops_ratio"] > 1
    inference = {r["candidate"]: r for r in rows if r["kind"] == "inference"}
    assert set(inference) == {"float", "int8_weights", "table8", "table3"}
    assert inference["float"]["ratio_to_float"] == 1.0
    assert {r["model"] for r in rows if r["kind"] == "training"} == {"mlp", "kan_float", "kan_qat"}
    report = quant.target_report(rows)
    assert [t["target"] for t in report] == list(quant.TARGETS)
    assert all(t["value"] is not None and t["met"] in (True, False) for t in report)
    assert all(t["value"] is None for t in quant.target_report([]))


def test_the_kans_train_on_a_fixed_uniform_grid(monkeypatch):
    """With pykan's grid updates every input gets its own grid and a table layer one table per input: the
    benchmark's 8-bit table would then outweigh the float model."""
    trained = []

    def recording_fit(model, data, **kwargs):
        result = fit(model, data, **kwargs)
        trained.append(model)
        return result

    fit = quant.fit
    monkeypatch.setattr(quant, "fit", recording_fit)
    rows = quant.run_quant_benchmark("cpu", quick=True, repeat=1, warmup=0, **{**TINY, "bits": (8,)})
    kans = [model for model in trained if hasattr(model, "update_grid")]
    assert kans and all(layer.is_uniform() for model in kans for layer in model.layers)
    table = next(r for r in rows if r["kind"] == "accuracy" and r["task"] == "digits" and r["method"] == "ptq"
                 and r["table_bits"] == 3)
    assert table["size_ratio"] > 1


def test_bad_settings():
    with pytest.raises(ValueError, match="unknown settings"):
        quant.run_quant_benchmark("cpu", quick=True, depth=3)
    with pytest.raises(ValueError, match="tasks must be"):
        quant.run_quant_benchmark("cpu", quick=True, tasks=("mnist",))


def test_command_line_writes_results(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(quant, "QUICK", {**quant.QUICK, **TINY})
    assert main(["bench", "quant", "--device", "cpu", "--quick", "--repeat", "2", "--warmup", "1",
                 "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "targets:" in out and "digits model size ratio at 8 bits" in out
    written = list(tmp_path.glob("quant-cpu-*.json"))
    assert len(written) == 1
    result = json.loads(written[0].read_text())
    assert result["benchmark"] == "quant" and result["params"]["quick"] is True
    assert result["device"]["type"] == "cpu"
