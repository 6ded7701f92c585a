"""kanlib: fast, exact Kolmogorov-Arnold Network layers."""
from .data import FORMULAS, list_formulas, load_cifar10, load_digits, load_fashion_mnist, load_mnist, symbolic_dataset
from .layers import MLP, RBFKAN, RSWAFKAN, BSplineKAN, ChebyKAN, KANConv2d, ReLUKAN, SparseBSplineKAN
from .models import KAN, LAYERS, CNNWithKANHead, ConvKAN, count_parameters, forward_flops, mlp_with_parameter_count
from .training import FitCallback, History, fit, fit_steps
from .quant import QATConfig, quantize
from .prune.schedule import prune_to_sparsity
from .bench.provenance import retain_freed_memory

__all__ = [
    "BSplineKAN", "SparseBSplineKAN", "RBFKAN", "RSWAFKAN", "ReLUKAN", "ChebyKAN", "KANConv2d", "MLP", "KAN",
    "ConvKAN", "CNNWithKANHead", "LAYERS",
    "count_parameters", "forward_flops", "mlp_with_parameter_count",
    "fit", "fit_steps", "History", "FitCallback", "symbolic_dataset", "FORMULAS", "list_formulas", "load_digits",
    "load_mnist", "load_fashion_mnist", "load_cifar10", "quantize", "QATConfig", "prune_to_sparsity",
    "retain_freed_memory",
]
__version__ = "0.1.0"
