"""The product of the other KAN families: an elementwise basis expansion of each input followed by one matrix
product, ``basis(x).view(N, I*S) @ W`` with W [I*S, O]. :mod:`.reference` holds the published bases (FastKAN's
Gaussian radial functions, FasterKAN's reflectional switch functions, ReLU-KAN's squared ReLU bumps, ChebyKAN's
Chebyshev polynomials) and computes the product with autograd, which keeps the expanded input.

Backends (``backend``): ``"eager"`` is the reference; ``"cpu"`` a fused numba kernel (:mod:`.cpu`) that writes
the expansion for BLAS and, in backward, turns the gradient of the expansion into the gradients of x and of the
basis' own parameters (RSWAF's inverse width, ReLU-KAN's bounds) and rebuilds the expansion over it, so that only x
is kept between forward and backward (float32/float64 CPU tensors, no autocast, no torch.func or export). Its
expansion is basis-major (row s*I + i), so the weight's rows are permuted to match in each call (a copy of W, small
beside the [N, I*S] expansion for batches of more than a few rows). With ``create_graph=True`` its backward
recomputes through the reference, so it can be differentiated again.

``"triton"`` runs the fused Triton kernels of :mod:`.triton` (CUDA tensors; the expansion is built in registers
and never stored, backward likewise, with the gradients of the basis' own parameters).

``"auto"``: on CUDA the Triton kernels, on the CPU the numba kernel (measured faster than the eager path for every
family by ``python -m kanlib bench families``), wherever they can run (:func:`.triton.triton_runs`,
:func:`cpu_runs`); the eager path otherwise. Under ``torch.compile`` the fused backends run as the torch.library
operators of :mod:`.compiled`, whose kernels this module registers.
"""
from __future__ import annotations

import numpy as np
import torch

from ...checks import check_choice
from ..spline_linear import under_transform
from ..spline_linear.compiled import compiling_with_kernels
from ..spline_linear.support import autocast_operands
from .compiled import basis_product, basis_product_backward, check_operator_backend, spec_of
from .reference import (BasisSpec, basis_linear_reference, chebyshev_basis, gaussian_rbf_basis, relu_bump_basis,
                        rswaf_basis)

__all__ = ["BACKENDS", "BasisSpec", "basis_linear", "basis_linear_reference", "gaussian_rbf_basis", "rswaf_basis",
           "relu_bump_basis", "chebyshev_basis", "cpu_product", "cpu_gradients", "cpu_runs"]

BACKENDS = ("auto", "eager", "cpu", "triton")
_CPU_DTYPES = (torch.float32, torch.float64)


def _kernel_arguments(spec: BasisSpec, x: torch.Tensor) -> tuple:
    """The basis' arguments of :func:`cpu.expand` for x's dtype (ReLU bounds basis-major, [S, I])."""
    from . import cpu

    def array(t: torch.Tensor | None, dims: int):
        if t is None:
            return x.new_empty((0,) * dims).numpy()
        t = t.detach().to(x.dtype)
        return (t.t() if dims == 2 else t).contiguous().numpy()

    scale = float(spec.scale) if spec.scale is not None else 1.0
    lowest, _, _, integer = cpu.exp_constants(x.numpy().dtype)
    return cpu, (cpu.KINDS[spec.kind], array(spec.grid, 1), scale, array(spec.starts, 2), array(spec.ends, 2),
                 spec.n_basis, np.empty(0, integer), (lowest,))


