"""Build the website: stage the book's sources with a chosen set of executed notebooks, then Jupyter Book.

    build_site(notebooks_dir="_build/executed")   # make book: the notebooks the runner just executed
    build_site(notebooks_dir="notebooks")         # make site: the committed notebooks, not executed

The staging folder holds _config.yml, _toc.yml, book/, _static/, references.bib and the notebooks; the
banner on every page names the run(s) the notebooks show, read from their stamps. In the staged copies, which
the pages and the decks are built from, each stamp cell is written anew from the stamp (the wall time, or that
it was not recorded) and the cell tagged ``parameters`` shows the values the run used; the committed
notebooks keep their defaults. The slides go beside the pages, under slides/.
"""
from __future__ import annotations

import ast
import html
import json
import os
import pathlib
import shutil
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

import nbformat
import yaml

from ..checks import check_output_dir
from .paths import BUILD_DIR, NOTEBOOKS_DIR, PROJECT_ROOT
from .runner import STAMP_TAG, RunStamp, find_notebooks, format_duration
from .slides import TALK_DECK, deck_name, notebook_title, write_decks
from .verdict import write_verdict

STAGE_DIR = BUILD_DIR / "site-src"
BOOK_SOURCES = ("_config.yml", "_toc.yml", "book", "_static", "references.bib")
SLIDES_MARKER = "<!-- kanlib:slide-decks -->"
SLIDES_DIR = "slides"


class BookBuildError(RuntimeError):
    """Jupyter Book failed (a warning counts): names the command and where its log is."""


def run_banner(notebooks: list[pathlib.Path]) -> str:
    """One line for the top of every page: which run the notebooks show, and how long their notebooks took."""
    runs: dict[str, list[tuple[str, RunStamp | None]]] = {}
    for path in notebooks:
        stamp = RunStamp.from_metadata(nbformat.read(path, as_version=4).metadata)
        text = stamp.describe(duration=False) if stamp else "not executed by the runner"
        runs.setdefault(text, []).append((path.stem, stamp))
    described = {f"{text}{_time_in_all(members)}": [name for name, _ in members] for text, members in runs.items()}
    if len(described) == 1:
        return f"This site shows {next(iter(described))}."
    parts = [f"{', '.join(names)}: {text}" for text, names in described.items()]
    return "This site shows several runs. " + "; ".join(parts) + "."


def _time_in_all(members: list[tuple[str, RunStamp | None]]) -> str:
    """' (it took 42 s)', ' (3 min 05 s in all)'; '' where no time was recorded (each page's stamp says so)."""
    stamps = [stamp for _, stamp in members if stamp is not None]
    times = [stamp.duration_s for stamp in stamps if stamp.duration_s is not None]
    if not times:
        return ""
    total = format_duration(sum(times))
    missing = len(stamps) - len(times)
    if len(stamps) == 1:
        return f" (it took {total})"
    return f" ({total} in all{f', {missing} without recorded times' if missing else ''})"


