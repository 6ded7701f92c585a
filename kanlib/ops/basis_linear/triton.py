"""The product of the basis-expansion KAN families in Triton: ``out = A(x) @ W`` with A built in registers.

Same function and layout as :func:`kanlib.ops.basis_linear.basis_linear` (the reference is
:func:`.reference.basis_linear_reference` over ``spec.expand(x)``): x [N, I], weight [I*S, O], row ``i*S + s``
for basis s of input i. One kernel set serves every family, the basis being a compile-time constant ``KIND``:
Gaussian RBF (``p`` = grid [S], ``q`` = width), RSWAF (``p`` = grid [S], ``q`` = inverse width), ReLU bumps
(``p`` = starts, ``q`` = ends, both [I, S]) and Chebyshev polynomials of tanh x (no parameters; T_s by the
three-term recurrence, carried from slot to slot). Neither the [N, I, S] expansion nor A is ever stored.

Tiling, as :mod:`kanlib.ops.spline_linear.triton`: the K = I*S dimension is walked as (a block of BLOCK_I
inputs) x (basis s); for one s the [BLOCK_M, BLOCK_I] tile of A is computed from the x tile and multiplied with
the weight rows ``i*S + s`` of those inputs, so S needs no padding.

- forward: a program per (BLOCK_M rows, BLOCK_N outputs) loops over input blocks and bases.
- grad_x: a program per (BLOCK_M rows, BLOCK_I inputs) loops over bases s, computes ``grad_out @ W_s^T`` by
  ``tl.dot`` over output tiles and multiplies it by phi_s'(x) in registers. When the basis' own parameters take a
  gradient, the same program sums ``(grad_out @ W_s^T) * dphi_s/dp`` over its rows into a [row blocks, I, S, 2]
  float buffer (one slot per program, no atomics) that torch reduces: deterministic.
- grad_weight: a program per (BLOCK_I inputs, basis s, BLOCK_N outputs) loops over rows: ``A_s^T @ grad_out``.
  Chebyshev's T_s takes s recurrence steps there, little next to the product while S stays below BLOCK_N.

Precision: x and weight in float32, float64, bfloat16 or float16. Bases are computed in float32 (float64 for
float64 inputs); bfloat16 and float16 tiles of A are rounded to that dtype for the tensor-core product, with
float32 accumulation, and outputs are rounded once, at the store. float32 products use TF32 exactly when
``torch.backends.cuda.matmul.allow_tf32`` is set; float64 ones are full float64.

Under ``TRITON_INTERPRET=1`` (set before triton is imported) the kernels run on the CPU, for tests: one small
tile configuration, half-precision products emulated in float32 on rounded operands.
"""
from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from ..spline_linear import under_transform
from ..spline_linear.compiled import compiling_with_kernels
from ..spline_linear.support import autocast_operands
from ..spline_linear.triton import INTERPRET, check_devices, to_store
from .reference import PARAMETERS, differentiable_gradients
from ..triton_tuning import FP_FUSION, autotune, ceil_div, power_of_two_at_least

__all__ = ["KINDS", "DTYPES", "triton_runs", "basis_linear_triton", "BasisLinearFunction", "triton_product",
           "triton_gradients", "check_call"]

KINDS = {"rbf": 0, "rswaf": 1, "relu": 2, "chebyshev": 3}
RBF, RSWAF, RELU, CHEBYSHEV = (tl.constexpr(KINDS[name]) for name in ("rbf", "rswaf", "relu", "chebyshev"))
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


# ----------------------------------------------------------------------------------------------------------
# Element-wise pieces. p and q are each basis' two parameters, broadcastable against x.


@triton.jit
def _tanh(z):
    """tanh z from exp(-2|z|), which cannot overflow (NaN kept)."""
    e = tl.exp(-2.0 * tl.abs(z))
    magnitude = (1.0 - e) / (1.0 + e)
    return tl.where(z < 0.0, -magnitude, magnitude)


