"""Execute the book's notebooks with papermill, stamp each run with its times and strip the rest of what changes.

    results = run_notebooks(find_notebooks(), device="auto", mode="auto")       # into _build/executed/
    run_notebooks([path], device="cuda", mode="full", in_place=True)           # the reference run

A run injects ``device``, ``quick`` and ``seed`` into the cell tagged ``parameters``. The executed notebook
carries a stamp (device, mode, date, git commit, wall time) in ``metadata.kanlib.run`` and in a markdown cell
right after the title; each executed code cell keeps its wall time in ``metadata.kanlib.duration_s``. In-place
runs write nothing until every notebook has run. Where the outputs go is checked before anything runs; an
output that still cannot be written leaves the executed copies in a folder it names.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import pathlib
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ..bench.provenance import device_info, git_commit, git_dirty
from ..checks import check_output_dir, resolve_device
from .paths import EXECUTED_DIR, NOTEBOOKS_DIR, PROJECT_ROOT

if TYPE_CHECKING:  # imported where used, so that the command line builds where nbformat is not installed yet
    import nbformat

MODES = ("auto", "quick", "full")
DEVICES = ("auto", "cpu", "cuda")
STAMP_TAG = "kanlib-run-stamp"
INJECTED_TAG = "injected-parameters"
HIDDEN_TAG = "remove-cell"
_RUN_TAGS = {STAMP_TAG, INJECTED_TAG}
KERNEL_NAME = "python3"
_VOLATILE_NOTEBOOK_METADATA = ("papermill",)
_VOLATILE_CELL_METADATA = ("papermill", "execution", "ExecuteTime", "collapsed", "scrolled")
DURATION_KEY = "duration_s"  # in a code cell's metadata.kanlib: its wall time in the run shown, in seconds


class NotebookError(RuntimeError):
    """A notebook that cannot be run: missing, malformed, failing, or protected from overwriting."""


class NotebookFailed(NotebookError):
    """A cell raised while the notebook ran; names the notebook, the cell and the error.

    cell_index counts the cells of the notebook as the user has it; None is the parameters cell papermill injected.
    """

    def __init__(self, notebook: pathlib.Path, cell_index: int | None, source: str, ename: str, evalue: str):
        self.notebook, self.cell_index, self.source, self.ename, self.evalue = (
            notebook, cell_index, source, ename, evalue)
        first_line = source.strip().splitlines()[0] if source.strip() else ""
        cell = "the injected parameters cell" if cell_index is None else f"cell {cell_index}"
        super().__init__(f"{notebook.name}: {cell} ({first_line!r}) raised {ename}: {evalue}")


class NotebookNotWritten(NotebookError):
    """An executed notebook that could not be written where it goes; the executed copies are left in `kept`."""

    def __init__(self, output: pathlib.Path, error: OSError, kept: pathlib.Path):
        self.output, self.kept = output, kept
        super().__init__(f"{output}: could not write the executed notebook ({error}); "
                         f"the executed notebooks are kept in {kept}")


@dataclasses.dataclass(frozen=True)
class RunStamp:
    """Which run a notebook shows: device type and name, mode, UTC date, git commit, whether it was dirty, and
    how long the notebook took (seconds; None for notebooks run before the runner recorded it)."""

    device: str
    device_name: str
    mode: str
    date: str
    commit: str | None
    dirty: bool | None
    duration_s: float | None = None

    def describe(self, *, duration: bool = True) -> str:
        """One sentence: mode, device, wall time (unless `duration` is False), date and commit."""
        commit = self.commit[:10] if self.commit else "unknown commit"
        dirty = " with uncommitted changes" if self.dirty else ""
        run = f"a {self.mode}-mode run on {self.device} ({self.device_name})"
        when = f"executed {self.date} at commit {commit}{dirty}"
        if not duration:
            return f"{run}, {when}"
        if self.duration_s is None:
            return f"{run}, {when} (its times were not recorded)"
        return f"{run} that took {format_duration(self.duration_s)}, {when}"

    def to_markdown(self, notebook_name: str) -> str:
        return (f"> **Run shown:** {self.describe()}. Re-run it with "
                f"`python -m kanlib run notebooks/{notebook_name}`.")

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> RunStamp | None:
        run = metadata.get("kanlib", {}).get("run")
        if not run:
            return None
        return cls(**{field.name: run.get(field.name) for field in dataclasses.fields(cls)})


def round_seconds(seconds: float) -> float:
    """`seconds` to three significant digits (0.0123, 1.23, 123.0): what a reader can use, less churn."""
    return float(f"{seconds:.3g}")


def format_duration(seconds: float) -> str:
    """A wall time for readers: '0.42 s', '3.1 s', '42 s', '2 min 05 s', '1 h 02 min'."""
    if seconds < 1:
        return f"{seconds:.2f} s"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 59.5:
        return f"{seconds:.0f} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def recorded_duration(metadata: dict[str, Any]) -> float | None:
    """The wall time a code cell's metadata records for the run shown (seconds), None when there is none."""
    seconds = (metadata or {}).get("kanlib", {}).get(DURATION_KEY)
    return float(seconds) if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) else None


