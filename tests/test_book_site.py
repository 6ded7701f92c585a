"""The website and the slides: built from copies of the committed notebooks with warnings as errors, then opened
in headless Chromium from a local server (titles, code outputs, images loaded, no JavaScript errors); and the
conventional `jupyter-book build .` on a copy of the repo's sources, with a repository URL set.

The copies differ from the committed notebooks where the tests need it: the first has recorded cell times (one
cell over a second) and a full-mode run's parameters, the second has no times (a run from before they were
recorded), the last a plotly figure loading the site's own plotly.js.
"""
from __future__ import annotations

import datetime
import html
import os
import pathlib
import re
import shutil
import subprocess
import sys
import types

import docutils.utils
import nbformat
import pytest
import yaml
from conftest import assets_installed, broken_images, open_page, serve
from docutils import nodes

from kanlib.book.runner import INJECTED_TAG, STAMP_TAG, RunStamp, find_notebooks
from kanlib.book.site import BookBuildError, build_staged, prepare_page, run_banner, show_parameters, stage
from kanlib.book.slides import check_slide_metadata, deck_name
from kanlib.book.sphinx_ext import (BADGE_CLASS, SENTENCE_CLASS, TABLE_WRAPPER, add_cell_time_badges,
                                   mark_pasted_sentences, plotly_js, repository_buttons, wrap_output_tables)
from kanlib.book.web_assets import MissingAssetsError, asset_dir

REPO = pathlib.Path(__file__).resolve().parents[1]
REPO_URL = "https://github.com/example/kanlib"
TIMED_S, UNTIMED_S, NOTEBOOK_S = 2.5, 0.4, 125.0
RUN_PARAMETERS = {"device": "cpu", "quick": False, "seed": 0}
PLOTLY_DIV = "kanlib-plotly-check"
PLOTLY_HTML = f"""<div id="{PLOTLY_DIV}" style="height: 240px"></div>
<script src="../_static/plotly.min.js"></script>
<script>Plotly.newPlot("{PLOTLY_DIV}", [{{x: [1, 2, 3], y: [2, 1, 3]}}], {{margin: {{t: 10}}}});</script>
"""
NOT_A_PAGE = "Not a page\n==========\n\n:func:`nowhere`\n\n.. no-such-directive::\n"  # two warnings if read


needs_assets = pytest.mark.skipif(not assets_installed() and not os.environ.get("CI"),
                                  reason="npm assets missing: run `make assets` (required under CI)")


def shown_code_cells(nb) -> list:
    hidden = {"remove-cell", "parameters", INJECTED_TAG}
    return [cell for cell in nb.cells
            if cell.cell_type == "code" and cell.source.strip() and not hidden & set(cell.metadata.get("tags", []))]


@pytest.fixture(scope="module")
def notebooks_under_test(tmp_path_factory) -> pathlib.Path:
    """Copies of the committed notebooks, changed as the module's docstring says."""
    folder = tmp_path_factory.mktemp("notebooks")
    paths = find_notebooks()
    for path in paths:
        shutil.copyfile(path, folder / path.name)
    first, second, last = folder / paths[0].name, folder / paths[1].name, folder / paths[-1].name
    nb = nbformat.read(first, as_version=4)
    cells = shown_code_cells(nb)
    for cell in cells:
        cell.metadata.setdefault("kanlib", {})["duration_s"] = UNTIMED_S
    cells[0].metadata["kanlib"]["duration_s"] = TIMED_S
    nb.metadata["kanlib"]["run"]["duration_s"] = NOTEBOOK_S
    nb.metadata["kanlib"]["parameters"] = RUN_PARAMETERS
    nbformat.write(nb, first)
    nb = nbformat.read(second, as_version=4)
    nb.metadata["kanlib"]["run"].pop("duration_s", None)
    for cell in nb.cells:
        cell.metadata.get("kanlib", {}).pop("duration_s", None)
    nbformat.write(nb, second)
    nb = nbformat.read(last, as_version=4)
    figure = nbformat.v4.new_code_cell("figure  # a plotly figure")
    figure.metadata["slideshow"] = {"slide_type": "skip"}
    figure.outputs = [nbformat.v4.new_output("display_data", data={"text/html": PLOTLY_HTML})]
    nb.cells.append(figure)
    nbformat.write(nb, last)
    return folder


@pytest.fixture(scope="module")
def site(tmp_path_factory, notebooks_under_test):
    """The site built as `make site` builds it, from the copies; the stage folder is beside it."""
    build_dir = tmp_path_factory.mktemp("site")
    staged = stage(notebooks_under_test, build_dir / "site-src")
    return build_staged(staged, build_dir=build_dir).parent