@triton.jit
def _basis(x, p, q, KIND: tl.constexpr):
    """phi(x) of an RBF, RSWAF or ReLU-bump basis (NaN kept)."""
    if KIND == RBF:
        z = (x - p) / q
        out = tl.exp(-z * z)
    elif KIND == RSWAF:
        t = _tanh((x - p) * q)
        out = 1.0 - t * t
    else:
        rise = x - p
        fall = q - x
        span = q - p
        v = 4.0 * tl.where(rise < 0.0, 0.0, rise) * tl.where(fall < 0.0, 0.0, fall) / (span * span)
        out = v * v
    return out


@triton.jit
def _basis_slopes(x, p, q, KIND: tl.constexpr):
    """(dphi/dx, dphi/dp, dphi/dq) of an RBF, RSWAF or ReLU-bump basis."""
    if KIND == RBF:  # z = (x - u) / h
        z = (x - p) / q
        dx = -2.0 * z * tl.exp(-z * z) / q
        dp = -dx
        dq = -dx * z
    elif KIND == RSWAF:  # z = (x - u) * c
        d = x - p
        t = _tanh(d * q)
        dz = -2.0 * t * (1.0 - t * t)
        dx = dz * q
        dp = -dx
        dq = dz * d
    else:  # v = r * relu(x - s) * relu(e - x), r = 4 / (e - s)^2, phi = v^2
        rise = x - p
        fall = q - x
        span = q - p
        r = 4.0 / (span * span)
        v = r * tl.where(rise < 0.0, 0.0, rise) * tl.where(fall < 0.0, 0.0, fall)
        rise_slope = tl.where(rise > 0.0, r * fall, 0.0)  # r * d relu(x - s)/dx * relu(e - x)
        fall_slope = tl.where(fall > 0.0, r * rise, 0.0)  # r * relu(x - s) * d relu(e - x)/de
        stretch = 2.0 * v / span  # dv/de = -dv/ds from r alone
        dx = 2.0 * v * (rise_slope - fall_slope)
        dp = 2.0 * v * (stretch - rise_slope)
        dq = 2.0 * v * (fall_slope - stretch)
    return dx, dp, dq


@triton.jit
def _chebyshev(t, degree, ACC: tl.constexpr):
    """T_degree(t) by the three-term recurrence (T_0 = 1 also for NaN)."""
    current = tl.full(t.shape, 1.0, ACC)
    following = t
    for _ in range(degree):
        later = 2.0 * t * following - current
        current = following
        following = later
    return current


@triton.jit
def _parameters(p_ptr, q_ptr, ins, in_ok, s, n_basis, KIND: tl.constexpr):
    """The parameters of basis s of each input in ``ins`` ([BLOCK_I] each); safe values for masked inputs."""
    if KIND == RELU:
        offsets = ins.to(tl.int64) * n_basis + s
        p = tl.load(p_ptr + offsets, mask=in_ok, other=0.0)
        q = tl.load(q_ptr + offsets, mask=in_ok, other=1.0)
    else:  # one grid point and one scale for every input
        p = tl.load(p_ptr + s + ins * 0)
        q = tl.load(q_ptr + ins * 0)
    return p, q


@triton.jit
def _dot(a, b, acc, ACC: tl.constexpr, PRECISION: tl.constexpr, INTERPRET: tl.constexpr):
    """acc + a @ b with a rounded to b's dtype; accumulation in ACC."""
    if INTERPRET:  # the interpreter's half-precision products are unreliable: ACC on the rounded operands
        out = tl.dot(to_store(a.to(ACC), b.dtype, True).to(ACC), b.to(ACC), acc)
    else:
        out = tl.dot(a.to(b.dtype), b, acc, input_precision=PRECISION, out_dtype=ACC)
    return out


