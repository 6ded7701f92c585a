"""kanlib.book.gpu: the GPU reference run rehearsed end to end on the CPU, its deadline and failure handling,
the import of what comes back, and the choice of wheels to carry (pip stubbed: no network in tests)."""
import json
import pathlib
import subprocess
import sys
import tarfile

import pytest

from kanlib.__main__ import main
from kanlib.book import gpu
from kanlib.book.paths import PROJECT_ROOT, RESULTS_PATH


def test_the_rehearsal_runs_every_step_end_to_end(tmp_path):
    out = tmp_path / "out"
    before = sorted(RESULTS_PATH.iterdir())
    done = subprocess.run([sys.executable, "-m", "kanlib", "gpu-reference", "--rehearse", "--out", str(out)],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900)
    summary = json.loads((out / "summary.json").read_text())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert [step["status"] for step in summary["steps"]] == ["passed"] * 12, summary["steps"]
    assert sorted(path.name for path in out.iterdir()) == ["log.txt", "results.tar.gz", "summary.json"]
    with tarfile.open(out / "results.tar.gz") as archive:
        names = archive.getnames()
    assert sorted(name.split("-")[0] for name in names) == ["families", "images", "kernel", "layer", "prune", "quant"]
    assert ({target["benchmark"] for target in summary["targets"]}
            == {"families", "images", "kernel", "layer", "prune", "quant"})
    assert "rehearsal in" in done.stdout and "bench kernel (G = 3): passed" in done.stdout
    assert "operators by self host time" in (out / "log.txt").read_text()  # the profile's table
    assert sorted(RESULTS_PATH.iterdir()) == before, "a rehearsal leaves the checkout's results alone"
    # and what a rehearsal packs is refused by the import: it was not measured on a GPU
    assert main(["gpu-import", str(out)]) == 1


def test_a_step_that_fails_or_hangs_is_recorded_and_the_next_runs(tmp_path, capsys):
    good = tmp_path / "good.json"
    good.write_text("{}")
    steps = [gpu.Step("fails", ("json.tool", str(tmp_path / "missing.json")), 30),
             gpu.Step("hangs", ("http.server", "0", "--bind", "127.0.0.1"), 3),
             gpu.Step("passes", ("json.tool", str(good)), 30),
             gpu.Step("too late", ("json.tool", str(good)), 30)]
    summary = gpu.run_reference(tmp_path / "out", rehearse=True, steps=steps, deadline_s=25)
    statuses = [step["status"] for step in summary["steps"]]
    assert statuses[0] == "failed" and statuses[1].startswith("timed out") and statuses[2] == "passed"
    assert statuses[3] == "passed" or statuses[3].startswith("skipped")
    log = (tmp_path / "out" / "log.txt").read_text()
    assert "===== fails:" in log and "===== passes: passed" in log
    assert "fails: failed" in capsys.readouterr().out


def test_the_deadline_skips_what_cannot_start(tmp_path):
    good = tmp_path / "good.json"
    good.write_text("{}")
    late = [gpu.Step("late", ("json.tool", str(good)), 30)]
    summary = gpu.run_reference(tmp_path / "out", rehearse=True, steps=late, deadline_s=5)
    assert summary["steps"][0]["status"].startswith("skipped")


def packed_run(folder, results):
    """A folder as run_reference packs it, holding ``results`` ({file name: result dict})."""
    folder.mkdir()
    with tarfile.open(folder / "results.tar.gz", "w:gz") as archive:
        for name, result in results.items():
            path = folder / name
            path.write_text(json.dumps(result))
            archive.add(path, arcname=name)
    return folder


@pytest.fixture
def cuda_result():
    result = json.loads(sorted(RESULTS_PATH.glob("layer-*.json"))[-1].read_text())
    result["device"]["type"] = "cuda"
    return result


def test_import_puts_a_gpu_run_in_place(tmp_path, cuda_result):
    names = ["kernel-cuda-20261130T000000.000000Z.json", "layer-cuda-20261130T000001.000000Z.json"]
    folder = packed_run(tmp_path / "back", dict.fromkeys(names, cuda_result))
    results = tmp_path / "results"
    results.mkdir()
    written = gpu.import_reference(folder, results_dir=results)
    assert sorted(path.name for path in written) == names
    assert json.loads((results / names[0]).read_text()) == cuda_result


