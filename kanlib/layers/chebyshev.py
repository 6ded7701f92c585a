"""ChebyKAN's layer: Chebyshev polynomials of the first kind of tanh(x) (SynodicMonth, ChebyKAN, 2024)."""
from __future__ import annotations

from ..checks import check_int
from ..ops.basis_linear import BasisSpec
from .basis_kan import BasisKAN

__all__ = ["ChebyKAN"]


class ChebyKAN(BasisKAN):
    """``y = T(tanh x) @ weight``: T_0 .. T_degree of each input's tanh, one coefficient per edge and degree.

    ``weight`` starts normal with standard deviation 1 / (in_features * (degree + 1)), as ChebyKAN's
    coefficients. No base branch and no bias by default, as ChebyKAN's layer.
    """

    def __init__(self, in_features: int, out_features: int, degree: int = 4, base_activation: str | None = None,
                 bias: bool = False, backend: str = "auto", device=None, dtype=None):
        check_int("degree", degree, 0)
        check_int("in_features", in_features, 1)
        super().__init__(in_features, out_features, degree + 1, layernorm=False, base_activation=base_activation,
                         bias=bias, weight_std=1 / (in_features * (degree + 1)), backend=backend,
                         device=device, dtype=dtype)
        self.degree = degree

    def spec(self) -> BasisSpec:
        return BasisSpec("chebyshev", self.n_basis)
