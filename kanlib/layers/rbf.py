"""FastKAN's layer: Gaussian radial basis functions on a uniform grid, after a layer norm, plus a SiLU base branch
(Li 2024, "Kolmogorov-Arnold Networks are Radial Basis Function Networks")."""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..checks import check_int, check_real
from ..ops.basis_linear import BasisSpec
from .basis_kan import BasisKAN

__all__ = ["RBFKAN", "uniform_points"]


def uniform_points(grid_size: int, grid_range, name: str = "grid_range") -> torch.Tensor:
    """``grid_size`` evenly spaced points from low to high (both included), float64."""
    check_int("grid_size", grid_size, 2)
    if not (isinstance(grid_range, (tuple, list)) and len(grid_range) == 2):
        raise ValueError(f"{name} must be a pair (low, high), got {grid_range!r}")
    low, high = (check_real(name, value) for value in grid_range)
    if not low < high:
        raise ValueError(f"{name} must have low < high, got {tuple(grid_range)}")
    return torch.linspace(low, high, grid_size, dtype=torch.float64)


class RBFKAN(BasisKAN):
    """``y = rbf(LayerNorm(x)) @ weight + silu(x) @ base_weight + bias``, rbf(u) = exp(-((u - u_s) / h)^2).

    ``grid_size`` points u_s on ``grid_range``, width h (default: their spacing), as FastKAN's ``FastKANLayer``
    (whose defaults these are). Input ``[..., in_features]``, output ``[..., out_features]``.
    """

    def __init__(self, in_features: int, out_features: int, grid_size: int = 8, grid_range=(-2.0, 2.0),
                 width: float | None = None, layernorm: bool = True, base_activation: str | None = "silu",
                 bias: bool = True, weight_std: float = 0.1, backend: str = "auto", device=None, dtype=None):
        points = uniform_points(grid_size, grid_range)
        super().__init__(in_features, out_features, grid_size, layernorm=layernorm, base_activation=base_activation,
                         bias=bias, weight_std=weight_std, backend=backend, device=device, dtype=dtype)
        self.register_buffer("grid", points.to(device=self.weight.device, dtype=self.weight.dtype))
        self.width = (float(points[1] - points[0]) if width is None
                      else check_real("width", width, positive=True))

    def spec(self) -> BasisSpec:
        return BasisSpec("rbf", self.n_basis, grid=self.grid, scale=self.width)

    @classmethod
    def from_fastkan(cls, layer) -> "RBFKAN":
        """The RBFKAN computing what fast-kan's ``FastKANLayer`` computes, from the layer or its state dict
        (``layernorm.weight/bias``, ``rbf.grid`` [S], ``spline_linear.weight`` [O, I*S], and with the base
        update ``base_linear.weight`` [O, I], ``base_linear.bias`` [O]). A module's width (its ``rbf.denominator``)
        is read; a state dict does not hold it, so the grid spacing (fast-kan's default) is used."""
        state = layer.state_dict() if isinstance(layer, nn.Module) else layer
        if not isinstance(state, Mapping):
            raise TypeError(f"expected a FastKANLayer or its state dict, got {type(layer).__name__}")
        needed = ("layernorm.weight", "layernorm.bias", "rbf.grid", "spline_linear.weight")
        missing = [key for key in needed if key not in state]
        if missing:
            raise ValueError(f"expected a FastKANLayer state dict with keys {list(needed)} (and base_linear.* with "
                             f"the base update), missing {missing}; got keys {sorted(state)}")
        grid, spline = state["rbf.grid"], state["spline_linear.weight"]
        n_out, n_in = spline.shape[0], state["layernorm.weight"].shape[0]
        if grid.dim() != 1 or spline.dim() != 2 or spline.shape[1] != n_in * grid.shape[0]:
            raise ValueError(f"expected rbf.grid [S] and spline_linear.weight [O, I*S] with I = {n_in}, got "
                             f"{tuple(grid.shape)} and {tuple(spline.shape)}")
        steps = grid.double().diff()
        if grid.shape[0] < 2 or not torch.allclose(steps, steps[0].expand_as(steps), rtol=1e-5, atol=0):
            raise ValueError(f"expected an evenly spaced rbf.grid of at least 2 points, got {grid.tolist()}")
        has_base = "base_linear.weight" in state
        width = getattr(getattr(layer, "rbf", None), "denominator", None)
        new = cls(n_in, n_out, grid_size=grid.shape[0], grid_range=(float(grid[0]), float(grid[-1])),
                  width=None if width is None else float(width), base_activation="silu" if has_base else None,
                  bias=has_base and "base_linear.bias" in state, device=spline.device, dtype=spline.dtype)
        with torch.no_grad():
            new.grid.copy_(grid)
            new.layernorm.weight.copy_(state["layernorm.weight"])
            new.layernorm.bias.copy_(state["layernorm.bias"])
            new.weight.copy_(spline.t())
            if has_base:
                new.base_weight.copy_(state["base_linear.weight"].t())
                if new.bias is not None:
                    new.bias.copy_(state["base_linear.bias"])
        return new
