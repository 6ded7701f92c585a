"""Every notebook of the book executes top to bottom in quick mode on the CPU (papermill, a scratch folder)."""
from __future__ import annotations

import nbformat
import pytest

from kanlib.book.runner import RunStamp, find_notebooks, read_notebook, run_notebooks

NOTEBOOKS = find_notebooks()


def test_the_book_has_notebooks():
    assert len(NOTEBOOKS) >= 4, [path.name for path in NOTEBOOKS]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_runs_in_quick_mode(notebook, tmp_path):
    before = notebook.read_bytes()
    (run,) = run_notebooks([notebook], device="cpu", mode="quick", output_dir=tmp_path, progress=None)
    executed = nbformat.read(run.output, as_version=4)
    assert RunStamp.from_metadata(executed.metadata).mode == "quick"
    errors = [out for cell in executed.cells if cell.cell_type == "code" for out in cell.outputs
              if out.output_type == "error"]
    assert errors == []
    assert any(out.output_type == "display_data" and "image/png" in out.get("data", {})
               for cell in executed.cells if cell.cell_type == "code" for out in cell.outputs), "it draws figures"
    assert notebook.read_bytes() == before, "the committed notebook is untouched"


def test_committed_notebooks_follow_the_conventions():
    """Every committed notebook: a title, one parameters cell with device/quick/seed, setup, slide metadata."""
    notebooks = find_notebooks()
    assert notebooks, "the book has notebooks"
    for path in notebooks:
        nb = read_notebook(path)
        assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), path.name
        parameters = next(cell for cell in nb.cells if "parameters" in cell.metadata.get("tags", []))
        for name in ("device", "quick", "seed"):
            assert f"{name} = " in parameters.source, f"{path.name}: parameters cell sets {name}"
        assert any("setup(" in cell.source for cell in nb.cells if cell.cell_type == "code"), path.name
        assert any(cell.metadata.get("slideshow", {}).get("slide_type") == "slide" for cell in nb.cells), path.name
