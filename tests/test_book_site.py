"""The website and the slides: built from the committed notebooks with warnings as errors, then opened in
headless Chromium from a local server (titles, code outputs, images loaded, no JavaScript errors)."""
from __future__ import annotations

import contextlib
import functools
import http.server
import os
import pathlib
import shutil
import threading

import nbformat
import pytest

from kanlib.book.site import BookBuildError, run_banner, stage
from kanlib.book.runner import find_notebooks
from kanlib.book.slides import check_slide_metadata, deck_name
from kanlib.book.web_assets import MissingAssetsError, asset_dir

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def _assets_installed() -> bool:
    try:
        asset_dir("reveal.js")
        asset_dir("mathjax")
    except MissingAssetsError:
        return False
    return True


needs_assets = pytest.mark.skipif(not _assets_installed() and not os.environ.get("CI"),
                                  reason="npm assets missing: run `make assets` (required under CI)")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site built from the committed notebooks (what `make site` publishes)."""
    from kanlib.book.site import build_site

    build_dir = tmp_path_factory.mktemp("site")
    index = build_site("notebooks", build_dir=build_dir)
    return index.parent


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


def test_stage_fills_banner_and_deck_list_and_refuses_missing_notebooks(tmp_path):
    if not _assets_installed():
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


# --- a real browser ---------------------------------------------------------------------------------

class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve(folder: pathlib.Path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=folder))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        if os.environ.get("CI"):
            pytest.fail("chromium and chromedriver are required under CI (make test installs them)")
        pytest.skip("chromium/chromedriver not installed (Debian: apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,900"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def open_page(driver, url: str, screenshot: pathlib.Path) -> list[dict]:
    """Load `url`, wait until images and MathJax settle, save a screenshot; return the console's errors."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get_log("browser")  # drop what earlier pages left
    driver.get(url)
    WebDriverWait(driver, 30).until(lambda d: d.execute_script(
        "return document.readyState === 'complete' && Array.from(document.images).every(i => i.complete)"))
    driver.execute_script("return new Promise(r => setTimeout(r, 500))")
    driver.save_screenshot(str(screenshot))
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def broken_images(driver) -> list[str]:
    return driver.execute_script(
        "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)")


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
