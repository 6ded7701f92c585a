"""What the basis-expansion KAN layers share (RBF, RSWAF, ReLU-KAN, Chebyshev): each input is expanded into S
basis values and one matrix product maps the [N, I*S] expansion to the outputs, optionally plus a base branch
``b(x) @ W_base`` and a bias, as in the published layers."""
from __future__ import annotations

import torch
from torch import nn

from ..activations import BASE_ACTIVATIONS, get_activation
from ..checks import check_choice, check_int, check_layer_input, check_real
from ..ops.basis_linear import BACKENDS, BasisSpec, basis_linear

__all__ = ["BasisKAN"]


class BasisKAN(nn.Module):
    """A KAN layer ``y = basis(norm(x)).view(N, I*S) @ weight [+ b(x) @ base_weight] [+ bias]``.

    Drop-in for ``nn.Linear``: input ``[..., in_features]``, output ``[..., out_features]``. ``weight`` is
    [I*S, O] (row ``i*S + s``: input i's basis s); ``layernorm`` normalizes each sample's inputs before the bases
    (FastKAN, FasterKAN), the base branch sees the raw input. ``backend``: "auto" (the fused kernel where it can
    run, else the eager path), "eager" (PyTorch operations) or "cpu" (a fused numba kernel that keeps only x for
    backward; see :mod:`kanlib.ops.basis_linear`). Subclasses
    define :meth:`spec`.
    """

    def __init__(self, in_features: int, out_features: int, n_basis: int, *, layernorm: bool = False,
                 base_activation: str | None = None, bias: bool = False, weight_std: float = 0.1,
                 backend: str = "auto", device=None, dtype=None):
        super().__init__()
        check_choice("backend", backend, BACKENDS)
        self.backend = backend
        check_int("in_features", in_features, 1)
        check_int("out_features", out_features, 1)
        check_int("n_basis", n_basis, 1)
        check_real("weight_std", weight_std, positive=True)
        if base_activation is not None:
            get_activation(base_activation, BASE_ACTIVATIONS, "base_activation")
        factory = {"device": device, "dtype": dtype or torch.get_default_dtype()}
        self.in_features, self.out_features, self.n_basis = in_features, out_features, n_basis
        self.layernorm = nn.LayerNorm(in_features, **factory) if layernorm else None
        self.weight = nn.Parameter(torch.randn(in_features * n_basis, out_features, **factory) * weight_std)
        self.base_activation = base_activation
        bound = in_features ** -0.5
        self.base_weight = (nn.Parameter(torch.empty(in_features, out_features, **factory).uniform_(-bound, bound))
                            if base_activation is not None else None)
        self.bias = nn.Parameter(torch.zeros(out_features, **factory)) if bias else None

    def spec(self) -> BasisSpec:
        """The family's basis with its current parameters."""
        raise NotImplementedError

    def basis(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, I] (after the layer norm) -> [N, I, S]."""
        return self.spec().expand(x)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, n_basis={self.n_basis}, "
                f"layernorm={self.layernorm is not None}, base_activation={self.base_activation!r}, "
                f"bias={self.bias is not None}")

    def _check_input(self, x: torch.Tensor) -> None:
        check_layer_input(x, self.in_features, self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., I] -> [..., O]."""
        self._check_input(x)
        flat = x.reshape(-1, self.in_features)
        normed = self.layernorm(flat) if self.layernorm is not None else flat
        out = basis_linear(normed, self.weight.to(flat.dtype), self.spec(), self.backend)
        if self.base_weight is not None:
            out = out + get_activation(self.base_activation).function(flat) @ self.base_weight.to(flat.dtype)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)  # under autocast, the product's dtype, as nn.Linear's
        return out.view(*x.shape[:-1], self.out_features)

    def activations(self, x: torch.Tensor) -> torch.Tensor:
        """Every edge's activation phi_{i,o}(x_i) (what the output sums over i): x [..., I] -> [..., I, O]."""
        self._check_input(x)
        flat = x.reshape(-1, self.in_features)
        normed = self.layernorm(flat) if self.layernorm is not None else flat
        per_edge = torch.einsum("nis,iso->nio", self.basis(normed), self.weight.view(self.in_features, self.n_basis,
                                                                                     self.out_features))
        if self.base_weight is not None:
            base = get_activation(self.base_activation).function(flat)
            per_edge = per_edge + base.unsqueeze(-1) * self.base_weight
        return per_edge.view(*x.shape[:-1], self.in_features, self.out_features)
