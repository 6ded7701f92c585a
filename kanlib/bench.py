"""Measuring tools for benchmarks and the result files they produce.

A benchmark times calls with `time_fn`, measures memory with `peak_memory_bytes`, collects one dict
of figures per configuration (a row), and stores the run with `write_results` as one JSON file in
data/results; notebooks read the runs back with `load_results` and print them with `format_table`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import numbers
import os
import pathlib
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile

RESULTS_DIR = "data/results"
RESULT_KEYS = ("benchmark", "params", "device", "git", "created_utc", "rows")
MIN_ADAPTIVE_REPEAT = 5
MAX_ADAPTIVE_REPEAT = 10_000
TIMING_SUFFIXES = ("median_ms", "q25_ms", "q75_ms", "min_ms", "max_ms")
REQUIRED_TIMING_SUFFIXES = ("median_ms", "q25_ms", "q75_ms")
RATIO_SUFFIXES = ("_to_dense", "ratio", "speedup")
MIB = 2**20

_PACKAGE_DIR = pathlib.Path(__file__).resolve().parent
_NAME_PATTERN = re.compile(r"[A-Za-z0-9_.]+(?:-[A-Za-z0-9_.]+)*")
_DEVICE_EXPECTED = "'cpu', 'cuda' or 'cuda:<index>' (a str or torch.device)"


def _as_device(device: str | torch.device) -> torch.device:
    """The torch.device for `device`, checked to be a CPU or an available CUDA device."""
    if isinstance(device, str):
        try:
            device = torch.device(device)
        except RuntimeError as error:
            raise ValueError(f"device: expected {_DEVICE_EXPECTED}, got {device!r}") from error
    elif not isinstance(device, torch.device):
        raise TypeError(f"device: expected {_DEVICE_EXPECTED}, got {type(device).__name__} {device!r}")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device: expected {_DEVICE_EXPECTED}, got {str(device)!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device: got {str(device)!r}, but torch.cuda.is_available() is False; expected 'cpu'"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device: got {str(device)!r}, but {torch.cuda.device_count()} CUDA device(s) are visible"
            )
    return device


@dataclasses.dataclass(frozen=True)
class Timing:
    """Summary of the run times of repeated calls, in milliseconds; `n` is the number of runs."""

    median_ms: float
    q25_ms: float
    q75_ms: float
    min_ms: float
    max_ms: float
    n: int

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float]) -> Timing:
        """Summarize run times in ms; quartiles interpolate linearly between order statistics."""
        if len(samples_ms) == 0:
            raise ValueError("Timing.from_samples: expected at least one run time, got none")
        q25, median, q75 = np.percentile(samples_ms, [25, 50, 75])
        return cls(
            median_ms=float(median),
            q25_ms=float(q25),
            q75_ms=float(q75),
            min_ms=float(min(samples_ms)),
            max_ms=float(max(samples_ms)),
            n=len(samples_ms),
        )

    def as_dict(self, prefix: str = "") -> dict[str, float | int]:
        """The fields as a row fragment, each key prefixed (e.g. prefix="mlp_" gives "mlp_median_ms")."""
        return {prefix + key: value for key, value in dataclasses.asdict(self).items()}


def _call_timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    """A function that calls `fn()` once and returns its run time in ms, measured the device's way."""
    if device.type == "cpu":

        def cpu_call_ms(fn: Callable[[], object]) -> float:
            start_s = time.perf_counter()
            fn()
            return (time.perf_counter() - start_s) * 1e3

        return cpu_call_ms

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def cuda_call_ms(fn: Callable[[], object]) -> float:
        torch.cuda.synchronize(device)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    return cuda_call_ms


def time_fn(
    fn: Callable[[], object],
    *,
    device: str | torch.device,
    warmup: int = 5,
    repeat: int = 30,
    min_time_s: float | None = None,
) -> Timing:
    """Time `fn()` on `device`: `warmup` unmeasured calls, then `repeat` measured ones.

    CPU calls are timed with time.perf_counter; CUDA calls with a pair of CUDA events recorded
    around each call, after a synchronize, so each run starts on an idle device.
    min_time_s: when given, `repeat` is replaced by the number of runs that takes about this many
    seconds (between MIN_ADAPTIVE_REPEAT and MAX_ADAPTIVE_REPEAT), estimated from the median
    warm-up run; it needs warmup >= 1.
    """
    device = _as_device(device)
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup: expected an int >= 0, got {warmup!r}")
    if not isinstance(repeat, int) or repeat < 1:
        raise ValueError(f"repeat: expected an int >= 1, got {repeat!r}")
    if min_time_s is not None and not (min_time_s > 0 and warmup >= 1):
        raise ValueError(
            f"min_time_s: expected a time > 0 s together with warmup >= 1, got min_time_s={min_time_s!r}, "
            f"warmup={warmup!r}"
        )
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        call_ms = _call_timer(device)
        warmup_ms = [call_ms(fn) for _ in range(warmup)]
        if min_time_s is not None:
            per_call_ms = float(np.median(warmup_ms))
            wanted = round(min_time_s * 1e3 / per_call_ms) if per_call_ms > 0 else MAX_ADAPTIVE_REPEAT
            repeat = min(max(wanted, MIN_ADAPTIVE_REPEAT), MAX_ADAPTIVE_REPEAT)
        return Timing.from_samples([call_ms(fn) for _ in range(repeat)])


