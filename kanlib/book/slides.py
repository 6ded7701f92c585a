"""reveal.js decks from the executed notebooks: one per notebook, and the talk, which strings the headline slides
of every notebook together.

    write_decks(find_notebooks(), "_build/html/slides")   # NN_topic.slides.html per notebook, and talk.slides.html

A deck shows what the notebook's ``slideshow.slide_type`` metadata marks, in a 1280 x 720 frame: the numbers
the page shows (glue roles pasted), outputs without the code behind them, tables cut to their first rows. Cell
tags steer it:

    show-code       the code of the cell is shown too
    talk            on the cell that opens a slide: the slide goes into the talk
    remove-cell, remove-input, hide-input, remove-output, remove-stderr   as on the pages (hide-input: hidden)

Cells of slide_type ``notes`` become speaker notes (``s`` opens the speaker view), also when tagged
``remove-cell`` to keep them off the page. The decks load reveal.js, jQuery, RequireJS and MathJax from an
``_assets/`` folder beside them, copied from the npm packages (see kanlib.book.web_assets), so they work
without a network.
"""
from __future__ import annotations

import base64
import copy
import functools
import html
import os
import pathlib
import re
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

import nbformat

from ..checks import check_output_dir
from .glue import GLUE_PATTERN, GlueError, glued, paste_glue
from .paths import LOGO, PROJECT_ROOT, TEMPLATE_DIR
from .web_assets import asset_dir, copy_tree

__all__ = ["SHOW_CODE_TAG", "SLIDE_TYPES", "STREAM_LINES", "TABLE_ROWS", "TALK_DECK", "TALK_TAG", "SlideError",
           "book_title", "check_slide_metadata", "citations", "cut_html_tables", "cut_markdown_tables", "cut_stream",
           "deck_name", "deck_notebook", "notebook_title", "paste_citations", "paste_deck_glue", "slide_cells",
           "split_slides", "talk_notebook", "write_decks"]

GLUE_MIME_PREFIX = "application/papermill.record/"
TEMPLATE_NAME = "kanlib_reveal"
ASSETS = "_assets"
SLIDE_TYPES = ("slide", "subslide", "fragment", "-", "skip", "notes")
OPENERS = ("slide", "subslide")
FRAME = (1280, 720)
TALK_DECK = "talk.slides.html"
TALK_TAG = "talk"
SHOW_CODE_TAG = "show-code"
HIDDEN_INPUT_TAGS = ("remove-input", "hide-input")
TABLE_ROWS = 8
STREAM_LINES = 12
PAGES = "../notebooks"  # where a deck in slides/ finds the notebook pages
REFERENCES = PROJECT_ROOT / "references.bib"
REFERENCES_PAGE = "../book/references.html"

_MARKDOWN_SPECIALS = re.compile(r"([\\`*_\[\]|<>$])")
# ```{glue:figure} key ... ``` (or :::), and the plain {glue} directive
_GLUE_DIRECTIVE = re.compile(r"^(?P<fence>`{3,}|:{3,})\{glue(?::(?:figure|any|md|text))?\}[ \t]*(?P<target>\S+)[ \t]*\n"
                             r"(?P<body>.*?)^(?P=fence)[ \t]*$", re.M | re.S)
_CITE = re.compile(r"\{cite(?::\w+)?\}`(?P<keys>[^`]+)`")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_TABLE_SEPARATOR = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")


class SlideError(ValueError):
    """A notebook that cannot become a deck: names the notebook, the cell and what was wrong."""


def _slide_type(cell: nbformat.NotebookNode) -> str | None:
    return cell.metadata.get("slideshow", {}).get("slide_type")


def _tags(cell: nbformat.NotebookNode) -> list[str]:
    return cell.metadata.get("tags", [])


def slide_cells(nb: nbformat.NotebookNode) -> int:
    """How many cells open a slide or subslide."""
    return sum(_slide_type(cell) in OPENERS for cell in nb.cells)


