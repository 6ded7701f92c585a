"""Benchmarks and the tools they share.

Tools: :mod:`.timing` (medians with quartiles, peak memory), :mod:`.provenance` (device, versions, git),
:mod:`.results` (one JSON file per run in data/results, read back and printed as tables), :mod:`.targets`
(goals checked against result rows). One module per benchmark: :mod:`.layer`, :mod:`.kernel`, :mod:`.quant`,
:mod:`.workflow`, :mod:`.prune`, :mod:`.threads`, :mod:`.families`.
"""
from ..checks import resolve_device
from .provenance import (RESULTS_DIR, can_retain_freed_memory, device_info, git_commit, git_dirty,
                         retain_freed_memory)
from .results import RATIO_SUFFIXES, format_table, load_results, write_results
from .timing import Timing, native_stderr_silenced, peak_memory_bytes, time_fn, time_interleaved

__all__ = ["RESULTS_DIR", "RATIO_SUFFIXES", "Timing", "can_retain_freed_memory", "device_info", "format_table",
           "git_commit", "git_dirty", "load_results", "native_stderr_silenced", "peak_memory_bytes",
           "resolve_device", "retain_freed_memory", "time_fn", "time_interleaved", "write_results"]
