"""kanlib: fast, exact Kolmogorov-Arnold Network layers."""
from .layers import BSplineKAN
from .layers import MLP
from .models import KAN, LAYERS, count_parameters, forward_flops, mlp_with_parameter_count

__all__ = ["BSplineKAN", "MLP", "KAN", "LAYERS", "count_parameters", "forward_flops", "mlp_with_parameter_count"]
__version__ = "0.1.0"
