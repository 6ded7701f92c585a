"""The KAN layer's product in Triton: ``out = A(x) @ W`` with the expanded input A built in registers.

Same function and layout as :func:`kanlib.ops.spline_linear.spline_linear` (its ``"eager"`` backend is the
reference): x [N, I], weight [I*S, O] with S = G + k + 1 rows per input (the base activation's row, then
the G + k spline rows), grid [I, G + 2k + 1]. Neither the [N, I, G+k] basis nor A is ever stored.

Tiling. The K = I*S dimension is walked as (a block of BLOCK_I inputs) x (slot s): for one slot the
[BLOCK_M, BLOCK_I] tile of A (the activation for s = 0, basis s - 1 after it) is computed from the x tile
and multiplied with the weight rows ``i*S + s`` of those inputs, so S needs no padding to a power of two.

- forward: a program per (BLOCK_M rows, BLOCK_N outputs, chunk of the input blocks) loops over its input blocks
  and slots. With one chunk (``SPLIT_I = 1``) it stores its tile; with more, the chunks' programs add their
  partial tiles into a zeroed float32 output atomically: a small batch has too few tiles to keep the GPU busy
  (B = 1024, O = 256 in 128 x 128 tiles is 16 programs for an H200's 132 SMs), and the chunks are what fills it
  then. The tuner picks tile and chunk count per problem size, one chunk alone under
  ``torch.use_deterministic_algorithms``.
- grad_x: a program per (BLOCK_M rows, BLOCK_I inputs) loops over slots, and over output tiles for
  ``grad_out @ W_s^T``, then multiplies by the slot's derivative (activation' or basis', recomputed).
- grad_weight: a program per (BLOCK_I inputs, slot, BLOCK_N outputs) loops over rows: ``A_s^T @ grad_out``.

Outside the split forward every output element is written by one program: no atomics. A B-spline layer's
coefficient, base-weight and scale gradients follow from grad_weight by one more kernel (:mod:`.triton_weight`; the
layer runs all of them in one autograd node, :mod:`.triton_layer`).

Bases. Uniform grids (the fast path): basis m of input i at x is the cardinal B-spline B_k(w) with
w = (x - t_0)/h - m, evaluated from the (k+2)//2 polynomial pieces of its symmetric half with exact
coefficients; B_k vanishes outside [0, k+1), so inputs beyond the grid need no clamping. Other knots
(after ``update_grid``): Cox-de Boor on the k + 2 knots of basis m, loaded from ``grid``. Knot arithmetic
is float32; the spline order (1 to 5) is a compile-time constant.

Precision. bfloat16 and float16 x and weight: the tiles are multiplied in that dtype with float32
accumulation and outputs are rounded once, after the last sum. float32: ``tl.dot`` uses TF32 exactly when
``torch.backends.cuda.matmul.allow_tf32`` is set (as torch's own matmul does), full float32 otherwise.

Under ``TRITON_INTERPRET=1`` (set before triton is imported) the kernels run on the CPU, for tests:
one small tile configuration, and half-precision products emulated in float32 on rounded operands.
"""
from __future__ import annotations

import contextlib
from functools import lru_cache

import torch
import triton
import triton.language as tl

from ...activations import ACTIVATIONS, BASE_ACTIVATIONS, IDENTITY_ID, RELU_ID, SILU_ID, TANH_ID
from ...basis import cardinal_pieces
from .reference import differentiable_backward
from .support import TRITON_DTYPES, TRITON_SPLINE_ORDERS, autocast_operands
from ..derived import derived
from ..triton_tuning import FP_FUSION, autotune, ceil_div, interpreting, power_of_two_at_least

__all__ = ["spline_linear_triton", "SplineLinearFunction", "ACTIVATION_IDS", "DTYPES", "SPLINE_ORDERS",
           "INTERPRET", "symmetric_pieces", "planned_function", "activation", "activation_derivative", "knot_basis",
           "reciprocal_or_zero", "spline_basis", "to_store", "input_chunk", "store_or_add",
           "one_chunk_if_deterministic", "LaunchPlan", "on_device", "launch_forward", "launch_grad_x", "check_devices",
           "check_inputs"]

IDENTITY, SILU, TANH, RELU = (tl.constexpr(i) for i in (IDENTITY_ID, SILU_ID, TANH_ID, RELU_ID))
ACTIVATION_IDS = {name: ACTIVATIONS[name].kernel_id for name in BASE_ACTIVATIONS}
DTYPES = TRITON_DTYPES
SPLINE_ORDERS = TRITON_SPLINE_ORDERS
INTERPRET = interpreting()


