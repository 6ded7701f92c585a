"""What each backend of :func:`kanlib.ops.spline_linear.spline_linear` runs, known without importing it."""
from __future__ import annotations

import torch

__all__ = ["BACKENDS", "CPU_KERNEL_DTYPES", "TRITON_DTYPES", "TRITON_WEIGHT_DTYPES", "TRITON_SPLINE_ORDERS",
           "SPARSE_SLOWDOWN", "KERNEL_FAMILIES", "TRITON_SPARSE_SLOWDOWN", "TRITON_TENSOR_CORE_SPARSE_SLOWDOWN",
           "prefers_sparse", "triton_sparse_slowdown", "triton_supports", "autocast_operands"]

# "cpu": the numba kernels' dense path; "sparse": their local-support path; "eager": PyTorch operations
BACKENDS = ("auto", "eager", "cpu", "sparse", "triton")
CPU_KERNEL_DTYPES = (torch.float32, torch.float64)
TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# the Triton kernel that assembles a B-spline layer's weight matrix (:mod:`.triton_weight`) also runs float64
TRITON_WEIGHT_DTYPES = TRITON_DTYPES + (torch.float64,)
TRITON_SPLINE_ORDERS = (1, 2, 3, 4, 5)
# the Triton kernel families: dense ``tl.dot`` ones, local-support ones, or the cost model's pick
KERNEL_FAMILIES = ("auto", "dense", "local")
# On the CPU the local-support kernels do about this many times less useful work per second than BLAS (measured
# with ``python -m kanlib bench layer`` over grid sizes): past that density of nonzero slots they win.
SPARSE_SLOWDOWN = 2.0
# The same ratio for the Triton kernels on CUDA (:mod:`.triton_local` against :mod:`.triton`'s ``tl.dot`` ones), which
# depends on what the dense kernels' products run on. Set from the first H200 run of ``python -m kanlib bench kernel``
# (data/results/kernel-cuda-20261130T224916.852446Z.json, where the "triton" candidate runs the local kernels past
# the crossover and "triton_op" the dense ones at every G): against full-float32 products the local kernels caught
# up below G = 50; against bfloat16 tensor-core products they stayed several times slower at G = 100. That run's
# local kernels added the weight gradient atomically and walked all inputs in one program per tile; both changed
# since (sorted rows, input chunks), and no GPU has timed the new ones yet: the next GPU run should set these again.
TRITON_SPARSE_SLOWDOWN = 8.0
TRITON_TENSOR_CORE_SPARSE_SLOWDOWN = 100.0


def triton_sparse_slowdown(dtype: torch.dtype) -> float:
    """The Triton slowdown for operands of ``dtype``: tensor-core products for bfloat16, float16, and float32 when
    ``torch.backends.cuda.matmul.allow_tf32`` is set (as the dense kernels choose); full float32 otherwise."""
    tensor_core = dtype in (torch.bfloat16, torch.float16) or (
        dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32)
    return TRITON_TENSOR_CORE_SPARSE_SLOWDOWN if tensor_core else TRITON_SPARSE_SLOWDOWN


def prefers_sparse(n_slots: int, spline_order: int, slowdown: float = SPARSE_SLOWDOWN) -> bool:
    """Whether the local-support kernels beat a dense product for S slots per input, k + 2 of them nonzero, when
    they do ``slowdown`` times less useful work per second (SPARSE_SLOWDOWN on the CPU,
    :func:`triton_sparse_slowdown` on CUDA)."""
    return (spline_order + 2) * slowdown < n_slots


def triton_supports(x: torch.Tensor, spline_order: int) -> bool:
    """Whether ``backend="auto"`` sends x to the Triton kernels: a CUDA tensor of a dtype and order they run."""
    return x.device.type == "cuda" and x.dtype in TRITON_DTYPES and spline_order in TRITON_SPLINE_ORDERS


def autocast_operands(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The tensors (x first) as the Triton kernels take them: cast to the autocast dtype where autocast is on for x's
    device (the kernels compute the product in it, as autocast's own matmul would), else as they are."""
    device = tensors[0].device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        return tuple(t.to(dtype) for t in tensors)
    return tensors