@pytest.fixture(scope="module")
def conventional(tmp_path_factory) -> pathlib.Path:
    """`jupyter-book build . -W` in a copy of the repo's sources with repository.url set and, beside them, folders
    whose files are no pages (a broken .rst in each); returns the built html folder."""
    root = tmp_path_factory.mktemp("repo")
    for name in ("_config.yml", "_toc.yml", "book", "notebooks", "_static", "references.bib"):
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, root / name)
        elif source.is_file():
            shutil.copyfile(source, root / name)
    config = yaml.safe_load((root / "_config.yml").read_text())
    assert config["repository"]["url"] == "", "the repository has no public address yet"
    config["repository"]["url"] = REPO_URL
    (root / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    for folder in (".venv/lib/python3/site-packages/pkg", "node_modules/pkg", "tests", "data", "kanlib", ".whl"):
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / "README.rst").write_text(NOT_A_PAGE)
    command = [sys.executable, "-c", "from jupyter_book.cli.main import main; main()", "build", ".", "-W", "-n",
               "--keep-going"]
    result = subprocess.run(command, cwd=root, capture_output=True, text=True)
    log = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode == 0, "expected `jupyter-book build . -W` to pass, got:\n" + "\n".join(log[-30:])
    return root / "_build" / "html"


def page_text(page: pathlib.Path) -> str:
    """The page's HTML without its tags (highlighted code reads as it was written)."""
    return html.unescape(re.sub(r"<[^>]+>", "", page.read_text()))


@needs_assets
def test_site_builds_with_every_page_and_deck(site):
    notebooks = find_notebooks()
    assert (site / "index.html").is_file()
    for path in notebooks:
        assert (site / "notebooks" / f"{path.stem}.html").is_file(), path.name
        assert (site / "slides" / deck_name(path)).is_file(), path.name
    assert (site / "book" / "reproduce.html").is_file() and (site / "book" / "slides.html").is_file()
    slides_page = (site / "book" / "slides.html").read_text()
    assert all(deck_name(path) in slides_page for path in notebooks), "the slides page links every deck"
    assert (site / "mathjax" / "tex-chtml.js").is_file(), "MathJax is served from the site itself"


@needs_assets
def test_every_page_names_the_run_it_shows(site):
    banner = run_banner(find_notebooks())
    assert banner.startswith("This site shows")
    pages = sorted([*site.glob("book/*.html"), *site.glob("notebooks/*.html")])
    book_pages = sorted(pathlib.Path(__file__).resolve().parent.parent.glob("book/*.md"))
    assert len(pages) == len(find_notebooks()) + len(book_pages)
    for page in pages:
        text = page.read_text()
        assert "bd-header-announcement" in text and "run on" in text, page.name


@needs_assets
def test_a_cell_that_took_more_than_a_second_shows_its_wall_time_on_the_page_only(site):
    notebook = find_notebooks()[0]
    page = (site / "notebooks" / f"{notebook.stem}.html").read_text()
    assert page.count(f'class="{BADGE_CLASS}"') == 1, "one cell took more than a second"
    assert "wall time 2.5 s" in page
    deck = (site / "slides" / deck_name(notebook)).read_text()
    assert BADGE_CLASS not in deck and "wall time" not in deck


@needs_assets
def test_page_stamps_say_how_long_the_notebook_took_or_that_it_was_not_recorded(site):
    first, second = find_notebooks()[:2]
    assert "that took 2 min 05 s, executed" in page_text(site / "notebooks" / f"{first.stem}.html")
    assert "(its times were not recorded)" in page_text(site / "notebooks" / f"{second.stem}.html")


@needs_assets
def test_the_parameters_cell_shows_the_values_the_run_used_and_the_notebook_keeps_its_defaults(site):
    notebook = find_notebooks()[0]
    committed = next(cell.source for cell in nbformat.read(notebook, as_version=4).cells
                     if "parameters" in cell.metadata.get("tags", []))
    default = next(line for line in committed.splitlines() if line.startswith("quick = True"))
    column = default.index("#")
    text = page_text(site / "notebooks" / f"{notebook.stem}.html")
    assert "quick = False".ljust(column) + default[column:] in text, "the value used, the comment in its column"
    assert re.search(r'^device = "cpu" +#', text, re.MULTILINE)