# ----------------------------------------------------------------------------------------------------------
# Kernels. Tile configurations (BLOCK_M, BLOCK_N, BLOCK_I, num_warps, num_stages) are autotuned per problem size
# on a GPU, from one list for tensor-core products (bf16, fp16, TF32) and one for full float32 and float64 FMA
# products (float64's wider registers make the second list's tiles small); the lists were first tuned on an H200
# by ``bench families --device cuda`` (data/results). Compiled for sm_90 by the ptxas Triton 3.9 ships, some tiles
# spill a few bytes of registers (the grad_x kernel's full-precision ones for every kind, up to 40 bytes; RBF and
# RSWAF more than ReLU bumps and Chebyshev); the last tile of each list compiles without spills for every kind,
# parameter gradients on (tests/test_ops_basis_linear_triton.py), so that the tuner, which times them all, always
# has one. The interpreter runs one small configuration.

# (BLOCK_M, BLOCK_N, BLOCK_I, num_warps, num_stages); the full-precision lists serve float32 and float64
FORWARD_TILES = [(128, 128, 32, 8, 3), (128, 64, 32, 8, 3), (64, 128, 32, 8, 3), (64, 64, 32, 4, 4)]
FORWARD_FULL_TILES = [(64, 64, 16, 4, 2), (64, 32, 16, 4, 2)]
GRAD_X_TILES = [(64, 64, 32, 8, 2), (32, 64, 32, 4, 2), (32, 32, 32, 4, 2)]
GRAD_X_FULL_TILES = [(64, 32, 32, 8, 2), (64, 64, 16, 8, 2), (32, 32, 32, 4, 2), (32, 64, 16, 4, 2), (32, 32, 16, 4, 2)]
GRAD_WEIGHT_TILES = [(64, 128, 64, 8, 3), (32, 128, 64, 8, 3), (32, 64, 64, 4, 4)]
GRAD_WEIGHT_FULL_TILES = [(32, 64, 32, 4, 2), (16, 64, 64, 4, 2), (32, 32, 32, 4, 2)]

_KEY = ["n_in", "n_out", "n_basis", "batch_bucket", "KIND", "PRECISION", "PARAMS"]


def _ieee_wide(named_args: dict, kwargs: dict) -> bool:
    return named_args["x_ptr"].dtype in (torch.float32, torch.float64) and kwargs.get("PRECISION") == "ieee"


def _autotune(tensor_core: list[tuple[int, ...]], full_precision: list[tuple[int, ...]], **options):
    """triton.autotune over the list that suits the call's dtype and precision."""
    return autotune(("BLOCK_M", "BLOCK_N", "BLOCK_I"), tensor_core, _KEY, (32, 32, 16, 4, 1), full_precision,
                    _ieee_wide, **options)


