"""Convolutional KANs: a KAN layer of any family applied to every receptive field, a drop-in for ``nn.Conv2d``."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_int
from .registry import resolve_layer

__all__ = ["KANConv2d"]


def _pair(name: str, value, minimum: int) -> tuple[int, int]:
    values = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(values) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return tuple(check_int(name, v, minimum) for v in values)


class KANConv2d(nn.Module):
    """``nn.Conv2d`` with a KAN layer in place of the dot product: output pixel (o, y, x) is output o of the KAN
    layer (``layer``, a family name or class, with ``layer_kwargs``) applied to the C/groups * kh * kw values of
    its receptive field. Input [N, C, H, W] (or [C, H, W]) -> [N, O, H', W'] with nn.Conv2d's H', W'.

    ``kernel_size``, ``stride``, ``padding`` (ints, pairs, "valid" or "same"; zeros), ``dilation`` and ``groups``
    mean what they mean for nn.Conv2d. Each group has its own KAN layer (``self.kans``). The receptive fields are
    unfolded ([N, C*kh*kw, H'*W']) and each group's layer runs on them as a batch of N*H'*W' rows, so the fused
    layers never hold a per-patch basis tensor.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, layer="bspline", **layer_kwargs):
        super().__init__()
        check_int("in_channels", in_channels, 1)
        check_int("out_channels", out_channels, 1)
        check_int("groups", groups, 1)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels and out_channels must be divisible by groups, got {in_channels}, "
                             f"{out_channels} and groups={groups}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = _pair("kernel_size", kernel_size, 1)
        self.stride = _pair("stride", stride, 1)
        self.dilation = _pair("dilation", dilation, 1)
        if isinstance(padding, str):
            if padding not in ("valid", "same"):
                raise ValueError(f"padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
            if padding == "same" and self.stride != (1, 1):
                raise ValueError(f"padding='same' needs stride 1 (as nn.Conv2d), got stride={self.stride}")
            self.padding = padding
        else:
            self.padding = _pair("padding", padding, 0)
        layer_type = resolve_layer(layer)
        fan_in = in_channels // groups * self.kernel_size[0] * self.kernel_size[1]
        self.kans = nn.ModuleList(layer_type(fan_in, out_channels // groups, **layer_kwargs) for _ in range(groups))

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding!r}, dilation={self.dilation}, groups={self.groups}")

    def _pads(self) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) zeros, as F.pad takes them."""
        if self.padding == "valid":
            return 0, 0, 0, 0
        if self.padding == "same":
            total = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size)]
            return total[1] // 2, total[1] - total[1] // 2, total[0] // 2, total[0] - total[0] // 2
        return self.padding[1], self.padding[1], self.padding[0], self.padding[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, C, H, W] or [C, H, W] -> [N, O, H', W'] or [O, H', W']."""
        if not isinstance(x, torch.Tensor) or x.dim() not in (3, 4) or x.shape[-3] != self.in_channels:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"input must have shape (N, {self.in_channels}, H, W) or ({self.in_channels}, H, W), "
                             f"got {got}")
        batched = x.dim() == 4
        x = x if batched else x.unsqueeze(0)
        left, right, top, bottom = self._pads()
        height, width = x.shape[-2] + top + bottom, x.shape[-1] + left + right
        reach = [d * (k - 1) + 1 for d, k in zip(self.dilation, self.kernel_size)]
        if reach[0] > height or reach[1] > width:
            raise ValueError(f"the kernel reaches {tuple(reach)} (kernel_size {self.kernel_size}, dilation "
                             f"{self.dilation}), more than the padded input {(height, width)}")
        out_h = (height - reach[0]) // self.stride[0] + 1
        out_w = (width - reach[1]) // self.stride[1] + 1
        padded = F.pad(x, (left, right, top, bottom)) if any((left, right, top, bottom)) else x
        fields = F.unfold(padded, self.kernel_size, dilation=self.dilation, stride=self.stride)  # [N, C*kh*kw, L]
        n = x.shape[0]
        per_group = fields.view(n, self.groups, fields.shape[1] // self.groups, out_h * out_w)
        outputs = [kan(per_group[:, g].transpose(1, 2)) for g, kan in enumerate(self.kans)]  # each [N, L, O/g]
        out = torch.cat(outputs, dim=-1).transpose(1, 2).reshape(n, self.out_channels, out_h, out_w)
        return out if batched else out.squeeze(0)
