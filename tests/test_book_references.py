"""The book's references: every cited key is in references.bib, every entry says who, what, when and where
to find it, and no page speaks of internal documents."""
from __future__ import annotations

import pathlib
import re

import nbformat
import pytest
import yaml
from pybtex.database import parse_file

ROOT = pathlib.Path(__file__).resolve().parents[1]
BIB = ROOT / "references.bib"
CITE = re.compile(r"\{cite(?::[a-z]+)?\}`(?P<keys>[^`]*)`")
INTERNAL_WORDING = ("the issue", "seed report")


def page_sources() -> dict[str, str]:
    """The prose of every page: book/*.md and the markdown cells of notebooks/*.ipynb."""
    pages = {str(path.relative_to(ROOT)): path.read_text(encoding="utf-8") for path in sorted(ROOT.glob("book/*.md"))}
    for path in sorted(ROOT.glob("notebooks/*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        pages[str(path.relative_to(ROOT))] = "\n\n".join(cell.source for cell in nb.cells
                                                         if cell.cell_type == "markdown")
    return pages


def cited_keys(text: str) -> list[str]:
    return [key.strip() for match in CITE.finditer(text) for key in match["keys"].split(",") if key.strip()]


@pytest.fixture(scope="module")
def bibliography():
    return parse_file(str(BIB), bib_format="bibtex")


def test_the_cite_pattern_reads_single_and_multiple_keys():
    assert cited_keys("a {cite}`liu2024kan` b {cite:p}`pykan, efficientkan` c {cite:t}`x`") == [
        "liu2024kan", "pykan", "efficientkan", "x"]


def test_every_cited_key_is_in_references_bib(bibliography):
    missing = {f"{page}: {key}" for page, text in page_sources().items() for key in cited_keys(text)
               if key not in bibliography.entries}
    assert not missing, f"expected every cited key in {BIB.name}, missing: {sorted(missing)}"


def test_the_pages_cite_something():
    assert sum(len(cited_keys(text)) for text in page_sources().values()) > 0


@pytest.mark.parametrize("key", sorted(parse_file(str(BIB), bib_format="bibtex").entries))
def test_every_entry_has_author_title_year_and_a_locator(bibliography, key):
    entry = bibliography.entries[key]
    assert entry.persons.get("author"), f"{key}: expected an author, got none"
    for field in ("title", "year"):
        assert entry.fields.get(field, "").strip(), f"{key}: expected a {field}, got none"
    assert re.fullmatch(r"\d{4}", entry.fields["year"]), f"{key}: expected a four-digit year, got {entry.fields['year']!r}"
    locators = [name for name in ("url", "doi", "eprint") if entry.fields.get(name, "").strip()]
    assert locators, f"{key}: expected a url, doi or eprint, got fields {sorted(entry.fields)}"
    if "eprint" in locators:
        assert re.fullmatch(r"\d{4}\.\d{4,5}", entry.fields["eprint"]), f"{key}: expected an arXiv id as eprint"
    if "url" in locators:
        assert entry.fields["url"].startswith("https://"), f"{key}: expected an https url, got {entry.fields['url']!r}"


@pytest.mark.parametrize("page", sorted(page_sources()))
def test_no_page_speaks_of_internal_documents(page):
    text = page_sources()[page].lower()
    found = [phrase for phrase in INTERNAL_WORDING if phrase in text]
    assert not found, f"{page}: expected no internal wording, found {found}"


def test_the_bibliography_page_is_in_the_book():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert BIB.name in config.get("bibtex_bibfiles", []), "expected references.bib in _config.yml's bibtex_bibfiles"
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [chapter.get("file") for part in toc["parts"] for chapter in part["chapters"]]
    assert "book/references" in files, f"expected book/references in _toc.yml, got {files}"
    assert "```{bibliography}" in (ROOT / "book" / "references.md").read_text()