def _fused_expand(spec: BasisSpec, x: torch.Tensor, grad_expanded: torch.Tensor | None = None,
                  expanded: bool = True):
    """(A [N, S*I] basis-major or None, grad_x [N, I] or None, grad_scale [] or None, grad_starts and grad_ends
    [I, S] or None): A is written over grad_expanded when both are wanted; the parameters' gradients for the
    families that have them (RSWAF's scale, ReLU's bounds), when grad_expanded is given."""
    from ..spline_linear.cpu import threads_for

    cpu, arguments = _kernel_arguments(spec, x)
    n_rows, n_in = x.shape
    with_grad = grad_expanded is not None
    chunks = -(-n_rows // cpu.ROWS_PER_CHUNK) if with_grad else 0
    empty = x.new_empty(0, 0)
    out = (grad_expanded if with_grad else x.new_empty(n_rows, n_in * spec.n_basis)) if expanded else empty
    grad_x = torch.empty_like(x) if with_grad else empty
    grad_scale = x.new_zeros(chunks if spec.kind == "rswaf" else 0, n_in)
    bounds_shape = (chunks, spec.n_basis, n_in) if spec.kind == "relu" else (0, 0, 0)
    grad_starts, grad_ends = x.new_zeros(bounds_shape), x.new_zeros(bounds_shape)
    with threads_for(n_rows * n_in * spec.n_basis):
        cpu.expand(x.numpy(), *arguments, (grad_expanded if with_grad else empty).numpy(), out.numpy(),
                   grad_x.numpy(), grad_scale.numpy(), grad_starts.numpy(), grad_ends.numpy(), expanded, with_grad)
    if not with_grad:
        return (out if expanded else None), None, None, None, None
    return ((out if expanded else None), grad_x, grad_scale.sum() if spec.kind == "rswaf" else None,
            *((grad_starts.sum(0).t(), grad_ends.sum(0).t()) if spec.kind == "relu" else (None, None)))


def _basis_major(weight: torch.Tensor, n_basis: int) -> torch.Tensor:
    """weight [I*S, O] (row i*S + s) -> [S*I, O] (row s*I + i), the row order of the kernel's A."""
    n_out = weight.shape[1]
    return weight.view(-1, n_basis, n_out).transpose(0, 1).reshape(-1, n_out)


def _input_major(weight: torch.Tensor, n_basis: int) -> torch.Tensor:
    """The inverse of :func:`_basis_major`."""
    n_out = weight.shape[1]
    return weight.view(n_basis, -1, n_out).transpose(0, 1).reshape(-1, n_out)


class FusedCpuBasisLinear(torch.autograd.Function):
    """``spec.expand(x).view(N, I*S) @ weight`` through the numba kernel, keeping only x for backward; gradients
    for x, weight, and RSWAF's ``scale`` or ReLU's ``starts``/``ends`` (the tensors of ``spec`` passed again
    as arguments, so that autograd sees them)."""

    @staticmethod
    def forward(ctx, x, weight, scale, starts, ends, spec):
        ctx.save_for_backward(x, weight)
        ctx.spec = spec
        return cpu_product(spec, x, weight)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        spec = ctx.spec
        needs = ctx.needs_input_grad[:5]
        if torch.is_grad_enabled():
            # create_graph=True: gradients that autograd can differentiate again, through the reference.
            candidates = (x, weight, spec.scale, spec.starts, spec.ends)
            inputs = [t for t, need in zip(candidates, needs) if need]
            with torch.enable_grad():
                out = basis_linear_reference(spec.expand(x), weight)
                grads = iter(torch.autograd.grad(out, inputs, grad_out, create_graph=True))
            return (*(next(grads) if need else None for need in needs), None)
        return (*cpu_gradients(spec, x, weight, grad_out, needs), None)


def cpu_product(spec: BasisSpec, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``spec.expand(x).view(N, I*S) @ weight`` [N, O] by the numba kernel and BLAS, nothing kept for backward."""
    expanded, *_ = _fused_expand(spec, x.detach().contiguous())
    return expanded @ _basis_major(weight.detach(), spec.n_basis)


def cpu_gradients(spec: BasisSpec, x: torch.Tensor, weight: torch.Tensor, grad_out: torch.Tensor, needs) -> tuple:
    """(grad_x, grad_weight, grad_scale, grad_starts, grad_ends), None where ``needs`` (five bools) says no, by the
    numba kernel and BLAS (the parameters' gradients for the families that have them: RSWAF's scale, ReLU's
    bounds)."""
    grad_out = grad_out.detach().contiguous()
    x, weight = x.detach().contiguous(), _basis_major(weight.detach(), spec.n_basis)
    expanded, grad_x, grad_scale, grad_starts, grad_ends = _fused_expand(spec, x, grad_out @ weight.t(),
                                                                         expanded=needs[1])
    grad_w = _input_major(expanded.t() @ grad_out, spec.n_basis) if needs[1] else None
    if grad_scale is not None and needs[2]:
        grad_scale = grad_scale.reshape(spec.scale.shape).to(spec.scale.dtype)
    return (grad_x if needs[0] else None, grad_w, grad_scale if needs[2] else None,
            grad_starts.to(spec.starts.dtype) if needs[3] else None,
            grad_ends.to(spec.ends.dtype) if needs[4] else None)


# The basis parameters whose gradient the kernel gives, per family.
_TRAINABLE = {"rbf": (), "rswaf": ("scale",), "relu": ("starts", "ends"), "chebyshev": ()}


def cpu_runs(x: torch.Tensor, weight: torch.Tensor, spec: BasisSpec) -> str | None:
    """Why the fused CPU kernel cannot take this call, or None when it can."""
    if x.device.type != "cpu" or x.dtype not in _CPU_DTYPES or weight.dtype != x.dtype:
        return f"it runs float32 or float64 CPU tensors of one dtype, got x {x.dtype} and weight {weight.dtype} " \
               f"on {x.device}"
    if torch.is_autocast_enabled("cpu"):
        return "it computes in float32 or float64, not under autocast"
    if under_transform(x, weight, *spec.tensors()) and not compiling_with_kernels():
        return "torch.func and torch.export cannot look into numba kernels"
    frozen_only = [name for name in ("grid", "scale", "starts", "ends") if name not in _TRAINABLE[spec.kind]
                   and isinstance(getattr(spec, name), torch.Tensor) and getattr(spec, name).requires_grad]
    if frozen_only:
        return (f"it gives no gradient to the {spec.kind} basis' {', '.join(frozen_only)} (only to "
                f"{', '.join(_TRAINABLE[spec.kind]) or 'x and the weight'}); freeze them")
    return None


def basis_linear(x: torch.Tensor, weight: torch.Tensor, spec: BasisSpec, backend: str = "auto") -> torch.Tensor:
    """x [N, I], weight [I*S, O] -> [N, O] = spec's expansion of x times weight."""
    check_choice("backend", backend, BACKENDS)
    compiled = compiling_with_kernels()
    if backend == "triton" or (backend == "auto" and x.device.type == "cuda"):
        from .triton import basis_linear_triton, check_call, triton_runs

        reason = triton_runs(x, weight, spec)
        if reason is None and compiled:
            x, weight = autocast_operands(x, weight)
            check_call(x, weight, spec)
            return basis_product(x, weight, spec.kind, spec.n_basis, *_operator_parameters(spec), "triton")
        if reason is None:
            return basis_linear_triton(x, weight, spec)
        if backend == "triton":
            raise ValueError(f"backend='triton' cannot run this call: {reason}")
    if backend in ("cpu", "auto"):
        reason = cpu_runs(x, weight, spec)
        if reason is None and compiled:
            return basis_product(x, weight, spec.kind, spec.n_basis, *_operator_parameters(spec), "cpu")
        if reason is None:
            return FusedCpuBasisLinear.apply(x, weight, *(t if isinstance(t, torch.Tensor) else None
                                                          for t in (spec.scale, spec.starts, spec.ends)), spec)
        if backend == "cpu":
            raise ValueError(f"backend='cpu' cannot run this call: {reason}")
    return basis_linear_reference(spec.expand(x), weight)


def _operator_parameters(spec: BasisSpec) -> tuple:
    """(p, q, q_value) as :mod:`.compiled`'s operators take the spec's parameters: tensors or None, and a scale given
    as a number apart."""
    p, q = spec.parameters()
    if isinstance(q, torch.Tensor) or q is None:
        return p, q, 0.0
    return p, None, float(q)


# The kernels behind :mod:`.compiled`'s operators (the same on both devices: the backend argument picks them).
@basis_product.register_kernel(("cpu", "cuda"))
def _product_kernels(x, weight, kind, n_basis, p, q, q_value, backend):
    check_operator_backend(backend)
    spec = spec_of(kind, n_basis, p, q, q_value)
    if backend == "triton":
        from .triton import check_call, triton_product

        check_call(x, weight, spec)
        return triton_product(x, weight, kind, n_basis, *spec.parameters())
    return cpu_product(spec, x, weight)


@basis_product_backward.register_kernel(("cpu", "cuda"))
def _gradient_kernels(grad_out, x, weight, kind, n_basis, p, q, q_value, backend, need_x, need_weight, need_p,
                      need_q):
    check_operator_backend(backend)
    spec = spec_of(kind, n_basis, p, q, q_value)
    if backend == "triton":
        from .triton import triton_gradients

        grads = triton_gradients(x, weight, kind, n_basis, *spec.parameters(), grad_out,
                                 (need_x, need_weight, need_p, need_q))
    else:
        # the CPU kernel's parameters: RSWAF's scale (q), ReLU's starts and ends (p, q); cpu_runs let no other through
        relu = kind == "relu"
        grad_x, grad_w, grad_scale, grad_starts, grad_ends = cpu_gradients(
            spec, x, weight, grad_out, (need_x, need_weight, need_q and not relu, need_p and relu, need_q and relu))
        grads = (grad_x, grad_w, grad_starts, grad_ends) if relu else (grad_x, grad_w, None, grad_scale)
    return tuple(x.new_empty(0) if grad is None else grad.contiguous() for grad in grads)
