"""The product of the other KAN families: an elementwise basis expansion of each input followed by one matrix
product, ``basis(x).view(N, I*S) @ W`` with W [I*S, O]. :mod:`.reference` holds the published bases (FastKAN's
Gaussian radial functions, FasterKAN's reflectional switch functions, ReLU-KAN's squared ReLU bumps, ChebyKAN's
Chebyshev polynomials). For now the product runs in PyTorch operations (autograd keeps the expanded input);
fused kernels, as :mod:`kanlib.ops.spline_linear` has, are still to come.
"""
from .reference import basis_linear_reference, chebyshev_basis, gaussian_rbf_basis, relu_bump_basis, rswaf_basis

__all__ = ["basis_linear_reference", "gaussian_rbf_basis", "rswaf_basis", "relu_bump_basis", "chebyshev_basis"]
