"""Benchmark result files: one JSON per run in data/results (what was measured, the parameters, the
device, the git commit, rows of figures), read back by `load_results` and printed by `format_table`."""

from __future__ import annotations

import datetime
import json
import math
import numbers
import os
import pathlib
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..checks import MIB, check_device, check_output_dir
from .provenance import RESULTS_DIR, device_info, git_commit, git_dirty

RESULT_KEYS = ("benchmark", "params", "device", "git", "created_utc", "rows")
TIMING_SUFFIXES = ("median_ms", "q25_ms", "q75_ms", "min_ms", "max_ms")
REQUIRED_TIMING_SUFFIXES = ("median_ms", "q25_ms", "q75_ms")
RATIO_SUFFIXES = ("_to_dense", "ratio", "speedup")

_NAME_PATTERN = re.compile(r"[A-Za-z0-9_.]+(?:-[A-Za-z0-9_.]+)*")


def _to_json(value: object, where: str) -> object:
    """`value` as plain JSON data (numpy and 0-d torch scalars unwrapped); errors name `where`."""
    if isinstance(value, (np.generic, torch.Tensor)):
        if getattr(value, "ndim", 0) != 0:
            raise TypeError(f"{where}: expected a number, got an array of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where}: expected a finite number, got {value}")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_to_json(item, f"{where}[{index}]") for index, item in enumerate(value)]
    if isinstance(value, dict):
        return {_checked_key(key, where): _to_json(item, f"{where}[{key!r}]") for key, item in value.items()}
    raise TypeError(
        f"{where}: expected JSON data (numbers, str, bool, None, lists, dicts), got {type(value).__name__}"
    )


def _checked_key(key: object, where: str) -> str:
    if not isinstance(key, str):
        raise TypeError(f"{where}: expected str keys, got {type(key).__name__} {key!r}")
    return key


def _checked_row(row: object, where: str) -> dict[str, object]:
    """A row as JSON data: a flat dict of figures whose timings carry median and quartiles."""
    if not isinstance(row, dict):
        raise TypeError(f"{where}: expected a dict of figures, got {type(row).__name__}")
    row = _to_json(row, where)
    for key, value in row.items():
        if isinstance(value, (list, dict)):
            raise TypeError(f"{where}[{key!r}]: expected a single figure, got {type(value).__name__}")
    for key in (key for key in row if key.endswith("_ms")):
        prefix = next((key[: -len(suffix)] for suffix in TIMING_SUFFIXES if key.endswith(suffix)), None)
        if prefix is None:
            allowed = ", ".join("<prefix>" + suffix for suffix in TIMING_SUFFIXES)
            raise ValueError(f"{where}[{key!r}]: expected a time named one of {allowed} (Timing.as_dict)")
        missing = [prefix + suffix for suffix in REQUIRED_TIMING_SUFFIXES if prefix + suffix not in row]
        if missing:
            raise ValueError(f"{where}: timing {key!r} needs its median and spread, missing {missing}")
    return row