@pytest.mark.parametrize("spoil,words", [
    ("cpu result", "layer-cpu.json: expected a result measured on cuda, got device type 'cpu'"),
    ("missing archive", "expected the results.tar.gz a GPU run packs, found none"),
])
def test_import_refuses_what_is_not_a_gpu_run_and_writes_nothing(tmp_path, cuda_result, spoil, words):
    cpu_result = {**cuda_result, "device": {**cuda_result["device"], "type": "cpu"}}
    folder = packed_run(tmp_path / "back", {"kernel-cuda.json": cuda_result, "layer-cpu.json": cpu_result})
    if spoil == "missing archive":
        (folder / "results.tar.gz").unlink()
    results = tmp_path / "results"
    results.mkdir()
    with pytest.raises(gpu.GPUImportError, match=words):
        gpu.import_reference(folder, results_dir=results)
    assert list(results.iterdir()) == []


def fake_pip(downloads):
    """A stand-in for subprocess.run that writes the named wheel files where pip would."""
    def run(command, **kwargs):
        folder = pathlib.Path(command[command.index("--dest" if "download" in command else "--wheel-dir") + 1])
        for name in (downloads if "download" in command else ["kanlib-0.1.0-py3-none-any.whl"]):
            (folder / name).write_bytes(b"wheel")
        return subprocess.CompletedProcess(command, 0, "", "")
    return run


def test_wheels_leave_out_what_the_gpu_image_has(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu.subprocess, "run", fake_pip([
        "pykan-0.2.8-py3-none-any.whl", "papermill-2.7.0-py3-none-any.whl", "nbformat-5.11.1-py3-none-any.whl",
        "numpy-2.5.2-cp312-cp312-manylinux_2_28_x86_64.whl", "packaging-26.4-py3-none-any.whl",
        "python_dateutil-4.0.0-py3-none-any.whl", "pyzmq-27.3.0-cp312-abi3-manylinux_2_28_x86_64.whl",
        "nvidia_cublas_cu12-12.8.4.1-py3-none-manylinux_2_27_x86_64.whl",
        "nvidia_cudnn_cu12-9.10.2.21-py3-none-manylinux_2_27_x86_64.whl"]))
    monkeypatch.setattr(gpu, "_tree_bytes", lambda: 1000)
    wheels = gpu.download_wheels(tmp_path / "whl")
    names = sorted(wheel.name.split("-")[0] for wheel in wheels)
    assert names == ["kanlib", "nbformat", "papermill", "pykan", "pyzmq"]


def test_wheels_refuse_two_versions_and_a_tree_that_would_not_fit(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu, "_tree_bytes", lambda: 1000)
    monkeypatch.setattr(gpu.subprocess, "run", fake_pip(["nbformat-5.11.1-py3-none-any.whl",
                                                         "nbformat-5.10.0-py3-none-any.whl"]))
    with pytest.raises(RuntimeError, match=r"one wheel of each package .* several of \['nbformat'\]"):
        gpu.download_wheels(tmp_path / "a")
    monkeypatch.setattr(gpu.subprocess, "run", fake_pip(["nbformat-5.11.1-py3-none-any.whl"]))
    monkeypatch.setattr(gpu, "_tree_bytes", lambda: gpu.TREE_LIMIT_BYTES)
    with pytest.raises(RuntimeError, match="a GPU machine receives at most 64 MiB"):
        gpu.download_wheels(tmp_path / "b")


def test_the_gpu_run_needs_a_gpu_unless_rehearsed(capsys, monkeypatch):
    monkeypatch.setattr("kanlib.__main__._cuda_available", lambda: False)
    with pytest.raises(SystemExit):
        main(["gpu-reference", "--out", "unused"])
    assert "expected a CUDA device for the GPU reference run, got none; --rehearse" in capsys.readouterr().err