def check_slide_metadata(nb: nbformat.NotebookNode, name: str) -> None:
    """Every slide_type is one reveal.js knows; at least one cell opens a slide."""
    for index, cell in enumerate(nb.cells):
        slide_type = _slide_type(cell)
        if slide_type is not None and slide_type not in SLIDE_TYPES:
            raise SlideError(f"{name}: cell {index}: expected slide_type in {SLIDE_TYPES}, got {slide_type!r}")
    if slide_cells(nb) == 0:
        raise SlideError(f"{name}: expected at least one cell with slideshow.slide_type 'slide', got none")


def deck_name(notebook: str | os.PathLike[str]) -> str:
    return f"{pathlib.Path(notebook).stem}.slides.html"


def notebook_title(nb: nbformat.NotebookNode) -> str | None:
    """The text of the notebook's first `# ` heading."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return None


def book_title(config: str | os.PathLike[str] = PROJECT_ROOT / "_config.yml") -> str:
    """The title in the book's _config.yml."""
    import yaml

    title = (yaml.safe_load(pathlib.Path(config).read_text()) or {}).get("title")
    if not isinstance(title, str) or not title.strip():
        raise SlideError(f"{config}: expected a title, got {title!r}")
    return title.strip()


# --- one notebook's cells, ready for a deck -------------------------------------------------------------

class _GlueSource:
    """The glued values of a notebook and of the notebooks its glue roles name, each read once."""

    def __init__(self) -> None:
        self._values: dict[pathlib.Path, dict[str, dict[str, Any]]] = {}

    def values(self, path: pathlib.Path, nb: nbformat.NotebookNode | None = None) -> dict[str, dict[str, Any]]:
        path = path.resolve()
        if path not in self._values:
            self._values[path] = glued(nb if nb is not None else nbformat.read(path, as_version=4))
        return self._values[path]

    def for_markdown(self, markdown: str, path: pathlib.Path, nb: nbformat.NotebookNode) -> dict[str, Any]:
        """{path as the roles name it: values} for every notebook the markdown's roles name."""
        notebooks = {"": self.values(path, nb)}
        targets = [m.group("target") for m in GLUE_PATTERN.finditer(markdown)]
        targets += [m.group("target") for m in _GLUE_DIRECTIVE.finditer(markdown)]
        for target in targets:
            other = target.rpartition("::")[0]
            if other and other not in notebooks:
                other_path = path.parent / other
                if not other_path.is_file():
                    raise GlueError(f"glue target {target!r}: expected the notebook {other_path}, got no such file")
                notebooks[other] = self.values(other_path)
        return notebooks


@functools.lru_cache(maxsize=4)
def citations(bib: pathlib.Path = REFERENCES) -> dict[str, str]:
    """{key: "Liu et al. 2025"} for every entry of the bibliography the pages cite from."""
    from pybtex.database import parse_file

    def name(person) -> str:
        return " ".join(person.last_names).replace("{", "").replace("}", "")

    short = {}
    for key, entry in parse_file(str(bib)).entries.items():
        people = entry.persons.get("author") or entry.persons.get("editor") or []
        if len(people) > 2:
            who = f"{name(people[0])} et al."
        else:
            who = " and ".join(name(person) for person in people) or key
        short[key] = f"{who} {entry.fields.get('year', '')}".strip()
    return short


def paste_citations(markdown: str, bib: pathlib.Path = REFERENCES) -> str:
    """`markdown` with each {cite}`key,...` role as [Author year; ...], linked to the references page."""

    def replace(match: re.Match[str]) -> str:
        if not bib.is_file():
            raise SlideError(f"citation {match.group(0)!r}: expected the bibliography {bib}, got no such file")
        known = citations(bib)
        keys = [key.strip() for key in match.group("keys").split(",")]
        for key in keys:
            if key not in known:
                raise SlideError(f"citation {match.group(0)!r}: expected a key of {bib.name}, got {key!r}")
        return "[" + "; ".join(f"[{known[key]}]({REFERENCES_PAGE})" for key in keys) + "]"

    return _CITE.sub(replace, markdown)