@needs_assets
def test_the_site_serves_its_css_and_plotly_js(site):
    assert (site / "_static" / "kanlib.css").read_text() == (REPO / "_static" / "kanlib.css").read_text()
    assert (site / "_static" / "plotly.min.js").read_bytes() == plotly_js().read_bytes()
    for page in [*site.glob("book/*.html"), *site.glob("notebooks/*.html")]:
        text = page.read_text()
        assert "_static/kanlib.css" in text, page.name
        assert "plotly.min.js" not in text or PLOTLY_DIV in text or "kanlib-plotly" in text, \
            f"{page.name}: plotly.js is loaded only where a figure uses it"
    assert (site / "favicon.ico").is_file()


@needs_assets
def test_without_a_repository_url_no_repository_edit_or_launch_button(site):
    for page in (site / "book" / "intro.html", site / "notebooks" / f"{find_notebooks()[0].stem}.html"):
        text = page.read_text()
        for marker in ("btn-source-repository-button", "btn-source-edit-button", "mybinder.org", "colab.research"):
            assert marker not in text, f"{page.name}: {marker}"


@needs_assets
def test_jupyter_book_build_from_the_repo_root_makes_every_page(conventional):
    for path in find_notebooks():
        assert (conventional / "notebooks" / f"{path.stem}.html").is_file(), path.name
    for path in REPO.glob("book/*.md"):
        assert (conventional / "book" / f"{path.stem}.html").is_file(), path.name
    assert (conventional / "mathjax" / "tex-chtml.js").is_file(), "MathJax without a staged _extra folder"
    assert (conventional / "_static" / "plotly.min.js").is_file() and (conventional / "favicon.ico").is_file()
    built = {path.relative_to(conventional).parts[0] for path in conventional.rglob("*.html")}
    assert not built & {".venv", "node_modules", "tests", "data", "kanlib", ".whl"}, built


@needs_assets
def test_a_repository_url_turns_on_the_repository_edit_and_launch_buttons(conventional):
    notebook = find_notebooks()[0]
    intro = (conventional / "book" / "intro.html").read_text()
    assert f'href="{REPO_URL}"' in intro and f'href="{REPO_URL}/edit/main/book/intro.md"' in intro
    assert "mybinder.org" not in intro, "launch buttons on notebook pages only"
    page = (conventional / "notebooks" / f"{notebook.stem}.html").read_text()
    assert f'href="{REPO_URL}/edit/main/notebooks/{notebook.name}"' in page
    assert f"https://mybinder.org/v2/gh/example/kanlib/main?urlpath=lab/tree/notebooks/{notebook.name}" in page
    assert f"https://colab.research.google.com/github/example/kanlib/blob/main/notebooks/{notebook.name}" in page


def test_show_parameters_keeps_comments_in_their_column():
    source = ('device = "auto"       # "cpu", "cuda" or "auto"\nquick = True          # small sizes\nseed = 0\n'
              'size = 8 * 2**30      # bytes\nname = "x#y"  # a hash in a string')
    shown = show_parameters(source, {"device": "cuda", "quick": False, "seed": 0, "size": 4, "name": "été"})
    assert shown.splitlines() == [
        'device = "cuda"       # "cpu", "cuda" or "auto"',
        "quick = False         # small sizes",
        "seed = 0",
        "size = 4              # bytes",
        'name = "été"  # a hash in a string',
    ]
    assert show_parameters("quick = True", {"quick": False, "extra": [1, 2]}) == (
        "quick = False\nextra = [1, 2]  # set by the run")
    long = show_parameters("d = 'a'  # c", {"d": "a much longer value"})
    assert long == 'd = "a much longer value"  # c'
    multi = show_parameters("grids = [3,\n         10]  # G\nseed = 0", {"grids": [5], "seed": 1})
    assert multi == "grids = [5]  # G\nseed = 1"
    with pytest.raises(ValueError, match="parameters cell: expected Python, got .* at line 1"):
        show_parameters("quick = = True", {"quick": False})


