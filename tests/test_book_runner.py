"""The notebook runner (kanlib.book.runner, `python -m kanlib run`) on small notebooks written here."""
from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

import nbformat
import pytest

from kanlib.__main__ import main
from kanlib.book.runner import (INJECTED_TAG, STAMP_TAG, NotebookError, NotebookFailed, RunStamp, cell_duration,
                                clean_volatile, find_notebooks, finish_executed, format_duration, notebook_stamp,
                                resolve_mode, round_seconds, run_notebooks, strip_run)

REPO = pathlib.Path(__file__).resolve().parents[1]


def write_notebook(path: pathlib.Path, body: str = "value = 2 * seed + 1\nprint('value', value)",
                   parameters: str = 'device = "auto"\nquick = True\nseed = 0', n_parameter_cells: int = 1):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    title = nbformat.v4.new_markdown_cell("# A test notebook\n\nIt checks the runner.")
    cells = [title]
    for _ in range(n_parameter_cells):
        cell = nbformat.v4.new_code_cell(parameters)
        cell.metadata["tags"] = ["parameters"]
        cells.append(cell)
    cells.append(nbformat.v4.new_code_cell("print('mode', 'quick' if quick else 'full', 'on', device)"))
    cells.append(nbformat.v4.new_code_cell(body))
    nb.cells = cells
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def outputs_text(nb) -> str:
    return "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs)


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """One notebook run once (a kernel start is slow), read back."""
    folder = tmp_path_factory.mktemp("run")
    source = write_notebook(folder / "src" / "01_first.ipynb")
    runs = run_notebooks([source], device="cpu", mode="quick", seed=3, output_dir=folder / "out", progress=None)
    return source, runs, nbformat.read(runs[0].output, as_version=4)


def test_run_writes_executed_copy_and_leaves_source(executed):
    source, runs, nb = executed
    assert runs[0].output.name == "01_first.ipynb" and runs[0].output != source
    assert not any(cell.get("outputs") for cell in nbformat.read(source, as_version=4).cells)
    text = outputs_text(nb)
    assert "value 7" in text, "the injected seed=3 reaches the code"
    assert "mode quick on cpu" in text
    assert runs[0].seconds > 0


def test_run_stamps_metadata_and_visible_cell(executed):
    _, runs, nb = executed
    stamp = RunStamp.from_metadata(nb.metadata)
    assert stamp == runs[0].stamp
    assert (stamp.device, stamp.mode) == ("cpu", "quick")
    assert stamp.commit is None or len(stamp.commit) == 40
    assert nb.metadata["kanlib"]["parameters"] == {"device": "cpu", "quick": True, "seed": 3}
    stamp_cells = [i for i, cell in enumerate(nb.cells) if STAMP_TAG in cell.metadata.get("tags", [])]
    assert stamp_cells == [1], "the stamp comes right after the title"
    assert "quick-mode run on cpu" in nb.cells[1].source and stamp.date in nb.cells[1].source
    assert stamp.duration_s > 0 and stamp.duration_s == round_seconds(stamp.duration_s)
    assert f"that took {format_duration(stamp.duration_s)}," in nb.cells[1].source, nb.cells[1].source


def test_run_keeps_each_code_cells_wall_time(executed):
    _, _, nb = executed
    for cell in nb.cells:
        seconds = cell_duration(cell)
        if cell.cell_type == "code":
            assert seconds is not None and seconds >= 0 and seconds == round_seconds(seconds), cell.metadata
        else:
            assert seconds is None, cell.metadata


def test_run_hides_injected_parameters_and_strips_volatile_metadata(executed):
    _, _, nb = executed
    injected = [cell for cell in nb.cells if INJECTED_TAG in cell.metadata.get("tags", [])]
    assert len(injected) == 1
    assert "remove-cell" in injected[0].metadata["tags"] and injected[0].id == INJECTED_TAG
    assert "papermill" not in nb.metadata
    for cell in nb.cells:
        assert not {"papermill", "execution"} & set(cell.metadata), cell.metadata
    assert "start_time" not in json.dumps(nb.metadata)


