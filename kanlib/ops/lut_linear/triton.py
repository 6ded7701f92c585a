"""The lookup-table (8-bit) KAN product in Triton: table codes times int8 weight codes, in one fused kernel.

Same function as :func:`kanlib.ops.lut_linear.lut_linear` (its ``"eager"`` backend is the reference):

    out[n, o] = spline_acc[n, o] * (table.scale * spline_scale[o]) + base_acc[n, o] * (act_scale * base_scale[o])

with ``spline_acc = A @ spline_codes`` and ``base_acc = a @ base_codes`` int32 products: A [N, I*(G+k)] holds the
table codes of each input's k + 1 nonzero bases, a [N, I] the ``act_bits``-bit codes of the base activation.
Inference only (no autograd). Neither A nor the [N, I, k+1] window of codes is ever stored.

Tiling. A program owns a [BLOCK_N rows, BLOCK_O outputs] tile and walks the inputs in blocks of BLOCK_I. For
an x tile [BLOCK_N, BLOCK_I] it finds each value's knot span and position within it once and gathers its table
row (the table is tiny and stays in cache; its k + 1 uint8 codes are packed into one int32 word, two for
k >= 4, so that a value holds one or two registers instead of k + 1). Then, slot by slot (m = 0 .. G+k-1), it
forms the int8 tile of A for that slot in registers (byte ``m - span + k`` of the word where that is one of the
k + 1 window bases, else 0) and accumulates ``tl.dot`` with the int8 weight rows ``i*(G+k) + m`` of those
inputs, in int32; the K dimension I*(G+k) needs no padding. The base codes of the same x tile get one more
int8 dot into a second int32 accumulator. Both are scaled per output once, at the store: the reference's two
float32 products and their sum (a GPU may contract one product into an FMA: a difference of at most half an
ulp of that product).

8-bit table codes (0..255) do not fit int8: as in the reference they enter the product shifted by -128 (empty
slots hold -128) and ``128 * spline_column_sums`` is added back to the int32 accumulator, which is exact. Codes
of fewer bits are used unshifted.

Spans and positions follow :meth:`kanlib.quant.table.BasisTable.lookup`: on uniform grids the span is
``floor((x - t_0) / h)`` (clamped, NaN -> 0) and the position ``floor((x - t_span) * inv_steps * P)`` with
``inv_steps = (n_knots - 1) / (t_last - t_0)`` computed in float64 and rounded to float32, as the reference
does; other grids (per-input knots) use a binary search
(``searchsorted(right=True) - 1``) and ``(x - t_span) / (t_span+1 - t_span)``. Values outside
``[t_0, t_last)`` and NaN have all-zero codes. Knot arithmetic is float32 on the grid cast to float32 (IEEE
division, ``div_rn``, as torch's; ``/`` would compile to an approximate division on a GPU); bfloat16 and
float16 x are cast to float32 first, which is what the reference's type promotion does too, so the codes
agree with it bit for bit (a float64 grid would make the reference compute in float64).

The base codes round half to even (as ``torch.round``), map NaN to 0 and clamp to
``[-2**(b-1), 2**(b-1) - 1]``; silu and tanh come from :mod:`kanlib.ops.spline_linear.triton`'s
``activation`` (via ``tl.sigmoid``), which can differ from torch's by an ulp, so a value within an ulp of a
rounding boundary may get the neighbouring base code (relu and identity are exact).

Under ``TRITON_INTERPRET=1`` (set before triton is imported) the kernel runs on the CPU, for tests, with one
small tile configuration; the interpreter's ``tl.dot`` multiplies int8 tiles exactly with an int32
accumulator (numpy ``matmul(..., dtype=int32)``), so the same code runs there and on a GPU.
"""
from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from .reference import TABLE_SHIFT
from ..spline_linear.triton import ACTIVATION_IDS, DTYPES, SPLINE_ORDERS, activation, check_devices
from ..derived import derived
from ..triton_tuning import FP_FUSION, autotune, ceil_div, power_of_two_at_least

__all__ = ["lut_linear_triton", "check_inputs", "ACTIVATION_IDS", "DTYPES", "SPLINE_ORDERS"]


