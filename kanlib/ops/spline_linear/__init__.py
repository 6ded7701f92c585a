"""The KAN layer's product: basis expansion followed by one matrix product, recomputed in backward.

For inputs x [N, I] the expanded matrix A [N, I, S] (S = G + k + 1) holds, per input, the base
activation in slot 0 and the G + k B-spline bases in slots 1..G+k. The layer is ``A.view(N, I*S) @ W``
with W [I*S, O]. Forward keeps only x; backward rebuilds what it needs from the local (k + 1 wide) basis.
:mod:`.reference` writes the same function out in plain PyTorch.

Four backends compute it (``backend``):

- ``"eager"``: PyTorch operations on the local basis (any device); the basis window is materialized.
- ``"cpu"``: a fused numba kernel (:mod:`.cpu`) writes A, BLAS does the products; backward turns the gradient
  of A into dx and recomputes A over it in one kernel pass, so it holds one [N, I*S] buffer.
- ``"sparse"``: CPU only: fused kernels touch only the k + 2 nonzero slots of each input (local support),
  so the work does not grow with G.
- ``"triton"``: CUDA: fused Triton kernels build A in registers; float32, bfloat16 and float16, spline orders
  1 to 5; under autocast it runs in the autocast dtype. Dense ``tl.dot`` kernels (:mod:`.triton`) or, when an
  input's slots are mostly zeros, local-support ones (:mod:`.triton_local`); a B-spline layer assembles W from its
  parameters by :mod:`.triton_weight`'s kernel, and runs assembly and product as one autograd node
  (:mod:`.triton_layer`). On the CPU only under the Triton interpreter (tests).

Under autocast, ``"eager"``'s products (forward and backward) run in the autocast dtype, as autocast
runs a matmul; ``"cpu"`` and ``"sparse"`` compute in the dtype of x and weight.

``"auto"`` picks ``"triton"`` for CUDA tensors it supports (:func:`triton_supports`), ``"eager"`` for other
non-CPU tensors and under CPU autocast and, on the CPU otherwise, ``"sparse"`` when an input's slots are mostly
zeros (:func:`prefers_sparse`), else ``"cpu"``.

Higher derivatives and transforms: with ``create_graph=True`` the fused backends' backward recomputes the
gradients through :func:`.reference.spline_linear_reference`, so they can be differentiated again. Under
``torch.compile`` the fused backends run as torch.library operators (:mod:`.compiled`), ``"eager"`` as the plain
formula; under ``torch.func`` (vmap, jacrev) or ``torch.export``, ``"auto"`` and ``"eager"`` compute the plain formula
of :mod:`.reference`, and ``"cpu"``, ``"sparse"`` and ``"triton"`` raise.
"""
from __future__ import annotations

import math
import os
import time
import warnings
from typing import NamedTuple

import numpy as np
import torch

from ...activations import get_activation
from ...basis import extend_grid, find_span, local_basis, uniform_basis_matrix
from ...checks import check_choice
from ..derived import derived
from .compiled import (check_operator_backend, compiling_with_kernels, grid_is_uniform, spline_layer,
                       spline_layer_backward, spline_product, spline_product_backward)
from .reference import (differentiable_backward, differentiable_layer_backward, layer_weight_matrix,
                        spline_linear_reference, window_columns, window_expanded_input)
from .support import (BACKENDS, CPU_KERNEL_DTYPES, SPARSE_SLOWDOWN, TRITON_DTYPES, TRITON_SPLINE_ORDERS,
                      autocast_operands, prefers_sparse, triton_supports)

__all__ = ["spline_linear", "BACKENDS", "CPU_KERNEL_DTYPES", "TRITON_DTYPES", "TRITON_SPLINE_ORDERS",
           "SPARSE_SLOWDOWN", "prefers_sparse", "triton_supports", "torch_backend", "backend_from_method",
           "EagerSplineLinear", "FusedCpuSplineLinear", "under_transform", "slots_backend",
           "FusedSplineLayer", "fused_spline_layer", "run_fused_layer", "sparse_spline_layer", "NARROW_COLUMNS",
           "KEEP_EXPANDED_BELOW", "assembled_weight", "parameter_gradients", "grid_constants", "numpy_of",
           "cpu_product", "cpu_product_gradients", "fused_layer_product", "fused_layer_gradients",
           "layer_weight_matrix"]

# The words of the old ``method=`` argument, kept for one release: "dense" is now "cpu".
_METHOD_TO_BACKEND = {"auto": "auto", "eager": "eager", "dense": "cpu", "sparse": "sparse", "triton": "triton"}


def backend_from_method(method: str, stacklevel: int = 3) -> str:
    """The backend an old ``method=`` word stands for, with a DeprecationWarning."""
    if method not in _METHOD_TO_BACKEND:
        raise ValueError(f"method (deprecated; use backend=) must be one of {tuple(_METHOD_TO_BACKEND)}, "
                         f"got {method!r}")
    backend = _METHOD_TO_BACKEND[method]
    warnings.warn(f"method={method!r} is deprecated and will be removed in the next release; "
                  f"use backend={backend!r}", DeprecationWarning, stacklevel=stacklevel)
    return backend


