"""Every page of the built site, as a reader meets it: internal links resolve, and in headless Chromium at
1400 px no raw glue, nothing past the content column (wide tables scroll in their own box), every image
with alt text that is not a file path, and each figure numbered with a caption."""
from __future__ import annotations

import html.parser
import pathlib
import posixpath
import urllib.parse

from conftest import open_page, serve

PAGE_CHECKS = r"""
const article = document.querySelector('article.bd-article') || document.querySelector('article');
const right = article.getBoundingClientRect().right + 2;
const scrolls = el => { for (let e = el.parentElement; e && e !== article; e = e.parentElement) {
  const style = getComputedStyle(e); if (['auto', 'scroll'].includes(style.overflowX)) return true; }
  return ['auto', 'scroll'].includes(getComputedStyle(el).overflowX); };
return {
  glue: (document.body.innerText.match(/\{glue|\{cite/g) || []).length,
  pastColumn: Array.from(article.querySelectorAll('table, pre, img, mjx-container, .kanlib-plotly'))
    .filter(e => e.getBoundingClientRect().right > right && !scrolls(e))
    .map(e => e.tagName + ': ' + (e.innerText || e.src || '').slice(0, 60)),
  noAlt: Array.from(article.querySelectorAll('img'))
    .filter(i => !i.alt || /\.(png|svg|jpe?g)$/i.test(i.alt) || /^No description/.test(i.alt)
                 || (!/\s/.test(i.alt.trim()) && /[\/\\]/.test(i.alt)))
    .map(i => i.src),
  uncaptioned: Array.from(article.querySelectorAll('.cell_output img'))
    .filter(i => !i.closest('figure') || !i.closest('figure').querySelector('figcaption .caption-number'))
    .map(i => i.src),
};
"""


class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("href"):
            self.hrefs.append(attrs["href"])


def _parse(path: pathlib.Path) -> _Links:
    parser = _Links()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def broken_links(site: pathlib.Path) -> list[str]:
    """'page -> href' for every relative link of every page whose file or anchor does not exist."""
    parsed: dict[pathlib.Path, _Links] = {}
    broken = []
    for page in sorted(site.rglob("*.html")):
        if "_static" in page.parts or "slides" in page.parts:
            continue
        links = parsed.setdefault(page, _parse(page))
        for href in links.hrefs:
            url = urllib.parse.urlsplit(href)
            if url.scheme or url.netloc or href.startswith(("mailto:", "javascript:")):
                continue
            target = page if not url.path else pathlib.Path(
                posixpath.normpath(posixpath.join(page.parent.as_posix(), urllib.parse.unquote(url.path))))
            if target.is_dir():
                target = target / "index.html"
            if not target.is_file():
                broken.append(f"{page.relative_to(site)} -> {href}")
                continue
            if url.fragment and target.suffix == ".html":
                ids = parsed.setdefault(target, _parse(target)).ids
                if url.fragment not in ids:
                    broken.append(f"{page.relative_to(site)} -> {href} (no such anchor)")
    return broken


def test_every_internal_link_resolves(site):
    assert broken_links(site) == []


def test_every_page_reads_well_at_1400_px(site, browser, tmp_path):
    pages = sorted(path.relative_to(site).as_posix() for path in [*site.glob("*.html"), *site.glob("book/*.html"),
                                                                  *site.glob("notebooks/*.html")]
                   if path.name not in ("genindex.html", "search.html"))
    browser.set_window_size(1400, 1000)
    problems = {}
    with serve(site) as base:
        for page in pages:
            errors = open_page(browser, f"{base}/{page}", tmp_path / (page.replace("/", "_") + ".png"))
            found = browser.execute_script(PAGE_CHECKS)
            found = {key: value for key, value in found.items() if value}
            if errors:
                found["console errors"] = [entry["message"][:120] for entry in errors]
            if found:
                problems[page] = found
    assert problems == {}


def test_broken_links_are_found(tmp_path):
    (tmp_path / "book").mkdir()
    (tmp_path / "index.html").write_text('<a href="book/a.html#there">a</a><a href="https://x.org">x</a>'
                                         '<a href="#top">t</a><a href="book/missing.html">m</a><p id="top"></p>')
    (tmp_path / "book" / "a.html").write_text('<h1 id="here">A</h1><a href="../index.html#nowhere">back</a>')
    assert broken_links(tmp_path) == ["book/a.html -> ../index.html#nowhere (no such anchor)",
                                      "index.html -> book/a.html#there (no such anchor)",
                                      "index.html -> book/missing.html"]
