"""Benchmarks: functions that measure and return result rows (see kanlib.bench for the tools and the files)."""
from .layer import run_layer_benchmark

__all__ = ["run_layer_benchmark"]