def cell_duration(cell: nbformat.NotebookNode) -> float | None:
    """The wall time a code cell took in the run shown (seconds), None when it was not recorded."""
    return recorded_duration(cell.get("metadata", {}))


@dataclasses.dataclass(frozen=True)
class NotebookRun:
    """One executed notebook: where it came from, where it went, how long it took."""

    source: pathlib.Path
    output: pathlib.Path
    seconds: float
    stamp: RunStamp


def find_notebooks(folder: str | os.PathLike[str] = NOTEBOOKS_DIR) -> list[pathlib.Path]:
    """The book's notebooks, ``NN_topic.ipynb`` in reading order."""
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise NotebookError(f"notebook folder: expected a directory, got {str(folder)!r}")
    return sorted(path for path in folder.glob("[0-9][0-9]_*.ipynb") if path.is_file())


def resolve_mode(mode: str, device: str) -> str:
    """'quick' or 'full': 'auto' means full on a GPU, quick on a CPU."""
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    if mode != "auto":
        return mode
    return "full" if resolve_device(device).type == "cuda" else "quick"


def make_stamp(device: str, mode: str) -> RunStamp:
    """The stamp for a run on `device` ('cpu', 'cuda', 'auto') in `mode` ('quick' or 'full'), dated today (UTC)."""
    resolved = resolve_device(device)
    today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    return RunStamp(resolved.type, device_info(resolved)["name"], mode, today, git_commit(), git_dirty())