def time_interleaved(fns: Mapping[str, Callable[[], object]], *, device: str | torch.device, warmup: int = 5,
                     repeat: int = 30) -> dict[str, Timing]:
    """Time several functions in alternation: each round calls every one once, so a machine whose speed
    drifts during the run (a shared VM) shifts them all alike and their ratios stay comparable."""
    device = _as_device(device)
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup: expected an int >= 0, got {warmup!r}")
    if not isinstance(repeat, int) or repeat < 1:
        raise ValueError(f"repeat: expected an int >= 1, got {repeat!r}")
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        call_ms = _call_timer(device)
        for fn in fns.values():
            for _ in range(warmup):
                call_ms(fn)
        samples = {name: [] for name in fns}
        for _ in range(repeat):
            for name, fn in fns.items():
                samples[name].append(call_ms(fn))
    return {name: Timing.from_samples(values) for name, values in samples.items()}


def peak_memory_bytes(fn: Callable[[], object], *, device: str | torch.device) -> int:
    """Peak bytes that `fn()` allocates on `device` while it runs, above what was allocated before.

    CUDA: the caching allocator's peak statistic (reset before the call) minus the bytes allocated
    at the start; memory freed during the call that existed before it lowers the figure.
    CPU: torch.profiler records every block that torch's CPU allocator hands out or takes back on
    the calling thread (op outputs, tensors saved for backward, the backward pass, temporaries
    inside kernels); the blocks allocated during the call are replayed in time order and the
    highest running total is returned. Blocks that existed before the call are not counted when
    they are freed, so the figure does not depend on what earlier calls left behind. Not seen:
    blocks allocated on other threads (OpenMP workers inside a kernel) and memory that does not
    come from torch's allocator (numpy arrays, torch.from_numpy).
    """
    device = _as_device(device)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            baseline_bytes = torch.cuda.memory_allocated()
            fn()
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - baseline_bytes
    with native_stderr_silenced():
        profiler = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        profiler.start()
    try:
        fn()
    finally:
        with native_stderr_silenced():
            profiler.stop()
    return _peak_of_allocation_events(profiler.profiler.kineto_results.experimental_event_tree())


@contextlib.contextmanager
def native_stderr_silenced():
    """Send file descriptor 2 to /dev/null: the profiler's C++ side logs a line on every start and stop."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _peak_of_allocation_events(event_tree: list) -> int:
    """Highest running total of the CPU blocks allocated within a profiler event tree, in bytes."""
    allocations = []
    pending = list(event_tree)
    while pending:
        event = pending.pop()
        pending.extend(event.children)
        if event.tag == _EventType.Allocation and event.extra_fields.device.type == "cpu":
            allocations.append(event)
    allocations.sort(key=lambda event: event.start_time_ns)
    bytes_by_address: dict[int, int] = {}
    live_bytes = peak_bytes = 0
    for event in allocations:
        fields = event.extra_fields
        if fields.alloc_size > 0:
            bytes_by_address[fields.ptr] = fields.alloc_size
            live_bytes += fields.alloc_size
            peak_bytes = max(peak_bytes, live_bytes)
        else:
            # A block missing from the table was allocated before the call: its release is not counted.
            live_bytes -= bytes_by_address.pop(fields.ptr, 0)
    return peak_bytes


def _cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _triton_version() -> str | None:
    # Read from the package metadata: importing triton here would fix its interpreter mode
    # (TRITON_INTERPRET) before a notebook has chosen it.
    from importlib import metadata

    try:
        return metadata.version("triton")
    except metadata.PackageNotFoundError:
        return None


def resolve_device(device: str | torch.device) -> torch.device:
    """The torch.device for 'cpu', 'cuda' (or 'cuda:<index>') or 'auto' (cuda if available, else cpu)."""
    expected = "'cpu', 'cuda' or 'auto'"
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device: expected {expected}, got {device!r}") from error
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device: expected {expected}, got {device!r}")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device: got {str(device)!r}, but torch.cuda.is_available() is False; expected 'cpu' or 'auto'")
    return resolved


# glibc's mallopt parameters (malloc.h) and the largest mmap threshold it accepts on 64-bit systems
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
RETAINED_MMAP_THRESHOLD = 32 * MIB
RETAINED_TRIM_THRESHOLD = 2**30
_malloc_setting = "default"


def _glibc():
    """The C library as a ctypes handle when it is glibc (it has mallopt), else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    import ctypes

    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def can_retain_freed_memory() -> bool:
    """Whether :func:`retain_freed_memory` can run here (the C library is glibc)."""
    return _glibc() is not None


