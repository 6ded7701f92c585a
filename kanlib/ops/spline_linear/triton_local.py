"""The KAN layer's product in Triton, touching only the slots that can be nonzero (local support).

Same function and layout as :mod:`.triton` (x [N, I], weight [I*S, O] with S = G + k + 1, grid [I, G + 2k + 1]),
and the CUDA counterpart of :mod:`.cpu`'s local-support kernels: of an input's S slots only k + 2 can be nonzero,
its base activation (weight row i*S) and the k + 1 bases of its knot span. Each kernel finds, per row and input,
the window's first basis ``start`` (``span - k`` kept inside 0 .. G - 1, so that every window is k + 1 existing
bases long; outside the grid all bases are zero, whichever window is read) and evaluates the window's bases,
so the work does not grow with G. In forward and grad_x the weight rows differ per batch row: they are gathered
as [BLOCK_M, BLOCK_N] tiles and combined by FMAs in float32 (no ``tl.dot``).

- forward: a program per (BLOCK_M rows, BLOCK_N outputs, chunk of the inputs) loops over its inputs, adding the
  k + 2 gathered rows, weighted by the window's values, to its accumulator. With one chunk (``SPLIT_I = 1``) it
  stores the tile; with more, the chunks' programs add their partial tiles into a zeroed float32 output
  (``tl.atomic_add``). Each input's gathers wait on its x, so a program's time is a chain as long as its inputs:
  a small batch has too few tiles to fill the GPU (B = 1024, O = 256 in 64 x 32 tiles is 128 programs, under
  one per SM of an H100 or H200, each walking all I inputs), and the chunks are what fills it then. The tuner
  picks the tile and the chunk count per problem size, one chunk among them. Atomic sums finish in any order,
  so a split forward's last bits may differ from run to run; under ``torch.use_deterministic_algorithms`` the
  tuner keeps one chunk.
- grad_x: a program per (BLOCK_M rows, BLOCK_I inputs) loops over its inputs and, per input, over output tiles:
  the window's weight rows weighted by the slots' derivatives are summed into one [BLOCK_M, BLOCK_N] tile and
  reduced against grad_out's (read again for each input, from cache).
- grad_weight: which weight rows a batch row reaches is known only from its x, so each input's rows are first
  sorted by window start (a small kernel writes the starts [I, N], ``torch.sort`` orders them,
  ``torch.searchsorted`` finds where each start's run begins). Basis m's weight row gets the rows whose window
  holds it, starts m - k to m, so a block of SLOTS bases m0 .. m0 + SLOTS - 1 gets the starts m0 - k to
  m0 + SLOTS - 1: one contiguous run of the sorted rows. A program per (input, block of bases, BLOCK_N outputs)
  walks its run, BLOCK_M rows at a time: the rows' values of its bases (zero outside each row's window)
  [BLOCK_M, SLOTS], transposed, times their grad_out rows [BLOCK_M, BLOCK_N], in an IEEE float32 ``tl.dot``.
  Another program per (input, BLOCK_N outputs) sums the base slot over every row. Each writes its elements of
  grad_weight, which no other program touches: no atomics, and the same bits on every run. Each row's grad_out
  is read about 1 + (SLOTS + k) / SLOTS times per input, where per-slot programs would read it k + 2 times.

Spans: on uniform grids ``floor((x - t_0)/h)``; on other grids a binary search over the input's knots
(ceil(log2(G + 2k)) gathered loads). Window values come from :func:`.triton.spline_basis`, as in the dense
kernels. Precision: x and weight in float32, bfloat16 or float16; every product and sum in float32; outputs
rounded once, after the last sum (the window values are not rounded to the input dtype first, unlike the dense
kernels' tensor-core operands).

:func:`spline_linear_triton_any` is the ``"triton"`` backend: it picks these kernels or :mod:`.triton`'s by
:func:`.support.prefers_sparse` with :func:`.support.triton_sparse_slowdown`, or the family a caller names (tests,
benchmarks). Both families give the same bits on every run under ``torch.use_deterministic_algorithms``, where
the forward keeps its inputs in one chunk.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .support import KERNEL_FAMILIES, autocast_operands, prefers_sparse, triton_sparse_slowdown
from ..triton_tuning import FP_FUSION, autotune, ceil_div
from .triton import (LaunchPlan, SplineLinearFunction, activation, activation_derivative, check_inputs, input_chunk,
                     launch_forward, launch_grad_x, one_chunk_if_deterministic, planned_function, spline_basis,
                     store_or_add, to_store)

__all__ = ["spline_linear_triton_any", "spline_linear_triton_local", "LocalSplineLinearFunction", "KERNEL_FAMILIES",
           "uses_local_kernels", "product_function"]


# ----------------------------------------------------------------------------------------------------------
# The window of each (row, input): shared by the three kernels. Shapes are whatever the caller's tiles are.


@triton.jit
def _window_start(x, u, knots, mask, n_basis, n_knots, n_search, K: tl.constexpr, UNIFORM: tl.constexpr):
    """First basis of the k + 1 window holding every nonzero basis at x (int32, x's shape).

    u = (x - t_0)/h on uniform grids; knots: pointers to each input's grid row (other grids); n_search:
    binary-search steps, ceil(log2(n_knots - 1)). NaN gets some window inside the grid.
    """
    if UNIFORM:
        span = tl.floor(tl.minimum(tl.maximum(u, -1.0), n_knots * 1.0))
        span = tl.where(u == u, span, 0.0).to(tl.int32)
    else:
        low = tl.zeros(x.shape, dtype=tl.int32)  # invariant for x inside the grid: t[low] <= x < t[high]
        high = low + (n_knots - 1)
        for _ in range(n_search):
            middle = (low + high) // 2
            right = tl.load(knots + middle, mask=mask, other=0.0) <= x
            low = tl.where(right, middle, low)
            high = tl.where(right, high, middle)
        span = low
    return tl.minimum(tl.maximum(span - K, 0), n_basis - K - 1)


# ----------------------------------------------------------------------------------------------------------
# Kernels. Tile configurations are autotuned on a GPU from a short list, each checked to compile for sm_90 without
# register spills (orders 3 and 5, uniform and not; 64-bit pointers of gathered tiles cost registers, so the tiles
# hold at most 8 elements per thread); first tuned on an H200 by ``bench kernel`` and ``bench layer``, where these
# kernels ran several times slower than their useful work allows (data/results). The forward's tiles are listed
# with one chunk of inputs and with eight (SPLIT_I). The interpreter runs one small configuration (the forward's in
# two chunks).


def _autotune(tiles: list[tuple[int, ...]], names: tuple[str, ...], zeroed_when_split: str | None = None):
    """triton.autotune over (tile sizes named by ``names``..., num_warps, num_stages); the last tile is the
    interpreter's. A kernel that splits its inputs (SPLIT_I) keeps one chunk in deterministic mode."""
    key, keep = ["n_in", "n_out", "n_basis", "batch_bucket", "K", "UNIFORM"], None
    if "SPLIT_I" in names:
        key, keep = key + ["DETERMINISTIC"], one_chunk_if_deterministic
    return autotune(names, tiles[:-1], key, tiles[-1], keep=keep, zeroed_when_split=zeroed_when_split)


@_autotune([(64, 32, 1, 8, 2), (64, 32, 8, 8, 2), (32, 64, 1, 8, 1), (32, 64, 8, 8, 1), (32, 32, 1, 4, 1),
           (32, 32, 8, 4, 1), (32, 32, 2, 4, 1)], ("BLOCK_M", "BLOCK_N", "SPLIT_I"), zeroed_when_split="out_ptr")
@triton.jit
def _forward_kernel(x_ptr, w_ptr, grid_ptr, scale_ptr, shift_ptr, out_ptr,
                    n_rows, n_in, n_out, n_basis, n_knots, batch_bucket, n_search,
                    stride_xn, stride_xi, stride_wk, stride_wo, stride_on, stride_oo,
                    K: tl.constexpr, PIECES: tl.constexpr, UNIFORM: tl.constexpr, ACT: tl.constexpr,
                    DETERMINISTIC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT_I: tl.constexpr):
    """out_ptr: float32 [N, O], zeroed by the configuration's pre-launch hook when SPLIT_I > 1 (the programs of a
    tile add their inputs' shares), else written whole.
    DETERMINISTIC: only the tuner reads it (one chunk then)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    outs = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    first_in, last_in = input_chunk(n_in, 1, SPLIT_I)
    row_ok = rows < n_rows
    out_ok = outs < n_out
    tile_ok = row_ok[:, None] & out_ok[None, :]
    x_col = x_ptr + rows.to(tl.int64) * stride_xn + first_in * stride_xi  # input i's column, moved along i
    w_in = w_ptr + outs[None, :] * stride_wo + tl.cast(first_in, tl.int64) * (n_basis + 1) * stride_wk  # i's base row
    knots = grid_ptr + first_in * n_knots
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for i in range(first_in, last_in):
        x = tl.load(x_col, mask=row_ok, other=0.0).to(tl.float32)
        w = tl.load(w_in, mask=out_ok[None, :], other=0.0).to(tl.float32)
        acc += activation(x, ACT)[:, None] * w
        scale = tl.load(scale_ptr + i)
        u = x * scale + tl.load(shift_ptr + i)
        start = _window_start(x, u, knots, row_ok, n_basis, n_knots, n_search, K, UNIFORM)
        w_window = w_in + ((start + 1).to(tl.int64) * stride_wk)[:, None]
        for q in tl.static_range(K + 1):
            value = spline_basis(x, u, scale, knots, row_ok, start + q, K, PIECES, UNIFORM, False)
            w = tl.load(w_window + q * stride_wk, mask=tile_ok, other=0.0).to(tl.float32)
            acc += value[:, None] * w
        x_col += stride_xi
        w_in += (n_basis + 1) * stride_wk
        knots += n_knots
    out_ptrs = out_ptr + rows.to(tl.int64)[:, None] * stride_on + outs[None, :] * stride_oo
    store_or_add(out_ptrs, acc, tile_ok, SPLIT_I)


@_autotune([(32, 64, 8, 8, 1), (16, 64, 8, 4, 1), (16, 16, 4, 4, 1)],
           ("BLOCK_M", "BLOCK_N", "BLOCK_I"))
@triton.jit
def _grad_x_kernel(x_ptr, w_ptr, grid_ptr, scale_ptr, shift_ptr, go_ptr, gx_ptr,
                   n_rows, n_in, n_out, n_basis, n_knots, batch_bucket, n_search,
                   stride_xn, stride_xi, stride_wk, stride_wo, stride_gn, stride_go, stride_dn, stride_di,
                   K: tl.constexpr, PIECES: tl.constexpr, UNIFORM: tl.constexpr, ACT: tl.constexpr,
                   INTERPRET: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_I: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_rows
    first_in = tl.program_id(1) * BLOCK_I
    go_rows = go_ptr + rows.to(tl.int64)[:, None] * stride_gn
    for i in range(first_in, tl.minimum(first_in + BLOCK_I, n_in)):
        x = tl.load(x_ptr + rows.to(tl.int64) * stride_xn + i * stride_xi, mask=row_ok, other=0.0).to(tl.float32)
        scale = tl.load(scale_ptr + i)
        u = x * scale + tl.load(shift_ptr + i)
        knots = grid_ptr + i * n_knots
        start = _window_start(x, u, knots, row_ok, n_basis, n_knots, n_search, K, UNIFORM)
        base_slope = activation_derivative(x, ACT)[:, None]
        slopes = ()  # the window's derivatives in x, [BLOCK_M, 1] each
        for q in tl.static_range(K + 1):
            slopes = slopes + (spline_basis(x, u, scale, knots, row_ok, start + q, K, PIECES, UNIFORM, True)[:, None],)
        w_base = w_ptr + tl.cast(i, tl.int64) * (n_basis + 1) * stride_wk
        w_window = w_base + ((start + 1).to(tl.int64) * stride_wk)[:, None]
        acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for o0 in range(0, n_out, BLOCK_N):
            outs = o0 + tl.arange(0, BLOCK_N)
            out_ok = outs < n_out
            tile_ok = row_ok[:, None] & out_ok[None, :]
            go = tl.load(go_rows + outs[None, :] * stride_go, mask=tile_ok, other=0.0).to(tl.float32)
            combined = base_slope * tl.load(w_base + outs[None, :] * stride_wo, mask=out_ok[None, :],
                                            other=0.0).to(tl.float32)
            for q in tl.static_range(K + 1):
                w = tl.load(w_window + q * stride_wk + outs[None, :] * stride_wo, mask=tile_ok, other=0.0)
                combined += slopes[q] * w.to(tl.float32)
            acc += tl.sum(combined * go, axis=1)
        tl.store(gx_ptr + rows.to(tl.int64) * stride_dn + i * stride_di, to_store(acc, gx_ptr.dtype.element_ty,
                 INTERPRET), mask=row_ok)


@triton.jit
def _window_starts_kernel(x_ptr, grid_ptr, scale_ptr, shift_ptr, starts_ptr,
                          n_rows, n_in, n_basis, n_knots, n_search, stride_xn, stride_xi,
                          K: tl.constexpr, UNIFORM: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_M: tl.constexpr):
    """starts [I, N] int32: every (row, input)'s window start, as the other kernels find it."""
    ins = tl.program_id(0) * BLOCK_I + tl.arange(0, BLOCK_I)[:, None]
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)[None, :]
    ok = (ins < n_in) & (rows < n_rows)
    x = tl.load(x_ptr + rows.to(tl.int64) * stride_xn + ins * stride_xi, mask=ok, other=0.0).to(tl.float32)
    u = x * tl.load(scale_ptr + ins, mask=ins < n_in, other=0.0) + tl.load(shift_ptr + ins, mask=ins < n_in, other=0.0)
    knots = grid_ptr + ins * n_knots + tl.zeros(x.shape, dtype=tl.int32)
    start = _window_start(x, u, knots, ok, n_basis, n_knots, n_search, K, UNIFORM)
    tl.store(starts_ptr + ins.to(tl.int64) * n_rows + rows, start, mask=ok)


