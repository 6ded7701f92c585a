"""Tables for readers: one styling helper for every notebook (readable headers with units, a number format per
column, no index rows, missing values as a dash).

    show_table(frame, {"grid": "G", "median_ms": ("time (ms)", "{:.3g}"), "ratio": ("÷ dense", "{:.2f}x")})
    show_table(frame.pivot(index="method", columns="G", values="err"), default="{:.1e}")   # headers "G = 5", ...

A named index becomes an ordinary first column and the index is hidden; a pivot's column name goes into each
header ("G = 5"); floats default to four significant digits and integers to thousands separators. Cells and headers
are text: HTML's special characters in them are escaped ("<= 1.1" shows as written).
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from typing import Union

import numpy as np
import pandas as pd

__all__ = ["MISSING", "show_table"]

MISSING = "–"
# A column whose cells are all text of at most this many characters ("<= 1.1", "64-15-10") stays on one line:
# beside a long column the browser would otherwise break them at their space or hyphen.
NOWRAP_CHARS = 16
Format = Union[str, Callable[[object], str]]
ColumnSpec = Union[str, tuple]  # a header, or (header, format)


def _default_format(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return f"{value:,d}"
    if isinstance(value, numbers.Real):
        return f"{value:.4g}"
    return str(value)


def _formatter(fmt: Format) -> Callable[[object], str]:
    """The format for numbers; text, booleans and missing values are shown as by default."""
    if not callable(fmt) and (not isinstance(fmt, str) or "{" not in fmt):
        raise TypeError(f"format: expected a format string such as '{{:.2f}}' or a callable, got {fmt!r}")
    apply = fmt if callable(fmt) else fmt.format

    def format_value(value: object) -> str:
        if _is_missing(value) or not isinstance(value, numbers.Number) or isinstance(value, (bool, np.bool_)):
            return _default_format(value)
        return apply(value)

    return format_value


def _short_text(column: pd.Series) -> bool:
    values = [value for value in column if not _is_missing(value)]
    return bool(values) and all(isinstance(value, str) and len(value) <= NOWRAP_CHARS for value in values)


def _is_missing(value: object) -> bool:
    try:
        return value is None or bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _flat_headers(frame: pd.DataFrame) -> pd.DataFrame:
    """Index into columns, pivot column names into the headers: one header row, no index."""
    frame = frame.copy()
    columns = frame.columns
    if isinstance(columns, pd.MultiIndex):
        frame.columns = [", ".join(f"{name} = {level}" if name else str(level)
                                   for name, level in zip(columns.names, key)) for key in columns]
    elif columns.name is not None:
        frame.columns = [f"{columns.name} = {key}" for key in columns]
    if isinstance(frame.index, pd.MultiIndex) or frame.index.name is not None:
        frame = frame.reset_index()
    else:
        frame = frame.reset_index(drop=True)
    frame.columns = [str(column) for column in frame.columns]
    return frame


def show_table(frame: pd.DataFrame, columns: Mapping[str, ColumnSpec] | None = None, *,
               formats: Mapping[str, Format] | None = None, default: Format | None = None,
               caption: str | None = None):
    """`frame` as a pandas Styler for display.

    ``columns``: {column: header} or {column: (header, format)}, in the order to show; columns not named are
    left out. Without it every column is shown under its own name. ``formats``: {column: format} for columns
    kept under their own name. ``default``: the format of columns without
    one (default: four significant digits, integers with separators). Formats are ``str.format`` strings
    ("{:.2f}", "{:.0%}") or callables value -> str; missing values show as a dash.
    """
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"frame: expected a pandas DataFrame, got {type(frame).__name__}")
    flat = _flat_headers(frame)
    formats = {} if formats is None else dict(formats)
    unknown = [name for name in formats if name not in flat.columns]
    if unknown:
        raise KeyError(f"formats: expected names among {list(flat.columns)}, got {unknown}")
    by_header = {name: _formatter(fmt) for name, fmt in formats.items()}
    if columns is not None:
        if not isinstance(columns, Mapping):
            raise TypeError(f"columns: expected a mapping {{column: header or (header, format)}}, "
                            f"got {type(columns).__name__}")
        missing = [name for name in columns if name not in flat.columns]
        if missing:
            raise KeyError(f"columns: expected names among {list(flat.columns)}, got {missing}")
        headers = {}
        for name, spec in columns.items():
            if isinstance(spec, str):
                headers[name] = spec
                if name in by_header:
                    by_header[spec] = by_header.pop(name)
            elif isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str):
                headers[name] = spec[0]
                by_header[spec[0]] = _formatter(spec[1])
            else:
                raise TypeError(f"columns[{name!r}]: expected a header or (header, format), got {spec!r}")
        flat = flat[list(columns)].rename(columns=headers)
    fallback = _formatter(default) if default is not None else _default_format
    styler = flat.style.format({column: by_header.get(column, fallback) for column in flat.columns}, escape="html")
    styler = styler.format_index(escape="html", axis=1).hide(axis="index")
    unbroken = [position for position in range(flat.shape[1]) if _short_text(flat.iloc[:, position])]
    styler = styler.set_table_styles([{"selector": f"td.col{position}", "props": "white-space: nowrap"}
                                      for position in unbroken])  # by position: headers may repeat
    if caption is not None:
        styler = styler.set_caption(caption)
    return styler