def retain_freed_memory() -> str:
    """Make glibc's malloc keep freed memory for reuse instead of handing it back to the OS; returns the setting.

    By default glibc trims the top of its heap once more than twice its largest recent block is free there,
    and the next allocation faults those pages back in, page by page. A training step that frees and
    allocates buffers of several MiB (a KAN layer's expanded input, the gradients) then pays page faults on
    many steps, which is glibc's heuristic, not the computation. This sets the mmap threshold to glibc's
    largest (blocks up to 32 MiB come from the heap) and the trim threshold to 1 GiB for the whole process,
    as ``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824`` would at its start.
    :func:`device_info` records the setting. RuntimeError where the C library is not glibc.
    """
    global _malloc_setting
    libc = _glibc()
    if libc is None:
        raise RuntimeError(f"retain_freed_memory needs glibc's mallopt; this system's C library is "
                           f"{platform.libc_ver()[0] or 'unknown'} ({platform.system()})")
    if not (libc.mallopt(_M_MMAP_THRESHOLD, RETAINED_MMAP_THRESHOLD)
            and libc.mallopt(_M_TRIM_THRESHOLD, RETAINED_TRIM_THRESHOLD)):
        raise RuntimeError("glibc's mallopt refused the mmap or trim threshold")
    _malloc_setting = (f"glibc, freed memory retained (mmap threshold {RETAINED_MMAP_THRESHOLD // MIB} MiB, "
                       f"trim threshold {RETAINED_TRIM_THRESHOLD // MIB} MiB)")
    return _malloc_setting


def device_info(device: str | torch.device) -> dict[str, Any]:
    """What a result needs to say about the machine: device, CPU, and library versions.

    Keys: type ('cpu' or 'cuda'), name (GPU name, or the CPU model on CPU), cpu_model, cpu_count
    (logical cores), torch_threads, gpu_capability and gpu_memory_bytes (None on CPU), torch, triton
    (None when not importable), cuda (the CUDA version torch was built with, None for CPU builds),
    python, os, malloc (the C allocator's setting: "default" unless :func:`retain_freed_memory` ran).
    """
    device = _as_device(device)
    gpu = torch.cuda.get_device_properties(device) if device.type == "cuda" else None
    cpu_model = _cpu_model_name()
    return {
        "type": device.type,
        "name": gpu.name if gpu else cpu_model,
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu_capability": f"{gpu.major}.{gpu.minor}" if gpu else None,
        "gpu_memory_bytes": gpu.total_memory if gpu else None,
        "torch": torch.__version__,
        "triton": _triton_version(),
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "os": platform.platform(),
        "malloc": _malloc_setting,
    }


def _git(*args: str) -> subprocess.CompletedProcess[str] | None:
    """Run git in the package's folder; None when git is not installed."""
    try:
        return subprocess.run(["git", *args], cwd=_PACKAGE_DIR, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return None


def _package_in_checkout() -> bool:
    """Whether the package lies in a git working tree and is not ignored there (as in a .venv)."""
    result = _git("check-ignore", "-q", str(_PACKAGE_DIR))
    return result is not None and result.returncode == 1


def git_commit() -> str | None:
    """Hash of the HEAD commit of the checkout holding this package.

    None when there is none: git missing, an installed copy, or a repository without commits.
    """
    if not _package_in_checkout():
        return None
    result = _git("rev-parse", "--verify", "-q", "HEAD")
    return result.stdout.strip() if result is not None and result.returncode == 0 else None


def git_dirty() -> bool | None:
    """Whether the checkout holding this package differs from HEAD (changed or untracked files).

    Files under data/results are left out, so writing results does not make the next run dirty.
    None when the package is not in a git checkout.
    """
    if not _package_in_checkout():
        return None
    result = _git("status", "--porcelain", "--", ":/", f":(top,exclude){RESULTS_DIR}")
    if result is None or result.returncode != 0:
        return None
    return result.stdout.strip() != ""


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
    current working directory. An existing file is never overwritten.
    """
    if not isinstance(name, str) or not _NAME_PATTERN.fullmatch(name):
        raise ValueError(f"name: expected letters, digits, '_', '.' and inner '-', got {name!r}")
    if not isinstance(params, dict):
        raise TypeError(f"params: expected a dict, got {type(params).__name__}")
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"rows: expected a non-empty list of dicts, got {rows!r}")
    device = _as_device(device)
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
    folder = pathlib.Path(out_dir).resolve()
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
