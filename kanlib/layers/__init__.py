"""KAN layers, each a drop-in for ``nn.Linear``."""
from .bspline import BSplineKAN

__all__ = ["BSplineKAN"]
