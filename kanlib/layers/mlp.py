"""The MLP baseline: Linear layers with a fixed activation between them."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..activations import ACTIVATIONS, MLP_ACTIVATIONS, get_activation
from ..checks import check_positive_int

__all__ = ["MLP", "Stack", "check_widths", "check_activation"]


def check_widths(widths) -> list[int]:
    """widths as a list of at least 2 positive ints (layer sizes, input first), or a clear error."""
    if isinstance(widths, str) or not isinstance(widths, Sequence) or len(widths) < 2:
        raise ValueError(f"widths must be a sequence of at least 2 positive ints, e.g. [2, 5, 1], got {widths!r}")
    return [check_positive_int(f"widths[{index}]", width) for index, width in enumerate(widths)]


def check_activation(activation: str) -> str:
    """activation if it is one an MLP takes (:data:`kanlib.activations.MLP_ACTIVATIONS`)."""
    return get_activation(activation, MLP_ACTIVATIONS).name


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
            modules += [nn.Linear(n_in, n_out, bias=bias), ACTIVATIONS[activation].module()]
        self.layers = nn.Sequential(*modules[:-1])

    def extra_repr(self) -> str:
        return f"widths={self.widths}, activation={self.activation!r}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., widths[0]] -> [..., widths[-1]]."""
        return self.layers(x)