def test_prepare_page_writes_the_stamp_anew_and_shows_the_parameters():
    nb = nbformat.v4.new_notebook()
    stamp_cell = nbformat.v4.new_markdown_cell("> **Run shown:** an old text")
    stamp_cell.metadata["tags"] = [STAMP_TAG]
    parameters = nbformat.v4.new_code_cell('device = "auto"  # where\nquick = True')
    parameters.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# T"), stamp_cell, parameters]
    stamp = RunStamp("cuda", "H100", "full", "2026-11-30", "b" * 40, False, 61.0)
    nb.metadata["kanlib"] = {"run": stamp.__dict__, "parameters": {"device": "cuda", "quick": False, "seed": 0}}
    prepare_page(nb, "01_t.ipynb")
    assert stamp_cell.source == stamp.to_markdown("01_t.ipynb") and "that took 1 min 01 s" in stamp_cell.source
    assert parameters.source == 'device = "cuda"  # where\nquick = False\nseed = 0  # set by the run'
    broken = nbformat.v4.new_code_cell("quick = (")
    broken.metadata["tags"] = ["parameters"]
    nb.cells = [broken]
    with pytest.raises(BookBuildError, match="01_t.ipynb: parameters cell: expected Python"):
        prepare_page(nb, "01_t.ipynb")


def test_run_banner_adds_up_the_recorded_times(tmp_path):
    paths = []
    for name, seconds in (("01_a", 100.0), ("02_b", 25.0), ("03_c", None)):
        nb = nbformat.v4.new_notebook()
        nb.metadata["kanlib"] = {"run": {"device": "cpu", "device_name": "CPU", "mode": "quick", "date": "2026-11-30",
                                         "commit": "a" * 40, "dirty": False, "duration_s": seconds}}
        nbformat.write(nb, tmp_path / f"{name}.ipynb")
        paths.append(tmp_path / f"{name}.ipynb")
    assert run_banner(paths[:2]) == ("This site shows a quick-mode run on cpu (CPU), executed 2026-11-30 at commit "
                                     "aaaaaaaaaa (2 min 05 s in all).")
    assert run_banner(paths).endswith("(2 min 05 s in all, 1 without recorded times).")
    assert run_banner(paths[:1]).endswith("(it took 1 min 40 s).")
    assert run_banner(paths[2:]).endswith("at commit aaaaaaaaaa.")


def _cell(seconds, *, source: bool = True) -> nodes.container:
    cell = nodes.container(nb_element="cell_code", cell_metadata={"kanlib": {"duration_s": seconds}})
    if source:
        cell += nodes.container(nb_element="cell_code_source")
    cell += nodes.container(nb_element="cell_code_output")
    return cell


def test_printed_tables_scroll_in_their_own_box_and_nothing_else_is_wrapped():
    document = docutils.utils.new_document("page")
    table = nodes.raw("", "<table><tr><td>1</td></tr></table>", format="html")
    prose = nodes.raw("", "<p>no table</p>", format="html")
    latex = nodes.raw("", "<table>", format="latex")
    document += [table, prose, latex]
    wrap_output_tables(None, document, "page")
    wrap_output_tables(None, document, "page")  # once only
    shown = [node.astext() for node in document.findall(nodes.raw)]
    assert shown == [f"{TABLE_WRAPPER}\n<table><tr><td>1</td></tr></table>\n</div>", "<p>no table</p>", "<table>"]


def test_pasted_sentences_are_marked_and_pasted_numbers_are_not():
    document = docutils.utils.new_document("page")
    number = nodes.inline("0.19", "0.19", classes=["pasted-text"])
    sentence_text = "On AMD EPYC, measured 2026-12-04, kanlib's layer takes 0.19 times the dense product's time."
    sentence = nodes.inline(sentence_text, sentence_text, classes=["pasted-text"])
    other = nodes.inline(sentence_text, sentence_text, classes=["guilabel"])
    document += nodes.paragraph("", "", number, sentence, other)
    mark_pasted_sentences(None, document, "page")
    mark_pasted_sentences(None, document, "page")  # once only
    assert number["classes"] == ["pasted-text"] and other["classes"] == ["guilabel"]
    assert sentence["classes"] == ["pasted-text", SENTENCE_CLASS]


def test_cell_time_badges_go_after_the_code_of_cells_over_a_second():
    document = docutils.utils.new_document("page")
    cells = [_cell(2.5), _cell(1.0), _cell(None), _cell(True), _cell(75.0, source=False)]
    document.extend(cells)
    add_cell_time_badges(None, document)
    badge = cells[0][1]
    assert isinstance(badge, nodes.raw) and badge["format"] == "html"
    assert f'class="{BADGE_CLASS}"' in badge.astext() and "wall time 2.5 s" in badge.astext()
    assert [len(cell) for cell in cells] == [3, 2, 2, 2, 2]
    assert "wall time 1 min 15 s" in cells[4][0].astext(), "no code shown: the badge opens the cell"


