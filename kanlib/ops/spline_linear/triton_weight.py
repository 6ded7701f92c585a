"""A B-spline layer's weight matrix from its parameters in one Triton kernel, and the parameters' gradients in one more.

W [I*S, O] (S = G + k + 1): per input i, row i*S holds ``scale_base * mask`` and rows i*S + 1 + j hold
``scale_sp * mask * coef[..., j]``, as :func:`.reference.layer_weight_matrix` (the reference) writes them. PyTorch
runs that formula as four kernels and an [I, O, G+k] temporary, and its gradient as about as many again; on a GPU,
where one training step of a layer is a few dozen launches, each launch counts (``python -m kanlib profile``).

A program takes one input and BLOCK_O outputs and walks the G + k coefficients in blocks of BLOCK_J: each
[BLOCK_J, BLOCK_O] tile is read from coef [I, O, G+k] (contiguous along the coefficients) and written to W's rows
(contiguous along the outputs), a transposition. The products are those of the formula, in float32 (float64 for
float64 tensors) and rounded to the parameters' dtype where it rounds (``scale_sp * mask``, then the product), so W
has the formula's bits in every dtype. Under ``torch.autocast`` the layer asks for W in the autocast dtype: it is
written so, rounded once, as casting the formula's W would give, and its gradient comes back in that dtype (one
cast fewer each way). Under ``TRITON_INTERPRET=1`` the kernels run on the CPU (tests).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .support import TRITON_WEIGHT_DTYPES as WEIGHT_DTYPES
from .triton import INTERPRET, check_devices, on_device, to_store
from ..triton_tuning import FP_FUSION, ceil_div, power_of_two_at_least

__all__ = ["WEIGHT_DTYPES", "assemble_weight", "weight_gradients"]


@triton.jit
def _widened(v, DOUBLE: tl.constexpr):
    if DOUBLE:
        out = v.to(tl.float64)
    else:
        out = v.to(tl.float32)
    return out


@triton.jit
def _edges(ptr, offsets, out_ok, DOUBLE: tl.constexpr):
    return _widened(tl.load(ptr + offsets, mask=out_ok, other=0.0), DOUBLE)


@triton.jit
def _masked(ptr, offsets, out_ok, mask, dtype: tl.constexpr, DOUBLE: tl.constexpr, INTERPRET: tl.constexpr):
    """An [I, O] parameter's values at ``offsets`` times the mask, rounded to dtype as the formula's product is."""
    return _widened(to_store(_edges(ptr, offsets, out_ok, DOUBLE) * mask, dtype, INTERPRET), DOUBLE)


@triton.jit
def _program_edges(sp_ptr, mask_ptr, n_out, stride_pi, stride_po, dtype: tl.constexpr, DOUBLE: tl.constexpr,
                   INTERPRET: tl.constexpr, BLOCK_O: tl.constexpr):
    """This program's input i (int64), its BLOCK_O outputs and which of them exist, their offsets in the [I, O]
    parameters, the mask and ``scale_sp * mask`` there."""
    i = tl.program_id(0).to(tl.int64)
    outs = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
    out_ok = outs < n_out
    params = i * stride_pi + outs * stride_po
    mask = _edges(mask_ptr, params, out_ok, DOUBLE)
    return i, outs, out_ok, params, mask, _masked(sp_ptr, params, out_ok, mask, dtype, DOUBLE, INTERPRET)


@triton.jit
def _assemble_kernel(base_ptr, sp_ptr, mask_ptr, coef_ptr, w_ptr, n_out, n_basis,
                     stride_pi, stride_po, stride_ci, stride_co, stride_cj, stride_wk, stride_wo,
                     DOUBLE: tl.constexpr, INTERPRET: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_J: tl.constexpr):
    """w_ptr [I*S, O] (any float dtype) from scale_base, scale_sp, mask [I, O] (strides stride_pi, stride_po) and
    coef [I, O, G+k]."""
    dtype = coef_ptr.dtype.element_ty
    w_dtype = w_ptr.dtype.element_ty
    i, outs, out_ok, params, mask, spline = _program_edges(sp_ptr, mask_ptr, n_out, stride_pi, stride_po, dtype,
                                                           DOUBLE, INTERPRET, BLOCK_O)
    base = _masked(base_ptr, params, out_ok, mask, dtype, DOUBLE, INTERPRET)
    rows = w_ptr + i * (n_basis + 1) * stride_wk + outs * stride_wo
    tl.store(rows, to_store(base, w_dtype, INTERPRET), mask=out_ok)
    coefs = coef_ptr + i * stride_ci + outs[None, :] * stride_co
    for j0 in range(0, n_basis, BLOCK_J):
        js = j0 + tl.arange(0, BLOCK_J)[:, None]
        ok = (js < n_basis) & out_ok[None, :]
        c = _widened(tl.load(coefs + js * stride_cj, mask=ok, other=0.0), DOUBLE)
        tl.store(rows[None, :] + (js + 1) * stride_wk, to_store(c * spline[None, :], w_dtype, INTERPRET), mask=ok)


@triton.jit
def _gradients_kernel(sp_ptr, mask_ptr, coef_ptr, gw_ptr, g_base_ptr, g_sp_ptr, g_coef_ptr, n_out, n_basis,
                      stride_pi, stride_po, stride_ci, stride_co, stride_cj, stride_gk, stride_go,
                      WANT_BASE: tl.constexpr, WANT_SP: tl.constexpr, WANT_COEF: tl.constexpr, DOUBLE: tl.constexpr,
                      INTERPRET: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_J: tl.constexpr):
    """From grad_w [I*S, O] (any float dtype): grad scale_base ``g_base * mask`` and grad scale_sp
    ``mask * sum_j g_j * coef_j`` (contiguous [I, O]), grad coef ``g_j * scale_sp * mask`` (contiguous [I, O, G+k]),
    in coef's dtype; each only when wanted."""
    dtype = coef_ptr.dtype.element_ty
    i, outs, out_ok, _, mask, spline = _program_edges(sp_ptr, mask_ptr, n_out, stride_pi, stride_po, dtype, DOUBLE,
                                                      INTERPRET, BLOCK_O)
    grad_rows = gw_ptr + i * (n_basis + 1) * stride_gk + outs * stride_go
    coefs = coef_ptr + i * stride_ci + outs[None, :] * stride_co
    edges = i * n_out + outs  # the gradients' offsets: contiguous [I, O] and [I, O, G+k]
    if WANT_BASE:
        base_grad = _edges(grad_rows, 0, out_ok, DOUBLE)
        tl.store(g_base_ptr + edges, to_store(base_grad * mask, dtype, INTERPRET), mask=out_ok)
    total = _widened(tl.zeros((BLOCK_O,), dtype=tl.float32), DOUBLE)
    for j0 in range(0, n_basis, BLOCK_J):
        js = j0 + tl.arange(0, BLOCK_J)[:, None]
        ok = (js < n_basis) & out_ok[None, :]
        g = _widened(tl.load(grad_rows[None, :] + (js + 1) * stride_gk, mask=ok, other=0.0), DOUBLE)
        if WANT_COEF:
            tl.store(g_coef_ptr + edges[None, :] * n_basis + js, to_store(g * spline[None, :], dtype, INTERPRET),
                     mask=ok)
        if WANT_SP:
            c = _widened(tl.load(coefs + js * stride_cj, mask=ok, other=0.0), DOUBLE)
            total += tl.sum(g * c, axis=0)
    if WANT_SP:
        tl.store(g_sp_ptr + edges, to_store(total * mask, dtype, INTERPRET), mask=out_ok)


