"""KAN layers, each a drop-in for ``nn.Linear``."""
from .bspline import BSplineKAN
from .mlp import MLP

__all__ = ["BSplineKAN", "MLP"]
