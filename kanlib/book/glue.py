"""The values a notebook glued with ``myst_nb.glue``, read back outside Sphinx (for the decks and the verdict).

    values = glued(nbformat.read("notebooks/05_quantization.ipynb", as_version=4))
    values["quant_size_ratio_4"]["text/plain"]                 # '7.9...' (the mime bundle, prefix removed)
    glued_text(values, "quant_size_ratio_4", ".1f")           # '7.9', as {glue:text}`quant_size_ratio_4:.1f`
    paste_glue("ratio {glue:text}`quant_size_ratio_4:.1f`", {"": values})   # 'ratio 7.9'

Formatting is myst-nb's own (``format_plain_text``), so a deck or a table says exactly what the page says.
"""
from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

import nbformat

__all__ = ["GLUE_PATTERN", "GlueError", "glued", "glued_text", "glued_value", "paste_glue"]

# {glue}`key`, {glue:}`key`, {glue:text}`key:fmt`, {glue:md}`key`, each optionally `path.ipynb::key`
GLUE_PATTERN = re.compile(r"\{glue(?::(?P<kind>text|md|any|))?\}`(?P<target>[^`]+)`")


class GlueError(KeyError):
    """A glue key the notebook does not hold, or a value its format cannot take."""

    def __str__(self) -> str:
        return str(self.args[0])


def glued(nb: nbformat.NotebookNode) -> dict[str, dict[str, Any]]:
    """{key: mime bundle} of every value the notebook glued (the papermill prefix removed from the mime types)."""
    from myst_nb.ext.glue import extract_glue_data_cell

    values: dict[str, dict[str, Any]] = {}
    for cell in nb.cells:
        if cell.cell_type == "code":
            # myst-nb's extractor rewrites the cell it reads: give it a copy.
            for key, output in extract_glue_data_cell(copy.deepcopy(cell)):
                values[key] = dict(output["data"])
    return values


def glued_text(values: Mapping[str, Mapping[str, Any]], key: str, fmt: str = "s") -> str:
    """The text {glue:text}`key:fmt` shows on a page."""
    from myst_nb.core.variables import format_plain_text

    if key not in values:
        raise GlueError(f"glue key {key!r}: expected one of {sorted(values)}, got none by that name")
    bundle = values[key]
    if "text/plain" not in bundle:
        raise GlueError(f"glue key {key!r}: expected a text/plain value, got only {sorted(bundle)}")
    try:
        return format_plain_text(bundle["text/plain"], fmt)
    except (TypeError, ValueError) as error:
        raise GlueError(f"glue key {key!r}: cannot format {bundle['text/plain']!r} with {fmt!r}: {error}") from None


def glued_value(values: Mapping[str, Mapping[str, Any]], key: str) -> Any:
    """The glued value as Python reads its text (a float, int, str, ...)."""
    from ast import literal_eval

    text = glued_text(values, key, "")
    try:
        return literal_eval(values[key]["text/plain"])
    except (SyntaxError, ValueError):
        return text


def paste_glue(markdown: str, notebooks: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """`markdown` with every glue role replaced by its text; `notebooks` maps a notebook's path as the role
    names it (``""`` for the notebook itself) to its :func:`glued` values. {glue}, {glue:} and {glue:md} paste a
    glued Markdown object as its Markdown, as the page shows it; everything else as its text."""

    def replace(match: re.Match[str]) -> str:
        kind, target = match.group("kind") or "", match.group("target")
        path, _, key = target.rpartition("::")
        fmt = ""
        if kind == "text":
            key, sep, spec = key.rpartition(":")
            key, fmt = (key, spec) if sep else (spec, "s")
        if path not in notebooks:
            raise GlueError(f"glue role {match.group(0)!r}: expected a notebook among {sorted(notebooks)}, got {path!r}")
        values = notebooks[path]
        if kind in ("", "any", "md") and key in values and "text/markdown" in values[key]:
            return values[key]["text/markdown"]
        return glued_text(values, key, fmt)

    return GLUE_PATTERN.sub(replace, markdown)