def paste_deck_glue(markdown: str, notebooks: Mapping[str, Mapping[str, Any]]) -> str:
    """`markdown` with its glue directives and roles pasted as the page shows them (see kanlib.book.glue.paste_glue):
    {glue}`key` and {glue:}`key` show a glued Markdown object as Markdown, and plain text stays plain text."""

    def role(match: re.Match[str]) -> str:
        kind, target = match.group("kind") or "", match.group("target")
        path, _, key = target.rpartition("::")
        text = paste_glue(match.group(0), notebooks)
        if kind in ("", "any", "md") and "text/markdown" in notebooks.get(path, {}).get(key, {}):
            return text
        return _MARKDOWN_SPECIALS.sub(r"\\\1", text)

    return GLUE_PATTERN.sub(role, _paste_glue_directives(markdown, notebooks))


def _paste_glue_directives(markdown: str, notebooks: Mapping[str, Mapping[str, Any]]) -> str:
    """Each glue directive as its image (with the caption below it) or, for a value without one, its text."""

    def replace(match: re.Match[str]) -> str:
        target = match.group("target")
        other, _, key = target.rpartition("::")
        values = notebooks[other]
        caption = "\n".join(line for line in match.group("body").splitlines() if not line.lstrip().startswith(":"))
        bundle = values.get(key, {})
        for mime in ("image/png", "image/jpeg", "image/svg+xml"):
            if mime in bundle:
                data = bundle[mime]
                if mime == "image/svg+xml":
                    data = base64.b64encode(data.encode()).decode()
                alt = html.escape(" ".join(caption.split()) or key, quote=True)
                image = f'<img src="data:{mime};base64,{"".join(data.split())}" alt="{alt}">'
                return f'<div class="kanlib-glue-figure">{image}</div>\n\n{caption.strip()}\n'
        return paste_glue(f"{{glue:md}}`{target}`", notebooks) + (f"\n\n{caption.strip()}\n" if caption.strip() else "")

    return _GLUE_DIRECTIVE.sub(replace, markdown)


def _cut_note(shown: int, total: int, page: str, what: str = "rows", where: str = "table") -> str:
    return (f'first {shown} of {total} {what}; the full {where} is on <a href="{html.escape(page, quote=True)}">'
            f"the page</a>")


def cut_stream(output: nbformat.NotebookNode, page: str, lines: int = STREAM_LINES) -> nbformat.NotebookNode:
    """A printed output of more than `lines` lines as its first `lines`, a note below them."""
    text = _ANSI.sub("", output.get("text", ""))
    all_lines = text.rstrip("\n").split("\n")
    if len(all_lines) <= lines:
        return output
    shown = html.escape("\n".join(all_lines[:lines]))
    note = _cut_note(lines, len(all_lines), page, "lines", "output")
    return nbformat.v4.new_output("display_data", data={
        "text/html": f'<pre class="kanlib-stream">{shown}</pre>\n<p class="kanlib-cut">{note}</p>',
        "text/plain": "\n".join(all_lines[:lines])})


def cut_html_tables(text: str, page: str, rows: int = TABLE_ROWS) -> str:
    """Each table of an HTML output with more than `rows` body rows cut to its first `rows`, a note below it.

    Every table is marked with its page and its number of rows (``data-kanlib-page``, ``data-kanlib-rows``):
    where a slide is still too tall, the deck hides more of its last rows and says so in the note. Headers may
    break after an underscore."""
    if "<table" not in text:
        return text
    from bs4 import BeautifulSoup, NavigableString

    soup = BeautifulSoup(text, "html.parser")
    for table in soup.find_all("table"):
        if table.find("tbody"):
            body_rows = table.find("tbody").find_all("tr", recursive=False)
        else:
            body_rows = [row for row in table.find_all("tr") if row.find("td")]
        table["data-kanlib-page"] = page
        table["data-kanlib-rows"] = str(len(body_rows))
        for label in table.find_all(string=lambda string: "_" in string and string.parent.name == "th"):
            parts = label.split("_")  # a header such as fwd_median_ms may break after its underscores
            pieces = [item for part in parts[:-1] for item in (NavigableString(f"{part}_"), soup.new_tag("wbr"))]
            label.replace_with(*pieces, NavigableString(parts[-1]))
        if len(body_rows) <= rows:
            continue
        for index, row in enumerate(body_rows[:rows]):
            for head in row.find_all(["th", "td"], rowspan=True):
                if index + int(head.get("rowspan", 1)) > rows:
                    head["rowspan"] = str(rows - index)
        for row in body_rows[rows:]:
            row.decompose()
        table.insert_after(BeautifulSoup(f'<p class="kanlib-cut">{_cut_note(rows, len(body_rows), page)}</p>',
                                         "html.parser"))
    return str(soup)


