"""The KAN layer families by name, as ``KAN(widths, layer=...)`` and ``KANConv2d(..., layer=...)`` take them."""
from __future__ import annotations

from torch import nn

from .bspline import BSplineKAN
from .chebyshev import ChebyKAN
from .rbf import RBFKAN
from .relu_kan import ReLUKAN
from .rswaf import RSWAFKAN

__all__ = ["LAYERS", "resolve_layer"]

LAYERS: dict[str, type[nn.Module]] = {"bspline": BSplineKAN, "rbf": RBFKAN, "rswaf": RSWAFKAN, "relu": ReLUKAN,
                                      "chebyshev": ChebyKAN}


def resolve_layer(layer) -> type[nn.Module]:
    """The layer class for a family name in LAYERS, or ``layer`` itself when it is an nn.Module class."""
    if isinstance(layer, str):
        if layer not in LAYERS:
            raise ValueError(f"layer must be one of {sorted(LAYERS)} or an nn.Module class, got {layer!r}")
        return LAYERS[layer]
    if isinstance(layer, type) and issubclass(layer, nn.Module):
        return layer
    raise TypeError(f"layer must be a name in {sorted(LAYERS)} or an nn.Module class, "
                    f"got {type(layer).__name__} ({layer!r})")
