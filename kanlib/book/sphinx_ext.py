"""A Sphinx extension for the book, loaded by ``_config.yml`` whether `make book` or `jupyter-book build .` builds it.

- Pages without JavaScript errors: Jupyter Book 1 registers sphinx-thebe's configuration script twice, and
  the second copy (``const THEBE_JS_URL = ...``) is an error in the browser, so each script is kept once; the
  theme's colour mode, left empty by sphinx-book-theme, is set to 'auto'.
- Offline: MathJax 3 (from its npm package, `make assets`) goes to the site's ``mathjax/``, plotly.js (from
  the plotly package) to ``_static/plotly.min.js`` and the favicon to ``favicon.ico`` at the site's root.
- The live demo (book/demo.md): ONNX Runtime Web's WebAssembly build (npm, `make assets`) goes to
  ``_static/ort/``, the demo's models and manifest (data/demo/, written by chapter 08) to ``_static/demo/``.
- Wide tables: a table a cell printed scrolls sideways inside its own box (``div.table-wrapper``).
- Pasted text: myst-nb sets every glued value in bold; a glued sentence (more than SENTENCE_CHARS characters)
  gets the class ``kanlib-pasted-sentence``, which ``_static/kanlib.css`` sets in the text's own weight, so that
  numbers stand out and whole sentences do not.
- Cell times: a code cell that took more than a second in the run shown (``metadata.kanlib.duration_s``,
  written by the runner) gets a small badge with its wall time, ``<div class="kanlib-cell-time">``. The badge
  is made here, on the page, so the slide decks never see it.
- One setting for the repository: when ``repository.url`` is set in ``_config.yml``, the pages show the
  repository and "suggest edit" buttons, and the notebook pages Binder (and, on GitHub, Colab) launch buttons.
"""
from __future__ import annotations

import os
import pathlib
import shutil
from typing import Any

from docutils import nodes

from .demo import DEMO_FILES, MANIFEST
from .paths import DEMO_DIR
from .runner import format_duration, recorded_duration
from .web_assets import asset_dir, copy_tree

BADGE_CLASS = "kanlib-cell-time"
BADGE_MIN_S = 1.0
BINDER_URL = "https://mybinder.org"
COLAB_URL = "https://colab.research.google.com"
PLOTLY_JS = "plotly.min.js"
# ONNX Runtime Web without WebGL/WebGPU: the script, and the WebAssembly module it imports (one build, threads
# optional: with numThreads = 1 it runs where the host is not cross-origin isolated).
ORT_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
ORT_STATIC, DEMO_STATIC = "ort", "demo"  # folders under the site's _static/
DEMO_COMMAND = "python -m kanlib run notebooks/08_deploying.ipynb --in-place"
TABLE_WRAPPER = '<div class="table-wrapper">'
PASTED_CLASS, SENTENCE_CLASS = "pasted-text", "kanlib-pasted-sentence"
SENTENCE_CHARS = 40


def plotly_js() -> pathlib.Path:
    """plotly.min.js as the installed plotly package ships it."""
    import importlib.util

    spec = importlib.util.find_spec("plotly")
    path = pathlib.Path(spec.origin).parent / "package_data" / PLOTLY_JS if spec and spec.origin else None
    if path is None or not path.is_file():
        raise FileNotFoundError(f"expected {PLOTLY_JS} in the plotly package (package_data/), got "
                                f"{'no plotly package' if path is None else f'nothing at {path}'}: "
                                "pip install -e '.[book]'")
    return path


def cell_time_badge(seconds: float) -> nodes.raw:
    """The badge a code cell that took `seconds` gets on its page."""
    text = format_duration(seconds)
    return nodes.raw("", f'<div class="{BADGE_CLASS}" title="Wall time of this cell in the run shown">'
                         f'wall time {text}</div>\n', format="html")


def add_cell_time_badges(app, doctree: nodes.document) -> None:
    """Put a badge after the code of every notebook cell that took more than BADGE_MIN_S."""
    for cell in doctree.findall(nodes.container):
        if cell.get("nb_element") != "cell_code":
            continue
        seconds = recorded_duration(cell.get("cell_metadata"))
        if seconds is None or seconds <= BADGE_MIN_S:
            continue
        after_code = [i + 1 for i, child in enumerate(cell.children)
                      if isinstance(child, nodes.container) and child.get("nb_element") == "cell_code_source"]
        cell.insert(after_code[0] if after_code else 0, cell_time_badge(seconds))


def wrap_output_tables(app, doctree: nodes.document, docname: str) -> None:
    """Put every HTML table a cell printed into a ``<div class="table-wrapper">`` that scrolls sideways, so a
    wide table stays inside the content column."""
    for node in list(doctree.findall(nodes.raw)):
        text = node.astext()
        if node.get("format") == "html" and "<table" in text and not text.startswith(TABLE_WRAPPER):
            node.replace_self(nodes.raw("", f"{TABLE_WRAPPER}\n{text}\n</div>", format="html"))