def test_the_gpu_command_starts_where_the_notebook_packages_are_not_installed_yet():
    """On a bare GPU image the wheels are installed by the run itself, after the command line was read."""
    blocked = ("nbformat", "papermill", "nbclient", "myst_nb", "kan", "flashkan", "inkan")
    script = ("import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in blocked)
              + "from kanlib.__main__ import build_parser\n"
              + "args = build_parser().parse_args(['gpu-reference', '--rehearse', '--out', 'unused'])\n"
              + "print(args.handler.__name__)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "gpu" in done.stdout


def write_probe_wheel(folder):
    """A one-module wheel: ``python -m kanlibprobe`` prints a line, if the module was installed and found."""
    import zipfile

    folder.mkdir()
    wheel = folder / "kanlibprobe-0.1-py3-none-any.whl"
    info = "kanlibprobe-0.1.dist-info"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("kanlibprobe.py", "print('probe installed and found')\n")
        archive.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: kanlibprobe\nVersion: 0.1\n")
        archive.writestr(f"{info}/WHEEL",
                         "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr(f"{info}/RECORD", "")
    return folder


def test_carried_wheels_are_installed_for_the_steps(tmp_path):
    wheels = write_probe_wheel(tmp_path / "whl")
    summary = gpu.run_reference(tmp_path / "out", rehearse=True, steps=[gpu.Step("probe", ("kanlibprobe",), 60)],
                                wheels=wheels)
    assert [step["status"] for step in summary["steps"]] == ["passed", "passed"], summary["steps"]
    assert "probe installed and found" in (tmp_path / "out" / "log.txt").read_text()


def test_on_a_gpu_the_kernel_figures_come_one_process_per_grid_and_the_tests_tune_one_configuration(tmp_path):
    steps = gpu.reference_steps(rehearse=False, results_dir=tmp_path)
    names = [step.name for step in steps]
    assert names[:2] == ["cuda tests", "cuda tests (local-support and edge-sparse kernels)"]
    assert names[-1] == "bench quant"
    assert [name for name in names if name.startswith("bench kernel")] == [
        f"bench kernel (G = {grid})" for grid in (5, 50)]
    # the layer's grid sweep in one process: its targets compare G = 100 and 200 with G = 50 of the same run
    layer, = (step for step in steps if step.name.startswith("bench layer"))
    assert layer.args[layer.args.index("--grid") + 1:][:4] == ("5", "50", "100", "200")
    assert "bench prune" in names and [name for name in names if name.startswith("profile layer")] == [
        "profile layer (G = 5)", "profile layer (G = 50)"]
    for step in steps:
        one_configuration = step.args[0] == "pytest" or step.name in ("bench images", "bench quant")
        assert (step.env == {"KANLIB_TRITON_AUTOTUNE": "first"}) == one_configuration, step
        if step.args[:2] == ("kanlib", "profile"):
            assert "cuda" in step.args
        elif step.args[0] != "pytest":
            assert step.args[:2] == ("kanlib", "bench") and "cuda" in step.args and str(tmp_path) in step.args
    assert sum(step.timeout_s for step in steps) >= gpu.DEADLINE_S, "the deadline, not the steps, bounds the run"


def test_a_rehearsal_gives_the_same_steps_more_time_each():
    """On the CPU the steps compile their kernels in fresh processes: each gets a multiple of its GPU budget (one
    grid size where the GPU run has two)."""
    on_gpu = [step for step in gpu.reference_steps(rehearse=False, results_dir=pathlib.Path("results"))
              if not step.name.endswith("(G = 50)")]
    rehearsal = gpu.reference_steps(rehearse=True, results_dir=pathlib.Path("results"))
    assert [step.name for step in rehearsal] == [step.name.replace("5, 50, 100, 200", "3").replace("G = 5", "G = 3")
                                                 for step in on_gpu]
    assert gpu.REHEARSAL_TIMEOUT_FACTOR > 1
    assert [step.timeout_s for step in rehearsal] == [gpu.REHEARSAL_TIMEOUT_FACTOR * step.timeout_s for step in on_gpu]
