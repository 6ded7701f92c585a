"""show_table: readable headers, a format per column, one header row, no index, missing values as a dash."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from kanlib.book.tables import MISSING, show_table


def _cells(styler) -> tuple[list[str], list[list[str]]]:
    """Headers and body cells of the rendered HTML, as a reader sees them."""
    from html.parser import HTMLParser

    class Cells(HTMLParser):
        def __init__(self):
            super().__init__()
            self.headers, self.rows, self.tag = [], [], None

        def handle_starttag(self, tag, attrs):
            self.tag = tag
            if tag == "tr" and self.headers:
                self.rows.append([])

        def handle_endtag(self, tag):
            self.tag = None

        def handle_data(self, data):
            if self.tag == "th":
                self.headers.append(data.strip())
            elif self.tag == "td":
                self.rows[-1].append(data.strip())

    parser = Cells()
    parser.feed(styler.to_html())
    return parser.headers, [row for row in parser.rows if row]


def test_named_columns_get_headers_formats_and_order():
    frame = pd.DataFrame({"name": ["kan", "mlp"], "median_ms": [1.23456, 20.5], "share": [0.25, np.nan],
                          "params": [12345, 7], "hidden": [1, 2]})
    headers, rows = _cells(show_table(frame, {"name": "model", "params": "parameters",
                                              "median_ms": ("time (ms)", "{:.2f}"), "share": ("share", "{:.0%}")}))
    assert headers == ["model", "parameters", "time (ms)", "share"]
    assert rows == [["kan", "12,345", "1.23", "25%"], ["mlp", "7", "20.50", MISSING]]


def test_defaults_four_significant_digits_and_no_index_rows():
    frame = pd.DataFrame({"x": [0.000123456, 123456.0], "ok": [True, False]}, index=pd.Index(["a", "b"], name="case"))
    headers, rows = _cells(show_table(frame))
    assert headers == ["case", "x", "ok"], "the named index is a column, and there is one header row"
    assert rows == [["a", "0.0001235", "yes"], ["b", "1.235e+05", "no"]]


def test_pivot_column_names_go_into_the_headers():
    frame = pd.DataFrame({"method": ["a", "a", "b"], "G": [5, 10, 5], "err": [1e-8, 2e-7, 3e-3]})
    headers, rows = _cells(show_table(frame.pivot(index="method", columns="G", values="err"), default="{:.1e}"))
    assert headers == ["method", "G = 5", "G = 10"]
    assert rows == [["a", "1.0e-08", "2.0e-07"], ["b", "3.0e-03", MISSING]]


def test_caption_is_shown():
    assert "<caption>Errors</caption>" in show_table(pd.DataFrame({"x": [1]}), caption="Errors").to_html()


def test_bad_input_is_named():
    with pytest.raises(TypeError, match="frame: expected a pandas DataFrame, got list"):
        show_table([1, 2])
    with pytest.raises(KeyError, match=r"expected names among \['x'\], got \['y'\]"):
        show_table(pd.DataFrame({"x": [1]}), {"y": "why"})
    with pytest.raises(TypeError, match=r"columns\['x'\]: expected a header or \(header, format\), got 3"):
        show_table(pd.DataFrame({"x": [1]}), {"x": 3})
    with pytest.raises(TypeError, match="format: expected a format string"):
        show_table(pd.DataFrame({"x": [1]}), default=".2f")


def test_formats_apply_to_columns_kept_under_their_own_name():
    frame = pd.DataFrame({"outside": [0.25], "error": [1.5e-9], "n": [3]})
    headers, rows = _cells(show_table(frame, formats={"outside": "{:.0%}", "error": "{:.1e}"}))
    assert headers == ["outside", "error", "n"] and rows == [["25%", "1.5e-09", "3"]]
    with pytest.raises(KeyError, match=r"formats: expected names among"):
        show_table(frame, formats={"nope": "{:.1f}"})


def test_cells_and_headers_are_text_not_html():
    frame = pd.DataFrame({"goal <= x": ["<= 1.1", "a & b"], "value": [1.5, 2.0]})
    html = show_table(frame).to_html()
    assert "&lt;= 1.1" in html and "a &amp; b" in html and "goal &lt;= x" in html
    assert "<= 1.1" not in html


def _unbroken_columns(styler) -> list[str]:
    """Positions of the columns the rendered table keeps on one line."""
    return re.findall(r"td\.col(\d+) \{\s*white-space: nowrap;", styler.to_html())


def test_short_text_columns_stay_on_one_line():
    long_goal = "layer / dense product beside a busy process, over the same alone"
    frame = pd.DataFrame({"goal": [long_goal, "short"], "target": ["<= 1.1", None], "value": [1.14, 2.0],
                          "mixed": ["<= 1.1", 3.0]})
    assert _unbroken_columns(show_table(frame)) == ["1"]  # the targets: not the long goal, numbers or mixed
    # headers may repeat (two "25th pct" columns): the rule goes by position
    twice = pd.DataFrame({"a_q25": [1.0], "b_q25": [2.0], "note": ["<= 2"]})
    assert _unbroken_columns(show_table(twice, {"a_q25": "25th pct", "b_q25": "25th pct", "note": "note"})) == ["2"]
