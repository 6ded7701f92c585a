"""kanlib.__main__: what every benchmark command checks before it measures."""
import pytest

from kanlib.__main__ import main

COMMANDS = {
    "layer": ("kanlib.__main__.run_layer_benchmark",
              ["bench", "layer", "--device", "cpu", "--batch", "4", "--width", "2", "--grid", "3", "--skip-pykan"]),
    "kernel": ("kanlib.bench.kernel.run_kernel_benchmark",
               ["bench", "kernel", "--device", "cpu", "--batch", "4", "--width", "2", "--grid", "3", "--skip-pykan"]),
    "quant": ("kanlib.bench.quant.run_quant_benchmark", ["bench", "quant", "--device", "cpu", "--quick"]),
    "workflow": ("kanlib.bench.workflow.run_workflow_benchmark", ["bench", "workflow", "--device", "cpu", "--quick"]),
    "families": ("kanlib.bench.families.run_families_benchmark",
                 ["bench", "families", "--device", "cpu", "--batch", "4", "--width", "2", "--grid", "3"]),
}


@pytest.mark.parametrize("benchmark", sorted(COMMANDS))
def test_every_benchmark_refuses_an_out_dir_that_is_a_file_before_measuring(benchmark, tmp_path, monkeypatch,
                                                                            capsys):
    def not_measured(*args, **kwargs):
        raise AssertionError("measured although the results could not be written")

    target, argv = COMMANDS[benchmark]
    monkeypatch.setattr(target, not_measured)
    out = tmp_path / "a_file"
    out.write_text("not a folder")
    assert main([*argv, "--out-dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"got {out}, which exists and is not a folder" in err, err