def cut_markdown_tables(text: str, page: str, rows: int = TABLE_ROWS) -> str:
    """Each pipe table of a Markdown text with more than `rows` body rows cut to its first `rows`, a note below."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        if (i + 1 < len(lines) and lines[i].lstrip().startswith("|") and _TABLE_SEPARATOR.match(lines[i + 1])):
            end = i + 2
            while end < len(lines) and lines[end].lstrip().startswith("|"):
                end += 1
            body = lines[i + 2:end]
            out += lines[i:i + 2] + body[:rows]
            if len(body) > rows:
                out += ["", f'<p class="kanlib-cut">{_cut_note(rows, len(body), page)}</p>', ""]
            i = end
        else:
            out.append(lines[i])
            i += 1
    return "\n".join(out)


def _visible_outputs(cell: nbformat.NotebookNode, page: str) -> list[nbformat.NotebookNode]:
    tags = _tags(cell)
    if "remove-output" in tags:
        return []
    outputs = []
    for output in cell.outputs:
        data = output.get("data", {})
        if any(key.startswith(GLUE_MIME_PREFIX) for key in data):
            continue  # glued values are shown where the prose names them
        if output.output_type == "stream" and output.get("name") == "stderr" and "remove-stderr" in tags:
            continue
        if output.output_type == "stream":
            output = cut_stream(output, page)
            data = output.get("data", {})
        if "text/html" in data:
            data["text/html"] = cut_html_tables(data["text/html"], page)
        if "text/markdown" in data:
            data["text/markdown"] = cut_markdown_tables(data["text/markdown"], page)
        outputs.append(output)
    return outputs


def deck_notebook(path: str | os.PathLike[str], *, glue: _GlueSource | None = None) -> nbformat.NotebookNode:
    """The notebook at `path` as its deck shows it: removed cells dropped, glue pasted, code hidden, tables cut."""
    path = pathlib.Path(path)
    nb = nbformat.read(path, as_version=4)
    check_slide_metadata(nb, path.name)
    glue = glue or _GlueSource()
    page = f"{PAGES}/{path.stem}.html"
    cells = []
    for index, cell in enumerate(nb.cells):
        tags = _tags(cell)
        if "remove-cell" in tags and _slide_type(cell) != "notes":  # notes are tagged so to stay off the page
            continue
        cell = copy.deepcopy(cell)
        if cell.cell_type == "markdown":
            try:
                notebooks = glue.for_markdown(cell.source, path, nb)
                cell.source = paste_deck_glue(cell.source, notebooks)
                cell.source = paste_citations(cell.source)
            except (GlueError, SlideError) as error:
                raise SlideError(f"{path.name}: cell {index}: {error}") from None
            cell.source = cut_markdown_tables(cell.source, page)
        elif cell.cell_type == "code":
            cell.outputs = _visible_outputs(cell, page)
            if SHOW_CODE_TAG not in tags or any(tag in tags for tag in HIDDEN_INPUT_TAGS):
                cell.metadata["transient"] = {"remove_source": True}
        cells.append(cell)
    nb.cells = cells
    if slide_cells(nb) == 0:
        raise SlideError(f"{path.name}: expected a cell opening a slide that is not tagged remove-cell, got none")
    nb.metadata["title"] = re.sub(r"[*`]", "", notebook_title(nb) or path.stem)
    return nb


# --- the talk -------------------------------------------------------------------------------------------

def split_slides(cells: Sequence[nbformat.NotebookNode]) -> list[list[nbformat.NotebookNode]]:
    """The cells grouped by slide: each group is a slide or subslide opener and the cells up to the next one
    (cells before the first opener form a group of their own)."""
    groups: list[list[nbformat.NotebookNode]] = []
    for cell in cells:
        if not groups or _slide_type(cell) in OPENERS:
            groups.append([])
        groups[-1].append(cell)
    return groups


def _as(cell: nbformat.NotebookNode, slide_type: str) -> nbformat.NotebookNode:
    cell = copy.deepcopy(cell)
    cell.metadata.setdefault("slideshow", {})["slide_type"] = slide_type
    return cell


def talk_notebook(notebooks: Sequence[str | os.PathLike[str]], title: str) -> nbformat.NotebookNode:
    """One notebook of the talk: a title slide, then per notebook its title slide (a new column) and, below it,
    every slide whose opening cell is tagged `talk`."""
    glue = _GlueSource()
    return _talk([deck_notebook(path, glue=glue) for path in notebooks], title)


def _talk(chapters: Sequence[nbformat.NotebookNode], title: str) -> nbformat.NotebookNode:
    contents = "\n".join(f"1. {nb.metadata['title']}" for nb in chapters)
    cells = [nbformat.v4.new_markdown_cell(f"# {title}\n\n{contents}", metadata={"slideshow": {"slide_type": "slide"}})]
    for nb in chapters:
        groups = [group for group in split_slides(nb.cells) if _slide_type(group[0]) in OPENERS]
        cells += [_as(groups[0][0], "slide"), *groups[0][1:]]
        for group in groups[1:]:
            if TALK_TAG in _tags(group[0]):
                cells += [_as(group[0], "subslide"), *group[1:]]
    talk = nbformat.v4.new_notebook()
    for number, cell in enumerate(cells):
        talk.cells.append(copy.deepcopy(cell))
        talk.cells[-1].id = f"talk-{number}"
    talk.metadata["title"] = title
    for key in ("kernelspec", "language_info"):
        if chapters and key in chapters[0].metadata:
            talk.metadata[key] = chapters[0].metadata[key]
    return talk


# --- writing the decks ----------------------------------------------------------------------------------

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
    exporter.reveal_scroll = False
    exporter.reveal_width, exporter.reveal_height = (str(size) for size in FRAME)
    exporter.jquery_url = f"{ASSETS}/jquery/jquery.min.js"
    exporter.require_js_url = f"{ASSETS}/requirejs/require.js"
    exporter.mathjax_url = f"{ASSETS}/mathjax2/MathJax.js?config=TeX-AMS_CHTML-full,Safe"
    exporter.exclude_input_prompt = True
    exporter.exclude_output_prompt = True
    return exporter


def write_decks(notebooks: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str], *,
                title: str | None = None) -> list[pathlib.Path]:
    """One reveal.js deck per notebook in out_dir and, for one notebook or more, the talk (TALK_DECK), titled
    `title` (default: the book's title); the assets are copied beside them. Returns the decks, the talk last.

    An out_dir that is not a writable folder raises OutputDirError (a ValueError) before anything is written;
    a notebook that cannot become a deck raises SlideError (a ValueError) naming it.
    """
    check_output_dir(out_dir, "output_dir")
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    copy_slide_assets(out_dir)
    exporter = _exporter()
    glue = _GlueSource()
    decks, chapters = [], []
    for notebook in notebooks:
        path = pathlib.Path(notebook)
        chapters.append(deck_notebook(path, glue=glue))
        body, _ = exporter.from_notebook_node(chapters[-1], resources={"metadata": {"name": path.stem}})
        decks.append(out_dir / deck_name(path))
        decks[-1].write_text(body, encoding="utf-8")
    if chapters:
        body, _ = exporter.from_notebook_node(_talk(chapters, title or book_title()),
                                              resources={"metadata": {"name": "talk"}})
        decks.append(out_dir / TALK_DECK)
        decks[-1].write_text(body, encoding="utf-8")
    return decks
