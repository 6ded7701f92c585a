"""A Sphinx extension for the book: pages without JavaScript errors.

Jupyter Book 1 registers sphinx-thebe's configuration script twice, and the second copy
(``const THEBE_JS_URL = ...``) is a JavaScript error in the browser: each script is kept once. And the
theme's colour mode, left empty by sphinx-book-theme, is set to 'auto'.
"""
from __future__ import annotations

from typing import Any


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
    app.connect("html-page-context", _unique_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
