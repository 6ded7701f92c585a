"""KAN layers, one file per family, each a drop-in for ``nn.Linear``: B-splines (pykan's layer, and its edge-sparse
form for pruned layers), Gaussian radial bases (FastKAN), reflectional switch functions (FasterKAN), squared ReLU
bumps (ReLU-KAN), Chebyshev polynomials (ChebyKAN); convolutions of any of them (KANConv2d); and the MLP baseline."""
from .bspline import BSplineKAN
from .chebyshev import ChebyKAN
from .conv import KANConv2d
from .mlp import MLP
from .rbf import RBFKAN
from .relu_kan import ReLUKAN
from .registry import LAYERS, resolve_layer
from .rswaf import RSWAFKAN
from .sparse_bspline import SparseBSplineKAN

__all__ = ["BSplineKAN", "SparseBSplineKAN", "RBFKAN", "RSWAFKAN", "ReLUKAN", "ChebyKAN", "KANConv2d", "MLP",
           "LAYERS", "resolve_layer"]
