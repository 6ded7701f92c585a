"""The other families' product as torch.library operators, so that ``torch.compile`` keeps their kernels.

Under ``torch.compile`` (not ``torch.export``, ``torch.func`` or tracing: see
:func:`kanlib.ops.spline_linear.compiled.compiling_with_kernels`), :func:`kanlib.ops.basis_linear.basis_linear` calls
``torch.ops.kanlib.basis_product`` (the numba kernel and BLAS, or the Triton kernels); its gradient is
``kanlib::basis_product_backward``. A basis is passed as its kind, its size S and its two parameters (p, q) as
:data:`.reference.PARAMETERS` names them (a scale given as a number comes as ``q_value``). As for the B-spline layers'
operators, this module holds what the compiler reads and :mod:`kanlib.ops.basis_linear` registers the kernels.
"""
from __future__ import annotations

import torch

from ..spline_linear.compiled import no_kernel
from .reference import BasisSpec, differentiable_gradients

__all__ = ["basis_product", "basis_product_backward", "spec_of", "OPERATOR_BACKENDS", "check_operator_backend"]

OPERATOR_BACKENDS = ("cpu", "triton")


def check_operator_backend(backend: str) -> None:
    """Raise unless ``backend`` is one of OPERATOR_BACKENDS."""
    if backend not in OPERATOR_BACKENDS:
        raise ValueError(f"kanlib::basis_product runs backend {OPERATOR_BACKENDS}, got {backend!r}")


def spec_of(kind: str, n_basis: int, p: torch.Tensor | None, q: torch.Tensor | None, q_value: float) -> BasisSpec:
    """The :class:`BasisSpec` an operator's arguments describe."""
    return BasisSpec(kind, n_basis).with_parameters(p, q if q is not None else q_value)


@torch.library.custom_op("kanlib::basis_product", mutates_args=())
def basis_product(x: torch.Tensor, weight: torch.Tensor, kind: str, n_basis: int, p: torch.Tensor | None,
                  q: torch.Tensor | None, q_value: float, backend: str) -> torch.Tensor:
    """x [N, I] expanded into S = n_basis bases of ``kind`` per input, times weight [I*S, O]: [N, O]."""
    no_kernel("basis_product", x.device)


@basis_product.register_fake
def _(x, weight, kind, n_basis, p, q, q_value, backend):
    return x.new_empty(x.shape[0], weight.shape[1])


@torch.library.custom_op("kanlib::basis_product_backward", mutates_args=())
def basis_product_backward(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, kind: str, n_basis: int,
                           p: torch.Tensor | None, q: torch.Tensor | None, q_value: float, backend: str, need_x: bool,
                           need_weight: bool, need_p: bool, need_q: bool
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_x, grad_weight, grad_p, grad_q) of :func:`basis_product`; an empty [0] tensor for each one not needed."""
    no_kernel("basis_product_backward", x.device)


@basis_product_backward.register_fake
def _(grad_out, x, weight, kind, n_basis, p, q, q_value, backend, need_x, need_weight, need_p, need_q):
    needs = (need_x, need_weight, need_p, need_q)
    return tuple(torch.empty_like(t) if need else x.new_empty(0) for t, need in zip((x, weight, p, q), needs))


def _save_inputs(ctx, inputs, output):
    x, weight, kind, n_basis, p, q, q_value, backend = inputs
    ctx.save_for_backward(x, weight, p, q)
    ctx.config = (kind, n_basis, q_value, backend)


def _backward(ctx, grad_out):
    x, weight, p, q = ctx.saved_tensors
    kind, n_basis, q_value, backend = ctx.config
    need = ctx.needs_input_grad
    needs = (need[0], need[1], need[4], need[5])
    if torch.is_grad_enabled():
        # create_graph=True: gradients autograd can differentiate again, through the reference.
        spec = spec_of(kind, n_basis, p, q, q_value)
        grads = differentiable_gradients(spec, x, weight, p, q if q is not None else q_value, grad_out, needs)
    else:
        grads = basis_product_backward(grad_out, x, weight, kind, n_basis, p, q, q_value, backend, *needs)
        grads = tuple(grad if need else None for grad, need in zip(grads, needs))
    grad_x, grad_weight, grad_p, grad_q = grads
    return grad_x, grad_weight, None, None, grad_p, grad_q, None, None


basis_product.register_autograd(_backward, setup_context=_save_inputs)