def _check(what: str, edges: dict[str, torch.Tensor], coef: torch.Tensor) -> None:
    """Raise with what was expected and what came unless ``edges`` are [I, O] tensors with coef [I, O, G+k], all of
    one device and one of WEIGHT_DTYPES."""
    tensors = {**edges, "coef": coef}
    check_devices(what, {name: t.device for name, t in tensors.items()})
    dtypes = {t.dtype for t in tensors.values()}
    if len(dtypes) > 1 or coef.dtype not in WEIGHT_DTYPES:
        raise TypeError(f"{what} takes tensors of one dtype among {[str(d) for d in WEIGHT_DTYPES]}, got "
                        + ", ".join(f"{name} {t.dtype}" for name, t in tensors.items()))
    if coef.dim() != 3 or any(t.shape != coef.shape[:2] for t in edges.values()):
        raise ValueError(f"{what} takes {', '.join(edges)} [I, O] and coef [I, O, G+k], got "
                         + ", ".join(f"{name} {tuple(t.shape)}" for name, t in tensors.items()))


def _tiles(n_out: int, n_basis: int) -> tuple[int, int]:
    """(BLOCK_O, BLOCK_J): up to 64 outputs and 16 coefficients, fewer where the layer has fewer."""
    return min(64, power_of_two_at_least(n_out)), min(16, power_of_two_at_least(n_basis))


