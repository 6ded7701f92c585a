"""The decks: `python -m kanlib slides` and `python -m kanlib book` refuse an unusable output folder before any work;
synthetic notebooks show what a deck makes of glue, code, tables, notes and tags, and what the talk gathers; the decks
of the committed notebooks are walked slide by slide in headless Chromium."""
from __future__ import annotations

import pathlib
import re

import nbformat
import pytest

from kanlib.__main__ import main
from kanlib.book import site, slides


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("not a folder")
    return path


def test_slides_refuse_an_output_folder_that_is_a_file(a_file, monkeypatch, capsys):
    def not_copied(out_dir):
        raise AssertionError("assets copied although the decks could not be written")

    monkeypatch.setattr(slides, "copy_slide_assets", not_copied)
    assert main(["slides", "--output-dir", str(a_file)]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"got {a_file}, which exists and is not a folder" in err, err
    with pytest.raises(ValueError, match="cannot be created"):
        slides.write_decks([], a_file / "sub")


def test_book_refuses_a_build_folder_that_is_a_file(a_file, monkeypatch, capsys):
    def not_staged(*args, **kwargs):
        raise AssertionError("staged although the site could not be written")

    monkeypatch.setattr(site, "stage", not_staged)
    assert main(["book", "--notebooks", "notebooks", "--build-dir", str(a_file)]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"got {a_file}, which exists and is not a folder" in err, err


# --- decks from synthetic notebooks --------------------------------------------------------------------

def _glue_output(key: str, text: str, mime: str = "text/plain", **more: str) -> nbformat.NotebookNode:
    """What myst_nb.glue(key, value, display=False) records; `more`: other mime types (text_plain=...)."""
    bundle = {mime: text, **{name.replace("_", "/"): value for name, value in more.items()}}
    return nbformat.v4.new_output("display_data",
                                  data={f"{slides.GLUE_MIME_PREFIX}{name}": value for name, value in bundle.items()},
                                  metadata={"scrapbook": {"name": key, "mime_prefix": slides.GLUE_MIME_PREFIX}})


def _mark(cell: nbformat.NotebookNode, slide_type: str | None, tags: tuple[str, ...]) -> nbformat.NotebookNode:
    if slide_type:
        cell.metadata["slideshow"] = {"slide_type": slide_type}
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def _md(source: str, slide_type: str | None = None, tags: tuple[str, ...] = ()) -> nbformat.NotebookNode:
    return _mark(nbformat.v4.new_markdown_cell(source), slide_type, tags)


def _code(source: str, outputs=(), slide_type: str | None = None, tags: tuple[str, ...] = ()) -> nbformat.NotebookNode:
    return _mark(nbformat.v4.new_code_cell(source, outputs=list(outputs)), slide_type, tags)


def _stream(text: str, name: str = "stdout") -> nbformat.NotebookNode:
    return nbformat.v4.new_output("stream", name=name, text=text)


def _html(text: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_output("display_data", data={"text/html": text, "text/plain": "<table>"})


def _write(folder: pathlib.Path, name: str, cells) -> pathlib.Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = list(cells)
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, folder / name)
    return folder / name


def _sources(nb: nbformat.NotebookNode) -> list[str]:
    return [cell.source for cell in nb.cells]


@pytest.fixture
def chapters(tmp_path):
    """Two notebooks that glue values, the first also quoting one of the second's; both have talk slides."""
    folder = tmp_path / "notebooks"
    second = _write(folder, "02_b.ipynb", [
        _md("# Second\n\nintro", "slide"),
        _code("glue('speed', 0.5)", [_glue_output("speed", "0.5")], "skip"),
        _md("## Speed\n\n{glue:text}`speed:.2f` s", "slide", ("talk",)),
        _md("## Untold", "slide"),
    ])
    first = _write(folder, "01_a.ipynb", [
        _md("# First *chapter*\n\nwhat it asks", "slide"),
        _code("glue(...)", [_glue_output("ratio", "2.3456"), _glue_output("n", "7"),
                            _glue_output("where", "'a *star* run'"),
                            _glue_output("summary", "**bold** claim", "text/markdown",
                                         text_plain="<IPython.core.display.Markdown object>")], "skip"),
        _md("## Numbers\n\nr {glue:text}`ratio:.1f`, n {glue}`n`, {glue:}`n`, {glue:text}`n:d`; "
            "{glue:md}`summary`; {glue}`summary`; {glue}`where`; "
            "other {glue:text}`../notebooks/02_b.ipynb::speed:.2f`", "slide", ("talk",)),
        _md("Say it slowly.", "notes", ("remove-cell",)),
        _code("plot()", [_stream("figure drawn\n")]),
        _md("### Aside", "subslide"),
        _md("## Told too", "slide", ("talk",)),
        _md("a fragment", "fragment"),
    ])
    return first, second


def test_glue_roles_are_pasted_as_the_page_shows_them(chapters):
    first, _ = chapters
    nb = slides.deck_notebook(first)
    numbers = nb.cells[2].source
    assert numbers == ("## Numbers\n\nr 2.3, n 7, 7, 7; **bold** claim; **bold** claim; a \\*star\\* run; "
                       "other 0.50"), numbers
    assert all("{glue" not in source for source in _sources(nb))
    assert nb.cells[1].outputs == [], "glued values stay out of the deck"


def test_glue_directives_show_the_glued_figure_or_text(tmp_path):
    png = "iVBORw0KGgo="
    path = _write(tmp_path, "01_a.ipynb", [
        _md("# A", "slide"),
        _code("glue(...)", [_glue_output("fig", png, "image/png"), _glue_output("n", "3")], "skip"),
        _md("```{glue:figure} fig\n:name: fig-a\nThe curve, measured.\n```\n\n:::{glue} n\n:::", "slide"),
    ])
    source = slides.deck_notebook(path).cells[2].source
    assert f'src="data:image/png;base64,{png}"' in source and 'alt="The curve, measured."' in source
    assert "The curve, measured." in source and ":name:" not in source and "{glue" not in source
    assert source.rstrip().endswith("3")


def test_code_is_hidden_unless_a_cell_asks_and_tags_are_honoured(tmp_path):
    path = _write(tmp_path, "01_a.ipynb", [
        _md("# A", "slide"),
        _code("hidden_source()", [_stream("visible output\n")]),
        _code("shown_source()", [_stream("shown output\n")], tags=("show-code",)),
        _code("hide_input_source()", [_stream("third output\n")], tags=("show-code", "hide-input")),
        _code("remove_input_source()", [_stream("fourth output\n")], tags=("remove-input",)),
        _code("no_output_source()", [_stream("removed output\n")], tags=("remove-output",)),
        _code("warns()", [_stream("kept\n"), _stream("a warning\n", "stderr")], tags=("remove-stderr",)),
        _code("removed_cell_source()", [_stream("removed cell output\n")], tags=("remove-cell",)),
    ])
    deck = slides.write_decks([path], tmp_path / "out", title="Book")[0].read_text()
    for text in ("visible output", "shown_source", "shown output", "third output", "fourth output", "kept"):
        assert text in deck, text
    for text in ("hidden_source", "hide_input_source", "remove_input_source", "removed output", "a warning",
                 "removed_cell", "removed cell output"):
        assert text not in deck, text


def test_long_tables_and_outputs_are_cut_with_a_link_to_the_page(tmp_path):
    rows = "".join(f"<tr><th rowspan='{20 if i == 0 else 1}'>g</th><td>{i}</td></tr>" if i == 0
                   else f"<tr><td>{i}</td></tr>" for i in range(20))
    long_html = f"<table><thead><tr><th>g</th><th>i</th></tr></thead><tbody>{rows}</tbody></table>"
    short_html = "<table><tbody><tr><td>only</td></tr></tbody></table>"
    long_md = "| a | b |\n|---|---|\n" + "\n".join(f"| {i} | x |" for i in range(12)) + "\n\nafter"
    path = _write(tmp_path, "03_c.ipynb", [
        _md("# C", "slide"),
        _code("t", [_html(long_html), _html(short_html)]),
        _md(long_md),
        _code("p", [_stream("".join(f"line {i}\n" for i in range(30)))]),
    ])
    nb = slides.deck_notebook(path)
    cut = nb.cells[1].outputs[0].data["text/html"]
    assert cut.count("<tr>") == 1 + slides.TABLE_ROWS and ">7</td>" in cut and ">8</td>" not in cut
    assert f'rowspan="{slides.TABLE_ROWS}"' in cut
    note = 'first 8 of 20 rows; the full table is on <a href="../notebooks/03_c.html">the page</a>'
    assert note in cut and 'data-kanlib-rows="20"' in cut
    assert "kanlib-cut" not in nb.cells[1].outputs[1].data["text/html"]
    markdown = nb.cells[2].source
    assert "| 7 | x |" in markdown and "| 8 | x |" not in markdown and markdown.endswith("after")
    assert 'first 8 of 12 rows; the full table is on <a href="../notebooks/03_c.html">the page</a>' in markdown
    printed = nb.cells[3].outputs[0].data["text/html"]
    assert "line 11" in printed and "line 12" not in printed and "first 12 of 30 lines" in printed


def test_decks_are_titled_framed_and_carry_speaker_notes(chapters, tmp_path):
    first, _ = chapters
    deck = slides.write_decks([first], tmp_path / "out", title="Book")[0].read_text()
    assert "<title>First chapter slides</title>" in deck and "<title>01_a" not in deck
    assert re.search(r'<aside class="notes">.*Say it slowly\..*</aside>', deck, re.S)
    assert "width: 1280" in deck and "var height = 720" in deck
    assert '"_assets/reveal.js/plugin/notes/notes.js"' in deck and not re.search(r'(src|href)="https?:', deck)
    assert (tmp_path / "out" / "_assets" / "reveal.js" / "plugin" / "notes" / "notes.js").is_file()


def test_the_talk_strings_the_headline_slides_together(chapters, tmp_path):
    first, second = chapters
    talk = slides.talk_notebook([first, second], "The Book")
    types = [cell.metadata.get("slideshow", {}).get("slide_type") for cell in talk.cells]
    sources = _sources(talk)
    heads = [(source.splitlines()[0], kind) for source, kind in zip(sources, types) if kind in ("slide", "subslide")]
    assert heads == [("# The Book", "slide"), ("# First *chapter*", "slide"), ("## Numbers", "subslide"),
                     ("## Told too", "subslide"), ("# Second", "slide"), ("## Speed", "subslide")]
    assert "1. First chapter\n1. Second" in sources[0]
    assert "Say it slowly." in sources and "a fragment" in sources, "a slide brings its following cells"
    assert not any("Aside" in source or "Untold" in source for source in sources)
    assert any("other 0.50" in source for source in sources) and "## Speed\n\n0.50 s" in sources
    assert all("{glue" not in source for source in sources)
    assert len({cell.id for cell in talk.cells}) == len(talk.cells)

    decks = slides.write_decks([first, second], tmp_path / "out", title="The Book")
    assert [deck.name for deck in decks] == ["01_a.slides.html", "02_b.slides.html", slides.TALK_DECK]
    assert "<title>The Book slides</title>" in decks[-1].read_text()


def test_the_slides_page_lists_the_talk_first(chapters):
    first, second = chapters
    listing = site.slide_list_html([first, second])
    links = re.findall(r'href="([^"]+)"', listing)
    assert links == [f"../slides/{slides.TALK_DECK}", "../slides/01_a.slides.html", "../slides/02_b.slides.html"]


def test_bad_notebooks_are_named(tmp_path):
    unknown = _write(tmp_path / "a", "01_a.ipynb", [_md("# A", "slide"), _md("x", "sliide")])
    with pytest.raises(slides.SlideError, match=r"01_a.ipynb: cell 1: expected slide_type in .*, got 'sliide'"):
        slides.write_decks([unknown], tmp_path / "out")
    removed = _write(tmp_path / "e", "01_a.ipynb", [_md("# A", "slide", ("remove-cell",)), _md("x")])
    with pytest.raises(slides.SlideError, match="01_a.ipynb: expected a cell opening a slide that is not tagged"):
        slides.deck_notebook(removed)
    missing = _write(tmp_path / "b", "01_a.ipynb", [
        _md("# A", "slide"), _code("glue", [_glue_output("ratio", "2")], "skip"),
        _md("{glue:text}`ratio:.1f` and {glue:text}`speed:.1f`")])
    with pytest.raises(slides.SlideError, match=r"01_a.ipynb: cell 2: glue key 'speed': expected one of \['ratio'\]"):
        slides.deck_notebook(missing)
    elsewhere = _write(tmp_path / "c", "01_a.ipynb", [_md("# A {glue:text}`../notebooks/09_z.ipynb::k`", "slide")])
    with pytest.raises(slides.SlideError, match=r"01_a.ipynb: cell 0: .*09_z.ipynb.*no such file"):
        slides.deck_notebook(elsewhere)
    cited = _write(tmp_path / "d", "01_a.ipynb", [_md("# A {cite}`nobody2099`", "slide")])
    with pytest.raises(slides.SlideError, match=r"01_a.ipynb: cell 0: citation '\{cite\}`nobody2099`'"):
        slides.deck_notebook(cited)


def test_citations_read_as_author_and_year(tmp_path):
    bib = tmp_path / "references.bib"
    bib.write_text("@misc{one, author = {Liu, Ziming}, title = {A}, year = {2024}}\n"
                   "@misc{two, author = {Coffman, A. and Chen, B.}, title = {B}, year = {2025}}\n"
                   "@misc{many, author = {{LeCun}, Yann and Bottou, L. and Bengio, Y.}, title = {C}, year = {1998}}\n")
    text = slides.paste_citations("KANs {cite}`one`, as {cite:p}`two,many` shows", bib)
    page = "../book/references.html"
    assert text == f"KANs [[Liu 2024]({page})], as [[Coffman and Chen 2025]({page}); [LeCun et al. 1998]({page})] shows"
    with pytest.raises(slides.SlideError, match="expected a key of references.bib, got 'three'"):
        slides.paste_citations("{cite}`three`", bib)


# --- the committed notebooks' decks in a browser -------------------------------------------------------

# Measured as /work/shared/tools/look-at-the-book measures a slide: the present (innermost) section, in the
# deck's own 1280 x 720 coordinates, after the deck has fitted it (figures shrunk, long tables cut).
_MEASURE_SLIDE = """
const [h, v, done] = arguments;
Reveal.slide(h, v);
const measure = () => {
  const s = document.querySelector('.slides section.present section.present')
            || document.querySelector('.slides > section.present');
  const heading = s.querySelector('h1, h2, h3');
  done({h: h, v: v, height: s.scrollHeight, width: s.scrollWidth, tall: s.scrollHeight > 730,
        wide: s.scrollWidth > 1290, glue: (s.innerText.match(/\\{glue/g) || []).length,
        cut: Array.from(s.querySelectorAll('.jp-OutputArea-output, .jp-RenderedHTMLCommon, pre'))
               .filter(e => e.scrollWidth > e.clientWidth + 2).length,
        heading: heading ? heading.innerText.trim() : ''});
};
if (window.MathJax && MathJax.Hub) { MathJax.Hub.Queue(measure); } else { measure(); }
"""


@pytest.fixture(scope="module")
def walked(browser, tmp_path_factory):
    """{deck name: (console errors, broken images, glue left in the page, [slide measures])} for every deck
    write_decks makes of the committed notebooks, the talk included."""
    from selenium.webdriver.support.ui import WebDriverWait

    from conftest import assets_installed, broken_images, open_page, serve
    from kanlib.book.runner import find_notebooks

    if not assets_installed():
        pytest.skip("npm assets missing: run `make assets`")
    out = tmp_path_factory.mktemp("decks")
    decks = slides.write_decks(find_notebooks(), out)
    results = {}
    browser.set_window_size(1280, 720)
    try:
        with serve(out) as base:
            for deck in decks:
                errors = open_page(browser, f"{base}/{deck.name}")
                WebDriverWait(browser, 30).until(
                    lambda d: d.execute_script("return !!(window.Reveal && Reveal.isReady())"))
                indices = browser.execute_script("return Reveal.getSlides().map(s => Reveal.getIndices(s))")
                measures = [browser.execute_async_script(_MEASURE_SLIDE, i["h"], i.get("v") or 0) for i in indices]
                errors += [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
                glue = browser.execute_script(
                    "return (document.documentElement.textContent.match(/\\{glue/g) || []).length")
                notes = browser.execute_script("return Reveal.hasPlugin('notes')")
                results[deck.name] = {"errors": errors, "broken": broken_images(browser), "glue": glue,
                                      "notes": notes, "slides": measures}
    finally:
        browser.set_window_size(1280, 900)
    return results


def test_every_deck_shows_its_numbers_and_loads_in_a_browser(walked):
    from kanlib.book.runner import find_notebooks

    notebooks = find_notebooks()
    assert sorted(walked) == sorted([slides.deck_name(path) for path in notebooks] + [slides.TALK_DECK])
    for name, deck in walked.items():
        assert deck["errors"] == [], (name, deck["errors"])
        assert deck["broken"] == [], (name, deck["broken"])
        assert deck["glue"] == 0 and not any(slide["glue"] for slide in deck["slides"]), f"{name}: glue markup left"
        assert deck["notes"], f"{name}: the speaker-notes plugin is not loaded"
        assert len(deck["slides"]) >= 2, name
    talk_columns = {slide["h"] for slide in walked[slides.TALK_DECK]["slides"]}
    assert len(talk_columns) == 1 + len(notebooks), "the talk: a title slide, then one column per notebook"


def test_every_slide_fits_the_frame(walked):
    over = [(name, s) for name, deck in walked.items() for s in deck["slides"] if s["tall"] or s["wide"]]
    listing = "; ".join(f"{name}#/{s['h']}/{s['v']} {s['heading']!r} {s['width']}x{s['height']} px" for name, s in over)
    cut = [f"{name}#/{s['h']}/{s['v']}" for name, deck in walked.items() for s in deck["slides"] if s["cut"]]
    assert not cut, f"slides whose tables, code or outputs run past the right edge: {cut}"
    assert not over, f"slides larger than the 1280 x 720 frame: {listing}"