def show_parameters(source: str, values: Mapping[str, Any]) -> str:
    """The parameters cell `source` with every name of `values` assigned the value used, its comment kept.

    A value that reads the same as the one in the cell keeps the cell's text; a name the cell does not assign
    is added at the end. Raises ValueError when the cell is not Python.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError as error:
        raise ValueError(f"parameters cell: expected Python, got {error.msg} at line {error.lineno}") from None
    lines = source.split("\n")
    assigned: set[str] = set()
    targets = []
    for node in tree.body:
        target = (node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1
                  else node.target if isinstance(node, ast.AnnAssign) and node.value is not None else None)
        if isinstance(target, ast.Name) and target.id in values:
            assigned.add(target.id)
            targets.append((target.id, node.value))
    for name, value in reversed(targets):  # from the bottom, so earlier positions stay valid
        try:
            if _same(ast.literal_eval(value), values[name]):
                continue
        except (ValueError, TypeError, SyntaxError):  # an expression, not a literal: always replaced
            pass
        # ast counts columns in UTF-8 bytes
        first, last = lines[value.lineno - 1].encode(), lines[value.end_lineno - 1].encode()
        head, tail = first[:value.col_offset].decode(), last[value.end_col_offset:].decode()
        new = head + _literal(values[name])
        comment = tail.lstrip()
        if comment.startswith("#"):  # the comment stays in its column, at least two spaces after the value
            column = len(last[:value.end_col_offset].decode()) + len(tail) - len(comment)
            if value.lineno != value.end_lineno:
                column = 0
            tail = " " * max(column - len(new), 2) + comment
        lines[value.lineno - 1:value.end_lineno] = [new + tail]
    added = [f"{name} = {_literal(value)}  # set by the run" for name, value in values.items() if name not in assigned]
    return "\n".join(lines + added) if added else "\n".join(lines)


def _same(old: Any, new: Any) -> bool:
    return type(old) is type(new) and old == new


def _literal(value: Any) -> str:
    """`value` as Python source, strings in double quotes as the notebooks write them."""
    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else repr(value)


def prepare_page(nb: nbformat.NotebookNode, notebook_name: str) -> nbformat.NotebookNode:
    """The staged copy of a notebook: its stamp cell written anew from its stamp, its parameters cell showing
    the values the run used (``metadata.kanlib.parameters``)."""
    stamp = RunStamp.from_metadata(nb.metadata)
    parameters = nb.metadata.get("kanlib", {}).get("parameters") or {}
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if stamp and STAMP_TAG in tags:
            cell.source = stamp.to_markdown(notebook_name)
        elif parameters and "parameters" in tags and cell.cell_type == "code":
            try:
                cell.source = show_parameters(cell.source, parameters)
            except ValueError as error:
                raise BookBuildError(f"{notebook_name}: {error}") from None
    return nb


def slide_list_html(notebooks: list[pathlib.Path]) -> str:
    """An HTML list linking the talk, then each notebook's deck, as seen from a page in book/."""
    talk = f"../{SLIDES_DIR}/{TALK_DECK}"
    items = [f'<li><a href="{html.escape(talk)}">The talk: the headline slides of every notebook</a> '
             f'<code>{html.escape(TALK_DECK)}</code></li>']
    for path in notebooks:
        title = notebook_title(nbformat.read(path, as_version=4)) or path.stem
        href = f"../{SLIDES_DIR}/{deck_name(path)}"
        items.append(f'<li><a href="{html.escape(href)}">{html.escape(title)}</a> '
                     f'<code>{html.escape(path.name)}</code></li>')
    return "<ul class=\"kanlib-decks\">\n" + "\n".join(items) + "\n</ul>"


def stage(notebooks_dir: str | os.PathLike[str], stage_dir: str | os.PathLike[str] = STAGE_DIR, *,
          require_all: bool = True) -> pathlib.Path:
    """Copy the book's sources and the notebooks of `notebooks_dir` into `stage_dir`, banner and deck list filled,
    each notebook as `prepare_page` leaves it.

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
        nbformat.write(prepare_page(nbformat.read(path, as_version=4), path.name), stage_dir / "notebooks" / path.name)
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
    write_verdict(stage_dir / "book" / "intro.md", stage_dir / "notebooks")  # the verdict table and figure
    return stage_dir


def build_site(notebooks_dir: str | os.PathLike[str], *, build_dir: str | os.PathLike[str] = BUILD_DIR,
               slides: bool = True, quiet: bool = True, require_all: bool = True) -> pathlib.Path:
    """Stage, build with Jupyter Book (warnings are errors) into build_dir/html, add the decks; returns index.html.

    A build_dir that is not a writable folder raises OutputDirError (a ValueError) before anything is staged.
    """
    check_output_dir(build_dir, "build_dir")
    build_dir = pathlib.Path(build_dir)
    stage_dir = stage(notebooks_dir, build_dir / "site-src", require_all=require_all)
    return build_staged(stage_dir, build_dir=build_dir, slides=slides, quiet=quiet)


def build_staged(stage_dir: str | os.PathLike[str], *, build_dir: str | os.PathLike[str] = BUILD_DIR,
                 slides: bool = True, quiet: bool = True) -> pathlib.Path:
    """Build a folder made by `stage` (warnings are errors) into build_dir/html, add the decks; returns index.html."""
    stage_dir, build_dir = pathlib.Path(stage_dir), pathlib.Path(build_dir)
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