def test_rerun_of_an_executed_notebook_changes_only_content(executed, tmp_path):
    """Running the executed copy again gives the same notebook: no stamp or injected cell piles up."""
    _, runs, first = executed
    again = run_notebooks([runs[0].output], device="cpu", mode="quick", seed=3, output_dir=tmp_path, progress=None)
    second = nbformat.read(again[0].output, as_version=4)
    assert second.cells[1].source == again[0].stamp.to_markdown("01_first.ipynb"), "the stamp names this run's time"
    assert [cell.source for cell in second.cells[2:]] == [cell.source for cell in first.cells[2:]]
    assert len(second.cells) == len(first.cells)
    assert [cell.get("id") for cell in second.cells] == [cell.get("id") for cell in first.cells]
    assert outputs_text(second) == outputs_text(first)


def test_failing_notebook_names_cell_and_error_and_overwrites_nothing(tmp_path):
    good = write_notebook(tmp_path / "01_good.ipynb")
    bad = write_notebook(tmp_path / "02_bad.ipynb", body="raise ValueError('boom at step 4')")
    before = {path: path.read_bytes() for path in (good, bad)}
    with pytest.raises(NotebookFailed) as info:
        run_notebooks([good, bad], device="cpu", mode="quick", in_place=True, progress=None)
    error = info.value
    assert error.notebook == bad and error.ename == "ValueError" and "boom at step 4" in error.evalue
    assert "02_bad.ipynb" in str(error) and f"cell {error.cell_index}" in str(error)
    assert {path: path.read_bytes() for path in (good, bad)} == before, "in place: nothing replaced on failure"


def test_in_place_refuses_quick_over_full_unless_forced(tmp_path, monkeypatch):
    path = write_notebook(tmp_path / "01_ref.ipynb")
    nb = nbformat.read(path, as_version=4)
    nb.metadata["kanlib"] = {"run": {"device": "cuda", "device_name": "GPU", "mode": "full", "date": "2026-01-01",
                                     "commit": "0" * 40, "dirty": False}}
    nbformat.write(nb, path)
    before = path.read_bytes()
    with pytest.raises(NotebookError, match="full-mode.*01_ref.ipynb.*got mode 'quick'.*--force"):
        run_notebooks([path], device="cpu", mode="quick", in_place=True, progress=None)
    assert path.read_bytes() == before
    run_notebooks([path], device="cpu", mode="quick", in_place=True, force=True, progress=None)
    assert notebook_stamp(path).mode == "quick"


def test_cell_times_are_kept_rounded_and_the_rest_of_papermills_metadata_dropped():
    nb = nbformat.v4.new_notebook()
    nb.metadata["papermill"] = {"start_time": "x", "duration": 9.87654}
    timed = nbformat.v4.new_code_cell("1")
    timed.metadata.update({"papermill": {"duration": 1.23456, "start_time": "t"}, "tags": ["a"]})
    tiny = nbformat.v4.new_code_cell("2")
    tiny.metadata["papermill"] = {"duration": 0.000123456}
    skipped = nbformat.v4.new_code_cell("3")
    skipped.metadata["papermill"] = {"duration": None}
    text = nbformat.v4.new_markdown_cell("# T")
    text.metadata["papermill"] = {"duration": 0.5}
    nb.cells = [text, timed, tiny, skipped]
    stamp = RunStamp("cpu", "CPU", "quick", "2026-11-30", None, None, 9.88)
    finish_executed(nb, stamp, "01_t.ipynb", {"quick": True})
    assert timed.metadata == {"tags": ["a"], "kanlib": {"duration_s": 1.23}}
    assert cell_duration(tiny) == 0.000123 and cell_duration(skipped) is None and cell_duration(text) is None
    assert "papermill" not in nb.metadata and nb.metadata["kanlib"]["run"]["duration_s"] == 9.88
    assert "that took 9.9 s" in nb.cells[1].source


def test_strip_run_drops_cell_times_and_keeps_other_cell_metadata():
    nb = nbformat.v4.new_notebook()
    timed, other = nbformat.v4.new_code_cell("1"), nbformat.v4.new_code_cell("2")
    timed.metadata["kanlib"] = {"duration_s": 3.0}
    other.metadata["kanlib"] = {"duration_s": 3.0, "note": "kept"}
    nb.cells = [timed, other]
    strip_run(nb)
    assert "kanlib" not in timed.metadata and other.metadata["kanlib"] == {"note": "kept"}


