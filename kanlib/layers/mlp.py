"""The MLP baseline: Linear layers with a fixed activation between them."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["MLP", "ACTIVATIONS"]

ACTIVATIONS: dict[str, type[nn.Module]] = {"silu": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


def check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive int, got {type(value).__name__} ({value!r})")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return value


def check_widths(widths) -> list[int]:
    """widths as a list of at least 2 positive ints (layer sizes, input first), or a clear error."""
    if isinstance(widths, str) or not isinstance(widths, Sequence) or len(widths) < 2:
        raise ValueError(f"widths must be a sequence of at least 2 positive ints, e.g. [2, 5, 1], got {widths!r}")
    return [check_positive_int(f"widths[{index}]", width) for index, width in enumerate(widths)]


def check_activation(activation: str) -> str:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    return activation


class Stack:
    """What a stack of layers with `widths` [n_0, ..., n_L] reports: in_features n_0, out_features n_L."""

    widths: list[int]

    @property
    def in_features(self) -> int:
        return self.widths[0]

    @property
    def out_features(self) -> int:
        return self.widths[-1]


class MLP(Stack, nn.Module):
    """Linear layers of sizes ``widths`` with ``activation`` between them (none after the last).

    ``MLP([2, 16, 1])`` is Linear(2, 16), SiLU, Linear(16, 1): input ``[..., 2]``, output ``[..., 1]``.
    """

    def __init__(self, widths: Sequence[int], activation: str = "silu", bias: bool = True):
        super().__init__()
        self.widths = check_widths(widths)
        self.activation = check_activation(activation)
        modules = []
        for n_in, n_out in zip(self.widths[:-1], self.widths[1:]):
            modules += [nn.Linear(n_in, n_out, bias=bias), ACTIVATIONS[activation]()]
        self.layers = nn.Sequential(*modules[:-1])

    def extra_repr(self) -> str:
        return f"widths={self.widths}, activation={self.activation!r}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., widths[0]] -> [..., widths[-1]]."""
        return self.layers(x)
