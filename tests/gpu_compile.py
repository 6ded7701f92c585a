"""Compiling Triton kernels for a GPU target from a CPU-only machine, outside the interpreter."""
import os
import subprocess
import sys

import pytest


def assert_compiles(script: str) -> None:
    """Run ``script`` in a fresh Python without TRITON_INTERPRET; it must print "compiled".

    The interpreter accepts code that the GPU compiler rejects, so the kernels are also compiled for sm_90
    ahead of time (no GPU needed); skipped where triton's NVIDIA backend is missing.
    """
    pytest.importorskip("triton.backends.nvidia")
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0 and "compiled" in result.stdout, result.stderr[-3000:]
