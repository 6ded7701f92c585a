"""Compiling Triton kernels for a GPU target from a CPU-only machine, outside the interpreter."""
import os
import subprocess
import sys
import textwrap

import pytest

# Source a compile script may start with: ``compile_for_sm90(function, signature, constants, num_warps, num_stages)``
# compiles a Triton function for an H100 (sm_90) and returns what triton.compile returns, having checked that a cubin
# came out; ``kernel_signature(names, n_pointers, pointer_type, constants)`` gives the signature it takes for a kernel
# whose first n_pointers arguments are pointers (pointer_type(name) their types), the constants constexpr and the
# other arguments i32.
SM90 = textwrap.dedent("""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from kanlib.ops.triton_tuning import FP_FUSION


    def compile_for_sm90(function, signature, constants, num_warps, num_stages):
        compiled = triton.compile(ASTSource(function, signature, constants), target=GPUTarget("cuda", 90, 32),
                                  options={"num_warps": num_warps, "num_stages": num_stages, **FP_FUSION})
        assert "cubin" in compiled.asm, function.__name__
        return compiled


    def kernel_signature(names, n_pointers, pointer_type, constants):
        signature = {n: pointer_type(n) for n in names[:n_pointers]}
        signature.update({n: "i32" for n in names[n_pointers:] if n not in constants})
        signature.update({n: "constexpr" for n in constants})
        return signature
""")

# Source a compile script may start with: ``spill_stores(function, signature, constants, num_warps, num_stages)``
# compiles a Triton function for sm_90 and returns the spill-store byte counts ptxas reports (and SM90's functions).
SPILL_STORES = SM90 + textwrap.dedent("""
    import contextlib, io, re, tempfile

    triton.knobs.nvidia.dump_ptxas_log = True  # printed when ptxas runs: a fresh cache makes it run
    triton.knobs.cache.dir = tempfile.mkdtemp()


    def spill_stores(function, signature, constants, num_warps, num_stages):
        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            compile_for_sm90(function, signature, constants, num_warps, num_stages)
        return [int(n) for n in re.findall(r"(\\d+) bytes spill stores", log.getvalue())]
""")


def assert_compiles(script: str) -> None:
    """Run ``script`` in a fresh Python without TRITON_INTERPRET; it must print "compiled".

    The interpreter accepts code that the GPU compiler rejects, so the kernels are also compiled for sm_90
    ahead of time (no GPU needed); skipped where triton's NVIDIA backend is missing.
    """
    pytest.importorskip("triton.backends.nvidia")
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0 and "compiled" in result.stdout, result.stderr[-3000:]
