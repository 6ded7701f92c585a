"""The one registry of activation functions: the KAN layers' base activation b(x) and the MLP's nonlinearity.

Each entry gives the function, its derivative, the ``nn.Module`` that computes it, the id the fused kernels
(numba and Triton) switch on, the FLOPs per element that :func:`kanlib.models.forward_flops` counts and the
multiplications per element that :func:`kanlib.quant.bitops` counts. An entry without a kernel id
(``gelu``) serves the MLP only.
"""
from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Activation", "ACTIVATIONS", "BASE_ACTIVATIONS", "MLP_ACTIVATIONS", "get_activation",
           "activation_of_module", "IDENTITY_ID", "SILU_ID", "TANH_ID", "RELU_ID"]

# The ids the kernels compare against: compile-time constants there.
IDENTITY_ID, SILU_ID, TANH_ID, RELU_ID = 0, 1, 2, 3


def _silu_derivative(x: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(x)
    return s * (1 + x * (1 - s))


def _gelu_derivative(x: torch.Tensor) -> torch.Tensor:
    cdf = 0.5 * (1 + torch.erf(x / 2**0.5))
    return cdf + x * torch.exp(-0.5 * x * x) / (2 * torch.pi) ** 0.5


@dataclass(frozen=True)
class Activation:
    """One activation: ``function(x)``, ``derivative(x)`` (elementwise), ``module`` (its nn.Module class),
    ``kernel_id`` (None where no fused kernel computes it), ``flops`` and ``multiplications`` per element."""

    name: str
    function: Callable[[torch.Tensor], torch.Tensor]
    derivative: Callable[[torch.Tensor], torch.Tensor]
    module: type[nn.Module]
    kernel_id: int | None
    flops: int
    multiplications: int


ACTIVATIONS: dict[str, Activation] = {
    activation.name: activation for activation in (
        Activation("silu", F.silu, _silu_derivative, nn.SiLU, SILU_ID, 4, 2),
        Activation("tanh", torch.tanh, lambda x: 1 - torch.tanh(x) ** 2, nn.Tanh, TANH_ID, 4, 2),
        Activation("relu", F.relu, lambda x: (x > 0).to(x.dtype), nn.ReLU, RELU_ID, 1, 0),
        Activation("identity", lambda x: x, torch.ones_like, nn.Identity, IDENTITY_ID, 0, 0),
        Activation("gelu", F.gelu, _gelu_derivative, nn.GELU, None, 4, 2),
    )
}
# What a B-spline KAN layer takes as its base activation (the fused kernels compute these) ...
BASE_ACTIVATIONS = tuple(name for name, a in ACTIVATIONS.items() if a.kernel_id is not None)
# ... and what an MLP takes between its linear layers.
MLP_ACTIVATIONS = ("silu", "relu", "gelu", "tanh")


def get_activation(name: object, allowed: tuple[str, ...] = tuple(ACTIVATIONS), what: str = "activation"
                   ) -> Activation:
    """The registry entry for ``name``; ValueError naming the allowed names otherwise."""
    if not isinstance(name, str) or name not in allowed:
        raise ValueError(f"{what} must be one of {sorted(allowed)}, got {name!r}")
    return ACTIVATIONS[name]


def activation_of_module(module: nn.Module) -> str | None:
    """The registry name of an activation module (exact class), or None."""
    return next((name for name, a in ACTIVATIONS.items() if type(module) is a.module), None)