@_autotune(tensor_core=FORWARD_TILES, full_precision=FORWARD_FULL_TILES)
@triton.jit
def _forward_kernel(x_ptr, w_ptr, p_ptr, q_ptr, out_ptr, n_rows, n_in, n_out, n_basis, batch_bucket,
                    stride_xn, stride_xi, stride_wk, stride_wo, stride_on, stride_oo,
                    KIND: tl.constexpr, PARAMS: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
                    INTERPRET: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_I: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    outs = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < n_rows
    out_ok = outs < n_out
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_xn
    w_cols = w_ptr + outs[None, :] * stride_wo
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for i0 in range(0, n_in, BLOCK_I):
        ins = i0 + tl.arange(0, BLOCK_I)
        in_ok = ins < n_in
        x = tl.load(x_rows + ins[None, :] * stride_xi, mask=row_ok[:, None] & in_ok[None, :], other=0.0).to(ACC)
        w_rows = w_cols + (ins.to(tl.int64) * n_basis)[:, None] * stride_wk
        w_mask = in_ok[:, None] & out_ok[None, :]
        if KIND == CHEBYSHEV:
            t = _tanh(x)
            current = tl.full((BLOCK_M, BLOCK_I), 1.0, ACC)
            following = t
            for s in range(0, n_basis):
                w = tl.load(w_rows + s * stride_wk, mask=w_mask, other=0.0)
                acc = _dot(current, w, acc, ACC, PRECISION, INTERPRET)
                later = 2.0 * t * following - current
                current = following
                following = later
        else:
            for s in range(0, n_basis):
                p, q = _parameters(p_ptr, q_ptr, ins, in_ok, s, n_basis, KIND)
                a = _basis(x, p[None, :], q[None, :], KIND)
                w = tl.load(w_rows + s * stride_wk, mask=w_mask, other=0.0)
                acc = _dot(a, w, acc, ACC, PRECISION, INTERPRET)
    out_ptrs = out_ptr + rows.to(tl.int64)[:, None] * stride_on + outs[None, :] * stride_oo
    tl.store(out_ptrs, to_store(acc, out_ptr.dtype.element_ty, INTERPRET), mask=row_ok[:, None] & out_ok[None, :])


@triton.jit
def _times_basis_weight_t(go_rows, w_rows, row_ok, in_ok, n_out, stride_go, stride_wo,
                          ACC: tl.constexpr, PRECISION: tl.constexpr, INTERPRET: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_I: tl.constexpr):
    """grad_out [BLOCK_M, O] @ (one basis' weight rows [BLOCK_I, O])^T -> [BLOCK_M, BLOCK_I] in ACC."""
    g = tl.zeros((BLOCK_M, BLOCK_I), dtype=ACC)
    for o0 in range(0, n_out, BLOCK_N):
        outs = o0 + tl.arange(0, BLOCK_N)
        out_ok = outs < n_out
        go = tl.load(go_rows + outs[None, :] * stride_go, mask=row_ok[:, None] & out_ok[None, :], other=0.0)
        w_t = tl.load(w_rows + outs[:, None] * stride_wo, mask=out_ok[:, None] & in_ok[None, :], other=0.0)
        g = _dot(go, w_t, g, ACC, PRECISION, INTERPRET)
    return g


@_autotune(tensor_core=GRAD_X_TILES, full_precision=GRAD_X_FULL_TILES, reset_to_zero=["pg_ptr"])
@triton.jit
def _grad_x_kernel(x_ptr, w_ptr, p_ptr, q_ptr, go_ptr, gx_ptr, pg_ptr, n_rows, n_in, n_out, n_basis, batch_bucket,
                   stride_xn, stride_xi, stride_wk, stride_wo, stride_gn, stride_go, stride_dn, stride_di,
                   KIND: tl.constexpr, PARAMS: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
                   INTERPRET: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_I: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    ins = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    row_ok = rows < n_rows
    in_ok = ins < n_in
    x_mask = row_ok[:, None] & in_ok[None, :]
    x = tl.load(x_ptr + rows.to(tl.int64)[:, None] * stride_xn + ins[None, :] * stride_xi, mask=x_mask, other=0.0)
    x = x.to(ACC)
    go_rows = go_ptr + rows.to(tl.int64)[:, None] * stride_gn
    w_rows = w_ptr + (ins.to(tl.int64) * n_basis)[None, :] * stride_wk
    acc = tl.zeros((BLOCK_M, BLOCK_I), dtype=ACC)
    if KIND == CHEBYSHEV:  # T_s and dT_s/dt carried from basis to basis
        t = _tanh(x)
        dt = 1.0 - t * t
        current = tl.full((BLOCK_M, BLOCK_I), 1.0, ACC)
        following = t
        d_current = tl.zeros((BLOCK_M, BLOCK_I), dtype=ACC)
        d_following = tl.full((BLOCK_M, BLOCK_I), 1.0, ACC)
        for s in range(0, n_basis):
            g = _times_basis_weight_t(go_rows, w_rows + s * stride_wk, row_ok, in_ok, n_out, stride_go, stride_wo,
                                      ACC, PRECISION, INTERPRET, BLOCK_M, BLOCK_N, BLOCK_I)
            acc += g * (d_current * dt)
            later = 2.0 * t * following - current
            d_later = 2.0 * following + 2.0 * t * d_following - d_current
            current = following
            following = later
            d_current = d_following
            d_following = d_later
    else:
        # the parameters' partial sums of this row block: pg[row block, i, s, 0 or 1]
        pg_rows = pg_ptr + ((tl.program_id(0) * n_in + ins.to(tl.int64)) * n_basis) * 2
        for s in range(0, n_basis):
            g = _times_basis_weight_t(go_rows, w_rows + s * stride_wk, row_ok, in_ok, n_out, stride_go, stride_wo,
                                      ACC, PRECISION, INTERPRET, BLOCK_M, BLOCK_N, BLOCK_I)
            p, q = _parameters(p_ptr, q_ptr, ins, in_ok, s, n_basis, KIND)
            dx, dp, dq = _basis_slopes(x, p[None, :], q[None, :], KIND)
            acc += g * dx
            if PARAMS:
                tl.store(pg_rows + 2 * s, tl.sum(tl.where(x_mask, g * dp, 0.0), axis=0), mask=in_ok)
                tl.store(pg_rows + 2 * s + 1, tl.sum(tl.where(x_mask, g * dq, 0.0), axis=0), mask=in_ok)
    gx_ptrs = gx_ptr + rows.to(tl.int64)[:, None] * stride_dn + ins[None, :] * stride_di
    tl.store(gx_ptrs, to_store(acc, gx_ptr.dtype.element_ty, INTERPRET), mask=x_mask)


@_autotune(tensor_core=GRAD_WEIGHT_TILES, full_precision=GRAD_WEIGHT_FULL_TILES)
@triton.jit
def _grad_weight_kernel(x_ptr, p_ptr, q_ptr, go_ptr, gw_ptr, n_rows, n_in, n_out, n_basis, batch_bucket,
                        stride_xn, stride_xi, stride_gn, stride_go, stride_wk, stride_wo,
                        KIND: tl.constexpr, PARAMS: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
                        INTERPRET: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_I: tl.constexpr):
    s = tl.program_id(0) % n_basis
    ins = (tl.program_id(0) // n_basis) * BLOCK_I + tl.arange(0, BLOCK_I)
    outs = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    in_ok = ins < n_in
    out_ok = outs < n_out
    if KIND != CHEBYSHEV:
        p, q = _parameters(p_ptr, q_ptr, ins, in_ok, s, n_basis, KIND)
        p = p[:, None]
        q = q[:, None]
    acc = tl.zeros((BLOCK_I, BLOCK_N), dtype=ACC)
    for r0 in range(0, n_rows, BLOCK_M):  # tiles transposed: inputs along axis 0
        rows = r0 + tl.arange(0, BLOCK_M)
        row_ok = rows < n_rows
        x_t = tl.load(x_ptr + ins[:, None] * stride_xi + rows.to(tl.int64)[None, :] * stride_xn,
                      mask=in_ok[:, None] & row_ok[None, :], other=0.0).to(ACC)
        if KIND == CHEBYSHEV:
            a_t = _chebyshev(_tanh(x_t), s, ACC)
        else:
            a_t = _basis(x_t, p, q, KIND)
        go = tl.load(go_ptr + rows.to(tl.int64)[:, None] * stride_gn + outs[None, :] * stride_go,
                     mask=row_ok[:, None] & out_ok[None, :], other=0.0)
        acc = _dot(a_t, go, acc, ACC, PRECISION, INTERPRET)
    gw_rows = (ins.to(tl.int64) * n_basis + s)[:, None] * stride_wk
    tl.store(gw_ptr + gw_rows + outs[None, :] * stride_wo, to_store(acc, gw_ptr.dtype.element_ty, INTERPRET),
             mask=in_ok[:, None] & out_ok[None, :])


# ----------------------------------------------------------------------------------------------------------
# Launchers and the autograd Function.


class _Launch:
    """What every launch needs besides x, weight and grad_out: sizes, the parameters as the kernels read them
    (contiguous, in the compute dtype) and the compile-time constants."""

    def __init__(self, x: torch.Tensor, weight: torch.Tensor, kind: str, n_basis: int, p, q):
        self.n_rows, self.n_in, self.n_out, self.n_basis = x.shape[0], x.shape[1], weight.shape[1], n_basis
        self.device = x.device
        self.compute = torch.float64 if x.dtype == torch.float64 else torch.float32
        self.p, self.q = (self._as_kernel_operand(v) for v in (p, q))
        tf32 = torch.backends.cuda.matmul.allow_tf32 and x.dtype == torch.float32
        self.constants = {"KIND": KINDS[kind], "PARAMS": False,
                          "ACC": tl.float64 if self.compute == torch.float64 else tl.float32,
                          "PRECISION": "tf32" if tf32 else "ieee", "INTERPRET": INTERPRET}

    def _as_kernel_operand(self, value) -> torch.Tensor:
        if value is None:
            return torch.zeros(1, device=self.device, dtype=self.compute)
        if isinstance(value, torch.Tensor):
            return value.detach().to(self.compute).contiguous().reshape(-1)
        return torch.full((1,), float(value), device=self.device, dtype=self.compute)

    def sizes(self):
        bucket = min(power_of_two_at_least(self.n_rows), 1 << 16)
        return self.n_rows, self.n_in, self.n_out, self.n_basis, bucket

    def on_device(self):
        """Launches go to the current CUDA device: make it the tensors' one."""
        return torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext()

    def empty(self) -> bool:
        return self.n_rows == 0 or self.n_in == 0 or self.n_out == 0


def _forward(x: torch.Tensor, weight: torch.Tensor, launch: _Launch) -> torch.Tensor:
    if launch.empty():
        return torch.zeros(launch.n_rows, launch.n_out, device=x.device, dtype=x.dtype)
    out = torch.empty(launch.n_rows, launch.n_out, device=x.device, dtype=x.dtype)

    def launch_grid(meta):
        return ceil_div(launch.n_rows, meta["BLOCK_M"]), ceil_div(launch.n_out, meta["BLOCK_N"])

    with launch.on_device():
        _forward_kernel[launch_grid](x, weight, launch.p, launch.q, out, *launch.sizes(), *x.stride(),
                                     *weight.stride(), *out.stride(), **launch.constants, **FP_FUSION)
    return out


def _grad_x(x: torch.Tensor, weight: torch.Tensor, grad_out: torch.Tensor, launch: _Launch, params: bool):
    """(grad_x [N, I], with ``params`` the parameters' partial sums [row blocks, I, S, 2] in the compute dtype,
    else None)."""
    if launch.empty():
        partials = torch.zeros(0, launch.n_in, launch.n_basis, 2, device=x.device, dtype=launch.compute)
        return torch.zeros_like(x), (partials if params else None)
    grad_x = torch.empty(launch.n_rows, launch.n_in, device=x.device, dtype=x.dtype)
    # room for the most row blocks any configuration makes; a configuration with fewer leaves zeros
    smallest_block = min(config.kwargs["BLOCK_M"] for config in _grad_x_kernel.configs)
    row_blocks = ceil_div(launch.n_rows, smallest_block) if params else 0
    partials = torch.zeros(row_blocks, launch.n_in, launch.n_basis, 2, device=x.device, dtype=launch.compute)

    def launch_grid(meta):
        return ceil_div(launch.n_rows, meta["BLOCK_M"]), ceil_div(launch.n_in, meta["BLOCK_I"])

    with launch.on_device():
        _grad_x_kernel[launch_grid](x, weight, launch.p, launch.q, grad_out, grad_x, partials, *launch.sizes(),
                                    *x.stride(), *weight.stride(), *grad_out.stride(), *grad_x.stride(),
                                    **{**launch.constants, "PARAMS": params}, **FP_FUSION)
    return grad_x, (partials if params else None)


def _grad_weight(x: torch.Tensor, weight: torch.Tensor, grad_out: torch.Tensor, launch: _Launch) -> torch.Tensor:
    if launch.empty():
        return torch.zeros_like(weight)
    grad_w = torch.empty(weight.shape, device=weight.device, dtype=weight.dtype)

    def launch_grid(meta):
        return ceil_div(launch.n_in, meta["BLOCK_I"]) * launch.n_basis, ceil_div(launch.n_out, meta["BLOCK_N"])

    with launch.on_device():
        _grad_weight_kernel[launch_grid](x, launch.p, launch.q, grad_out, grad_w, *launch.sizes(), *x.stride(),
                                         *grad_out.stride(), *grad_w.stride(), **launch.constants, **FP_FUSION)
    return grad_w


def _parameter_grads(kind: str, partials: torch.Tensor, p, q, need_p: bool, need_q: bool):
    """The gradients of the basis' two parameters from the kernel's partial sums [row blocks, I, S, 2]."""
    if kind == "relu":  # starts and ends [I, S]
        grad_p = partials[..., 0].sum(0) if need_p else None
        grad_q = partials[..., 1].sum(0) if need_q else None
    else:  # grid [S] and a scalar scale
        grad_p = partials[..., 0].sum((0, 1)) if need_p else None
        grad_q = partials[..., 1].sum() if need_q else None
    return (None if grad_p is None else grad_p.to(p.dtype).reshape(p.shape),
            None if grad_q is None else grad_q.to(q.dtype).reshape(q.shape))


def triton_product(x: torch.Tensor, weight: torch.Tensor, kind: str, n_basis: int, p, q) -> torch.Tensor:
    """The forward kernel's [N, O] for checked arguments ((p, q): the kind's parameters, as
    :data:`.reference.PARAMETERS` names them)."""
    return _forward(x, weight, _Launch(x, weight, kind, n_basis, p, q))


def triton_gradients(x: torch.Tensor, weight: torch.Tensor, kind: str, n_basis: int, p, q, grad_out: torch.Tensor,
                     needs, launch: _Launch | None = None) -> tuple:
    """(grad_x, grad_weight, grad_p, grad_q), None where ``needs`` (four bools) says no, by the backward kernels
    (``launch``: the forward's, or None to prepare it again)."""
    launch = launch or _Launch(x, weight, kind, n_basis, p, q)
    need_x, need_w, need_p, need_q = needs
    grad_out = grad_out.to(x.dtype)
    grad_x = grad_w = grad_p = grad_q = None
    if need_x or need_p or need_q:
        grad_x, partials = _grad_x(x, weight, grad_out, launch, params=need_p or need_q)
        if partials is not None:
            grad_p, grad_q = _parameter_grads(kind, partials, p, q, need_p, need_q)
    if need_w:
        grad_w = _grad_weight(x, weight, grad_out, launch)
    return (grad_x if need_x else None), grad_w, grad_p, grad_q


class BasisLinearFunction(torch.autograd.Function):
    """``spec.expand(x).view(N, I*S) @ weight`` by the fused kernels, keeping only x, weight and the basis'
    parameters for backward. Arguments: (x, weight, spec, p, q) with (p, q) the kind's two parameters
    (grid and scale, or starts and ends; None for Chebyshev), passed apart so that they can take gradients."""

    @staticmethod
    def forward(ctx, x, weight, spec, p, q):
        launch = _Launch(x, weight, spec.kind, spec.n_basis, p, q)
        ctx.save_for_backward(x, weight, *(v if isinstance(v, torch.Tensor) else None for v in (p, q)))
        ctx.spec, ctx.launch = spec, launch
        ctx.numbers = tuple(None if isinstance(v, torch.Tensor) else v for v in (p, q))  # a scale given as a float
        return _forward(x, weight, launch)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, p_saved, q_saved = ctx.saved_tensors
        spec = ctx.spec
        p = p_saved if p_saved is not None else ctx.numbers[0]
        q = q_saved if q_saved is not None else ctx.numbers[1]
        need = ctx.needs_input_grad
        needs = (need[0], need[1], need[3], need[4])
        if torch.is_grad_enabled():
            # create_graph=True: gradients autograd can differentiate again, through the reference.
            grad_x, grad_w, grad_p, grad_q = differentiable_gradients(spec, x, weight, p, q, grad_out, needs)
        else:
            grad_x, grad_w, grad_p, grad_q = triton_gradients(x, weight, spec.kind, spec.n_basis, p, q, grad_out,
                                                              needs, ctx.launch)
        return grad_x, grad_w, None, grad_p, grad_q


# ----------------------------------------------------------------------------------------------------------
# Entry points.


def _call_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype


def triton_runs(x: torch.Tensor, weight: torch.Tensor, spec) -> str | None:
    """Why the fused Triton kernels cannot take this call, or None when they can."""
    if x.device.type != "cuda" and not INTERPRET:
        return (f"it runs CUDA tensors, got x on {x.device} (other devices only under the Triton interpreter, "
                f"TRITON_INTERPRET=1 set before triton is imported)")
    dtype = _call_dtype(x)
    if dtype not in DTYPES or (dtype == x.dtype and weight.dtype != x.dtype):
        return (f"it runs x and weight of one dtype among {[str(d) for d in DTYPES]} (or under torch.autocast), "
                f"got x {x.dtype} and weight {weight.dtype}")
    if under_transform(x, weight, *spec.tensors()) and not compiling_with_kernels():
        return "torch.func and torch.export cannot look into Triton kernels"
    if spec.kind not in KINDS:
        return f"it computes the bases {sorted(KINDS)}, got {spec.kind!r}"
    return None


def check_call(x: torch.Tensor, weight: torch.Tensor, spec) -> None:
    """Raise with what was expected and what came unless the kernels can run these inputs."""
    reason = triton_runs(x, weight, spec)
    if reason is not None:
        raise ValueError(f"the triton backend cannot run this call: {reason}")
    n_basis = spec.n_basis
    if isinstance(n_basis, bool) or not isinstance(n_basis, int) or n_basis < 1:
        raise ValueError(f"spec.n_basis must be an int >= 1, got {n_basis!r}")
    if x.dim() != 2 or weight.dim() != 2 or weight.shape[0] != x.shape[1] * n_basis:
        raise ValueError(f"expected x [N, I] and weight [I*S, O] with S = {n_basis}, got x {tuple(x.shape)} and "
                         f"weight {tuple(weight.shape)}")
    expected = {"grid": (n_basis,), "starts": (x.shape[1], n_basis), "ends": (x.shape[1], n_basis)}
    for name in PARAMETERS[spec.kind]:
        value = getattr(spec, name)
        if name == "scale":
            if isinstance(value, torch.Tensor) and value.numel() != 1:
                raise ValueError(f"a {spec.kind!r} spec needs a number or a one-element tensor as scale, got shape "
                                 f"{tuple(value.shape)}")
            if not isinstance(value, (torch.Tensor, int, float)) or isinstance(value, bool):
                raise ValueError(f"a {spec.kind!r} spec needs a number or a one-element tensor as scale, "
                                 f"got {value!r}")
        elif not isinstance(value, torch.Tensor) or tuple(value.shape) != expected[name]:
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else repr(value)
            raise ValueError(f"a {spec.kind!r} spec needs {name} of shape {expected[name]}, got {got}")
    tensors = {"x": x, "weight": weight, **{name: getattr(spec, name) for name in PARAMETERS[spec.kind]
                                           if isinstance(getattr(spec, name), torch.Tensor)}}
    check_devices("the triton backend", {name: tensor.device for name, tensor in tensors.items()})


def basis_linear_triton(x: torch.Tensor, weight: torch.Tensor, spec) -> torch.Tensor:
    """x [N, I], weight [I*S, O] -> [N, O] = spec's expansion of x times weight, fused (see the module docstring).

    Gradients reach x, weight and the basis' own parameters (grid and scale, or starts and ends) that require
    them. Under torch.autocast, x and weight are cast to the autocast dtype first, which the output has.
    """
    x, weight = autocast_operands(x, weight)
    check_call(x, weight, spec)
    return BasisLinearFunction.apply(x, weight, spec, *spec.parameters())
