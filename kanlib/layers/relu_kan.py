"""ReLU-KAN's layer: squared products of ReLUs, bumps of k + 1 grid intervals (Qiu et al. 2024, "ReLU-KAN: New
Kolmogorov-Arnold Networks that Only Need Matrix Addition, Dot Multiplication, and ReLU")."""
from __future__ import annotations

import torch
from torch import nn

from ..checks import check_int
from ..ops.basis_linear import BasisSpec
from .basis_kan import BasisKAN
from .rbf import uniform_points

__all__ = ["ReLUKAN"]


class ReLUKAN(BasisKAN):
    """``y = bumps(x) @ weight + bias``, bump s of input i ``(4 relu(e - x) relu(x - s) / (e - s)^2)^2``.

    The G + k bumps of each input start at ``low + (s - k) h`` and end k + 1 intervals later (h = the interval
    of ``grid_size`` intervals on ``grid_range``), as ReLU-KAN's ``phase_low`` and ``phase_high``, which train
    when ``learn_bounds``. The bias is that of ReLU-KAN's final convolution.
    """

    def __init__(self, in_features: int, out_features: int, grid_size: int = 5, spline_order: int = 3,
                 grid_range=(0.0, 1.0), learn_bounds: bool = True, base_activation: str | None = None,
                 bias: bool = True, weight_std: float = 0.1, backend: str = "auto", device=None, dtype=None):
        check_int("grid_size", grid_size, 1)
        check_int("spline_order", spline_order, 0)
        knots = uniform_points(grid_size + 1, grid_range)
        step = float(knots[1] - knots[0])
        super().__init__(in_features, out_features, grid_size + spline_order, layernorm=False,
                         base_activation=base_activation, bias=bias, weight_std=weight_std, backend=backend,
                         device=device, dtype=dtype)
        factory = {"device": self.weight.device, "dtype": self.weight.dtype}
        starts = float(knots[0]) + step * torch.arange(-spline_order, grid_size, dtype=torch.float64)
        self.spline_order = spline_order
        self.starts = nn.Parameter(starts.expand(in_features, -1).clone().to(**factory), requires_grad=learn_bounds)
        self.ends = nn.Parameter((starts + (spline_order + 1) * step).expand(in_features, -1).clone().to(**factory),
                                 requires_grad=learn_bounds)

    def spec(self) -> BasisSpec:
        return BasisSpec("relu", self.n_basis, starts=self.starts, ends=self.ends)
