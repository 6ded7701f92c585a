"""The product of the other KAN families: an elementwise basis expansion of each input followed by one matrix
product, ``basis(x).view(N, I*S) @ W`` with W [I*S, O]. :mod:`.reference` holds the published bases (FastKAN's
Gaussian radial functions, FasterKAN's reflectional switch functions, ReLU-KAN's squared ReLU bumps, ChebyKAN's
Chebyshev polynomials) and computes the product with autograd, which keeps the expanded input.

Backends (``backend``): ``"eager"`` is the reference; ``"cpu"`` a fused numba kernel (:mod:`.cpu`) that writes
the expansion for BLAS and, in backward, turns the gradient of the expansion into that of x and rebuilds the
expansion over it, so that only x is kept between forward and backward (float32/float64 CPU tensors, no autocast,
no torch.func or export). It gives gradients for x and W, so it runs when the basis' own parameters (a trainable
width, ReLU-KAN's bounds) take no gradient. With ``create_graph=True`` its backward recomputes through the
reference, so it can be differentiated again.

``"auto"`` is ``"eager"`` for now: the numba kernel evaluates exp and tanh one value at a time, where PyTorch
vectorizes them, and measured slower than the eager path on the CPU, so it only pays for its memory (it keeps x
where the eager path keeps the [N, I*S] expansion). Choosing it by a measured cost model, as
:mod:`kanlib.ops.spline_linear` does, is still to come.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...checks import check_choice
from ..spline_linear import under_transform
from .reference import basis_linear_reference, chebyshev_basis, gaussian_rbf_basis, relu_bump_basis, rswaf_basis

__all__ = ["BACKENDS", "BasisSpec", "basis_linear", "basis_linear_reference", "gaussian_rbf_basis", "rswaf_basis",
           "relu_bump_basis", "chebyshev_basis"]

BACKENDS = ("auto", "eager", "cpu")
_CPU_DTYPES = (torch.float32, torch.float64)


@dataclass(frozen=True)
class BasisSpec:
    """One family's basis and its parameters: ``kind`` "rbf" | "rswaf" (``grid`` [S], ``scale`` the width or the
    inverse width), "relu" (``starts``, ``ends`` [I, S]) or "chebyshev" (``n_basis`` = degree + 1)."""

    kind: str
    n_basis: int
    grid: torch.Tensor | None = None
    scale: torch.Tensor | float | None = None
    starts: torch.Tensor | None = None
    ends: torch.Tensor | None = None

    def expand(self, x: torch.Tensor) -> torch.Tensor:
        """The reference expansion: x [N, I] -> [N, I, S]."""
        if self.kind == "rbf":
            return gaussian_rbf_basis(x, self.grid.to(x.dtype), self.scale)
        if self.kind == "rswaf":
            return rswaf_basis(x, self.grid.to(x.dtype), self.scale)
        if self.kind == "relu":
            return relu_bump_basis(x, self.starts.to(x.dtype), self.ends.to(x.dtype))
        return chebyshev_basis(x, self.n_basis - 1)

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.grid, self.scale, self.starts, self.ends) if isinstance(t, torch.Tensor)]


def _kernel_arguments(spec: BasisSpec, x: torch.Tensor) -> tuple:
    from . import cpu

    empty = x.new_empty(0).numpy()
    empty2 = x.new_empty(0, 0).numpy()
    grid = spec.grid.detach().to(x.dtype).contiguous().numpy() if spec.grid is not None else empty
    scale = float(spec.scale) if spec.scale is not None else 1.0
    starts = spec.starts.detach().to(x.dtype).contiguous().numpy() if spec.starts is not None else empty2
    ends = spec.ends.detach().to(x.dtype).contiguous().numpy() if spec.ends is not None else empty2
    return cpu, (cpu.KINDS[spec.kind], grid, scale, starts, ends, spec.n_basis)


def _fused_expand(spec: BasisSpec, x: torch.Tensor, grad_expanded: torch.Tensor | None = None,
                  expanded: bool = True):
    """(A [N, I*S] or None, grad_x [N, I] or None); A written over grad_expanded when both are wanted."""
    cpu, arguments = _kernel_arguments(spec, x)
    with_grad = grad_expanded is not None
    empty = x.new_empty(0, 0)
    out = (grad_expanded if with_grad else x.new_empty(x.shape[0], x.shape[1] * spec.n_basis)) if expanded else empty
    grad_x = torch.empty_like(x) if with_grad else empty
    cpu.expand(x.numpy(), *arguments, (grad_expanded if with_grad else empty).numpy(), out.numpy(), grad_x.numpy(),
               expanded, with_grad)
    return (out if expanded else None), (grad_x if with_grad else None)


class FusedCpuBasisLinear(torch.autograd.Function):
    """``spec.expand(x).view(N, I*S) @ weight`` through the numba kernel, keeping only x for backward."""

    @staticmethod
    def forward(ctx, x, weight, spec):
        ctx.save_for_backward(x, weight)
        ctx.spec = spec
        expanded, _ = _fused_expand(spec, x.detach().contiguous())
        return expanded @ weight.detach()

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        spec = ctx.spec
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if torch.is_grad_enabled():
            # create_graph=True: gradients that autograd can differentiate again, through the reference.
            inputs = [t for t, need in ((x, need_x), (weight, need_w)) if need]
            with torch.enable_grad():
                out = basis_linear_reference(spec.expand(x), weight)
                grads = iter(torch.autograd.grad(out, inputs, grad_out, create_graph=True))
            return (next(grads) if need_x else None), (next(grads) if need_w else None), None
        grad_out = grad_out.detach().contiguous()
        x, weight = x.detach().contiguous(), weight.detach()
        grad_expanded = grad_out @ weight.t() if need_x else None
        expanded, grad_x = _fused_expand(spec, x, grad_expanded, expanded=need_w)
        grad_w = expanded.t() @ grad_out if need_w else None
        return grad_x, grad_w, None


def cpu_runs(x: torch.Tensor, weight: torch.Tensor, spec: BasisSpec) -> str | None:
    """Why the fused CPU kernel cannot take this call, or None when it can."""
    if x.device.type != "cpu" or x.dtype not in _CPU_DTYPES or weight.dtype != x.dtype:
        return f"it runs float32 or float64 CPU tensors of one dtype, got x {x.dtype} and weight {weight.dtype} " \
               f"on {x.device}"
    if torch.is_autocast_enabled("cpu"):
        return "it computes in float32 or float64, not under autocast"
    if under_transform(x, weight, *spec.tensors()):
        return "torch.func, torch.compile and torch.export cannot look into numba kernels"
    if any(t.requires_grad for t in spec.tensors()):
        return "it gives no gradient to the basis' own parameters (a trainable width or bounds); freeze them"
    if spec.n_basis > 256:
        return f"it holds at most 256 bases per input, got {spec.n_basis}"
    return None


def basis_linear(x: torch.Tensor, weight: torch.Tensor, spec: BasisSpec, backend: str = "auto") -> torch.Tensor:
    """x [N, I], weight [I*S, O] -> [N, O] = spec's expansion of x times weight."""
    check_choice("backend", backend, BACKENDS)
    if backend == "cpu":
        reason = cpu_runs(x, weight, spec)
        if reason is not None:
            raise ValueError(f"backend='cpu' cannot run this call: {reason}")
        return FusedCpuBasisLinear.apply(x, weight, spec)
    return basis_linear_reference(spec.expand(x), weight)
