"""Where the book's sources and build outputs lie: the publishing tools work in a checkout of the project."""
from __future__ import annotations

import pathlib

from ..bench.provenance import RESULTS_DIR

PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
BOOK_DIR = PROJECT_ROOT / "book"
LOGO = BOOK_DIR / "logo.svg"
BUILD_DIR = PROJECT_ROOT / "_build"
EXECUTED_DIR = BUILD_DIR / "executed"
NPM_PREFIX = BUILD_DIR / "npm"
RESULTS_PATH = PROJECT_ROOT / RESULTS_DIR
DEMO_DIR = PROJECT_ROOT / "data" / "demo"  # the live demo page's models and manifest (kanlib.book.demo)
TEMPLATE_DIR = pathlib.Path(__file__).resolve().parent / "templates"