def write_results(
    name: str,
    params: dict[str, Any],
    rows: list[dict[str, Any]],
    device: str | torch.device,
    out_dir: str | os.PathLike[str] = RESULTS_DIR,
) -> pathlib.Path:
    """Write one benchmark run to <out_dir>/<name>-<device type>-<UTC timestamp>.json; return its path.

    The file holds the keys RESULT_KEYS: benchmark (name), params, device (device_info), git
    ({commit, dirty}), created_utc (ISO 8601) and rows. Each row is a flat dict of figures; times are
    written as a median with its quartiles (Timing.as_dict). A relative out_dir is taken from the
    current working directory; one that is not a writable folder raises OutputDirError (check_output_dir).
    An existing file is never overwritten.
    """
    if not isinstance(name, str) or not _NAME_PATTERN.fullmatch(name):
        raise ValueError(f"name: expected letters, digits, '_', '.' and inner '-', got {name!r}")
    if not isinstance(params, dict):
        raise TypeError(f"params: expected a dict, got {type(params).__name__}")
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"rows: expected a non-empty list of dicts, got {rows!r}")
    device = check_device(device)
    created = datetime.datetime.now(datetime.timezone.utc)
    result = {
        "benchmark": name,
        "params": _to_json(params, "params"),
        "device": device_info(device),
        "git": {"commit": git_commit(), "dirty": git_dirty()},
        "created_utc": created.isoformat(),
        "rows": [_checked_row(row, f"rows[{index}]") for index, row in enumerate(rows)],
    }
    text = json.dumps(result, indent=1, allow_nan=False)
    folder = check_output_dir(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{device.type}-{created:%Y%m%dT%H%M%S.%fZ}.json"
    with path.open("x") as file:
        file.write(text + "\n")
    return path


def _checked_result(result: object, path: pathlib.Path) -> dict[str, Any]:
    """`result` if it has the shape write_results gives; otherwise an error naming `path`."""
    if not isinstance(result, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(result).__name__}")
    missing = [key for key in RESULT_KEYS if key not in result]
    if missing:
        raise ValueError(f"{path}: expected keys {list(RESULT_KEYS)}, missing {missing}")
    expected_types = (str, dict, dict, dict, str, list)
    for key, expected_type in zip(RESULT_KEYS, expected_types):
        if not isinstance(result[key], expected_type):
            raise ValueError(
                f"{path}: expected {key!r} to be {expected_type.__name__}, got {type(result[key]).__name__}"
            )
    if not all(isinstance(row, dict) for row in result["rows"]):
        raise ValueError(f"{path}: expected 'rows' to be a list of objects")
    return result


def load_results(folder: str | os.PathLike[str] = RESULTS_DIR) -> list[dict[str, Any]]:
    """Every result file (*.json) in `folder`, sorted by file name, as written by write_results.

    A file that is not valid JSON or lacks the result keys raises ValueError naming the file.
    """
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"load_results: expected a folder of result files, got {folder.resolve()}")
    results = []
    for path in sorted(folder.glob("*.json")):
        try:
            result = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{path}: not a valid JSON result file ({error})") from error
        results.append(_checked_result(result, path))
    return results


def _significant(value: float, digits: int) -> str:
    """`value` rounded to `digits` significant digits, without exponent notation."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    rounded = float(f"{value:.{digits - 1}e}")
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(rounded))))
    return f"{rounded:.{decimals}f}"


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _format_cell(column: str, value: object) -> str:
    if value is None:
        return "-"
    if not _is_number(value):
        return str(value)
    if column.endswith("_ms"):
        return _significant(float(value), 3)
    if column.endswith("bytes"):
        return f"{_significant(float(value) / MIB, 3)} MiB"
    if column.endswith(RATIO_SUFFIXES):
        return f"{float(value):.2f}"
    if isinstance(value, numbers.Integral):
        return str(value)
    return f"{float(value):.4g}"


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A plain-text table of `rows`: header, rule, one line per row; numbers right-aligned.

    Columns ending in '_ms' show 3 significant digits, in 'bytes' MiB with 3 significant digits,
    in 'ratio' or 'speedup' 2 decimals. A value missing from a row shows as '-'; a column missing
    from every row is an error. columns: default, every key in order of first appearance.
    """
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    for column in columns:
        if not any(column in row for row in rows):
            present = sorted({key for row in rows for key in row})
            raise KeyError(f"format_table: column {column!r} is in no row; the rows have {present}")
    cells = [[_format_cell(column, row.get(column)) for column in columns] for row in rows]
    right_aligned = [
        all(_is_number(row[column]) for row in rows if row.get(column) is not None) for column in columns
    ]
    widths = [max(len(texts[index]) for texts in [columns, *cells]) for index in range(len(columns))]

    def line(texts: Sequence[str]) -> str:
        aligned = [
            text.rjust(width) if right else text.ljust(width)
            for text, width, right in zip(texts, widths, right_aligned)
        ]
        return "  ".join(aligned).rstrip()

    rule = ["-" * width for width in widths]
    return "\n".join(line(texts) for texts in [columns, rule, *cells])