# ----------------------------------------------------------------------------------------------------------
# Element-wise pieces. Shapes are whatever the caller's tiles are.


@triton.jit
def _round_half_even(v):
    """v rounded to the nearest integer, ties to even (torch.round), for |v| < 2**22 (v + 0.5 is exact)."""
    r = tl.floor(v + 0.5)
    tie = (r - v) == 0.5
    odd = (r.to(tl.int32) & 1) != 0
    return tl.where(tie & odd, r - 1.0, r)


@triton.jit
def _activation_codes(x, act_scale, act_limit, ACT: tl.constexpr):
    """int8 codes of activation(x) / act_scale: NaN -> 0, clamped to [-act_limit, act_limit - 1], half-even."""
    v = tl.math.div_rn(activation(x, ACT), act_scale + tl.zeros(x.shape, tl.float32))
    v = tl.where(v == v, v, 0.0)
    v = tl.minimum(tl.maximum(v, 0.0 - act_limit), act_limit - 1.0)  # (float forms: ints of 1 are constants)
    return _round_half_even(v).to(tl.int32).to(tl.int8)


@triton.jit
def _span_and_fraction(x, grid_rows, step, inv_steps, mask, n_knots, n_search, UNIFORM: tl.constexpr):
    """(span, fraction of the span where x lies) as BasisTable.lookup: int32 in [0, n_knots - 2], float32.

    grid_rows: pointers to grid[i, 0] broadcastable against x; step, inv_steps: per input (uniform grids).
    """
    if UNIFORM:
        first = tl.load(grid_rows, mask=mask, other=0.0)
        u = tl.math.div_rn(x - first, step)
        u = tl.where(u == u, u, 0.0)
        span = tl.minimum(tl.maximum(u, 0.0), n_knots - 2.0).to(tl.int32)
        left = tl.load(grid_rows + span, mask=mask, other=0.0)
        fraction = (x - left) * inv_steps
    else:
        # invariant for values inside the grid: grid[low] <= x < grid[high]; n_search = ceil(log2(n_knots - 1))
        low = tl.zeros(x.shape, dtype=tl.int32)
        high = tl.full(x.shape, 0, tl.int32) + (n_knots - 1)
        for _ in range(n_search):
            active = high - low > 1
            mid = (low + high) // 2
            right_of_mid = tl.load(grid_rows + mid, mask=mask & active, other=0.0) <= x
            low = tl.where(active & right_of_mid, mid, low)
            high = tl.where(active & ~right_of_mid, mid, high)
        span = low
        left = tl.load(grid_rows + span, mask=mask, other=0.0)
        width = tl.load(grid_rows + span + 1, mask=mask, other=0.0) - left
        fraction = tl.where(width > 0.0, tl.math.div_rn(x - left, tl.where(width > 0.0, width, 1.0)), 0.0)
    return span, fraction


# ----------------------------------------------------------------------------------------------------------
# The kernel. Tile configurations (BLOCK_N, BLOCK_O, BLOCK_I, num_warps, num_stages) are autotuned per problem
# size on a GPU; BLOCK_I >= 32 (the k of int8 tensor-core instructions). Each was checked to compile for sm_90
# (wgmma / mma.sync on s8) without register spills for orders 1 to 5, both grid kinds and all x dtypes; 128 x 128
# tiles spill. The interpreter runs one configuration.


def _autotune(tiles: list[tuple[int, ...]]):
    return autotune(("BLOCK_N", "BLOCK_O", "BLOCK_I"), tiles,
                    ["n_in", "n_out", "n_basis", "batch_bucket", "K", "UNIFORM", "SHIFT"], (128, 32, 32, 4, 1))