@pytest.mark.parametrize("url, colab", [(REPO_URL, True), ("https://gitlab.com/example/kanlib", False)])
def test_repository_buttons_follow_the_repository_url(url, colab):
    config = types.SimpleNamespace(html_theme_options={"repository_url": url, "launch_buttons": {"thebe": False}})
    repository_buttons(None, config)
    options = config.html_theme_options
    assert options["use_repository_button"] and options["use_edit_page_button"]
    assert options["launch_buttons"]["binderhub_url"] == "https://mybinder.org"
    assert ("colab_url" in options["launch_buttons"]) == colab
    empty = types.SimpleNamespace(html_theme_options={"repository_url": "", "launch_buttons": {"binderhub_url": ""}})
    repository_buttons(None, empty)
    assert empty.html_theme_options == {"repository_url": "", "launch_buttons": {"binderhub_url": ""}}


def test_citation_cff_has_the_required_keys():
    citation = yaml.safe_load((REPO / "CITATION.cff").read_text())
    missing = {"cff-version", "message", "title", "authors", "version", "date-released", "license", "keywords"}
    missing -= set(citation)
    assert not missing, f"CITATION.cff: expected the keys {sorted(missing)}, got none"
    assert citation["cff-version"] == "1.2.0" and citation["license"] == "MIT"
    assert citation["authors"] == [{"name": "kanlib contributors"}], "an entity, not a person"
    version = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.MULTILINE)[1]
    assert citation["version"] == version, f"CITATION.cff: expected version {version}, got {citation['version']}"
    datetime.date.fromisoformat(str(citation["date-released"]))
    assert isinstance(citation["keywords"], list) and citation["keywords"]


def test_stage_fills_banner_and_deck_list_and_refuses_missing_notebooks(tmp_path):
    if not assets_installed():
        pytest.skip("npm assets missing")
    notebooks = find_notebooks()
    staged = stage("notebooks", tmp_path / "stage")
    assert sorted(p.name for p in (staged / "notebooks").iterdir()) == sorted(p.name for p in notebooks)
    assert "<!-- kanlib:slide-decks -->" not in (staged / "book" / "slides.md").read_text()
    assert "announcement" in (staged / "_config.yml").read_text()
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copyfile(notebooks[0], partial / notebooks[0].name)
    if len(notebooks) > 1:
        with pytest.raises(BookBuildError, match="expected an executed copy of every notebook, missing"):
            stage(partial, tmp_path / "stage2")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BookBuildError, match="expected NN_topic.ipynb files"):
        stage(empty, tmp_path / "stage3")


def test_run_banner_lists_several_runs(tmp_path):
    paths = []
    for name, mode in (("01_a", "quick"), ("02_b", "full")):
        nb = nbformat.v4.new_notebook()
        nb.metadata["kanlib"] = {"run": {"device": "cpu", "device_name": "CPU", "mode": mode, "date": "2026-11-24",
                                         "commit": "a" * 40, "dirty": False}}
        nbformat.write(nb, tmp_path / f"{name}.ipynb")
        paths.append(tmp_path / f"{name}.ipynb")
    nbformat.write(nbformat.v4.new_notebook(), tmp_path / "03_c.ipynb")
    banner = run_banner([*paths, tmp_path / "03_c.ipynb"])
    assert "several runs" in banner and "01_a: a quick-mode run" in banner and "02_b: a full-mode run" in banner
    assert "03_c: not executed by the runner" in banner


def test_slide_metadata_is_checked():
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_markdown_cell("# T")
    cell.metadata["slideshow"] = {"slide_type": "sliide"}
    nb.cells = [cell]
    with pytest.raises(ValueError, match="expected slide_type in .* got 'sliide'"):
        check_slide_metadata(nb, "01_t.ipynb")
    cell.metadata["slideshow"] = {"slide_type": "skip"}
    with pytest.raises(ValueError, match="at least one cell with slideshow.slide_type 'slide'"):
        check_slide_metadata(nb, "01_t.ipynb")


def test_missing_assets_name_the_command(tmp_path):
    with pytest.raises(MissingAssetsError, match="make assets"):
        asset_dir("reveal.js", prefix=tmp_path)
    with pytest.raises(ValueError, match="expected one of"):
        asset_dir("bootstrap")


