"""What each backend of :func:`kanlib.ops.spline_linear.spline_linear` runs, known without importing it."""
from __future__ import annotations

import torch

__all__ = ["BACKENDS", "CPU_KERNEL_DTYPES", "TRITON_DTYPES", "TRITON_SPLINE_ORDERS", "SPARSE_SLOWDOWN",
           "TRITON_SPARSE_SLOWDOWN", "prefers_sparse", "triton_supports"]

# "cpu": the numba kernels' dense path; "sparse": their local-support path; "eager": PyTorch operations
BACKENDS = ("auto", "eager", "cpu", "sparse", "triton")
CPU_KERNEL_DTYPES = (torch.float32, torch.float64)
TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
TRITON_SPLINE_ORDERS = (1, 2, 3, 4, 5)
# On the CPU the local-support kernels do about this many times less useful work per second than BLAS (measured
# with ``python -m kanlib bench layer`` over grid sizes): past that density of nonzero slots they win.
SPARSE_SLOWDOWN = 2.0
# The same ratio for the Triton kernels on CUDA (:mod:`.triton_local` against :mod:`.triton`'s ``tl.dot`` ones).
# An estimate, not yet measured: no GPU was at hand when it was set. Gathered weight rows and FMAs on the CUDA cores
# against tensor-core products suggest several times the CPU's ratio; a benchmark on a GPU is to replace it.
TRITON_SPARSE_SLOWDOWN = 8.0


def prefers_sparse(n_slots: int, spline_order: int, slowdown: float = SPARSE_SLOWDOWN) -> bool:
    """Whether the local-support kernels beat a dense product for S slots per input, k + 2 of them nonzero, when
    they do ``slowdown`` times less useful work per second (SPARSE_SLOWDOWN on the CPU, TRITON_SPARSE_SLOWDOWN on
    CUDA)."""
    return (spline_order + 2) * slowdown < n_slots


def triton_supports(x: torch.Tensor, spline_order: int) -> bool:
    """Whether ``backend="auto"`` sends x to the Triton kernels: a CUDA tensor of a dtype and order they run."""
    return x.device.type == "cuda" and x.dtype in TRITON_DTYPES and spline_order in TRITON_SPLINE_ORDERS