def test_stamps_of_runs_before_times_were_recorded_load_and_say_so():
    old = {"kanlib": {"run": {"device": "cuda", "device_name": "NVIDIA H100", "mode": "full", "date": "2026-11-24",
                              "commit": "a" * 40, "dirty": False}}}
    stamp = RunStamp.from_metadata(old)
    assert stamp.duration_s is None
    assert stamp.describe() == ("a full-mode run on cuda (NVIDIA H100), executed 2026-11-24 at commit aaaaaaaaaa "
                                "(its times were not recorded)")
    old["kanlib"]["run"]["duration_s"] = 125.0
    assert RunStamp.from_metadata(old).describe() == (
        "a full-mode run on cuda (NVIDIA H100) that took 2 min 05 s, executed 2026-11-24 at commit aaaaaaaaaa")
    assert RunStamp.from_metadata(old).describe(duration=False) == (
        "a full-mode run on cuda (NVIDIA H100), executed 2026-11-24 at commit aaaaaaaaaa")


@pytest.mark.parametrize("seconds, text", [
    (0.4234, "0.42 s"), (1.04, "1.0 s"), (9.94, "9.9 s"), (42.4, "42 s"), (59.4, "59 s"), (59.6, "1 min 00 s"),
    (125.0, "2 min 05 s"), (3725.0, "1 h 02 min"),
])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize("seconds, rounded", [(1.23456, 1.23), (123.456, 123.0), (0.0123456, 0.0123), (4321.0, 4320.0)])
def test_round_seconds_keeps_three_significant_digits(seconds, rounded):
    assert round_seconds(seconds) == rounded


def test_clean_volatile_removes_timings():
    nb = nbformat.v4.new_notebook()
    nb.metadata["papermill"] = {"start_time": "x", "duration": 1.0}
    cell = nbformat.v4.new_code_cell("1")
    cell.metadata.update({"papermill": {"duration": 1.0}, "execution": {"iopub.status.busy": "t"}, "tags": ["a"]})
    nb.cells = [cell]
    clean_volatile(nb)
    assert "papermill" not in nb.metadata and cell.metadata == {"tags": ["a"]}


def test_resolve_mode():
    assert resolve_mode("quick", "cpu") == "quick" and resolve_mode("full", "cpu") == "full"
    assert resolve_mode("auto", "cpu") == "quick"
    with pytest.raises(ValueError, match="mode: expected one of .* got 'fast'"):
        resolve_mode("fast", "cpu")


@pytest.mark.parametrize("params, n_cells, match", [
    ('device = "auto"\nquick = True\nseed = 0', 0, "exactly one cell tagged 'parameters', got 0"),
    ('device = "auto"\nquick = True\nseed = 0', 2, "exactly one cell tagged 'parameters', got 2"),
])
def test_bad_notebooks_are_refused_before_running(tmp_path, params, n_cells, match):
    path = write_notebook(tmp_path / "01_x.ipynb", parameters=params, n_parameter_cells=n_cells)
    with pytest.raises(NotebookError, match=match):
        run_notebooks([path], device="cpu", mode="quick", output_dir=tmp_path / "out", progress=None)
    assert not (tmp_path / "out").exists()


def test_bad_arguments(tmp_path):
    path = write_notebook(tmp_path / "01_x.ipynb")
    with pytest.raises(NotebookError, match="expected an existing file"):
        run_notebooks([tmp_path / "02_missing.ipynb"], device="cpu", progress=None)
    with pytest.raises(NotebookError, match="expected a .ipynb file"):
        run_notebooks([tmp_path / "notes.txt"], device="cpu", progress=None)
    with pytest.raises(ValueError, match="device: expected one of .* got 'tpu'"):
        run_notebooks([path], device="tpu", progress=None)
    with pytest.raises(ValueError, match="output_dir: expected None with in_place=True"):
        run_notebooks([path], device="cpu", in_place=True, output_dir=tmp_path, progress=None)
    with pytest.raises(NotebookError, match="at least one notebook"):
        run_notebooks([], device="cpu", progress=None)
    (tmp_path / "02_broken.ipynb").write_text("{ not json")
    with pytest.raises(NotebookError, match="02_broken.ipynb: expected a Jupyter notebook"):
        run_notebooks([tmp_path / "02_broken.ipynb"], device="cpu", progress=None)


