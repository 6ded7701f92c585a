"""kanlib: fast, exact Kolmogorov-Arnold Network layers."""
from .layers import BSplineKAN

__all__ = ["BSplineKAN"]
__version__ = "0.1.0"