def torch_backend(x: torch.Tensor, weight: torch.Tensor, spline_order: int) -> str:
    """The backend ``"auto"`` stands for when Triton is not used: eager, cpu or sparse. Under CPU autocast it is
    eager, whose products run in the autocast dtype (the numba kernels compute in float32 or float64)."""
    return slots_backend(x, weight.shape[0] // x.shape[1], spline_order)


def slots_backend(x: torch.Tensor, n_slots: int, spline_order: int) -> str:
    """:func:`torch_backend` for a weight of ``n_slots`` rows per input."""
    if x.device.type != "cpu" or x.dtype not in CPU_KERNEL_DTYPES or torch.is_autocast_enabled("cpu"):
        return "eager"
    return "sparse" if prefers_sparse(n_slots, spline_order) else "cpu"


def under_transform(*tensors: torch.Tensor) -> bool:
    """Whether the call runs under a transform that cannot look into numba kernels or custom autograd
    functions: torch.func (vmap, grad, jacrev), torch.compile, torch.export or tracing; or on the meta device,
    whose tensors have shapes but no values to read."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return True
    # torch.func's wrapped tensors look like plain tensors from Python; torch keeps a flag while they live.
    functorch_active = getattr(torch._C, "_are_functorch_transforms_active", None)
    if functorch_active is not None and functorch_active():
        return True
    # torch.export and fake-tensor tracing pass tensor subclasses (FakeTensor, FunctionalTensor)
    if any(type(t) not in (torch.Tensor, torch.nn.Parameter) for t in tensors):
        return True
    return all(t.is_meta for t in tensors)  # some on meta and some not: the device checks name them


class EagerSplineLinear(torch.autograd.Function):
    """The product in PyTorch operations, keeping only x and the knot spans for backward (any device)."""

    @staticmethod
    def forward(ctx, x, weight, grid, spline_order, uniform, activation):
        n_slots = weight.shape[0] // x.shape[1]
        span = find_span(x, grid, uniform, spline_order)
        local = local_basis(x, grid, spline_order, uniform, span=span)
        out = window_expanded_input(x, local, activation, n_slots).view(x.shape[0], weight.shape[0]) @ weight
        # Only the knot span (int32, [N, I]) is kept; backward rebuilds the basis from it.
        ctx.save_for_backward(x, weight, grid, span.int())
        ctx.config = (spline_order, uniform, activation, n_slots)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, grid, span = ctx.saved_tensors
        spline_order, uniform, activation, n_slots = ctx.config
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        local = local_basis(x, grid, spline_order, uniform, derivatives=need_x, span=span.long())
        grad_x = grad_w = None
        # Under autocast the forward product ran in grad_out's dtype; the backward products do too.
        dtype = grad_out.dtype
        if need_w:
            expanded = window_expanded_input(x, local, activation, n_slots).view(x.shape[0], weight.shape[0])
            grad_w = expanded.to(dtype).t() @ grad_out
        if need_x:
            grad_expanded = (grad_out @ weight.to(dtype).t()).view(*x.shape, n_slots)
            grad_x = get_activation(activation).derivative(x) * grad_expanded[..., 0]
            grad_window = grad_expanded.gather(-1, window_columns(local))
            grad_x = grad_x + (grad_window * local.derivatives).sum(-1)
        return grad_x, grad_w, None, None, None, None


_GRID_CONSTANTS: dict = {}  # (id(grid), spline order) -> the grid's constants (:func:`kanlib.ops.derived.derived`)


def grid_constants(grid: torch.Tensor, spline_order: int) -> tuple:
    """(grid, padded grid, inv_steps, steps, basis matrix) as numpy arrays, rebuilt only when the grid changes.

    steps [I] and inv_steps [I], in float64: the knot spacing of each row as if uniform, from its first and last
    knot, and its inverse."""
    def build():
        values = grid.detach()
        ranges = (values[:, -1] - values[:, 0]).double()
        return (values.contiguous().numpy(), extend_grid(values, spline_order).numpy(),
                ((values.shape[1] - 1) / ranges).numpy(), (ranges / (values.shape[1] - 1)).numpy(),
                uniform_basis_matrix(spline_order).numpy())

    return derived(_GRID_CONSTANTS, grid, build, spline_order)


NUMPY_DTYPES = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}


def numpy_of(t: torch.Tensor) -> np.ndarray:
    """A C-contiguous numpy array of t's values, sharing its memory when t is contiguous (any t of the kernels'
    dtypes, with or without grad)."""
    array = t.numpy(force=True)  # one call for detach() and numpy(); a CPU tensor's memory is shared, not copied
    return array if array.flags.c_contiguous else np.ascontiguousarray(array)


# Buffers of at least this many bytes come from torch's allocator, so that its memory accounting (torch.profiler,
# kanlib.bench.peak_memory_bytes) sees them; smaller ones from numpy's, which allocates several times faster (which
# matters on small layers).
TORCH_BUFFER_BYTES = 1 << 16


def new_buffer(shape: tuple, dtype) -> np.ndarray:
    """An empty C-contiguous numpy array of ``shape`` and ``dtype`` (a numpy dtype of a torch dtype), from torch's
    allocator at TORCH_BUFFER_BYTES or more."""
    dtype = np.dtype(dtype)
    if math.prod(shape) * dtype.itemsize >= TORCH_BUFFER_BYTES:
        return torch.empty(shape, dtype=_TORCH_DTYPES[dtype]).numpy()
    return np.empty(shape, dtype)


_TORCH_DTYPES = {**{array_dtype: dtype for dtype, array_dtype in NUMPY_DTYPES.items()}, np.dtype(np.int32): torch.int32}


def new_array(shape: tuple, like: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
    """(an empty numpy array of ``shape`` in like's dtype, the tensor sharing its memory), by :func:`new_buffer`."""
    array = new_buffer(shape, NUMPY_DTYPES[like.dtype])
    return array, torch.from_numpy(array)


class _CpuKernelArgs:
    """The numpy views and constants the CPU kernels take; the grid's are cached while it is unchanged.

    ``x``, ``knots`` (grid, padded grid, inv_steps, uniform), ``steps``, ``matrix`` (the uniform basis matrix),
    ``spline_order`` and ``activation`` (the kernels' id of the base activation).
    """

    def __init__(self, x, grid, spline_order, uniform, activation):
        cpu = self.kernels = _cpu_kernels()
        grid_np, padded, inv_steps, self.steps, self.matrix = grid_constants(grid, int(spline_order))
        self.x = numpy_of(x)
        self.knots = (grid_np, padded, inv_steps, bool(uniform))
        self.spline_order = int(spline_order)
        self.activation = cpu.ACTIVATION_IDS[activation]


def _dense_expand(x, grid, spline_order, uniform, activation, n_slots, grad_expanded=None, expanded=True,
                  slot_major=False):
    """The dense path's kernel on x [N, I]: (A [N, I*S] or None, grad_x [N, I] or None).

    grad_x is computed when grad_expanded (the gradient of A) is given; A when ``expanded``. When both are,
    A is written over grad_expanded: one [N, I*S] buffer instead of two. ``slot_major``: A's columns in the order
    s*I + i (slot s of input i), else i*S + s (see :func:`.cpu.dense_kernel`).
    """
    args = _CpuKernelArgs(x, grid, spline_order, uniform, activation)
    with_grad = grad_expanded is not None
    empty, bits_like, constants = args.kernels.dense_arguments(args.x.dtype)
    grad_array = grad_expanded.numpy() if with_grad else empty
    out_array, out = empty, None
    if expanded:
        out_array, out = (grad_array, grad_expanded) if with_grad else new_array(
            (x.shape[0], x.shape[1] * n_slots), x)
    grad_x_array, grad_x = new_array(x.shape, x) if with_grad else (empty, None)
    grid_np, padded, inv_steps, uniform = args.knots
    args.kernels.dense_kernel(spline_order, slot_major)(
        args.x, grid_np, padded, inv_steps, args.steps, uniform, args.matrix, args.activation, bits_like, constants,
        grad_array, out_array, grad_x_array, expanded, with_grad)
    return out, grad_x


def _l2_cache_bytes(cpu_cache: str = "/sys/devices/system/cpu/cpu0/cache") -> int | None:
    """The size of one core's level 2 cache in bytes, as Linux's sysfs gives it under cpu_cache; None where it
    cannot be read."""
    try:
        for index in sorted(os.listdir(cpu_cache)):
            folder = os.path.join(cpu_cache, index)
            if not index.startswith("index"):
                continue
            with open(os.path.join(folder, "level")) as level, open(os.path.join(folder, "size")) as size:
                if level.read().strip() == "2":
                    text, units = size.read().strip().upper(), {"K": 1 << 10, "M": 1 << 20}
                    return int(text[:-1]) * units[text[-1:]] if text[-1:] in units else int(text)
    except (OSError, ValueError):
        return None
    return None


def group_rows(l2_bytes: int | None, columns: int) -> int:
    """Rows a block of the sparse kernels (see below): the largest power of two whose float32 output tile of
    ``columns`` columns fits in l2_bytes, and at least 512 (also where the L2 size is unknown)."""
    rows = 512
    while l2_bytes is not None and 2 * rows * columns * 4 <= l2_bytes:
        rows *= 2
    return rows


# The sparse kernels' tiles. Each input's rows are sorted by window start in blocks of up to GROUP_ROWS rows: rows
# with the same start meet the same k + 2 weight rows, which then stay in L1 while those rows go by. The forward
# reads (or assembles) the whole weight once per block, so the blocks are long, and the forward's output accumulators
# (a block's rows x up to TILE_COLUMNS columns) stay in L2, and 512 rows where the L2 is smaller (at B = 1024,
# G = 50 to 200, a training step: on an EPYC with 512 KiB of L2, 512 rows measured faster than 256 or 1,024; on a
# Xeon with 2 MiB, 1,024 rows faster than 512; on an EPYC with 1 MiB, 1,024 rows faster than 512 by 5% at G = 50 and
# 17% at G = 200, the weight read half as often). The layer's backward takes runs of inputs through every block
# (:func:`_backward_tiles`), one input's rows of the weight gradient in L2 at a time; the weight gradient kernel's
# accumulators (in_block inputs' rows, within GRAD_TILE_BYTES) stay in L2 as every row goes by.
TILE_COLUMNS = 256
GROUP_ROWS = group_rows(_l2_cache_bytes(), TILE_COLUMNS)
GRAD_TILE_BYTES = 1 << 17


class _Windows(NamedTuple):
    """The local-support kernels' view of x: each input's rows in blocks of block_rows sorted by window start, order
    [B, I, block_rows] (int32) and offsets [B, I, G + 1] (int32; see :func:`.cpu.rows_by_start`), and the rows'
    windows in that order: values [I, k+2, N], where values[i, :, b * block_rows + j] is the window of row
    order[b, i, j] (the base activation, then the k + 1 bases from the window's start; zeros for bases that do not
    exist and outside the grid), and slopes (the same differentiated in x) or an empty array."""

    values: np.ndarray
    slopes: np.ndarray
    order: np.ndarray
    offsets: np.ndarray
    block_rows: int


def _sparse_windows(args: _CpuKernelArgs, n_slots: int, with_slopes: bool) -> _Windows:
    """The :class:`_Windows` of args.x for :mod:`.cpu`'s local-support kernels (S = n_slots slots per input): the
    values' spans and window starts, each input's rows sorted by start, then their windows in that order."""
    n_rows, n_in = args.x.shape
    k, n_basis = args.spline_order, n_slots - 1
    spans, starts = (new_buffer((n_rows, n_in), np.int32) for _ in range(2))
    grid, padded, inv_steps, uniform = args.knots
    closed_form = uniform and k > 0
    if closed_form:
        args.kernels.window_spans_uniform(args.x, grid, inv_steps, k, n_basis, spans, starts)
    else:
        args.kernels.window_spans(args.x, grid, inv_steps, uniform, k, n_basis, spans, starts)
    block_rows = max(1, min(GROUP_ROWS, n_rows))
    n_blocks = -(-n_rows // block_rows)
    order = new_buffer((n_blocks, n_in, block_rows), np.int32)
    offsets = new_buffer((n_blocks, n_in, n_basis - k + 1), np.int32)  # G windows of k + 1 bases among G + k
    args.kernels.rows_by_start(starts, block_rows, order, offsets)
    values = new_buffer((n_in, k + 2, n_rows), args.x.dtype)
    slopes = new_buffer(values.shape, args.x.dtype) if with_slopes else np.empty((0, 0, 0), dtype=args.x.dtype)
    if closed_form:
        _, bits_like, constants = args.kernels.dense_arguments(args.x.dtype)
        args.kernels.sorted_windows_uniform(k)(args.x, grid, inv_steps, args.steps, args.matrix, args.activation,
                                               bits_like, constants, spans, order, offsets, values, slopes,
                                               with_slopes)
    else:
        args.kernels.sorted_windows(args.x, grid, padded, inv_steps, uniform, k, args.matrix, args.activation, spans,
                                    order, offsets, values, slopes, with_slopes)
    return _Windows(values, slopes, order, offsets, block_rows)


def _input_column_tiles(n_in: int, n_slots: int, n_out: int, itemsize: int, threads: int) -> tuple[int, int]:
    """(in_block, col_block) for the weight gradient kernels: the weight gradient rows of in_block inputs within
    GRAD_TILE_BYTES, and at least one tile per thread."""
    col_block = min(n_out, TILE_COLUMNS)
    tiles_per_input = -(-n_out // col_block)
    in_block = min(GRAD_TILE_BYTES // (n_slots * col_block * itemsize), n_in * tiles_per_input // threads)
    return max(1, in_block), col_block


# The local-support backward's tasks: about this many runs of consecutive inputs per thread (balanced, and within a
# run each input's coefficients are prefetched while the one before it goes by).
BACKWARD_RUNS_PER_THREAD = 4


def _backward_tiles(n_in: int, n_out: int, threads: int) -> tuple[int, int]:
    """(in_block, col_block) for :func:`.cpu.sparse_backward`: up to TILE_COLUMNS columns, and runs of in_block
    inputs, about BACKWARD_RUNS_PER_THREAD tiles per thread."""
    col_block = min(n_out, TILE_COLUMNS)
    tiles_per_input = -(-n_out // col_block)
    return max(1, n_in * tiles_per_input // (BACKWARD_RUNS_PER_THREAD * threads)), col_block


def _weight_source(weight: torch.Tensor | None = None, parameters: tuple | None = None) -> tuple[np.ndarray, ...]:
    """(weight, scale_base, scale_sp, mask, coef) as :mod:`.cpu`'s local-support kernels take them: the assembled
    weight [I*S, O] and empty parameters, or the layer's parameters (scale_base, scale_sp, mask [I, O], coef
    [I, O, G+k]) and an empty weight, from which the kernels assemble the weight's rows in cache as they go."""
    if parameters is None:
        array = weight.numpy()
        empty = np.empty((0, 0), array.dtype)
        return array, empty, empty, empty, np.empty((0, 0, 0), array.dtype)
    arrays = tuple(numpy_of(t) for t in parameters)
    return (np.empty((0, 0), arrays[0].dtype), *arrays)


def _sparse_forward(x, grid, spline_order, uniform, activation, n_slots, with_slopes=False, weight=None,
                    parameters=None):
    """(A @ W [N, O], the :class:`_Windows`) through the local-support kernels, W the assembled weight [I*S, O] or
    the one of the layer's ``parameters`` (:func:`_weight_source`); the slopes (for grad_x) only when
    ``with_slopes``. A backward on the same x and grid reuses the windows."""
    args = _CpuKernelArgs(x, grid, spline_order, uniform, activation)
    windows = _sparse_windows(args, n_slots, with_slopes=with_slopes)
    source = _weight_source(weight, parameters)
    n_out = source[0].shape[1] if parameters is None else source[4].shape[1]
    out = x.new_empty(x.shape[0], n_out)
    tiles = max(1, windows.order.shape[0]) * -(-n_out // TILE_COLUMNS)
    # where tiles are fewer than threads, the inputs are split (a pass over fewer columns costs more per column)
    parts = min(x.shape[1], max(1, -(-args.kernels.thread_count() // tiles)))
    args.kernels.sparse_forward(windows.order, windows.offsets, windows.values, *source, out.numpy(),
                                windows.block_rows, min(n_out, TILE_COLUMNS), parts)
    return out, windows


def _recorded_sparse_forward(ctx, recording, n_differentiable, x, grid, spline_order, uniform, activation, n_slots,
                             weight=None, parameters=None):
    """:func:`_sparse_forward` inside an autograd Function's forward: (out, the windows' arrays as tensors, to save for
    backward with ctx.save_for_backward, or none). ``recording``: whether autograd was recording when the Function was
    applied (inside forward it never is); without a graph, or when none of the first ``n_differentiable`` inputs takes
    a gradient, no backward comes, so neither the slopes nor the windows are kept. Saved as tensors, the windows count
    where autograd's saved tensors do (``torch.autograd.graph.saved_tensors_hooks``, checkpointing)."""
    needs = ctx.needs_input_grad
    out, windows = _sparse_forward(x, grid, spline_order, uniform, activation, n_slots,
                                   with_slopes=recording and needs[0], weight=weight, parameters=parameters)
    if not (recording and any(needs[:n_differentiable])):
        return out, ()
    return out, _window_tensors(windows)


def _window_tensors(windows: _Windows) -> tuple[torch.Tensor, ...]:
    """The windows' arrays (values, slopes, order, offsets) as tensors sharing their memory."""
    return tuple(torch.from_numpy(array) for array in windows[:4])


def _saved_windows(tensors) -> _Windows | None:
    """The :class:`_Windows` of the tensors :func:`_window_tensors` made (their row blocks: order's last axis); None
    without them."""
    return _Windows(*(t.numpy() for t in tensors), tensors[2].shape[2]) if tensors else None


def _backward_windows(x, grid, spline_order, uniform, activation, n_slots, need_x, windows):
    """What both local-support backward passes start from: (kernel arguments, the :class:`_Windows`, the thread
    count), S = n_slots slots per input. ``windows``: the forward's (with slopes exactly when x takes a gradient, as
    need_x says), or None, and then computed here."""
    args = _CpuKernelArgs(x, grid, spline_order, uniform, activation)
    if windows is None:
        windows = _sparse_windows(args, n_slots, with_slopes=need_x)
    return args, windows, args.kernels.thread_count()


def _sparse_backward(x, weight, grid, spline_order, uniform, activation, grad_out, need_x, need_w, windows=None):
    """(grad_x or None, grad_weight or None) through the local-support kernels (``windows``: the forward's)."""
    n_slots = weight.shape[0] // x.shape[1]
    args, windows, threads = _backward_windows(x, grid, spline_order, uniform, activation, n_slots, need_x, windows)
    grad_x = grad_w = None
    if need_w:
        grad_w = torch.empty_like(weight)
        tiles = _input_column_tiles(x.shape[1], n_slots, weight.shape[1], weight.element_size(), threads)
        args.kernels.sparse_grad_weight(windows.order, windows.offsets, windows.values, grad_out.numpy(),
                                        grad_w.numpy(), *tiles)
    if need_x:
        grad_x, _ = _sparse_gradients(args, windows, grad_out, threads, need_x, False, weight=weight)
    return grad_x, grad_w


def _sparse_gradients(args: _CpuKernelArgs, windows: _Windows, grad_out, threads: int, need_x: bool,
                      need_parameters: bool, weight=None, parameters=None):
    """(grad_x [N, I] or None, (grad_scale_base, grad_scale_sp, grad_coef) or None) by one pass of the local-support
    backward kernel, W the weight or the parameters' (:func:`_weight_source`; the parameters' gradients need the
    parameters), in tiles of in_block inputs by up to TILE_COLUMNS columns."""
    n_rows, n_in = args.x.shape
    source = _weight_source(weight, parameters)
    n_out = grad_out.shape[1]
    dtype = source[0].dtype
    grad_x = torch.empty(n_rows, n_in, dtype=grad_out.dtype) if need_x else None  # the kernel zeroes it
    if need_parameters:
        arrays, grad_parameters = _parameter_gradients(parameters[1], parameters[3])
    else:
        empty = np.empty((0, 0), dtype)
        arrays, grad_parameters = (empty, empty, np.empty((0, 0, 0), dtype)), None
    tiles = _backward_tiles(n_in, n_out, threads)
    args.kernels.sparse_backward(windows.order, windows.offsets, windows.values, windows.slopes, grad_out.numpy(),
                                 *source, grad_x.numpy() if need_x else np.empty((0, 0), dtype), *arrays, *tiles)
    return grad_x, grad_parameters


class FusedCpuSplineLinear(torch.autograd.Function):
    """The product through the numba kernels: dense (A written by a kernel, BLAS products) or sparse.
    ``recording``: ``torch.is_grad_enabled()`` where it is applied (see :func:`_recorded_sparse_forward`)."""

    @staticmethod
    def forward(ctx, x, weight, grid, spline_order, uniform, activation, sparse, recording):
        # The inputs themselves are saved: a create_graph backward differentiates through them.
        saved = (x, weight, grid)
        x, weight, grid = x.contiguous(), weight.contiguous(), grid.contiguous()
        n_slots = weight.shape[0] // x.shape[1]
        windows = ()
        if sparse:
            out, windows = _recorded_sparse_forward(ctx, recording, 2, x, grid, spline_order, uniform, activation,
                                                    n_slots, weight=weight.detach())
        else:
            out = cpu_product(x, weight, grid, spline_order, uniform, activation, False)
        ctx.save_for_backward(*saved, *windows)
        ctx.config = (spline_order, uniform, activation, sparse)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, grid, *windows = ctx.saved_tensors
        spline_order, uniform, activation, sparse = ctx.config
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if torch.is_grad_enabled():
            # create_graph=True: the gradients must themselves be differentiable, which the kernels' are not.
            return (*differentiable_backward(x, weight, grid, spline_order, activation, grad_out, need_x, need_w),
                    None, None, None, None, None, None)
        return (*cpu_product_gradients(x, weight, grid, spline_order, uniform, activation, sparse, grad_out, need_x,
                                       need_w, _saved_windows(windows)), None, None, None, None, None, None)


def cpu_product(x, weight, grid, spline_order, uniform, activation, sparse: bool) -> torch.Tensor:
    """x [N, I] @ the product's weight [I*S, O] through the numba kernels (dense or local-support): [N, O], nothing
    kept for backward."""
    x, weight, grid = x.detach().contiguous(), weight.detach().contiguous(), grid.contiguous()
    n_slots = weight.shape[0] // x.shape[1]
    if sparse:
        return _sparse_forward(x, grid, spline_order, uniform, activation, n_slots, weight=weight)[0]
    expanded, _ = _dense_expand(x, grid, spline_order, uniform, activation, n_slots)
    return _product(expanded, weight)


def cpu_product_gradients(x, weight, grid, spline_order, uniform, activation, sparse: bool, grad_out, need_x: bool,
                          need_w: bool, windows: _Windows | None = None):
    """(grad_x [N, I] or None, grad_weight [I*S, O] or None) of the numba kernels' product (``windows``: the
    local-support forward's, or None to compute them)."""
    grad_out = grad_out.detach().contiguous()
    x, weight, grid = x.detach().contiguous(), weight.detach().contiguous(), grid.contiguous()
    if sparse:
        return _sparse_backward(x, weight, grid, spline_order, uniform, activation, grad_out, need_x, need_w, windows)
    # One pass turns the gradient of A into grad_x and rebuilds A (for the weight gradient) in its place.
    grad_expanded = grad_out @ weight.t() if need_x else None
    expanded, grad_x = _dense_expand(x, grid, spline_order, uniform, activation, weight.shape[0] // x.shape[1],
                                     grad_expanded, expanded=need_w)
    return grad_x, _weight_gradient(expanded, grad_out) if need_w else None


class FusedSplineLayer(torch.autograd.Function):
    """A B-spline layer's product from its parameters through the CPU kernels, in one autograd node, backward writing
    the parameters' gradients itself.

    Dense (``sparse`` False): the [I*S, O] weight is assembled in forward (and saved for backward when x takes a
    gradient, which needs it); the expansion A is written by a kernel and multiplied by BLAS (and kept for backward
    when it has fewer than KEEP_EXPANDED_BELOW elements, else rebuilt there); the weight gradient [I*S, O] is
    folded back onto the parameters by one kernel pass. A's columns and the weight's rows are slot-major here
    (s*I + i), which the kernel writes and reads for all inputs at once, in A's dtype. Sparse: the local-support
    kernels straight from the parameters, each input's weight rows assembled in cache as they go, and backward's one
    pass writes grad_x and the parameters' gradients from the basis windows (:func:`.cpu.sparse_backward`): neither
    the weight nor its gradient is ever stored. ``recording``: ``torch.is_grad_enabled()`` where it is applied (see
    :func:`_recorded_sparse_forward`).
    """

    @staticmethod
    def forward(ctx, x, scale_base, scale_sp, mask, coef, grid, spline_order, uniform, activation, sparse, recording):
        ctx.config = (spline_order, uniform, activation, sparse)
        if sparse:
            ctx.keeps_weight = False
            out, windows = _recorded_sparse_forward(ctx, recording, 5, x, grid, spline_order, uniform, activation,
                                                    coef.shape[2] + 1, parameters=(scale_base, scale_sp, mask, coef))
            ctx.save_for_backward(x, scale_base, scale_sp, mask, coef, grid, *windows)
            return out
        weight = assembled_weight(scale_base, scale_sp, mask, coef, narrow_layout=True, slot_major=True)
        ctx.keeps_weight = recording and ctx.needs_input_grad[0]  # grad_x needs it; the parameters' gradients not
        saved = (x, scale_base, scale_sp, mask, coef, grid, *((weight,) if ctx.keeps_weight else ()))
        expanded, _ = _dense_expand(x, grid, spline_order, uniform, activation, coef.shape[2] + 1, slot_major=True)
        ctx.save_for_backward(*saved, *((expanded,) if expanded.numel() < KEEP_EXPANDED_BELOW else ()))
        return _product(expanded, weight)

    @staticmethod
    def backward(ctx, grad_out):
        x, scale_base, scale_sp, mask, coef, grid, *kept = ctx.saved_tensors  # the weight if kept, the windows or A
        weight = kept.pop(0) if ctx.keeps_weight else None
        spline_order, uniform, activation, sparse = ctx.config
        need_x, need_base, need_sp, _, need_coef = ctx.needs_input_grad[:5]
        if torch.is_grad_enabled():
            # create_graph=True: differentiable gradients, through the plain formula.
            grad_x, grad_base, grad_sp, grad_coef = differentiable_layer_backward(
                x, scale_base, scale_sp, mask, coef, grid, spline_order, activation, grad_out,
                (need_x, need_base, need_sp, need_coef))
        else:
            saved = {"windows": _saved_windows(kept)} if sparse else {"expanded": kept[0] if kept else None}
            grad_x, grad_parameters = fused_layer_gradients(
                x, scale_base, scale_sp, mask, coef, grid, spline_order, uniform, activation, sparse, grad_out,
                need_x, need_base or need_sp or need_coef, weight=weight, **saved)
            grad_base, grad_sp, grad_coef = grad_parameters or (None, None, None)
        return (grad_x, grad_base if need_base else None, grad_sp if need_sp else None, None,
                grad_coef if need_coef else None, None, None, None, None, None, None)


def fused_layer_gradients(x, scale_base, scale_sp, mask, coef, grid, spline_order, uniform, activation, sparse: bool,
                          grad_out, need_x: bool, need_parameters: bool, weight=None, expanded=None, windows=None):
    """(grad_x [N, I] or None, (grad_scale_base, grad_scale_sp [I, O], grad_coef [I, O, G+k]) or None) of a B-spline
    layer's product through the CPU kernels. What the forward kept, where it did: the dense path's slot-major
    ``weight`` (built here when x takes a gradient) and ``expanded`` A (rebuilt here for the parameters' gradients),
    the local-support path's :class:`_Windows` (computed here)."""
    grad_out = grad_out.detach().contiguous()  # x, the grid and the parameters reach the kernels by numpy_of
    n_slots = coef.shape[2] + 1
    if sparse:
        args, windows, threads = _backward_windows(x, grid, spline_order, uniform, activation, n_slots, need_x,
                                                   windows)
        return _sparse_gradients(args, windows, grad_out, threads, need_x, need_parameters,
                                 parameters=(scale_base, scale_sp, mask, coef))
    if need_x and weight is None:
        weight = assembled_weight(scale_base, scale_sp, mask, coef, narrow_layout=True, slot_major=True)
    grad_expanded = grad_out @ weight.t() if need_x else None
    rebuild = need_parameters and expanded is None
    grad_x = None
    if need_x or rebuild:
        rebuilt, grad_x = _dense_expand(x, grid, spline_order, uniform, activation, n_slots, grad_expanded,
                                        expanded=rebuild, slot_major=True)
        expanded = rebuilt if rebuild else expanded
    grad_parameters = None
    if need_parameters:
        grad_parameters = parameter_gradients(scale_sp, mask, coef, _weight_gradient(expanded, grad_out),
                                              slot_major=True)
    return grad_x, grad_parameters


# The dense layer path keeps an expansion A of fewer elements than this from forward to backward, instead of
# rebuilding it there: for small layers the kernel call costs more than the memory (4 MiB in float32) is worth.
KEEP_EXPANDED_BELOW = 1 << 20

# Products whose output has fewer columns than this are computed as the transposed product (a column-major
# result): BLAS runs a row-major [N, O] output of a few columns several times slower (measured with MKL).
NARROW_COLUMNS = 12


def _product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a [M, K] @ b [K, O] as a contiguous [M, O], transposed when O is narrow."""
    if b.shape[1] < NARROW_COLUMNS:
        return (b.t() @ a.t()).t().contiguous()
    return a @ b


def _weight_gradient(expanded: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """expanded [N, K]^T @ grad_out [N, O] -> [K, O]; when O is narrow the transposed view of an [O, K] result."""
    if grad_out.shape[1] < NARROW_COLUMNS:
        return (grad_out.t() @ expanded).t()
    return expanded.t() @ grad_out


def _cpu_kernels():
    """:mod:`.cpu`, imported at the first kernel call (numba's import is slow)."""
    global _CPU
    if _CPU is None:
        from . import cpu

        _CPU = cpu
    return _CPU


_CPU = None


def assembled_weight(scale_base, scale_sp, mask, coef, narrow_layout: bool, slot_major: bool = False) -> torch.Tensor:
    """``layer_weight_matrix`` of the parameters by one kernel pass: [I*S, O]; with ``narrow_layout`` and fewer than
    NARROW_COLUMNS outputs, the transposed view of an [O, I*S] matrix (what :func:`_product` multiplies fastest).
    ``slot_major``: the rows in the order s*I + i (slot s of input i), as the dense kernel's slot-major A."""
    n_in, n_out, n_basis = coef.shape
    narrow = narrow_layout and n_out < NARROW_COLUMNS
    # the buffer's shape and the axes that show it to the kernel as [I, S, O] (numpy's views cost less than torch's)
    if slot_major:
        shape, axes = ((n_out, n_basis + 1, n_in), (2, 1, 0)) if narrow else ((n_basis + 1, n_in, n_out), (1, 0, 2))
    else:
        shape, axes = ((n_out, n_in, n_basis + 1), (1, 2, 0)) if narrow else ((n_in, n_basis + 1, n_out), (0, 1, 2))
    buffer = new_buffer(shape, NUMPY_DTYPES[coef.dtype])
    arguments = (numpy_of(scale_base), numpy_of(scale_sp), numpy_of(mask), numpy_of(coef), buffer.transpose(axes))
    cpu = _cpu_kernels()
    kernel = cpu.assemble_weights
    if n_out * n_basis * coef.element_size() <= cpu.ASSEMBLY_TILE_ABOVE:
        kernel(*arguments, False)
    else:
        key = (n_in, n_out, n_basis, coef.dtype, shape, torch.get_num_threads())
        blocked = ASSEMBLY_PLANS.get(key)
        if blocked is None:
            ASSEMBLY_PLANS[key] = _fastest_assembly(kernel, arguments)
        else:
            kernel(*arguments, blocked)
    return torch.from_numpy(buffer.reshape(n_out, -1).T if narrow else buffer.reshape(-1, n_out))


# Above ASSEMBLY_TILE_ABOVE bytes of an input's coefficients, the assembly reads them straight across the basis axis or
# transposes them in blocks (:func:`.cpu.assemble_weights`), and which is faster may depend on the CPU and the size.
# The first assembly of each shape times both and keeps the faster for the process: shape key -> blocked.
ASSEMBLY_PLANS: dict[tuple, bool] = {}


def _fastest_assembly(kernel, arguments: tuple) -> bool:
    """Runs kernel(*arguments, blocked) twice each way (the first call of a process also compiles it), leaving its
    output written; whether the blocked way took less time at its best."""
    best = {}
    for blocked in (False, True, False, True):
        start = time.perf_counter()
        kernel(*arguments, blocked)
        best[blocked] = min(best.get(blocked, float("inf")), time.perf_counter() - start)
    return best[True] < best[False]


def _parameter_gradients(scale_sp, coef) -> tuple[tuple[np.ndarray, ...], tuple[torch.Tensor, ...]]:
    """Empty (grad_scale_base, grad_scale_sp, grad_coef) for a kernel to write: (the numpy arrays, the tensors)."""
    arrays, tensors = zip(*(new_array(t.shape, t) for t in (scale_sp, scale_sp, coef)))
    return arrays, tensors


def parameter_gradients(scale_sp, mask, coef, grad_weight, slot_major: bool = False
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_scale_base, grad_scale_sp, grad_coef) of :func:`assembled_weight` from the gradient of its [I*S, O]
    output, in any memory layout, its rows slot-major or not as assembled, by one kernel pass (scale_sp, mask [I, O]
    and coef [I, O, G+k])."""
    arrays, grads = _parameter_gradients(scale_sp, coef)
    n_in, n_out = coef.shape[:2]
    rows = grad_weight.numpy()  # numpy's views cost less than torch's; splitting the rows copies nothing
    by_input = rows.reshape(-1, n_in, n_out).transpose(1, 0, 2) if slot_major else rows.reshape(n_in, -1, n_out)
    _cpu_kernels().assemble_weights_grad(numpy_of(scale_sp), numpy_of(mask), numpy_of(coef), by_input, *arrays)
    return grads


def fused_spline_layer(x: torch.Tensor, scale_base: torch.Tensor, scale_sp: torch.Tensor, mask: torch.Tensor,
                       coef: torch.Tensor, grid: torch.Tensor, spline_order: int, uniform: bool,
                       activation: str = "silu", sparse: bool = False) -> torch.Tensor:
    """x [N, I] -> [N, O]: ``spline_linear(x, layer_weight_matrix(scale_base, scale_sp, mask, coef), grid, ...,
    backend="sparse" if sparse else "cpu")`` in one autograd node, the parameters' gradients written by the kernels
    (:class:`FusedSplineLayer`). CPU, float32 or float64, every tensor of x's dtype; the mask takes no gradient."""
    tensors = (x, scale_base, scale_sp, mask, coef, grid)
    if any(t.device.type != "cpu" or t.dtype != x.dtype for t in tensors) or x.dtype not in CPU_KERNEL_DTYPES:
        raise ValueError(f"fused_spline_layer runs on the CPU in float32 or float64 with every tensor of one dtype, "
                         f"got {[(str(t.dtype), str(t.device)) for t in tensors]}")
    if mask.requires_grad:
        raise ValueError("fused_spline_layer: the mask takes no gradient, got a mask that requires grad")
    if under_transform(*tensors) and not compiling_with_kernels():
        raise RuntimeError("fused_spline_layer runs fused kernels, which torch.func and torch.export cannot look into")
    return run_fused_layer(x, scale_base, scale_sp, mask, coef, grid, spline_order, uniform, activation, bool(sparse))


def run_fused_layer(x, scale_base, scale_sp, mask, coef, grid, spline_order, uniform, activation, sparse):
    """:class:`FusedSplineLayer` applied to arguments already checked; where no graph is recorded (grad mode off,
    or nothing takes a gradient) its product is computed outside autograd, without the autograd function's own
    cost; under torch.compile, the ``kanlib::spline_layer`` operator (:mod:`.compiled`): [N, O]."""
    recording = torch.is_grad_enabled() and (x.requires_grad or scale_base.requires_grad or scale_sp.requires_grad
                                             or coef.requires_grad)
    if compiling_with_kernels():
        return spline_layer(x, scale_base, scale_sp, mask, coef, grid, spline_order, activation, sparse, recording,
                            recording and x.requires_grad, GROUP_ROWS)[0]
    if recording:
        return FusedSplineLayer.apply(x, scale_base, scale_sp, mask, coef, grid, spline_order, uniform, activation,
                                      sparse, True)
    return fused_layer_product(x, scale_base, scale_sp, mask, coef, grid, spline_order, uniform, activation, sparse)


def fused_layer_product(x, scale_base, scale_sp, mask, coef, grid, spline_order, uniform, activation,
                        sparse: bool) -> torch.Tensor:
    """A B-spline layer's product [N, O] from its parameters through the CPU kernels, nothing kept for backward."""
    if sparse:
        return _sparse_forward(x, grid, spline_order, uniform, activation, coef.shape[2] + 1,
                               parameters=(scale_base, scale_sp, mask, coef))[0]
    weight = assembled_weight(scale_base, scale_sp, mask, coef, narrow_layout=True, slot_major=True)
    expanded, _ = _dense_expand(x, grid, spline_order, uniform, activation, coef.shape[2] + 1, slot_major=True)
    return _product(expanded, weight)


def sparse_spline_layer(x: torch.Tensor, scale_base: torch.Tensor, scale_sp: torch.Tensor, mask: torch.Tensor,
                        coef: torch.Tensor, grid: torch.Tensor, spline_order: int, uniform: bool,
                        activation: str = "silu") -> torch.Tensor:
    """:func:`fused_spline_layer` through the local-support kernels."""
    return fused_spline_layer(x, scale_base, scale_sp, mask, coef, grid, spline_order, uniform, activation,
                              sparse=True)


def spline_linear(x: torch.Tensor, weight: torch.Tensor, grid: torch.Tensor, spline_order: int,
                  uniform: bool, activation: str = "silu", backend: str = "auto", *,
                  method: str | None = None) -> torch.Tensor:
    """x [N, I], weight [I*(G+k+1), O], grid [I, G+2k+1] -> [N, O]; the basis is never kept for backward.

    ``method`` is the deprecated name of ``backend`` ("dense" is now "cpu").
    """
    if method is not None:
        backend = backend_from_method(method)
    check_choice("backend", backend, BACKENDS)
    compiled = False
    if under_transform(x, weight, grid):
        compiled = compiling_with_kernels()
        if not compiled and backend not in ("auto", "eager"):
            raise RuntimeError(f"backend={backend!r} runs fused kernels, which torch.func and torch.export cannot "
                               f"look into; use backend='auto' or 'eager' (plain PyTorch there)")
        if not compiled or backend == "eager":
            return spline_linear_reference(x, weight, grid, spline_order, activation)
    if backend == "auto":
        backend = "triton" if triton_supports(x, spline_order) else torch_backend(x, weight, spline_order)
    if backend == "triton":
        if compiled:
            x, weight = autocast_operands(x, weight)
            return spline_product(x, weight, grid, spline_order, activation, "triton", "auto")
        from .triton_local import spline_linear_triton_any

        return spline_linear_triton_any(x, weight, grid, spline_order, uniform, activation)
    if backend == "eager":
        if compiled:
            return spline_linear_reference(x, weight, grid, spline_order, activation)
        return EagerSplineLinear.apply(x, weight, grid, spline_order, uniform, activation)
    if torch.is_autocast_enabled(x.device.type):
        # The CPU kernels compute in float32 or float64: their products stay out of autocast.
        with torch.autocast(x.device.type, enabled=False):
            return spline_linear(x, weight, grid, spline_order, uniform, activation, backend)
    if x.device.type != "cpu" or x.dtype not in CPU_KERNEL_DTYPES:
        raise ValueError(f"backend={backend!r} runs on the CPU in float32 or float64, "
                         f"got {x.dtype} tensors on {x.device}")
    if compiled:
        return spline_product(x, weight, grid, spline_order, activation, backend, "auto")
    return FusedCpuSplineLinear.apply(x, weight, grid, spline_order, uniform, activation, backend == "sparse",
                                      torch.is_grad_enabled())


# The kernels behind :mod:`.compiled`'s operators (the same on both devices: the backend argument picks them).
@spline_product.register_kernel(("cpu", "cuda"))
def _product_kernels(x, weight, grid, spline_order, activation, backend, kernels):
    check_operator_backend(backend, kernels)
    uniform = grid_is_uniform(grid)
    if backend == "triton":
        from .triton import LaunchPlan, check_inputs

        check_inputs(x, weight, grid, spline_order, activation)
        forward = _triton_function(grid, spline_order, x.dtype, kernels).launchers[0]
        return forward(x, weight, LaunchPlan(x, weight, grid, spline_order, uniform, activation))
    return cpu_product(x, weight, grid, spline_order, uniform, activation, backend == "sparse")


@spline_product_backward.register_kernel(("cpu", "cuda"))
def _product_gradient_kernels(grad_out, x, weight, grid, spline_order, activation, backend, kernels, need_x,
                              need_weight):
    check_operator_backend(backend, kernels)
    uniform = grid_is_uniform(grid)
    if backend == "triton":
        from .triton import LaunchPlan

        _, grad_x, grad_weight = _triton_function(grid, spline_order, x.dtype, kernels).launchers
        plan = LaunchPlan(x, weight, grid, spline_order, uniform, activation)
        grad_out = grad_out.to(x.dtype)
        grads = (grad_x(x, weight, grad_out, plan) if need_x else None,
                 grad_weight(x, weight, grad_out, plan) if need_weight else None)
    else:
        grads = cpu_product_gradients(x, weight, grid, spline_order, uniform, activation, backend == "sparse",
                                      grad_out, need_x, need_weight)
    return tuple(x.new_empty(0) if grad is None else grad.contiguous() for grad in grads)


def _triton_function(grid: torch.Tensor, spline_order: int, dtype: torch.dtype, kernels: str):
    """The autograd Function (:mod:`.triton`'s or :mod:`.triton_local`'s) whose launchers run ``kernels``."""
    from .triton_local import product_function

    return product_function(grid, spline_order, dtype, kernels)


@spline_layer.register_kernel(("cpu", "cuda"))
def _layer_kernels(x, scale_base, scale_sp, mask, coef, grid, spline_order, activation, sparse, keep_windows,
                   with_slopes, group_rows):
    if group_rows != GROUP_ROWS:
        raise ValueError(f"kanlib::spline_layer: the kernels take blocks of GROUP_ROWS = {GROUP_ROWS} rows, "
                         f"got group_rows={group_rows}")
    uniform = grid_is_uniform(grid)
    if not (sparse and keep_windows):
        out = fused_layer_product(x, scale_base, scale_sp, mask, coef, grid, spline_order, uniform, activation, sparse)
        return out, *(x.new_empty(0, 0, 0, dtype=dtype) for dtype in (x.dtype, x.dtype, torch.int32, torch.int32))
    out, windows = _sparse_forward(x, grid, spline_order, uniform, activation, coef.shape[2] + 1,
                                   with_slopes=with_slopes, parameters=(scale_base, scale_sp, mask, coef))
    return out, *_window_tensors(windows)


@spline_layer_backward.register_kernel(("cpu", "cuda"))
def _layer_gradient_kernels(grad_out, x, scale_base, scale_sp, mask, coef, grid, values, slopes, order, offsets,
                            spline_order, activation, sparse, need_x, need_parameters):
    kept = {"windows": _saved_windows((values, slopes, order, offsets))} if sparse and order.numel() > 0 else {}
    grad_x, grad_parameters = fused_layer_gradients(x, scale_base, scale_sp, mask, coef, grid, spline_order,
                                                    grid_is_uniform(grid), activation, sparse, grad_out, need_x,
                                                    need_parameters, **kept)
    return tuple(x.new_empty(0) if grad is None else grad.contiguous()
                 for grad in (grad_x, *(grad_parameters or (None, None, None))))