def mark_pasted_sentences(app, doctree: nodes.document, docname: str) -> None:
    """Give every pasted text longer than SENTENCE_CHARS the class SENTENCE_CLASS."""
    for node in doctree.findall(nodes.inline):
        if PASTED_CLASS in node["classes"] and len(node.astext()) > SENTENCE_CHARS \
                and SENTENCE_CLASS not in node["classes"]:
            node["classes"].append(SENTENCE_CLASS)


def repository_buttons(app, config) -> None:
    """Turn on the repository, edit and launch buttons when the theme got a repository URL."""
    options = config.html_theme_options
    url = (options.get("repository_url") or "").strip()
    if not url:
        return
    options["use_repository_button"] = True
    options["use_edit_page_button"] = True
    launch = dict(options.get("launch_buttons") or {})
    launch["notebook_interface"] = "jupyterlab"
    launch["binderhub_url"] = launch.get("binderhub_url") or BINDER_URL
    if "github.com" in url.lower():  # the theme makes Colab links for GitHub only (and warns otherwise)
        launch["colab_url"] = launch.get("colab_url") or COLAB_URL
    options["launch_buttons"] = launch


def ort_files() -> list[pathlib.Path]:
    """The ORT_FILES of the installed onnxruntime-web package."""
    dist = asset_dir("onnxruntime-web") / "dist"
    missing = [name for name in ORT_FILES if not (dist / name).is_file()]
    if missing:
        raise FileNotFoundError(f"expected {missing} in {dist} (the onnxruntime-web version of "
                                f"kanlib.book.web_assets.PACKAGES), found none; run `make assets`")
    return [dist / name for name in ORT_FILES]


def demo_files(folder: pathlib.Path = DEMO_DIR) -> list[pathlib.Path]:
    """The live demo's manifest and models in `folder` (kanlib.book.demo.export_demo writes them)."""
    paths = [folder / MANIFEST, *(folder / name for name in DEMO_FILES.values())]
    missing = [path.name for path in paths if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"expected the live demo's files {missing} in {folder}, found none; run "
                                f"`{DEMO_COMMAND}` (its last cells write them)")
    return paths


def check_offline_assets(app) -> None:
    """Fail before reading any page when what copy_offline_assets copies is missing."""
    if app.builder.format == "html":
        asset_dir("mathjax")
        plotly_js()
        ort_files()
        demo_files()


def copy_offline_assets(app, exception: Exception | None) -> None:
    """MathJax to mathjax/, plotly.min.js to _static/, ONNX Runtime Web to _static/ort/, the demo's files to
    _static/demo/, the favicon to favicon.ico, in the built site."""
    if exception is not None or app.builder.format != "html":
        return
    out = pathlib.Path(app.outdir)
    copy_tree(asset_dir("mathjax") / "es5", out / "mathjax", ignore=("*.md",))
    (out / "_static").mkdir(exist_ok=True)
    shutil.copyfile(plotly_js(), out / "_static" / PLOTLY_JS)
    for folder, files in ((ORT_STATIC, ort_files()), (DEMO_STATIC, demo_files())):
        target = out / "_static" / folder
        target.mkdir(exist_ok=True)
        for path in files:
            shutil.copyfile(path, target / path.name)
    # The root index.html is a redirect page without an icon link; browsers then ask for /favicon.ico.
    favicon = app.config.html_favicon
    if favicon and "://" not in favicon and os.path.isfile(os.path.join(app.confdir, favicon)):
        shutil.copyfile(os.path.join(app.confdir, favicon), out / "favicon.ico")


def _unique_scripts(app, pagename: str, templatename: str, context: dict[str, Any], doctree) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen: set[tuple[str, str]] = set()
    unique = []
    for script in scripts:
        # The same script may be registered twice with different priorities: compare file and body only.
        key = (getattr(script, "filename", None) or "", getattr(script, "attributes", {}).get("body", ""))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique
    # pydata-sphinx-theme reads the colour mode from `default_mode`, an option sphinx-book-theme does not pass.
    if not context.get("default_mode"):
        context["default_mode"] = "auto"


def setup(app) -> dict[str, Any]:
    app.connect("config-inited", repository_buttons)
    app.connect("builder-inited", check_offline_assets)
    app.connect("doctree-read", add_cell_time_badges)
    app.connect("doctree-resolved", wrap_output_tables)
    app.connect("doctree-resolved", mark_pasted_sentences)  # after myst-nb has pasted other pages' values
    app.connect("html-page-context", _unique_scripts, priority=900)
    app.connect("build-finished", copy_offline_assets)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