def assemble_weight(scale_base: torch.Tensor, scale_sp: torch.Tensor, mask: torch.Tensor, coef: torch.Tensor,
                    dtype: torch.dtype | None = None) -> torch.Tensor:
    """scale_base, scale_sp, mask [I, O] and coef [I, O, G+k], of one dtype -> W [I * (G+k+1), O], contiguous, in
    ``dtype`` (default: theirs): :func:`.reference.layer_weight_matrix` cast to it, bit for bit; no autograd."""
    _check("assemble_weight", {"scale_base": scale_base, "scale_sp": scale_sp, "mask": mask}, coef)
    dtype = coef.dtype if dtype is None else dtype
    if dtype not in WEIGHT_DTYPES:
        raise TypeError(f"assemble_weight writes W in one of {[str(d) for d in WEIGHT_DTYPES]}, got {dtype}")
    n_in, n_out, n_basis = coef.shape
    # the three [I, O] tensors share one pair of strides in the kernel
    scale_base, scale_sp, mask = (t.contiguous() for t in (scale_base, scale_sp, mask))
    weight = torch.empty(n_in * (n_basis + 1), n_out, device=coef.device, dtype=dtype)
    block_o, block_j = _tiles(n_out, n_basis)
    with on_device(coef.device):
        _assemble_kernel[(n_in, ceil_div(n_out, block_o))](
            scale_base, scale_sp, mask, coef, weight, n_out, n_basis, *mask.stride(), *coef.stride(),
            *weight.stride(), DOUBLE=coef.dtype == torch.float64, INTERPRET=INTERPRET, BLOCK_O=block_o,
            BLOCK_J=block_j, **FP_FUSION)
    return weight


def weight_gradients(scale_sp: torch.Tensor, mask: torch.Tensor, coef: torch.Tensor, grad_weight: torch.Tensor,
                     wanted: tuple[bool, bool, bool] = (True, True, True)
                     ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(grad scale_base [I, O], grad scale_sp [I, O], grad coef [I, O, G+k]) of :func:`assemble_weight` from the
    gradient of W [I * (G+k+1), O] (any strides, W's dtype), in the parameters' dtype, each computed only where
    ``wanted`` says so (None otherwise)."""
    _check("weight_gradients", {"scale_sp": scale_sp, "mask": mask}, coef)
    n_in, n_out, n_basis = coef.shape
    if grad_weight.shape != (n_in * (n_basis + 1), n_out) or grad_weight.dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weight_gradients: expected grad_weight [{n_in * (n_basis + 1)}, {n_out}] of a dtype among "
                         f"{[str(d) for d in WEIGHT_DTYPES]}, got {tuple(grad_weight.shape)} of {grad_weight.dtype}")
    scale_sp, mask = scale_sp.contiguous(), mask.contiguous()
    grads = [torch.empty(shape, device=coef.device, dtype=coef.dtype) if want else None
             for want, shape in zip(wanted, ((n_in, n_out), (n_in, n_out), coef.shape))]
    if any(wanted):
        block_o, block_j = _tiles(n_out, n_basis)
        with on_device(coef.device):
            _gradients_kernel[(n_in, ceil_div(n_out, block_o))](
                scale_sp, mask, coef, grad_weight, *(mask if g is None else g for g in grads), n_out, n_basis,
                *mask.stride(), *coef.stride(), *grad_weight.stride(), WANT_BASE=wanted[0], WANT_SP=wanted[1],
                WANT_COEF=wanted[2], DOUBLE=coef.dtype == torch.float64, INTERPRET=INTERPRET, BLOCK_O=block_o,
                BLOCK_J=block_j, **FP_FUSION)
    return tuple(grads)