def read_notebook(path: pathlib.Path) -> nbformat.NotebookNode:
    """The notebook at `path`, checked: it exists, names its language and has one cell tagged ``parameters``."""
    if path.suffix != ".ipynb":
        raise NotebookError(f"notebook: expected a .ipynb file, got {str(path)!r}")
    if not path.is_file():
        raise NotebookError(f"notebook: expected an existing file, got {str(path)!r} (no such file)")
    import nbformat

    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as error:  # nbformat raises several unrelated types for a damaged file
        raise NotebookError(f"{path.name}: expected a Jupyter notebook (nbformat 4), "
                            f"could not read it: {error}") from error
    # papermill needs the language to write the injected parameters ("No language found in notebook")
    if not (nb.metadata.get("kernelspec", {}).get("language") or nb.metadata.get("language_info", {}).get("name")):
        raise NotebookError(f"{path}: expected the notebook's language in its metadata (kernelspec.language or "
                            "language_info.name), got neither: save it from Jupyter with a Python kernel")
    tagged = [i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", [])]
    if len(tagged) != 1:
        raise NotebookError(f"{path.name}: expected exactly one cell tagged 'parameters', got {len(tagged)}")
    return nb


def strip_run(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Remove a previous run's stamp cell, injected parameters and cell times, so a notebook runs from its source."""
    nb.cells = [cell for cell in nb.cells if not _RUN_TAGS & set(cell.metadata.get("tags", []))]
    nb.metadata.pop("kanlib", None)
    for cell in nb.cells:
        kanlib = cell.metadata.get("kanlib")
        if isinstance(kanlib, dict):
            kanlib.pop(DURATION_KEY, None)
            if not kanlib:
                del cell.metadata["kanlib"]
    return nb


def clean_volatile(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Drop timestamps and durations that papermill and nbclient record, so re-runs differ only in content."""
    for key in _VOLATILE_NOTEBOOK_METADATA:
        nb.metadata.pop(key, None)
    for cell in nb.cells:
        for key in _VOLATILE_CELL_METADATA:
            cell.metadata.pop(key, None)
    return nb


def keep_cell_times(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Copy each code cell's wall time from papermill's metadata into ``metadata.kanlib.duration_s``, rounded."""
    for cell in nb.cells:
        seconds = cell.metadata.get("papermill", {}).get("duration")
        if cell.cell_type == "code" and isinstance(seconds, (int, float)):
            cell.metadata.setdefault("kanlib", {})[DURATION_KEY] = round_seconds(seconds)
    return nb


def finish_executed(nb: nbformat.NotebookNode, stamp: RunStamp, notebook_name: str,
                    parameters: dict[str, Any]) -> nbformat.NotebookNode:
    """Stamp an executed notebook, keep its cell times, hide its injected parameters, clean its volatile metadata."""
    import nbformat

    keep_cell_times(nb)
    clean_volatile(nb)
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if INJECTED_TAG in tags:
            cell.id = INJECTED_TAG
            if HIDDEN_TAG not in tags:
                cell.metadata["tags"] = [*tags, HIDDEN_TAG]
            cell.metadata["slideshow"] = {"slide_type": "skip"}
    stamp_cell = nbformat.v4.new_markdown_cell(stamp.to_markdown(notebook_name))
    stamp_cell.id = STAMP_TAG
    stamp_cell.metadata = {"tags": [STAMP_TAG], "slideshow": {"slide_type": "-"}}
    nb.cells.insert(_after_title(nb), stamp_cell)
    nb.metadata["kanlib"] = {"run": dataclasses.asdict(stamp), "parameters": parameters}
    return nb


def _after_title(nb: nbformat.NotebookNode) -> int:
    """Index just after the first markdown cell that holds a level-1 heading (0 when there is none)."""
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown" and any(line.startswith("# ") for line in cell.source.splitlines()):
            return index + 1
    return 0


def notebook_stamp(path: pathlib.Path) -> RunStamp | None:
    """The stamp of a committed or executed notebook, None when it was never run by the runner."""
    import nbformat

    return RunStamp.from_metadata(nbformat.read(path, as_version=4).metadata)


def _execute(source: pathlib.Path, output: pathlib.Path, parameters: dict[str, Any], stamp: RunStamp) -> RunStamp:
    """Run `source` into `output`; returns the stamp it got (the run's, with this notebook's wall time)."""
    import nbformat
    import papermill
    from papermill.exceptions import PapermillExecutionError

    nb = read_notebook(source)
    kept = [index for index, cell in enumerate(nb.cells) if not _RUN_TAGS & set(cell.metadata.get("tags", []))]
    strip_run(nb)
    tagged = next(index for index, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", []))
    # papermill runs the kept cells with its injected parameters cell right after the one tagged 'parameters'
    index_in_source = [*kept[:tagged + 1], None, *kept[tagged + 1:]]
    with tempfile.TemporaryDirectory(prefix="kanlib-run-") as scratch:
        clean_source = pathlib.Path(scratch) / source.name
        nbformat.write(nb, clean_source)
        raw_output = pathlib.Path(scratch) / f"executed-{source.name}"
        start = time.perf_counter()
        try:
            papermill.execute_notebook(
                str(clean_source), str(raw_output), parameters=parameters, kernel_name=KERNEL_NAME,
                progress_bar=False, request_save_on_cell_execute=False, cwd=str(PROJECT_ROOT))
        except PapermillExecutionError as error:
            raise NotebookFailed(source, index_in_source[error.cell_index], error.source, error.ename,
                                 error.evalue) from None
        stamp = dataclasses.replace(stamp, duration_s=round_seconds(time.perf_counter() - start))
        nb = nbformat.read(raw_output, as_version=4)
    finish_executed(nb, stamp, source.name, parameters)
    output.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, output)
    return stamp


def run_notebooks(notebooks: Sequence[str | os.PathLike[str]], *, device: str = "auto", mode: str = "auto",
                  seed: int = 0, output_dir: str | os.PathLike[str] | None = None, in_place: bool = False,
                  force: bool = False, progress: Callable[[str], None] | None = print) -> list[NotebookRun]:
    """Execute `notebooks` in order; stop at the first failure (NotebookFailed) with nothing committed overwritten.

    Executed copies go to `output_dir` (default _build/executed/), or replace the sources when `in_place`
    (then only after all of them ran). In place, a committed full-mode run is not replaced by a quick one
    unless `force`. Before anything runs: two notebooks with one output, and an output folder that is not a
    writable folder (OutputDirError, a ValueError), are refused. An output that cannot be written at the end
    raises NotebookNotWritten, which names the folder the executed copies are kept in. SIGTERM ends the run as
    SystemExit, after the temporary folders are removed.
    """
    if device not in DEVICES:
        raise ValueError(f"device: expected one of {DEVICES}, got {device!r}")
    if in_place and output_dir is not None:
        raise ValueError(f"output_dir: expected None with in_place=True (the sources are replaced), got {output_dir!r}")
    paths = [pathlib.Path(path).resolve() for path in notebooks]
    if not paths:
        raise NotebookError("notebooks: expected at least one notebook, got none")
    for path in paths:
        read_notebook(path)
    target_dir = pathlib.Path(output_dir) if output_dir is not None else EXECUTED_DIR
    outputs = paths if in_place else [target_dir / path.name for path in paths]
    _refuse_shared_outputs(paths, outputs)
    if in_place:
        _refuse_read_only(paths)
    else:
        check_output_dir(target_dir, "output_dir")
    resolved_mode = resolve_mode(mode, device)
    if in_place and not force:
        _refuse_downgrade(paths, resolved_mode)
    stamp = make_stamp(device, resolved_mode)
    parameters = {"device": stamp.device, "quick": resolved_mode == "quick", "seed": seed}
    runs: list[NotebookRun] = []
    staging = pathlib.Path(tempfile.mkdtemp(prefix="kanlib-run-"))
    # Keyed by the whole path: notebooks of one name from different folders stay apart.
    staged = [staging.joinpath(*path.parts[1:]) for path in paths]
    try:
        with _sigterm_raises():
            for number, (path, copy, output) in enumerate(zip(paths, staged, outputs), start=1):
                if progress:
                    progress(f"[{number}/{len(paths)}] {path.name}: {resolved_mode} mode on {stamp.device} ...")
                start = time.perf_counter()
                ran = _execute(path, copy, parameters, stamp)
                seconds = time.perf_counter() - start
                if not in_place:
                    _write_output(copy, output, staging)
                if progress:
                    progress(f"[{number}/{len(paths)}] {path.name}: done in {seconds:.1f} s -> {output}")
                runs.append(NotebookRun(path, output, seconds, ran))
        # Outside the SIGTERM handler: an exception in the middle of a copy would leave a source cut short.
        if in_place:
            for copy, output in zip(staged, outputs):
                _write_output(copy, output, staging)
    except NotebookNotWritten:  # the executed copies stay where its message says
        raise
    except BaseException:
        shutil.rmtree(staging)
        raise
    shutil.rmtree(staging)
    return runs


def _write_output(staged: pathlib.Path, output: pathlib.Path, staging: pathlib.Path) -> None:
    """Copy an executed notebook from the staging folder to where it goes; NotebookNotWritten keeps the folder."""
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(staged, output)
    except OSError as error:
        raise NotebookNotWritten(output, error, staging) from error


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Within the block SIGTERM raises SystemExit(143), so the cleanup runs; the handler before is restored."""
    previous = signal.getsignal(signal.SIGTERM)
    # Only the main thread may set a handler; one set outside Python (None) could not be restored; an ignored
    # SIGTERM stays ignored.
    if threading.current_thread() is not threading.main_thread() or previous in (None, signal.SIG_IGN):
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _refuse_shared_outputs(paths: Sequence[pathlib.Path], outputs: Sequence[pathlib.Path]) -> None:
    first: dict[pathlib.Path, pathlib.Path] = {}
    for path, output in zip(paths, outputs):
        if output in first:
            raise NotebookError(f"notebooks: expected one output each, got {first[output]} and {path} both "
                                f"written to {output}")
        first[output] = path


def _refuse_read_only(paths: Sequence[pathlib.Path]) -> None:
    read_only = [str(path) for path in paths if not os.access(path, os.W_OK)]
    if read_only:
        raise NotebookError(f"in place: expected notebooks that can be replaced, got read-only {', '.join(read_only)}")


def _refuse_downgrade(paths: Sequence[pathlib.Path], mode: str) -> None:
    if mode != "quick":
        return
    protected = [path.name for path in paths if (stamp := notebook_stamp(path)) and stamp.mode == "full"]
    if protected:
        raise NotebookError(
            f"in place: expected a full-mode run to replace the committed full-mode notebooks "
            f"{', '.join(protected)}, got mode 'quick' (pass force=True / --force to overwrite them)")