def test_find_notebooks_in_reading_order(tmp_path):
    for name in ("10_c.ipynb", "02_b.ipynb", "01_a.ipynb", "notes.ipynb", "1_x.ipynb"):
        (tmp_path / name).write_text("{}")
    assert [path.name for path in find_notebooks(tmp_path)] == ["01_a.ipynb", "02_b.ipynb", "10_c.ipynb"]
    with pytest.raises(NotebookError, match="expected a directory"):
        find_notebooks(tmp_path / "nope")


def test_cli_run_prints_a_line_per_notebook_and_fails_with_nonzero_exit(tmp_path, capsys):
    good = write_notebook(tmp_path / "01_good.ipynb")
    assert main(["run", str(good), "--device", "cpu", "--mode", "quick", "--output-dir", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "[1/1] 01_good.ipynb: done in" in out and (tmp_path / "o" / "01_good.ipynb").is_file()
    bad = write_notebook(tmp_path / "02_bad.ipynb", body="1 / 0")
    assert main(["run", str(bad), "--device", "cpu", "--output-dir", str(tmp_path / "o2")]) == 1
    err = capsys.readouterr().err
    assert "02_bad.ipynb" in err and "ZeroDivisionError" in err and "cell" in err
    with pytest.raises(SystemExit):
        main(["run", str(good), "--force"])
    assert "--force: expected together with --in-place" in capsys.readouterr().err


def test_in_place_keeps_notebooks_of_the_same_name_apart(tmp_path):
    first = write_notebook(tmp_path / "dupA" / "10_x.ipynb", body="print('from', 'A')")
    second = write_notebook(tmp_path / "dupB" / "10_x.ipynb", body="print('from', 'B')")
    run_notebooks([first, second], device="cpu", mode="quick", in_place=True, progress=None)
    assert "from A" in outputs_text(nbformat.read(first, as_version=4))
    assert "from B" in outputs_text(nbformat.read(second, as_version=4))


def test_two_notebooks_with_one_output_are_refused_before_running(tmp_path):
    first = write_notebook(tmp_path / "dupA" / "10_x.ipynb")
    second = write_notebook(tmp_path / "dupB" / "10_x.ipynb")
    out = tmp_path / "out"
    with pytest.raises(NotebookError) as info:
        run_notebooks([first, second], device="cpu", mode="quick", output_dir=out, progress=None)
    assert all(str(path) in str(info.value) for path in (first, second, out / "10_x.ipynb")), info.value
    assert not out.exists()
    with pytest.raises(NotebookError, match="10_x.ipynb.*10_x.ipynb"):
        run_notebooks([first, first], device="cpu", mode="quick", in_place=True, progress=None)


@pytest.mark.parametrize("where, problem", [
    ("a_file", "which exists and is not a folder"),
    ("a_file/sub", "cannot be created"),
])
def test_an_unusable_output_folder_is_refused_before_running(tmp_path, capsys, where, problem):
    path = write_notebook(tmp_path / "01_x.ipynb", body=f"open({str(tmp_path / 'ran')!r}, 'w').close()")
    (tmp_path / "a_file").write_text("not a folder")
    out = tmp_path / where
    with pytest.raises(ValueError, match=problem):
        run_notebooks([path], device="cpu", mode="quick", output_dir=out, progress=None)
    assert main(["run", str(path), "--device", "cpu", "--mode", "quick", "--output-dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(out) in err and problem in err, err
    assert not (tmp_path / "ran").exists(), "nothing ran"


def test_a_read_only_output_folder_is_refused_before_running(tmp_path, monkeypatch):
    path = write_notebook(tmp_path / "01_x.ipynb")
    out = tmp_path / "out"
    out.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: pathlib.Path(p) != out and real_access(p, mode, **kw))
    with pytest.raises(ValueError, match=f"{out}.*is not writable"):
        run_notebooks([path], device="cpu", mode="quick", output_dir=out, progress=None)


def test_in_place_refuses_read_only_notebooks_before_running(tmp_path, monkeypatch):
    path = write_notebook(tmp_path / "01_x.ipynb")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: pathlib.Path(p) != path and real_access(p, mode, **kw))
    with pytest.raises(NotebookError, match=f"expected notebooks that can be replaced, got read-only {path}"):
        run_notebooks([path], device="cpu", mode="quick", in_place=True, progress=None)


def test_outputs_that_cannot_be_written_at_the_end_are_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    out = tmp_path / "out"
    path = write_notebook(tmp_path / "01_x.ipynb", body=f"open({str(out)!r}, 'w').close()  # the folder goes")
    with pytest.raises(NotebookError, match="could not write") as info:
        run_notebooks([path], device="cpu", mode="quick", output_dir=out, progress=None)
    [kept] = list((tmp_path / "tmp").iterdir())
    assert str(kept) in str(info.value) and len(str(info.value).splitlines()) == 1
    [executed_copy] = list(kept.rglob("01_x.ipynb"))
    assert RunStamp.from_metadata(nbformat.read(executed_copy, as_version=4).metadata).mode == "quick"


def test_failing_cell_is_numbered_as_in_the_users_notebook(tmp_path):
    """The injected parameters cell, and a previous run's stamp and parameters, do not shift the number."""
    path = write_notebook(tmp_path / "01_bad.ipynb", body="raise ValueError('boom')")
    nb = nbformat.read(path, as_version=4)
    stamp = nbformat.v4.new_markdown_cell("> **Run shown:** an older run")
    stamp.metadata["tags"] = [STAMP_TAG]
    injected = nbformat.v4.new_code_cell("seed = 5")
    injected.metadata["tags"] = [INJECTED_TAG]
    nb.cells[1:1] = [stamp]
    nb.cells[3:3] = [injected]
    nbformat.write(nb, path)
    assert nb.cells[5].source == "raise ValueError('boom')"
    with pytest.raises(NotebookFailed) as info:
        run_notebooks([path], device="cpu", mode="quick", output_dir=tmp_path / "out", progress=None)
    assert info.value.cell_index == 5
    assert "cell 5 " in str(info.value) and "raise ValueError('boom')" in str(info.value), str(info.value)


def test_a_notebook_without_a_language_is_named(tmp_path):
    path = write_notebook(tmp_path / "01_x.ipynb")
    nb = nbformat.read(path, as_version=4)
    nb.metadata.pop("kernelspec")
    nbformat.write(nb, path)
    with pytest.raises(NotebookError, match=f"{path}: expected .*language.*metadata"):
        run_notebooks([path], device="cpu", mode="quick", output_dir=tmp_path / "out", progress=None)


def test_sigterm_removes_the_staging_folders(tmp_path):
    tmp, marker = tmp_path / "tmp", tmp_path / "started"
    tmp.mkdir()
    path = write_notebook(tmp_path / "01_sleep.ipynb",
                          body=f"import time\nopen({str(marker)!r}, 'w').close()\ntime.sleep(120)")
    child = subprocess.Popen([sys.executable, "-m", "kanlib", "run", str(path), "--device", "cpu", "--mode", "quick",
                              "--output-dir", str(tmp_path / "out")], cwd=REPO, env={**os.environ, "TMPDIR": str(tmp)},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), child.communicate(timeout=5) if child.poll() is not None else "not started"
        assert list(tmp.glob("kanlib-*")), "the run stages in TMPDIR"
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 128 + signal.SIGTERM, err
    assert "runner.py" not in err, "no traceback of the run (the stopped kernel may print its own)"
    assert list(tmp.glob("kanlib-*")) == []


def test_run_restores_the_previous_sigterm_handler(tmp_path):
    def previous(signum, frame):
        pass

    old = signal.signal(signal.SIGTERM, previous)
    try:
        path = write_notebook(tmp_path / "01_x.ipynb")
        run_notebooks([path], device="cpu", mode="quick", output_dir=tmp_path / "out", progress=None)
        assert signal.getsignal(signal.SIGTERM) is previous
    finally:
        signal.signal(signal.SIGTERM, old)


@pytest.mark.parametrize("arguments, usage", [
    (["run", "x.ipynb", "--force"], "usage: python -m kanlib run "),
])
def test_cross_option_errors_show_the_subcommands_usage(arguments, usage, capsys):
    with pytest.raises(SystemExit):
        main(arguments)
    assert capsys.readouterr().err.startswith(usage)
