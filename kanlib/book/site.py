"""Build the website: stage the book's sources with a chosen set of executed notebooks, then Jupyter Book.

    build_site(notebooks_dir="_build/executed")   # make book: the notebooks the runner just executed
    build_site(notebooks_dir="notebooks")         # make site: the committed notebooks, not executed

The staging folder holds _config.yml, _toc.yml, book/ and the notebooks; the banner on every page names
the run(s) the notebooks show, read from their stamps. The slides go beside the pages, under slides/.
"""
from __future__ import annotations

import html
import os
import pathlib
import shutil
import subprocess
import sys

import nbformat
import yaml

from ..checks import check_output_dir
from .paths import BUILD_DIR, LOGO, NOTEBOOKS_DIR, PROJECT_ROOT
from .runner import RunStamp, find_notebooks
from .slides import deck_name, write_decks
from .web_assets import asset_dir, copy_tree

STAGE_DIR = BUILD_DIR / "site-src"
BOOK_SOURCES = ("_config.yml", "_toc.yml", "book")
SLIDES_MARKER = "<!-- kanlib:slide-decks -->"
SLIDES_DIR = "slides"


class BookBuildError(RuntimeError):
    """Jupyter Book failed (a warning counts): names the command and where its log is."""


def run_banner(notebooks: list[pathlib.Path]) -> str:
    """One line for the top of every page: which run the notebooks show."""
    described: dict[str, list[str]] = {}
    for path in notebooks:
        stamp = RunStamp.from_metadata(nbformat.read(path, as_version=4).metadata)
        text = stamp.describe() if stamp else "not executed by the runner"
        described.setdefault(text, []).append(path.stem)
    if len(described) == 1:
        return f"This site shows {next(iter(described))}."
    parts = [f"{', '.join(names)}: {text}" for text, names in described.items()]
    return "This site shows several runs. " + "; ".join(parts) + "."


def slide_list_html(notebooks: list[pathlib.Path]) -> str:
    """An HTML list linking each notebook's deck, as seen from a page in book/."""
    items = []
    for path in notebooks:
        title = _title(nbformat.read(path, as_version=4)) or path.stem
        href = f"../{SLIDES_DIR}/{deck_name(path)}"
        items.append(f'<li><a href="{html.escape(href)}">{html.escape(title)}</a> '
                     f'<code>{html.escape(path.name)}</code></li>')
    return "<ul class=\"kanlib-decks\">\n" + "\n".join(items) + "\n</ul>"


def _title(nb: nbformat.NotebookNode) -> str | None:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return None


def stage(notebooks_dir: str | os.PathLike[str], stage_dir: str | os.PathLike[str] = STAGE_DIR, *,
          require_all: bool = True) -> pathlib.Path:
    """Copy the book's sources and the notebooks of `notebooks_dir` into `stage_dir`, banner and deck list filled.

    With `require_all`, every committed notebook must have a copy in `notebooks_dir`.
    """
    notebooks_dir, stage_dir = pathlib.Path(notebooks_dir), pathlib.Path(stage_dir)
    notebooks = find_notebooks(notebooks_dir)
    if not notebooks:
        raise BookBuildError(f"notebooks: expected NN_topic.ipynb files in {notebooks_dir}, found none")
    committed = {path.name for path in find_notebooks(NOTEBOOKS_DIR)}
    missing = sorted(committed - {path.name for path in notebooks})
    if require_all and missing:
        raise BookBuildError(f"{notebooks_dir}: expected an executed copy of every notebook, missing {missing} "
                             "(run `python -m kanlib run` first)")
    if stage_dir.exists():
        shutil.rmtree(stage_dir)
    stage_dir.mkdir(parents=True)
    for name in BOOK_SOURCES:
        source = PROJECT_ROOT / name
        if source.is_dir():
            shutil.copytree(source, stage_dir / name)
        else:
            shutil.copyfile(source, stage_dir / name)
    (stage_dir / "notebooks").mkdir()
    for path in notebooks:
        shutil.copyfile(path, stage_dir / "notebooks" / path.name)
    config_path = stage_dir / "_config.yml"
    config = yaml.safe_load(config_path.read_text())
    config.setdefault("html", {})["announcement"] = html.escape(run_banner(notebooks))
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    slides_page = stage_dir / "book" / "slides.md"
    if slides_page.is_file():
        text = slides_page.read_text()
        if SLIDES_MARKER not in text:
            raise BookBuildError(f"book/slides.md: expected the marker {SLIDES_MARKER!r}, found none")
        slides_page.write_text(text.replace(SLIDES_MARKER, slide_list_html(notebooks)))
    copy_tree(asset_dir("mathjax") / "es5", stage_dir / "_extra" / "mathjax", ignore=("*.md",))
    # The root index.html is a redirect page without an icon link; browsers then ask for /favicon.ico.
    shutil.copyfile(LOGO, stage_dir / "_extra" / "favicon.ico")
    return stage_dir


def build_site(notebooks_dir: str | os.PathLike[str], *, build_dir: str | os.PathLike[str] = BUILD_DIR,
               slides: bool = True, quiet: bool = True, require_all: bool = True) -> pathlib.Path:
    """Stage, build with Jupyter Book (warnings are errors) into build_dir/html, add the decks; returns index.html.

    A build_dir that is not a writable folder raises OutputDirError (a ValueError) before anything is staged.
    """
    check_output_dir(build_dir, "build_dir")
    build_dir = pathlib.Path(build_dir)
    stage_dir = stage(notebooks_dir, build_dir / "site-src", require_all=require_all)
    log = build_dir / "jupyter-book.log"
    command = [sys.executable, "-c", "from jupyter_book.cli.main import main; main()", "build", str(stage_dir),
               "--path-output",
               str(build_dir / "site-out"), "--builder", "html", "-W", "-n", "--keep-going"]
    if quiet:
        command.append("-q")
    result = subprocess.run(command, capture_output=True, text=True, cwd=stage_dir)
    log.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-30:])
        raise BookBuildError(f"jupyter-book build failed (exit {result.returncode}; full log: {log}):\n{tail}")
    html_dir = build_dir / "html"
    if html_dir.exists():
        shutil.rmtree(html_dir)
    shutil.move(str(build_dir / "site-out" / "_build" / "html"), html_dir)
    if slides:
        write_decks(find_notebooks(stage_dir / "notebooks"), html_dir / SLIDES_DIR)
    return html_dir / "index.html"
