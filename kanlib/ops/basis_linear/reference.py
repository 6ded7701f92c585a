"""The published bases of the KAN families other than B-splines, written out in plain PyTorch.

Each maps x [..., I] to [..., I, S], S bases per input:

- :func:`gaussian_rbf_basis`: FastKAN (Li 2024, "Kolmogorov-Arnold Networks are Radial Basis Function
  Networks"): ``exp(-((x - u_s) / h)^2)`` on grid points u_s [S] with width h.
- :func:`rswaf_basis`: FasterKAN (Delis 2024), reflectional switch functions ``1 - tanh((x - u_s) / h)^2``.
- :func:`relu_bump_basis`: ReLU-KAN (Qiu et al. 2024): ``(r * relu(e_s - x) * relu(x - s_s))^2`` with
  per-input starts s [I, S] and ends e [I, S], ``r = 4 / (e - s)^2`` so that each bump peaks at 1.
- :func:`chebyshev_basis`: ChebyKAN: Chebyshev polynomials of the first kind ``T_d(tanh x)``, d = 0..S-1,
  by the three-term recurrence (the same values as ``cos(d * acos(tanh x))``, without its infinite
  derivative where tanh saturates at +-1).

:class:`BasisSpec` names one of them with its parameters; :func:`differentiable_gradients` is the fused paths'
backward under ``create_graph=True``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

__all__ = ["gaussian_rbf_basis", "rswaf_basis", "relu_bump_basis", "chebyshev_basis", "basis_linear_reference",
           "BasisSpec", "PARAMETERS", "differentiable_gradients"]

# Each family's two basis parameters as the fused kernels take them, (p, q); Chebyshev has none.
PARAMETERS = {"rbf": ("grid", "scale"), "rswaf": ("grid", "scale"), "relu": ("starts", "ends"), "chebyshev": ()}


def gaussian_rbf_basis(x: torch.Tensor, grid: torch.Tensor, width: float | torch.Tensor) -> torch.Tensor:
    """x [..., I], grid [S] -> [..., I, S]: ``exp(-((x - grid) / width)^2)``."""
    return torch.exp(-((x.unsqueeze(-1) - grid) / width) ** 2)


def rswaf_basis(x: torch.Tensor, grid: torch.Tensor, inv_width: float | torch.Tensor) -> torch.Tensor:
    """x [..., I], grid [S] -> [..., I, S]: ``1 - tanh((x - grid) * inv_width)^2``."""
    return 1 - torch.tanh((x.unsqueeze(-1) - grid) * inv_width) ** 2


def relu_bump_basis(x: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """x [..., I], starts and ends [I, S] -> [..., I, S]: ``(4 relu(e - x) relu(x - s) / (e - s)^2)^2``."""
    u = x.unsqueeze(-1)
    return (4 * torch.relu(ends - u) * torch.relu(u - starts) / (ends - starts) ** 2) ** 2


def chebyshev_basis(x: torch.Tensor, degree: int) -> torch.Tensor:
    """x [..., I] -> [..., I, degree + 1]: T_0 .. T_degree at tanh(x)."""
    t = torch.tanh(x)
    values = [torch.ones_like(t), t]
    for _ in range(2, degree + 1):
        values.append(2 * t * values[-1] - values[-2])
    return torch.stack(values[: degree + 1], dim=-1)


def basis_linear_reference(basis: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """basis [N, I, S], weight [I*S, O] -> [N, O]."""
    return basis.reshape(basis.shape[0], basis.shape[1] * basis.shape[2]) @ weight


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

    def parameters(self) -> tuple:
        """(p, q): the kind's two parameters (PARAMETERS), each a tensor, a number (a scale) or None."""
        names = PARAMETERS[self.kind]
        return tuple(getattr(self, name) for name in names) if names else (None, None)

    def with_parameters(self, p, q) -> "BasisSpec":
        """The spec with its two parameters replaced by p and q."""
        names = PARAMETERS[self.kind]
        return dataclasses.replace(self, **dict(zip(names, (p, q)))) if names else self


def differentiable_gradients(spec: BasisSpec, x: torch.Tensor, weight: torch.Tensor, p, q, grad_out: torch.Tensor,
                             needs) -> tuple:
    """(grad_x, grad_weight, grad_p, grad_q), None where ``needs`` (four bools) says no, through the reference and
    differentiable again: the backward of a fused path under ``create_graph=True``."""
    candidates = (x, weight, p, q)
    inputs = [t for t, need in zip(candidates, needs) if need]
    with torch.enable_grad():
        out = basis_linear_reference(spec.with_parameters(p, q).expand(x), weight)
        grads = iter(torch.autograd.grad(out, inputs, grad_out, create_graph=True))
    return tuple(next(grads) if need else None for need in needs)