@lru_cache(maxsize=None)
def symmetric_pieces(spline_order: int) -> tuple[tuple[float, ...], ...]:
    """Pieces p = 0 .. (k+2)//2 - 1 of the cardinal B-spline B_k on [p, p+1], ascending powers of w - p.

    B_k(w) = B_k(k + 1 - w), so these pieces cover [0, k + 1).
    """
    pieces = cardinal_pieces(spline_order)
    return tuple(tuple(float(c) for c in pieces[p]) for p in range((spline_order + 2) // 2))


# ----------------------------------------------------------------------------------------------------------
# Element-wise pieces, shared by the three kernels. Shapes are whatever the caller's tiles are.


@triton.jit
def activation(x, ACT: tl.constexpr):
    if ACT == SILU:
        out = x * tl.sigmoid(x)
    elif ACT == TANH:
        out = 2.0 * tl.sigmoid(2.0 * x) - 1.0
    elif ACT == RELU:
        out = tl.where(x < 0.0, 0.0, x)  # keeps NaN, as torch.relu
    else:
        out = x
    return out


@triton.jit
def activation_derivative(x, ACT: tl.constexpr):
    if ACT == SILU:
        s = tl.sigmoid(x)
        out = s * (1.0 + x * (1.0 - s))
    elif ACT == TANH:
        th = 2.0 * tl.sigmoid(2.0 * x) - 1.0
        out = 1.0 - th * th
    elif ACT == RELU:
        out = tl.where(x > 0.0, 1.0, 0.0)
    else:
        out = tl.full(x.shape, 1.0, tl.float32)
    return out


@triton.jit
def _piece_coefficient(v, PIECES: tl.constexpr, NP: tl.constexpr, POWER: tl.constexpr):
    """Coefficient of (v - p)**POWER in the piece p = min(floor(v), NP - 1) holding v."""
    c = tl.full(v.shape, PIECES[NP - 1][POWER], tl.float32)
    for j in tl.static_range(NP - 1):
        c = tl.where(v < NP - 1 - j, PIECES[NP - 2 - j][POWER], c)
    return c


@triton.jit
def _cardinal(w, K: tl.constexpr, PIECES: tl.constexpr, DERIV: tl.constexpr):
    """B_k(w), or dB_k/dw, of the cardinal B-spline on [0, k + 1) (zero elsewhere, NaN kept)."""
    NP: tl.constexpr = (K + 2) // 2
    mirrored = w >= (K + 1) * 0.5
    v = tl.where(mirrored, (K + 1) - w, w)
    piece = tl.full(v.shape, NP - 1, tl.float32)
    for j in tl.static_range(NP - 1):
        piece = tl.where(v < NP - 1 - j, NP - 2 - j, piece)
    t = v - piece
    if DERIV:
        out = K * _piece_coefficient(v, PIECES, NP, K)
        for q in tl.static_range(1, K):
            out = out * t + (K - q) * _piece_coefficient(v, PIECES, NP, K - q)
        out = tl.where((w >= 0.0) & (w < K + 1), tl.where(mirrored, -out, out), 0.0)
    else:
        out = _piece_coefficient(v, PIECES, NP, K)
        for q in tl.static_range(1, K + 1):
            out = out * t + _piece_coefficient(v, PIECES, NP, K - q)
        out = tl.where(v < 0.0, 0.0, out)
    return out


@triton.jit
def reciprocal_or_zero(span):
    """1 / span, 0 for an empty span (a repeated knot), as kanlib.basis's safe division."""
    empty = span == 0.0
    return tl.where(empty, 0.0, 1.0 / tl.where(empty, 1.0, span))


@triton.jit
def knot_basis(x, knots, mask, K: tl.constexpr, DERIV: tl.constexpr):
    """Basis m (or its derivative) at x by Cox-de Boor on its knots t_0..t_{k+1} = knots[0..k+1].

    knots: pointers to grid[i, m], broadcastable against x; mask: which of them are real inputs.
    """
    t = ()
    for q in tl.static_range(K + 2):
        t = t + (tl.load(knots + q, mask=mask, other=0.0),)
    level = ()
    for q in tl.static_range(K + 1):
        level = level + (tl.where((x >= t[q]) & (x < t[q + 1]), 1.0, 0.0),)
    for d in tl.static_range(1, K):
        higher = ()
        for q in tl.static_range(K + 1 - d):
            higher = higher + ((x - t[q]) * reciprocal_or_zero(t[q + d] - t[q]) * level[q]
                               + (t[q + d + 1] - x) * reciprocal_or_zero(t[q + d + 1] - t[q + 1]) * level[q + 1],)
        level = higher
    # level holds the two bases of order k - 1 that make up basis m
    if DERIV:
        out = K * (level[0] * reciprocal_or_zero(t[K] - t[0]) - level[1] * reciprocal_or_zero(t[K + 1] - t[1]))
    else:
        out = ((x - t[0]) * reciprocal_or_zero(t[K] - t[0]) * level[0]
               + (t[K + 1] - x) * reciprocal_or_zero(t[K + 1] - t[1]) * level[1])
    return out


@triton.jit
def spline_basis(x, u, scale, knots, mask, m, K: tl.constexpr, PIECES: tl.constexpr, UNIFORM: tl.constexpr,
           DERIV: tl.constexpr):
    """Basis m of each input (or its derivative in x); u = (x - t_0) / h on uniform grids, scale = 1/h.

    x, u, m: tiles of one shape (m may be a scalar); knots: pointers to each input's grid row; mask: real inputs.
    """
    if UNIFORM:
        out = _cardinal(u - m, K, PIECES, DERIV)
        if DERIV:
            out = out * scale
    else:
        out = knot_basis(x, knots + m, mask, K, DERIV)
    return out


@triton.jit
def _rounded(v, dtype: tl.constexpr):
    """float32 v rounded to the nearest value of ``dtype`` (ties to even), still as float32.

    Only for the interpreter, whose float32 -> bfloat16 conversion does not round to nearest.
    """
    if dtype == tl.bfloat16:
        bits = v.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        out = bits.to(tl.float32, bitcast=True)
    elif dtype == tl.float16:
        out = v.to(tl.float16).to(tl.float32)
    else:
        out = v
    return out


@triton.jit
def _dot(a, b, acc, PRECISION: tl.constexpr, INTERPRET: tl.constexpr):
    """acc + a @ b with a rounded to b's dtype; float32 accumulation."""
    if INTERPRET:  # the interpreter's bf16 products are unreliable: float32 on the rounded operands
        out = tl.dot(_rounded(a.to(tl.float32), b.dtype), b.to(tl.float32), acc)
    else:
        out = tl.dot(a.to(b.dtype), b, acc, input_precision=PRECISION)
    return out


@triton.jit
def to_store(acc, dtype: tl.constexpr, INTERPRET: tl.constexpr):
    """The float32 accumulator rounded to the dtype it is stored in."""
    if INTERPRET:
        out = _rounded(acc, dtype).to(dtype)
    else:
        out = acc.to(dtype)
    return out


@triton.jit
def input_chunk(n_in, BLOCK_I: tl.constexpr, SPLIT_I: tl.constexpr):
    """The inputs [first, last) of this program: the inputs cut into SPLIT_I chunks (whole blocks of BLOCK_I) along
    program axis 2."""
    chunk = tl.cdiv(tl.cdiv(n_in, BLOCK_I), SPLIT_I) * BLOCK_I
    first = tl.program_id(2) * chunk
    return first, tl.minimum(first + chunk, n_in)


@triton.jit
def store_or_add(ptrs, acc, mask, SPLIT_I: tl.constexpr):
    """A float32 output tile stored, or added atomically when SPLIT_I programs share it (the output zeroed)."""
    if SPLIT_I == 1:
        tl.store(ptrs, acc, mask=mask)
    else:
        tl.atomic_add(ptrs, acc, mask=mask)


# ----------------------------------------------------------------------------------------------------------
# Kernels. Tile configurations (BLOCK_M, BLOCK_N, BLOCK_I, num_warps, num_stages) are autotuned per problem
# size on a GPU, from one list for tensor-core products (bf16, fp16, TF32) and one for full float32, whose
# FMA products need smaller tiles. Compiled for sm_90 by Triton 3.9 (with either ptxas it ships, CUDA 13.4 or
# 12.9), the larger tiles spill registers in some cases: on grids that are not uniform (Cox-de Boor holds k + 1
# levels of the tile), at order 5, and in the grad_x kernel's TF32 products; the last tile of each list is a
# compact one that compiles without spills at orders 3 and 5 on both kinds of grid
# (tests/test_ops_spline_linear_triton.py), so that the tuner, which times them all, always has one. The
# interpreter runs one small configuration.

# (BLOCK_M, BLOCK_N, BLOCK_I, SPLIT_I, num_warps, num_stages)
FORWARD_TILES = [(128, 128, 32, 1, 8, 3), (128, 128, 16, 1, 8, 3), (64, 128, 16, 1, 4, 3), (64, 64, 32, 1, 4, 4),
                 (64, 128, 16, 4, 4, 3), (64, 64, 32, 4, 4, 4), (64, 64, 16, 1, 4, 2)]
FORWARD_FP32_TILES = [(64, 64, 32, 1, 8, 2), (128, 64, 32, 1, 8, 2), (64, 128, 32, 1, 8, 2), (64, 64, 16, 1, 4, 2),
                      (64, 64, 32, 4, 8, 2), (64, 64, 16, 4, 4, 2), (64, 32, 16, 1, 4, 2)]
# (BLOCK_M, BLOCK_N, BLOCK_I, num_warps, num_stages)
GRAD_X_TILES = [(128, 64, 32, 8, 3), (64, 128, 32, 4, 3), (64, 64, 32, 4, 4), (32, 32, 32, 4, 2)]
GRAD_X_FP32_TILES = [(64, 64, 32, 8, 2), (64, 32, 32, 4, 2), (32, 64, 32, 4, 2), (32, 16, 32, 4, 2)]
GRAD_WEIGHT_TILES = [(64, 128, 64, 8, 3), (32, 128, 128, 8, 3), (32, 256, 64, 8, 3), (32, 64, 64, 4, 4),
                     (16, 64, 64, 4, 3)]
GRAD_WEIGHT_FP32_TILES = [(32, 64, 64, 8, 2), (32, 64, 32, 4, 2), (16, 64, 64, 4, 2), (16, 64, 32, 4, 2)]


def _ieee_float32(named_args: dict, kwargs: dict) -> bool:
    return named_args["x_ptr"].dtype == torch.float32 and kwargs.get("PRECISION") == "ieee"


def one_chunk_if_deterministic(blocks: dict, kwargs: dict) -> bool:
    """The autotuners' filter for kernels that split their inputs (``SPLIT_I``, atomic sums) and take a
    ``DETERMINISTIC`` flag: a single chunk when it is set."""
    return blocks["SPLIT_I"] == 1 or not kwargs["DETERMINISTIC"]


def _autotune(tensor_core: list[tuple[int, ...]], full_fp32: list[tuple[int, ...]],
              names: tuple[str, ...] = ("BLOCK_M", "BLOCK_N", "BLOCK_I"),
              interpreter_tile: tuple[int, ...] = (128, 32, 32, 4, 1), **options):
    """triton.autotune over the list that suits the call's dtype and precision; a kernel whose inputs split into
    SPLIT_I chunks (atomic sums) keeps one chunk under ``torch.use_deterministic_algorithms``."""
    key = ["n_in", "n_out", "n_basis", "batch_bucket", "K", "UNIFORM", "PRECISION"]
    keep = None
    if "SPLIT_I" in names:
        key, keep = key + ["DETERMINISTIC"], one_chunk_if_deterministic
    return autotune(names, tensor_core, key, interpreter_tile, full_fp32, _ieee_float32, keep=keep, **options)


@_autotune(tensor_core=FORWARD_TILES, full_fp32=FORWARD_FP32_TILES,
           names=("BLOCK_M", "BLOCK_N", "BLOCK_I", "SPLIT_I"), interpreter_tile=(128, 32, 32, 2, 4, 1),
           zeroed_when_split="out_ptr")
@triton.jit
def _forward_kernel(x_ptr, w_ptr, grid_ptr, scale_ptr, shift_ptr, out_ptr,
                    n_rows, n_in, n_out, n_basis, n_knots, batch_bucket,
                    stride_xn, stride_xi, stride_wk, stride_wo, stride_on, stride_oo,
                    K: tl.constexpr, PIECES: tl.constexpr, UNIFORM: tl.constexpr, ACT: tl.constexpr,
                    PRECISION: tl.constexpr, INTERPRET: tl.constexpr, DETERMINISTIC: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_I: tl.constexpr, SPLIT_I: tl.constexpr):
    """out_ptr: float32 [N, O], zeroed by the configuration's pre-launch hook when SPLIT_I > 1 (the programs of a
    tile add their chunks' shares), else written whole.
    DETERMINISTIC: only the tuner reads it (one chunk then)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    outs = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    first_in, last_in = input_chunk(n_in, BLOCK_I, SPLIT_I)
    row_ok = rows < n_rows
    out_ok = outs < n_out
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_xn
    w_cols = w_ptr + outs[None, :] * stride_wo
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for i0 in range(first_in, last_in, BLOCK_I):
        ins = i0 + tl.arange(0, BLOCK_I)
        in_ok = ins < n_in
        x = tl.load(x_rows + ins[None, :] * stride_xi, mask=row_ok[:, None] & in_ok[None, :], other=0.0)
        x = x.to(tl.float32)
        w_ptrs = w_cols + (ins.to(tl.int64) * (n_basis + 1))[:, None] * stride_wk
        w_mask = in_ok[:, None] & out_ok[None, :]
        acc = _dot(activation(x, ACT), tl.load(w_ptrs, mask=w_mask, other=0.0), acc, PRECISION, INTERPRET)
        scale = tl.load(scale_ptr + ins, mask=in_ok, other=0.0)[None, :]
        u = x * scale + tl.load(shift_ptr + ins, mask=in_ok, other=0.0)[None, :]
        knots = (grid_ptr + ins.to(tl.int64) * n_knots)[None, :]
        for m in range(0, n_basis):
            w_ptrs += stride_wk
            a = spline_basis(x, u, scale, knots, in_ok[None, :], m, K, PIECES, UNIFORM, False)
            acc = _dot(a, tl.load(w_ptrs, mask=w_mask, other=0.0), acc, PRECISION, INTERPRET)
    out_ptrs = out_ptr + rows.to(tl.int64)[:, None] * stride_on + outs[None, :] * stride_oo
    store_or_add(out_ptrs, acc, row_ok[:, None] & out_ok[None, :], SPLIT_I)


@triton.jit
def _times_slot_weight_t(go_rows, w_rows, row_ok, in_ok, n_out, stride_go, stride_wo,
                         PRECISION: tl.constexpr, INTERPRET: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_I: tl.constexpr):
    """grad_out [BLOCK_M, O] @ (one slot's weight rows [BLOCK_I, O])^T -> [BLOCK_M, BLOCK_I], float32."""
    g = tl.zeros((BLOCK_M, BLOCK_I), dtype=tl.float32)
    for o0 in range(0, n_out, BLOCK_N):
        outs = o0 + tl.arange(0, BLOCK_N)
        out_ok = outs < n_out
        go = tl.load(go_rows + outs[None, :] * stride_go, mask=row_ok[:, None] & out_ok[None, :], other=0.0)
        w_t = tl.load(w_rows + outs[:, None] * stride_wo, mask=out_ok[:, None] & in_ok[None, :], other=0.0)
        g = _dot(go, w_t, g, PRECISION, INTERPRET)
    return g


@_autotune(tensor_core=GRAD_X_TILES, full_fp32=GRAD_X_FP32_TILES)
@triton.jit
def _grad_x_kernel(x_ptr, w_ptr, grid_ptr, scale_ptr, shift_ptr, go_ptr, gx_ptr,
                   n_rows, n_in, n_out, n_basis, n_knots, batch_bucket,
                   stride_xn, stride_xi, stride_wk, stride_wo, stride_gn, stride_go, stride_dn, stride_di,
                   K: tl.constexpr, PIECES: tl.constexpr, UNIFORM: tl.constexpr, ACT: tl.constexpr,
                   PRECISION: tl.constexpr, INTERPRET: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_I: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    ins = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    row_ok = rows < n_rows
    in_ok = ins < n_in
    x_mask = row_ok[:, None] & in_ok[None, :]
    x = tl.load(x_ptr + rows.to(tl.int64)[:, None] * stride_xn + ins[None, :] * stride_xi, mask=x_mask, other=0.0)
    x = x.to(tl.float32)
    go_rows = go_ptr + rows.to(tl.int64)[:, None] * stride_gn
    w_rows = w_ptr + (ins.to(tl.int64) * (n_basis + 1))[None, :] * stride_wk
    g = _times_slot_weight_t(go_rows, w_rows, row_ok, in_ok, n_out, stride_go, stride_wo, PRECISION, INTERPRET,
                             BLOCK_M, BLOCK_N, BLOCK_I)
    acc = g * activation_derivative(x, ACT)
    scale = tl.load(scale_ptr + ins, mask=in_ok, other=0.0)[None, :]
    u = x * scale + tl.load(shift_ptr + ins, mask=in_ok, other=0.0)[None, :]
    knots = (grid_ptr + ins.to(tl.int64) * n_knots)[None, :]
    for m in range(0, n_basis):
        w_rows += stride_wk
        g = _times_slot_weight_t(go_rows, w_rows, row_ok, in_ok, n_out, stride_go, stride_wo, PRECISION,
                                 INTERPRET, BLOCK_M, BLOCK_N, BLOCK_I)
        acc += g * spline_basis(x, u, scale, knots, in_ok[None, :], m, K, PIECES, UNIFORM, True)
    gx_ptrs = gx_ptr + rows.to(tl.int64)[:, None] * stride_dn + ins[None, :] * stride_di
    tl.store(gx_ptrs, to_store(acc, gx_ptr.dtype.element_ty, INTERPRET), mask=x_mask)


@triton.jit
def _slot_times_grad_out(x_ptr, grid_ptr, scale_ptr, shift_ptr, go_ptr, ins, in_ok, outs, out_ok, m,
                         n_rows, n_knots, stride_xn, stride_xi, stride_gn, stride_go,
                         K: tl.constexpr, PIECES: tl.constexpr, UNIFORM: tl.constexpr, ACT: tl.constexpr,
                         BASE: tl.constexpr, PRECISION: tl.constexpr, INTERPRET: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_I: tl.constexpr):
    """(one slot of A for BLOCK_I inputs)^T @ grad_out over all rows -> [BLOCK_I, BLOCK_N], float32.

    The slot is the activation when BASE, else basis m. Tiles are transposed: inputs along axis 0.
    """
    scale = tl.load(scale_ptr + ins, mask=in_ok, other=0.0)[:, None]
    shift = tl.load(shift_ptr + ins, mask=in_ok, other=0.0)[:, None]
    knots = (grid_ptr + ins.to(tl.int64) * n_knots)[:, None]
    acc = tl.zeros((BLOCK_I, BLOCK_N), dtype=tl.float32)
    for r0 in range(0, n_rows, BLOCK_M):
        rows = r0 + tl.arange(0, BLOCK_M)
        row_ok = rows < n_rows
        x_t = tl.load(x_ptr + ins[:, None] * stride_xi + rows.to(tl.int64)[None, :] * stride_xn,
                      mask=in_ok[:, None] & row_ok[None, :], other=0.0).to(tl.float32)
        if BASE:
            a_t = activation(x_t, ACT)
        else:
            a_t = spline_basis(x_t, x_t * scale + shift, scale, knots, in_ok[:, None], m, K, PIECES, UNIFORM, False)
        go = tl.load(go_ptr + rows.to(tl.int64)[:, None] * stride_gn + outs[None, :] * stride_go,
                     mask=row_ok[:, None] & out_ok[None, :], other=0.0)
        acc = _dot(a_t, go, acc, PRECISION, INTERPRET)
    return acc


@_autotune(tensor_core=GRAD_WEIGHT_TILES, full_fp32=GRAD_WEIGHT_FP32_TILES)
@triton.jit
def _grad_weight_kernel(x_ptr, grid_ptr, scale_ptr, shift_ptr, go_ptr, gw_ptr,
                        n_rows, n_in, n_out, n_basis, n_knots, batch_bucket,
                        stride_xn, stride_xi, stride_gn, stride_go, stride_wk, stride_wo,
                        K: tl.constexpr, PIECES: tl.constexpr, UNIFORM: tl.constexpr, ACT: tl.constexpr,
                        PRECISION: tl.constexpr, INTERPRET: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_I: tl.constexpr):
    slot = tl.program_id(0) % (n_basis + 1)
    ins = (tl.program_id(0) // (n_basis + 1)) * BLOCK_I + tl.arange(0, BLOCK_I)
    outs = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    in_ok = ins < n_in
    out_ok = outs < n_out
    if slot == 0:
        acc = _slot_times_grad_out(x_ptr, grid_ptr, scale_ptr, shift_ptr, go_ptr, ins, in_ok, outs, out_ok, 0,
                                   n_rows, n_knots, stride_xn, stride_xi, stride_gn, stride_go,
                                   K, PIECES, UNIFORM, ACT, True, PRECISION, INTERPRET, BLOCK_M, BLOCK_N, BLOCK_I)
    else:
        acc = _slot_times_grad_out(x_ptr, grid_ptr, scale_ptr, shift_ptr, go_ptr, ins, in_ok, outs, out_ok,
                                   slot - 1, n_rows, n_knots, stride_xn, stride_xi, stride_gn, stride_go,
                                   K, PIECES, UNIFORM, ACT, False, PRECISION, INTERPRET, BLOCK_M, BLOCK_N, BLOCK_I)
    gw_rows = (ins.to(tl.int64) * (n_basis + 1) + slot)[:, None] * stride_wk
    tl.store(gw_ptr + gw_rows + outs[None, :] * stride_wo, to_store(acc, gw_ptr.dtype.element_ty, INTERPRET),
             mask=in_ok[:, None] & out_ok[None, :])


# ----------------------------------------------------------------------------------------------------------
# Launchers and the autograd Function.


_KNOTS: dict = {}  # (id(grid), uniform) -> knot tensors (:func:`kanlib.ops.derived.derived`)


def _knot_tensors(grid: torch.Tensor, uniform: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """grid as float32 [I, G+2k+1]; on uniform grids scale = 1/h and shift = -t_0/h [I] (float32), so that
    (x - t_0)/h = x*scale + shift. Cached until the grid's storage or version changes."""
    def build():
        grid32 = grid.detach().to(torch.float32).contiguous()
        scale = shift = grid32  # not read on other grids
        if uniform:
            first = grid[:, 0].detach().double()
            scale = (grid.shape[1] - 1) / (grid[:, -1].detach().double() - first)
            scale, shift = scale.float(), (-first * scale).float()
        return grid32, scale, shift

    return derived(_KNOTS, grid, build, uniform)


class LaunchPlan:
    """What every launch needs besides x, weight and grad_out: sizes, knots and the compile-time constants."""

    def __init__(self, x: torch.Tensor, weight: torch.Tensor, grid: torch.Tensor, spline_order: int,
                 uniform: bool, activation: str):
        self.n_rows, self.n_in, self.n_out = x.shape[0], grid.shape[0], weight.shape[1]
        self.grid, self.spline_order, self.activation = grid, spline_order, activation
        self.n_knots = grid.shape[1]
        self.n_basis = self.n_knots - spline_order - 1
        self.knots = _knot_tensors(grid, uniform)
        self.device = x.device
        fp32_precision = "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"
        self.constants = {
            "K": spline_order, "PIECES": symmetric_pieces(spline_order), "UNIFORM": uniform,
            "ACT": ACTIVATION_IDS[activation], "PRECISION": fp32_precision, "INTERPRET": INTERPRET,
        }

    def sizes(self):
        bucket = min(power_of_two_at_least(self.n_rows), 1 << 16)
        return self.n_rows, self.n_in, self.n_out, self.n_basis, self.n_knots, bucket

    def on_device(self):
        return on_device(self.device)


def on_device(device: torch.device):
    """Launches go to the current CUDA device: a context that makes it ``device`` (nothing for the CPU)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def launch_forward(kernel, x: torch.Tensor, weight: torch.Tensor, plan: LaunchPlan, sizes: tuple,
                   constants: dict) -> torch.Tensor:
    """out [N, O] in x's dtype by a forward kernel over (BLOCK_M rows, BLOCK_N outputs, one of SPLIT_I chunks of the
    inputs), given its size arguments and compile-time constants (this module's kernel or :mod:`.triton_local`'s):
    the kernel sums into a float32 output (zeroed first by the configurations that split the inputs), rounded once
    after, and is told whether torch.use_deterministic_algorithms is on (``DETERMINISTIC``)."""
    out = torch.empty(plan.n_rows, plan.n_out, device=x.device, dtype=torch.float32)

    def launch_grid(meta):
        return ceil_div(plan.n_rows, meta["BLOCK_M"]), ceil_div(plan.n_out, meta["BLOCK_N"]), meta["SPLIT_I"]

    if plan.n_rows > 0:
        with plan.on_device():
            kernel[launch_grid](x, weight, *plan.knots, out, *sizes, *x.stride(), *weight.stride(), *out.stride(),
                                DETERMINISTIC=torch.are_deterministic_algorithms_enabled(), **constants, **FP_FUSION)
    return out.to(x.dtype)


def launch_grad_x(kernel, x: torch.Tensor, weight: torch.Tensor, grad_out: torch.Tensor, plan: LaunchPlan,
                  sizes: tuple, constants: dict) -> torch.Tensor:
    """grad_x [N, I] by a kernel over tiles of BLOCK_M rows and BLOCK_I inputs, as :func:`launch_forward`."""
    grad_x = torch.empty(plan.n_rows, plan.n_in, device=x.device, dtype=x.dtype)
    if plan.n_rows == 0:
        return grad_x

    def launch_grid(meta):
        return ceil_div(plan.n_rows, meta["BLOCK_M"]), ceil_div(plan.n_in, meta["BLOCK_I"])

    with plan.on_device():
        kernel[launch_grid](x, weight, *plan.knots, grad_out, grad_x, *sizes, *x.stride(), *weight.stride(),
                            *grad_out.stride(), *grad_x.stride(), **constants, **FP_FUSION)
    return grad_x


def _forward(x: torch.Tensor, weight: torch.Tensor, plan: LaunchPlan) -> torch.Tensor:
    return launch_forward(_forward_kernel, x, weight, plan, plan.sizes(), plan.constants)


def _grad_x(x: torch.Tensor, weight: torch.Tensor, grad_out: torch.Tensor, plan: LaunchPlan) -> torch.Tensor:
    return launch_grad_x(_grad_x_kernel, x, weight, grad_out, plan, plan.sizes(), plan.constants)


def _grad_weight(x: torch.Tensor, weight: torch.Tensor, grad_out: torch.Tensor, plan: LaunchPlan) -> torch.Tensor:
    if plan.n_rows == 0:
        return torch.zeros_like(weight)
    grad_w = torch.empty(weight.shape, device=weight.device, dtype=weight.dtype)
    n_slots = plan.n_basis + 1

    def launch_grid(meta):
        return ceil_div(plan.n_in, meta["BLOCK_I"]) * n_slots, ceil_div(plan.n_out, meta["BLOCK_N"])

    with plan.on_device():
        _grad_weight_kernel[launch_grid](x, *plan.knots, grad_out, grad_w, *plan.sizes(), *x.stride(),
                                         *grad_out.stride(), *grad_w.stride(), **plan.constants, **FP_FUSION)
    return grad_w


def planned_function(forward, grad_x, grad_weight, doc: str) -> type[torch.autograd.Function]:
    """An autograd Function over (x, weight, grid, spline_order, uniform, activation) whose forward and gradients
    are ``forward(x, weight, plan)``, ``grad_x(x, weight, grad_out, plan)`` and ``grad_weight(...)`` with a
    :class:`LaunchPlan` (the class's ``launchers``, in that order); a create_graph backward goes through the plain
    formula."""

    class PlannedProduct(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight, grid, spline_order, uniform, activation):
            plan = LaunchPlan(x, weight, grid, spline_order, uniform, activation)
            ctx.save_for_backward(x, weight)
            ctx.plan = plan
            return forward(x, weight, plan)

        @staticmethod
        def backward(ctx, grad_out):
            x, weight = ctx.saved_tensors
            if torch.is_grad_enabled():
                # create_graph=True: the gradients must themselves be differentiable, which the kernels' are not.
                plan = ctx.plan
                return (*differentiable_backward(x, weight, plan.grid, plan.spline_order, plan.activation, grad_out,
                                                 *ctx.needs_input_grad[:2]), None, None, None, None)
            grad_out = grad_out.to(x.dtype)
            grad_x_out = grad_w = None
            if ctx.needs_input_grad[0]:
                grad_x_out = grad_x(x, weight, grad_out, ctx.plan)
            if ctx.needs_input_grad[1]:
                grad_w = grad_weight(x, weight, grad_out, ctx.plan)
            return grad_x_out, grad_w, None, None, None, None

    PlannedProduct.__doc__ = doc
    PlannedProduct.launchers = (forward, grad_x, grad_weight)
    return PlannedProduct


SplineLinearFunction = planned_function(
    _forward, _grad_x, _grad_weight,
    "The fused product with gradients for x and weight; inputs as :func:`spline_linear_triton` checks them.")


def check_devices(what: str, devices: dict[str, torch.device]) -> None:
    """Raise unless the named tensors share one device, a CUDA one (or any under the Triton interpreter)."""
    if len(set(devices.values())) > 1:
        raise ValueError(f"{what} needs its tensors on one device, got "
                         + ", ".join(f"{name} on {device}" for name, device in devices.items()))
    device = next(iter(devices.values()))
    if device.type == "cpu" and not INTERPRET:
        raise ValueError(f"{what} needs CUDA tensors, got tensors on cpu (the CPU runs only under the Triton "
                         f"interpreter, for tests: TRITON_INTERPRET=1 set before triton is imported)")


def check_inputs(x: torch.Tensor, weight: torch.Tensor, grid: torch.Tensor, spline_order: int,
                 activation: str) -> None:
    """Raise with what was expected and what came unless the Triton kernels can run these inputs."""
    if isinstance(spline_order, bool) or spline_order not in SPLINE_ORDERS:
        raise ValueError(f"the triton backend supports spline_order {SPLINE_ORDERS[0]} to {SPLINE_ORDERS[-1]}, "
                         f"got {spline_order!r}")
    if activation not in ACTIVATION_IDS:
        raise ValueError(f"the triton backend supports base activations {sorted(ACTIVATION_IDS)}, got {activation!r}")
    check_devices("the triton backend", {"x": x.device, "weight": weight.device, "grid": grid.device})
    if x.dtype not in DTYPES:
        raise TypeError(f"the triton backend supports x and weight of dtype {[str(d) for d in DTYPES]}, "
                        f"got {x.dtype}")
    if weight.dtype != x.dtype:
        raise TypeError(f"x and weight must have the same dtype (or run under torch.autocast), got x {x.dtype} "
                        f"and weight {weight.dtype}")
    if x.dim() != 2 or weight.dim() != 2 or grid.dim() != 2 or grid.shape[0] != x.shape[1]:
        raise ValueError(f"expected x [N, I], weight [I*S, O], grid [I, G + 2k + 1], got x {tuple(x.shape)}, "
                         f"weight {tuple(weight.shape)}, grid {tuple(grid.shape)}")
    n_slots = grid.shape[1] - spline_order
    if n_slots < spline_order + 2 or weight.shape[0] != x.shape[1] * n_slots:
        raise ValueError(f"weight must have I*(G+k+1) = {x.shape[1]}*{n_slots} rows for grid {tuple(grid.shape)} "
                         f"and spline_order {spline_order}, got {weight.shape[0]}")


def spline_linear_triton(x: torch.Tensor, weight: torch.Tensor, grid: torch.Tensor, spline_order: int,
                         uniform: bool, activation: str = "silu") -> torch.Tensor:
    """x [N, I], weight [I*(G+k+1), O], grid [I, G+2k+1] -> [N, O], fused (see the module docstring).

    Under torch.autocast, x and weight are cast to the autocast dtype first; the output has x's dtype.
    """
    x, weight = autocast_operands(x, weight)
    check_inputs(x, weight, grid, spline_order, activation)
    return SplineLinearFunction.apply(x, weight, grid, spline_order, bool(uniform), activation)