@triton.jit
def _base_slot_sum(x_col, go_ptr, cols, out_ok, n_rows, stride_xn, stride_gn, ACT: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """sum over every row of activation(x) * grad_out[row, outputs] -> [BLOCK_N], float32. x_col: the input's column
    of x; cols: the outputs' offsets in a row of grad_out."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for r0 in range(0, n_rows, BLOCK_M):
        rows = r0 + tl.arange(0, BLOCK_M)
        ok = rows < n_rows
        x = tl.load(x_col + rows.to(tl.int64) * stride_xn, mask=ok, other=0.0).to(tl.float32)
        go = tl.load(go_ptr + rows.to(tl.int64)[:, None] * stride_gn + cols[None, :],
                     mask=ok[:, None] & out_ok[None, :], other=0.0).to(tl.float32)
        acc += tl.where(ok, activation(x, ACT), 0.0)[:, None] * go
    return tl.sum(acc, axis=0)


@triton.jit
def _basis_block_sum(x_col, go_ptr, cols, out_ok, order, starts, lo, hi, scale, shift, knots, m0, stride_xn,
                     stride_gn, K: tl.constexpr, PIECES: tl.constexpr, UNIFORM: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr, SLOTS: tl.constexpr):
    """sum over the rows order[lo:hi] of B_m(x) * grad_out[row, outputs] for the SLOTS bases m = m0, m0 + 1, ...
    -> [SLOTS, BLOCK_N], float32 (one IEEE float32 ``tl.dot`` per BLOCK_M rows). starts: the sorted rows' window
    starts; a row adds only to the bases of its window, as in the forward."""
    m = m0 + tl.arange(0, SLOTS)[None, :]
    acc = tl.zeros((SLOTS, BLOCK_N), dtype=tl.float32)
    for r0 in range(lo, hi, BLOCK_M):
        at = r0 + tl.arange(0, BLOCK_M)
        ok = at < hi
        rows = tl.load(order + at, mask=ok, other=0)
        start = tl.load(starts + at, mask=ok, other=0)[:, None]
        x = tl.load(x_col + rows * stride_xn, mask=ok, other=0.0).to(tl.float32)[:, None]
        in_window = ok[:, None] & (m >= start) & (m <= start + K)
        values = spline_basis(x, x * scale + shift, scale, knots + tl.zeros((BLOCK_M, SLOTS), dtype=tl.int32),
                              in_window, m, K, PIECES, UNIFORM, False)
        go = tl.load(go_ptr + rows[:, None] * stride_gn + cols[None, :], mask=ok[:, None] & out_ok[None, :],
                     other=0.0).to(tl.float32)
        acc = tl.dot(tl.trans(tl.where(in_window, values, 0.0)), go, acc, input_precision="ieee")
    return acc


@_autotune([(32, 64, 16, 4, 1), (64, 32, 16, 4, 1), (32, 128, 16, 8, 1), (32, 64, 32, 8, 1), (16, 16, 16, 4, 1)],
           ("BLOCK_M", "BLOCK_N", "SLOTS"))
@triton.jit
def _grad_weight_kernel(x_ptr, grid_ptr, scale_ptr, shift_ptr, go_ptr, order_ptr, starts_ptr, bounds_ptr, gw_ptr,
                        n_rows, n_in, n_out, n_basis, n_knots, batch_bucket, n_search,
                        stride_xn, stride_xi, stride_gn, stride_go, stride_wk, stride_wo,
                        K: tl.constexpr, PIECES: tl.constexpr, UNIFORM: tl.constexpr, ACT: tl.constexpr,
                        INTERPRET: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SLOTS: tl.constexpr):
    """A program per (input i, block of slots, BLOCK_N outputs) writes those rows and columns of grad_weight (no
    other program does). Block 0 is the base slot, summed over every row; block b > 0 holds the SLOTS bases
    m0 = (b - 1) * SLOTS, ..., whose rows are the windows that start at m0 - k to m0 + SLOTS - 1: one run of the
    input's rows sorted by window start.

    order [I, N]: each input's rows sorted by window start; starts [I, N]: their starts, in that order;
    bounds [I, G + 1]: where each start's run begins in it.
    """
    n_blocks = 1 + tl.cdiv(n_basis, SLOTS)
    n_starts = n_basis - K
    i = tl.program_id(0) // n_blocks
    block = tl.program_id(0) % n_blocks
    outs = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    out_ok = outs < n_out
    x_col = x_ptr + i * stride_xi
    cols = outs * stride_go
    gw_input = gw_ptr + tl.cast(i, tl.int64) * (n_basis + 1) * stride_wk + outs * stride_wo
    if block == 0:
        base = _base_slot_sum(x_col, go_ptr, cols, out_ok, n_rows, stride_xn, stride_gn, ACT, BLOCK_M, BLOCK_N)
        tl.store(gw_input, to_store(base, gw_ptr.dtype.element_ty, INTERPRET), mask=out_ok)
    else:
        m0 = (block - 1) * SLOTS
        bounds = bounds_ptr + i * (n_starts + 1)
        lo = tl.load(bounds + tl.maximum(m0 - K, 0))
        hi = tl.load(bounds + tl.minimum(m0 + SLOTS - 1, n_starts - 1) + 1)
        sorted_rows = tl.cast(i, tl.int64) * n_rows
        bases = _basis_block_sum(x_col, go_ptr, cols, out_ok, order_ptr + sorted_rows, starts_ptr + sorted_rows, lo,
                                 hi, tl.load(scale_ptr + i), tl.load(shift_ptr + i), grid_ptr + i * n_knots, m0,
                                 stride_xn, stride_gn, K, PIECES, UNIFORM, BLOCK_M, BLOCK_N, SLOTS)
        m = m0 + tl.arange(0, SLOTS)
        gw = gw_input[None, :] + ((1 + m).to(tl.int64) * stride_wk)[:, None]
        tl.store(gw, to_store(bases, gw_ptr.dtype.element_ty, INTERPRET), mask=(m < n_basis)[:, None] & out_ok[None, :])


# ----------------------------------------------------------------------------------------------------------
# Launchers and the autograd Function.


def _sizes(plan: LaunchPlan) -> tuple[int, ...]:
    """The kernels' size arguments: the dense kernels' ones and the binary search's step count."""
    return (*plan.sizes(), max(plan.n_knots - 2, 0).bit_length())


def _constants(plan: LaunchPlan, interpret: bool = True) -> dict:
    """The compile-time constants of these kernels, from the dense kernels' ones (no PRECISION: no tl.dot)."""
    names = ("K", "PIECES", "UNIFORM", "ACT") + (("INTERPRET",) if interpret else ())
    return {name: plan.constants[name] for name in names}


def _forward(x: torch.Tensor, weight: torch.Tensor, plan: LaunchPlan) -> torch.Tensor:
    return launch_forward(_forward_kernel, x, weight, plan, _sizes(plan), _constants(plan, interpret=False))


def _grad_x(x: torch.Tensor, weight: torch.Tensor, grad_out: torch.Tensor, plan: LaunchPlan) -> torch.Tensor:
    return launch_grad_x(_grad_x_kernel, x, weight, grad_out, plan, _sizes(plan), _constants(plan))


STARTS_BLOCK_I, STARTS_BLOCK_M = 8, 64  # the window-start kernel's tile: 4 elements per thread of 4 warps


def _rows_by_window(x: torch.Tensor, plan: LaunchPlan,
                    n_search: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(order [I, N] int64, starts [I, N] int32, bounds [I, G + 1] int64): each input's rows sorted by window start
    (stably), their starts in that order, and where the run of each start 0 .. G - 1 begins (bounds[:, G] = N).
    n_search: the binary search's step count (other grids)."""
    starts = torch.empty(plan.n_in, plan.n_rows, device=x.device, dtype=torch.int32)
    _window_starts_kernel[(ceil_div(plan.n_in, STARTS_BLOCK_I), ceil_div(plan.n_rows, STARTS_BLOCK_M))](
        x, *plan.knots, starts, plan.n_rows, plan.n_in, plan.n_basis, plan.n_knots, n_search, *x.stride(),
        K=plan.spline_order, UNIFORM=plan.constants["UNIFORM"], BLOCK_I=STARTS_BLOCK_I, BLOCK_M=STARTS_BLOCK_M,
        **FP_FUSION)
    sorted_starts, order = torch.sort(starts, dim=1, stable=True)
    first = _every_start(plan.n_in, plan.n_basis - plan.spline_order, x.device)
    return order, sorted_starts, torch.searchsorted(sorted_starts, first)


@functools.lru_cache(maxsize=32)
def _every_start(n_in: int, n_starts: int, device: torch.device) -> torch.Tensor:
    """[I, n_starts + 1] int32, each row 0 .. n_starts: the values whose first places :func:`_rows_by_window` looks
    up; kept per shape, so that a step launches no kernels to build it."""
    return torch.arange(n_starts + 1, device=device, dtype=torch.int32).expand(n_in, -1).contiguous()


def _grad_weight(x: torch.Tensor, weight: torch.Tensor, grad_out: torch.Tensor, plan: LaunchPlan) -> torch.Tensor:
    grad_w = torch.empty(weight.shape, device=weight.device, dtype=weight.dtype)
    if plan.n_rows == 0:
        return grad_w.zero_()

    def launch_grid(meta):
        return plan.n_in * (1 + ceil_div(plan.n_basis, meta["SLOTS"])), ceil_div(plan.n_out, meta["BLOCK_N"])

    with plan.on_device():
        sizes = _sizes(plan)
        order, starts, bounds = _rows_by_window(x, plan, sizes[-1])
        _grad_weight_kernel[launch_grid](x, *plan.knots, grad_out, order, starts, bounds, grad_w, *sizes,
                                         *x.stride(), *grad_out.stride(), *grad_w.stride(), **_constants(plan),
                                         **FP_FUSION)
    return grad_w


LocalSplineLinearFunction = planned_function(
    _forward, _grad_x, _grad_weight,
    "The local-support product with gradients for x and weight; inputs as :func:`.triton.check_inputs` checks.")


def uses_local_kernels(grid: torch.Tensor, spline_order: int, dtype: torch.dtype = torch.float32) -> bool:
    """Whether ``kernels="auto"`` picks the local-support kernels for this (checked) grid and order and operands of
    ``dtype``: when the cost model prefers them (:func:`.support.triton_sparse_slowdown`)."""
    return prefers_sparse(grid.shape[1] - spline_order, spline_order, triton_sparse_slowdown(dtype))


def spline_linear_triton_any(x: torch.Tensor, weight: torch.Tensor, grid: torch.Tensor, spline_order: int,
                             uniform: bool, activation: str = "silu", kernels: str = "auto") -> torch.Tensor:
    """x [N, I], weight [I*(G+k+1), O], grid [I, G+2k+1] -> [N, O] through Triton kernels: ``kernels="dense"``
    (:mod:`.triton`'s), ``"local"`` (this module's) or ``"auto"`` (:func:`uses_local_kernels`).

    Under torch.autocast, x and weight are cast to the autocast dtype first; the output has x's dtype.
    """
    if kernels not in KERNEL_FAMILIES:
        raise ValueError(f"kernels must be one of {KERNEL_FAMILIES}, got {kernels!r}")
    x, weight = autocast_operands(x, weight)
    check_inputs(x, weight, grid, spline_order, activation)
    function = product_function(grid, spline_order, x.dtype, kernels)
    return function.apply(x, weight, grid, spline_order, bool(uniform), activation)


def product_function(grid: torch.Tensor, spline_order: int, dtype: torch.dtype, kernels: str):
    """The autograd Function whose kernels ``kernels`` names for operands of ``dtype``: this module's
    (:data:`LocalSplineLinearFunction`) for "local", or for "auto" where :func:`uses_local_kernels`, else
    :mod:`.triton`'s dense ones."""
    local = kernels == "local" or (kernels == "auto" and uses_local_kernels(grid, spline_order, dtype))
    return LocalSplineLinearFunction if local else SplineLinearFunction


def spline_linear_triton_local(x: torch.Tensor, weight: torch.Tensor, grid: torch.Tensor, spline_order: int,
                               uniform: bool, activation: str = "silu") -> torch.Tensor:
    """x [N, I], weight [I*(G+k+1), O], grid [I, G+2k+1] -> [N, O] through the local-support kernels only."""
    return spline_linear_triton_any(x, weight, grid, spline_order, uniform, activation, kernels="local")