@_autotune([(64, 128, 32, 8, 3), (128, 64, 32, 8, 3), (64, 64, 32, 4, 3), (32, 64, 32, 4, 2)])
@triton.jit
def _lut_kernel(x_ptr, table_ptr, grid_ptr, step_ptr, inv_ptr, ws_ptr, wb_ptr, sums_ptr, ss_ptr, bs_ptr, out_ptr,
                n_rows, n_in, n_out, n_basis, n_knots, n_search, n_positions, act_limit, batch_bucket,
                table_scale, act_scale,
                stride_xn, stride_xi, stride_sk, stride_so, stride_bk, stride_bo, stride_on, stride_oo,
                K: tl.constexpr, UNIFORM: tl.constexpr, ACT: tl.constexpr, SHIFT: tl.constexpr,
                WORDS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_I: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    outs = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
    row_ok = rows < n_rows
    out_ok = outs < n_out
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_xn
    spline_acc = tl.zeros((BLOCK_N, BLOCK_O), dtype=tl.int32)
    base_acc = tl.zeros((BLOCK_N, BLOCK_O), dtype=tl.int32)
    for i0 in range(0, n_in, BLOCK_I):
        ins = i0 + tl.arange(0, BLOCK_I)
        in_ok = ins < n_in
        mask = row_ok[:, None] & in_ok[None, :]
        x = tl.load(x_rows + ins[None, :] * stride_xi, mask=mask, other=0.0).to(tl.float32)
        w_mask = in_ok[:, None] & out_ok[None, :]

        # base branch: a [BLOCK_N, BLOCK_I] int8 @ base_codes [BLOCK_I, BLOCK_O] int8
        wb = tl.load(wb_ptr + ins.to(tl.int64)[:, None] * stride_bk + outs[None, :] * stride_bo, mask=w_mask,
                     other=0)
        base_acc = tl.dot(_activation_codes(x, act_scale, act_limit, ACT), wb, base_acc, out_dtype=tl.int32)

        # span, position and the k + 1 window codes of each value (code r belongs to basis span - K + r)
        grid_rows = (grid_ptr + ins.to(tl.int64) * n_knots)[None, :]
        step = tl.load(step_ptr + ins, mask=in_ok, other=1.0)[None, :]
        inv_steps = tl.load(inv_ptr + ins, mask=in_ok, other=1.0)[None, :]
        span, fraction = _span_and_fraction(x, grid_rows, step, inv_steps, mask, n_knots, n_search, UNIFORM)
        position = fraction * n_positions
        position = tl.where(position == position, position, 0.0)
        position = tl.minimum(tl.maximum(tl.floor(position), 0.0), n_positions - 1.0).to(tl.int32)
        if UNIFORM:
            table_row = position.to(tl.int64)
        else:
            table_row = (ins[None, :].to(tl.int64) * (n_knots - 1) + span) * n_positions + position
        inside = (x >= tl.load(grid_rows, mask=mask, other=0.0)) & (x < tl.load(grid_rows + n_knots - 1, mask=mask,
                                                                                other=0.0))
        # the k + 1 codes of the row, packed in WORDS int32 (code r is byte r % 4 of word r // 4; all 0 outside
        # the grid, for NaN and for padding): one or two registers per value instead of k + 1
        words_ptr = table_ptr + table_row * WORDS
        low_word = tl.load(words_ptr, mask=mask & inside, other=0)
        if WORDS == 2:
            high_word = tl.load(words_ptr + 1, mask=mask & inside, other=0)

        # spline branch, slot by slot: the int8 tile of A for basis m of these inputs @ its weight rows
        # (int32 offsets, which the launcher checks, keep fewer registers live than a tile of 64-bit pointers)
        first_basis = span - K  # code r goes to slot first_basis + r
        ws_offsets = (ins * n_basis)[:, None] * stride_sk + outs[None, :] * stride_so
        for m in range(0, n_basis):
            r = m - first_basis
            if WORDS == 2:
                word = tl.where(r < 4, low_word, high_word)
            else:
                word = low_word
            code = (word >> ((r & 3) * 8)) & 0xFF
            a = tl.where((r >= 0) & (r <= K), code - SHIFT, -SHIFT)
            ws = tl.load(ws_ptr + m * stride_sk + ws_offsets, mask=w_mask, other=0)
            spline_acc = tl.dot(a.to(tl.int8), ws, spline_acc, out_dtype=tl.int32)

    if SHIFT != 0:  # undo the shift: every slot of every input entered the product SHIFT too low
        spline_acc += SHIFT * tl.load(sums_ptr + outs, mask=out_ok, other=0)[None, :]
    spline_mult = table_scale * tl.load(ss_ptr + outs, mask=out_ok, other=0.0)
    base_mult = act_scale * tl.load(bs_ptr + outs, mask=out_ok, other=0.0)
    out = spline_acc.to(tl.float32) * spline_mult[None, :] + base_acc.to(tl.float32) * base_mult[None, :]
    out_ptrs = out_ptr + rows.to(tl.int64)[:, None] * stride_on + outs[None, :] * stride_oo
    tl.store(out_ptrs, out, mask=row_ok[:, None] & out_ok[None, :])


# ----------------------------------------------------------------------------------------------------------
# Launcher.


_KNOTS: dict = {}  # (id(grid), x dtype) -> knot tensors (:func:`kanlib.ops.derived.derived`)


def _knot_tensors(grid: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """grid as float32 [I, n_knots], the uniform step h [I] and inv_steps [I] (float32), as the reference
    computes them: h = (t_last - t_0) / (n_knots - 1) in the grid's dtype, inv_steps in float64 rounded to x's
    dtype promoted to at least float32. Cached until the grid's storage or version changes."""
    def build():
        knots = grid.detach()
        n_knots = knots.shape[1]
        step = ((knots[:, -1] - knots[:, 0]) / (n_knots - 1)).to(torch.float32)
        inv_steps = ((n_knots - 1) / (knots[:, -1] - knots[:, 0]).double()).to(
            torch.promote_types(dtype, torch.float32)).to(torch.float32)
        return knots.to(torch.float32).contiguous(), step.contiguous(), inv_steps.contiguous()

    return derived(_KNOTS, grid, build, dtype)


_WORDS: dict = {}  # (id(table.codes), spline order) -> packed words (:func:`kanlib.ops.derived.derived`)


def _packed_codes(table) -> torch.Tensor:
    """The table's rows of k + 1 uint8 codes packed into int32 words [rows, 1 or 2]: code r is bits 8*(r % 4) ..
    8*(r % 4) + 7 of word r // 4, unused bytes 0. Cached until the table's codes change."""
    def build():
        codes = table.codes.reshape(-1, table.spline_order + 1).to(torch.int64)
        n_words = -(-codes.shape[1] // 4)
        words = torch.zeros(codes.shape[0], n_words, dtype=torch.int64, device=codes.device)
        for r in range(codes.shape[1]):
            words[:, r // 4] |= codes[:, r] << (8 * (r % 4))
        return torch.where(words >= 2 ** 31, words - 2 ** 32, words).to(torch.int32).contiguous()  # same bits

    return derived(_WORDS, table.codes, build, table.spline_order)


def check_inputs(x, table, weights, act_scale, activation: str, act_bits) -> None:
    """Raise with what was expected and what came unless the kernel can run these inputs."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point [N, I] tensor, got {x.dtype}")
    if x.dim() != 2:
        raise ValueError(f"x must be a 2-D [N, I] tensor, got shape {tuple(x.shape)}")
    k = table.spline_order
    if isinstance(k, bool) or k not in SPLINE_ORDERS:
        raise ValueError(f"the triton LUT kernel supports spline_order {SPLINE_ORDERS[0]} to {SPLINE_ORDERS[-1]}, "
                         f"got {k!r}")
    if activation not in ACTIVATION_IDS:
        raise ValueError(f"the triton LUT kernel supports base activations {sorted(ACTIVATION_IDS)}, "
                         f"got {activation!r}")
    if isinstance(act_bits, bool) or not isinstance(act_bits, int) or not 1 <= act_bits <= 8:
        raise ValueError(f"act_bits must be an int in 1..8 (int8 codes), got {act_bits!r}")
    if isinstance(act_scale, torch.Tensor) and act_scale.numel() != 1:
        raise ValueError(f"act_scale must be one number, got a tensor of shape {tuple(act_scale.shape)}")
    devices = {"x": x.device, "table": table.codes.device}
    devices.update({name: getattr(weights, name).device for name in ("spline_codes", "spline_scale", "base_codes",
                                                                      "base_scale", "spline_column_sums")})
    check_devices("the triton LUT kernel", devices)
    if x.dtype not in DTYPES:
        raise TypeError(f"the triton LUT kernel supports x of dtype {[str(d) for d in DTYPES]}, got {x.dtype}")
    for name in ("spline_codes", "base_codes"):
        if getattr(weights, name).dtype != torch.int8:
            raise TypeError(f"weights.{name} must be int8, got {getattr(weights, name).dtype}")
    n_in, n_knots = table.grid.shape
    n_basis = n_knots - k - 1
    n_out = weights.base_codes.shape[-1]
    expected = {"spline_codes": (n_in * n_basis, n_out), "base_codes": (n_in, n_out), "spline_scale": (n_out,),
                "base_scale": (n_out,)}
    got = {name: tuple(getattr(weights, name).shape) for name in expected}
    if x.shape[1] != n_in or got != expected:
        raise ValueError(f"expected x [N, {n_in}], spline_codes [I*(G+k), O] = {expected['spline_codes']}, "
                         f"base_codes {expected['base_codes']}, scales ({n_out},) for the table's grid "
                         f"{tuple(table.grid.shape)} and spline_order {k}, got x {tuple(x.shape)}, "
                         + ", ".join(f"{name} {shape}" for name, shape in got.items()))
    spline_codes = weights.spline_codes
    extent = 1 + sum((size - 1) * stride for size, stride in zip(spline_codes.shape, spline_codes.stride()))
    if extent > 2 ** 31:
        raise ValueError(f"the triton LUT kernel addresses spline_codes with int32 offsets: at most 2**31 elements, "
                         f"got a tensor spanning {extent}")


def lut_linear_triton(x: torch.Tensor, table, weights, act_scale, activation: str = "silu",
                      act_bits: int = 8) -> torch.Tensor:
    """x [N, I] (float32, bfloat16 or float16) -> float32 [N, O], fused (see the module docstring).

    ``table`` is a :class:`kanlib.quant.table.BasisTable`, ``weights`` a
    :class:`kanlib.ops.lut_linear.IntegerWeights`; half-precision x is cast to float32 for the span,
    position and activation arithmetic.
    """
    check_inputs(x, table, weights, act_scale, activation, act_bits)
    k = table.spline_order
    n_rows, n_in = x.shape
    n_knots = table.grid.shape[1]
    n_basis = n_knots - k - 1
    n_out = weights.base_codes.shape[1]
    out = torch.empty(n_rows, n_out, device=x.device, dtype=torch.float32)
    if n_rows == 0 or n_out == 0:
        return out
    grid32, step, inv_steps = _knot_tensors(table.grid, x.dtype)
    words = _packed_codes(table)
    shift = TABLE_SHIFT if table.table_bits == 8 else 0
    ws, wb = weights.spline_codes, weights.base_codes
    bucket = min(power_of_two_at_least(n_rows), 1 << 16)
    n_search = (n_knots - 2).bit_length()  # binary-search steps: ceil(log2(n_knots - 1))
    sizes = (n_rows, n_in, n_out, n_basis, n_knots, n_search, table.n_positions, 2 ** (act_bits - 1), bucket)

    def launch_grid(meta):
        return ceil_div(n_rows, meta["BLOCK_N"]), ceil_div(n_out, meta["BLOCK_O"])

    device = torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext()
    with device:
        _lut_kernel[launch_grid](x, words, grid32, step, inv_steps, ws, wb, weights.spline_column_sums,
                                 weights.spline_scale.float(), weights.base_scale.float(), out, *sizes,
                                 float(table.scale), float(act_scale),
                                 *x.stride(), *ws.stride(), *wb.stride(), *out.stride(),
                                 K=k, UNIFORM=bool(table.uniform), ACT=ACTIVATION_IDS[activation], SHIFT=shift,
                                 WORDS=words.shape[1], **FP_FUSION)
    return out
