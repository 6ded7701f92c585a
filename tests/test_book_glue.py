"""Glued values read back outside Sphinx say what myst-nb's roles say on the page."""
from __future__ import annotations

import nbformat
import pytest
from myst_nb.core.variables import format_plain_text

from kanlib.book.glue import GlueError, glued, glued_text, glued_value, paste_glue


def _notebook(**values) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    outputs = [nbformat.v4.new_output("display_data", data={f"application/papermill.record/{mime}": text},
                                      metadata={"scrapbook": {"name": key, "mime_prefix": "application/papermill.record/"}})
               for key, (mime, text) in values.items()]
    nb.cells = [nbformat.v4.new_code_cell("glue(...)", outputs=outputs)]
    return nb


def test_glued_reads_every_key_without_changing_the_notebook():
    nb = _notebook(ratio=("text/plain", "2.3456"), name=("text/plain", "'AMD EPYC'"), table=("text/markdown", "| a |"))
    before = nbformat.writes(nb)
    values = glued(nb)
    assert nbformat.writes(nb) == before
    assert values["ratio"] == {"text/plain": "2.3456"} and values["table"] == {"text/markdown": "| a |"}
    assert glued_value(values, "ratio") == pytest.approx(2.3456) and glued_value(values, "name") == "AMD EPYC"


@pytest.mark.parametrize("fmt", ["s", ".1f", ".2e", ".0f", ".3g"])
def test_glued_text_formats_as_myst_nb_does(fmt):
    values = glued(_notebook(ratio=("text/plain", "1234.5678")))
    assert glued_text(values, "ratio", fmt) == format_plain_text("1234.5678", fmt)


def test_paste_glue_replaces_every_role_form():
    here = glued(_notebook(ratio=("text/plain", "2.3456"), n=("text/plain", "7"), md=("text/markdown", "**b**")))
    other = glued(_notebook(speed=("text/plain", "0.5")))
    text = ("r {glue:text}`ratio:.1f`, n {glue:text}`n:d`, plain {glue}`n`, {glue:}`n`, md {glue:md}`md` {glue}`md`, "
            "other {glue:text}`../notebooks/x.ipynb::speed:.2f`, bare {glue:text}`ratio`")
    assert paste_glue(text, {"": here, "../notebooks/x.ipynb": other}) == \
        "r 2.3, n 7, plain 7, 7, md **b** **b**, other 0.50, bare 2.3456"


def test_missing_keys_notebooks_and_bad_formats_are_named():
    values = glued(_notebook(word=("text/plain", "'fast'")))
    with pytest.raises(GlueError, match="glue key 'ratio': expected one of \\['word'\\]"):
        glued_text(values, "ratio")
    with pytest.raises(GlueError, match="cannot format"):
        glued_text(values, "word", ".2f")
    with pytest.raises(GlueError, match="expected a notebook among \\[''\\], got 'y.ipynb'"):
        paste_glue("{glue:text}`y.ipynb::word`", {"": values})
