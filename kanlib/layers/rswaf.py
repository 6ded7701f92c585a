"""FasterKAN's layer: reflectional switch functions on a uniform grid after a layer norm (Delis 2024, faster-kan)."""
from __future__ import annotations

import torch
from torch import nn

from ..checks import check_real
from ..ops.basis_linear import BasisSpec
from .basis_kan import BasisKAN
from .rbf import uniform_points

__all__ = ["RSWAFKAN"]


class RSWAFKAN(BasisKAN):
    """``y = rswaf(LayerNorm(x)) @ weight``, rswaf(u) = 1 - tanh((u - u_s) * inv_width)^2.

    ``grid_size`` points u_s on ``grid_range``; ``inv_width`` (default: 1 / their spacing) is trained when
    ``learn_inv_width``, as in FasterKAN. No base branch and no bias by default, as FasterKAN's layer.
    """

    def __init__(self, in_features: int, out_features: int, grid_size: int = 8, grid_range=(-2.0, 2.0),
                 inv_width: float | None = None, learn_inv_width: bool = True, layernorm: bool = True,
                 base_activation: str | None = None, bias: bool = False, weight_std: float = 0.1,
                 backend: str = "auto", device=None, dtype=None):
        points = uniform_points(grid_size, grid_range)
        super().__init__(in_features, out_features, grid_size, layernorm=layernorm, base_activation=base_activation,
                         bias=bias, weight_std=weight_std, backend=backend, device=device, dtype=dtype)
        factory = {"device": self.weight.device, "dtype": self.weight.dtype}
        self.register_buffer("grid", points.to(**factory))
        value = (1 / float(points[1] - points[0]) if inv_width is None
                 else check_real("inv_width", inv_width, positive=True))
        self.inv_width = nn.Parameter(torch.tensor(value, **factory), requires_grad=learn_inv_width)

    def spec(self) -> BasisSpec:
        return BasisSpec("rswaf", self.n_basis, grid=self.grid, scale=self.inv_width)