@needs_assets
def test_browser_renders_index_notebook_page_and_deck(site, browser, tmp_path):
    notebook = find_notebooks()[0]
    with serve(site) as base:
        errors = open_page(browser, f"{base}/index.html", tmp_path / "index.png")
        assert errors == [], errors
        assert "KANs, fast" in browser.title
        assert "This site shows" in browser.find_element("css selector", ".bd-header-announcement").text
        assert broken_images(browser) == []

        errors = open_page(browser, f"{base}/notebooks/{notebook.stem}.html", tmp_path / "notebook.png")
        assert errors == [], errors
        title = nbformat.read(notebook, as_version=4).cells[0].source.splitlines()[0][2:].strip()
        assert title in browser.title
        outputs = browser.find_elements("css selector", ".cell_output")
        assert outputs, "the page shows code outputs"
        assert any("device :" in out.text for out in outputs), "the environment printout is shown"
        images = browser.find_elements("css selector", ".cell_output img")
        assert images, "the page shows figures"
        assert broken_images(browser) == []
        assert browser.find_elements("css selector", "mjx-container"), "MathJax typeset the math"
        badges = browser.find_elements("css selector", f".{BADGE_CLASS}")
        assert [badge.text for badge in badges] == ["wall time 2.5 s"]
        badge_size, text_size, align = browser.execute_script(
            "const badge = getComputedStyle(document.querySelector('.kanlib-cell-time'));"
            "const text = getComputedStyle(document.querySelector('.bd-article p'));"
            "return [parseFloat(badge.fontSize), parseFloat(text.fontSize), badge.textAlign]")
        assert badge_size < text_size and align == "right", "kanlib.css makes the badge small and puts it right"
        stamps = [quote.text for quote in browser.find_elements("css selector", ".bd-article blockquote")
                  if "Run shown" in quote.text]
        assert len(stamps) == 1 and "that took 2 min 05 s" in stamps[0], stamps
        assert not browser.find_elements("css selector", ".btn-source-repository-button, .dropdown-launch-buttons")

        errors = open_page(browser, f"{base}/slides/{deck_name(notebook)}", tmp_path / "deck.png")
        assert errors == [], errors
        # RequireJS loads reveal.js, which marks its root `.ready` once the deck is laid out.
        from selenium.webdriver.support.ui import WebDriverWait
        WebDriverWait(browser, 30).until(lambda d: d.find_elements("css selector", ".reveal.ready"))
        assert len(browser.find_elements("css selector", ".reveal .slides > section")) >= 3
        assert title.upper() in browser.find_element("css selector", ".reveal .slides").text.upper()
        assert broken_images(browser) == []
    for name in ("index.png", "notebook.png", "deck.png"):
        assert (tmp_path / name).stat().st_size > 10_000, f"{name} is a real screenshot"


# Each table, equation and code block ends inside the column; a wide one scrolls in its own box (the nearest
# ancestor that scrolls sideways), and code wraps instead of being cut.
LAYOUT_PROBLEMS = """
const column = document.querySelector('.bd-article').getBoundingClientRect().right + 1;
const problems = [];
for (const element of document.querySelectorAll('.bd-article table, .bd-article pre, .bd-article mjx-container')) {
  let box = element;
  while (box && box.tagName !== 'ARTICLE' && !['auto', 'scroll'].includes(getComputedStyle(box).overflowX)) {
    box = box.parentElement;
  }
  const right = (box && box.tagName !== 'ARTICLE' ? box : element).getBoundingClientRect().right;
  const name = element.tagName + ' "' + element.textContent.trim().slice(0, 40) + '"';
  if (right > column) problems.push(`${name} ends at ${Math.round(right)} px, the column at ${Math.round(column)}`);
  if (element.tagName === 'PRE' && element.scrollWidth > element.clientWidth + 1) problems.push(`${name} is cut`);
}
return problems;
"""


@needs_assets
def test_browser_pages_fit_the_column_and_plotly_draws_offline(site, browser, tmp_path):
    notebooks = find_notebooks()
    browser.set_window_size(1400, 900)
    with serve(site) as base:
        for notebook in notebooks:
            errors = open_page(browser, f"{base}/notebooks/{notebook.stem}.html", tmp_path / f"{notebook.stem}.png")
            assert errors == [], errors
            browser.execute_script("return window.MathJax?.startup?.promise ?? null")
            assert browser.execute_script(LAYOUT_PROBLEMS) == [], f"{notebook.name} at 1400 px"
        assert browser.execute_script("return typeof window.Plotly") == "object", "the last page loaded plotly.js"
        assert browser.find_elements("css selector", f"#{PLOTLY_DIV} .main-svg"), "plotly drew the figure"
        stylesheets = browser.execute_script("return Array.from(document.styleSheets).map(s => s.href || '')")
        assert any(href.split("?")[0].endswith("/_static/kanlib.css") for href in stylesheets), stylesheets
