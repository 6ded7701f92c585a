"""reveal.js decks from the notebook cells marked for a talk (``slideshow.slide_type``), via nbconvert.

    write_decks(find_notebooks(), "_build/html/slides")   # one NN_topic.slides.html per notebook

The decks load reveal.js, jQuery, RequireJS and MathJax from an ``_assets/`` folder beside them, copied
from the npm packages (see kanlib.book.web_assets), so they work without a network.
"""
from __future__ import annotations

import os
import pathlib
import shutil
from collections.abc import Sequence

import nbformat

from ..checks import check_output_dir
from .paths import LOGO, TEMPLATE_DIR
from .web_assets import asset_dir, copy_tree

GLUE_MIME_PREFIX = "application/papermill.record/"
TEMPLATE_NAME = "kanlib_reveal"
ASSETS = "_assets"
SLIDE_TYPES = ("slide", "subslide", "fragment", "-", "skip", "notes")


def slide_cells(nb: nbformat.NotebookNode) -> int:
    """How many cells open a slide or subslide."""
    return sum(cell.metadata.get("slideshow", {}).get("slide_type") in ("slide", "subslide") for cell in nb.cells)


def check_slide_metadata(nb: nbformat.NotebookNode, name: str) -> None:
    """Every slide_type is one reveal.js knows; at least one cell opens a slide."""
    for index, cell in enumerate(nb.cells):
        slide_type = cell.metadata.get("slideshow", {}).get("slide_type")
        if slide_type is not None and slide_type not in SLIDE_TYPES:
            raise ValueError(f"{name}: cell {index}: expected slide_type in {SLIDE_TYPES}, got {slide_type!r}")
    if slide_cells(nb) == 0:
        raise ValueError(f"{name}: expected at least one cell with slideshow.slide_type 'slide', got none")


def deck_name(notebook: str | os.PathLike[str]) -> str:
    return f"{pathlib.Path(notebook).stem}.slides.html"


def copy_slide_assets(out_dir: pathlib.Path) -> pathlib.Path:
    """Copy reveal.js, jQuery, RequireJS and MathJax 2 to out_dir/_assets; returns that folder."""
    assets = out_dir / ASSETS
    copy_tree(asset_dir("reveal.js"), assets / "reveal.js", ignore=("node_modules", "demo.html", "test", "examples"))
    copy_tree(asset_dir("jquery") / "dist", assets / "jquery")
    assets.joinpath("requirejs").mkdir(parents=True, exist_ok=True)
    (assets / "requirejs" / "require.js").write_bytes((asset_dir("requirejs") / "require.js").read_bytes())
    copy_tree(asset_dir("mathjax2"), assets / "mathjax2", ignore=("unpacked", "docs", "test", "*.md"))
    shutil.copyfile(LOGO, assets / "logo.svg")
    return assets


def _exporter():
    from nbconvert import SlidesExporter

    exporter = SlidesExporter(template_name=TEMPLATE_NAME, extra_template_basedirs=[str(TEMPLATE_DIR)])
    exporter.reveal_url_prefix = f"{ASSETS}/reveal.js"
    exporter.reveal_theme = "white"  # its fonts ship with reveal.js; "simple" loads them from the web
    exporter.reveal_scroll = True
    exporter.jquery_url = f"{ASSETS}/jquery/jquery.min.js"
    exporter.require_js_url = f"{ASSETS}/requirejs/require.js"
    exporter.mathjax_url = f"{ASSETS}/mathjax2/MathJax.js?config=TeX-AMS_CHTML-full,Safe"
    exporter.exclude_input_prompt = True
    exporter.exclude_output_prompt = True
    return exporter


def write_decks(notebooks: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str]) -> list[pathlib.Path]:
    """One reveal.js deck per notebook in out_dir, with the assets copied beside them; returns the decks.

    An out_dir that is not a writable folder raises OutputDirError (a ValueError) before anything is written.
    """
    check_output_dir(out_dir, "output_dir")
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    copy_slide_assets(out_dir)
    exporter = _exporter()
    decks = []
    for notebook in notebooks:
        path = pathlib.Path(notebook)
        nb = nbformat.read(path, as_version=4)
        check_slide_metadata(nb, path.name)
        # The injected parameters and the setup plumbing stay out of the talk.
        nb.cells = [cell for cell in nb.cells if "remove-cell" not in cell.metadata.get("tags", [])]
        for cell in nb.cells:
            if cell.cell_type == "code":  # glued values are for the book's pages, not for the talk
                cell.outputs = [out for out in cell.outputs
                                if not any(key.startswith(GLUE_MIME_PREFIX) for key in out.get("data", {}))]
        body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": path.stem}})
        deck = out_dir / deck_name(path)
        deck.write_text(body, encoding="utf-8")
        decks.append(deck)
    return decks
