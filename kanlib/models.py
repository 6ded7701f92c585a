"""Whole networks: the `KAN` stack, the `MLP` baseline, and their parameter and FLOP counts."""
from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import torch
from torch import nn

from .activations import ACTIVATIONS, MLP_ACTIVATIONS
from .checks import check_positive_int
from .layers.bspline import BSplineKAN
from .layers.basis_kan import BasisKAN
from .layers.conv import KANConv2d
from .layers.mlp import MLP, Stack, check_activation, check_widths
from .layers.registry import LAYERS, resolve_layer

__all__ = ["KAN", "MLP", "ConvKAN", "CNNWithKANHead", "LAYERS", "BASIS_FLOPS", "count_parameters", "forward_flops",
           "mlp_with_parameter_count"]




@contextmanager
def _seeded(seed: int | None):
    """Inside, torch's RNG is seeded with seed (unless None); outside, the global RNG state is left as it was."""
    if seed is None:
        yield
        return
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__} ({seed!r})")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield


class KAN(Stack, nn.Module):
    """A stack of KAN layers: widths ``[2, 5, 1]`` gives ``layer(2, 5)`` then ``layer(5, 1)``.

    Input ``[..., widths[0]]``, output ``[..., widths[-1]]``. ``layer`` is a layer class or a name in
    ``LAYERS``; ``layer_kwargs`` go to every layer (e.g. grid_size, spline_order). An int ``seed`` makes the
    initial parameters reproducible and leaves the global RNG untouched.
    """

    def __init__(self, widths: Sequence[int], layer=BSplineKAN, seed: int | None = None, **layer_kwargs):
        super().__init__()
        self.widths = check_widths(widths)
        layer_type = resolve_layer(layer)
        with _seeded(seed):
            self.layers = nn.ModuleList(layer_type(n_in, n_out, **layer_kwargs)
                                        for n_in, n_out in zip(self.widths[:-1], self.widths[1:]))

    def extra_repr(self) -> str:
        return f"widths={self.widths}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., widths[0]] -> [..., widths[-1]]. The input is kept (detached, not copied) as the samples that
        ``attribute``, ``prune``, ``plot`` and the symbolic fits use when they are given none, as pykan does."""
        self._last_input = x.detach()
        for layer in self.layers:
            x = layer(x)
        return x

    def samples(self, x: torch.Tensor | None, method: str) -> torch.Tensor:
        """x [N, widths[0]], or when None the input of the last forward call, for ``method``'s error message."""
        if x is None:
            x = getattr(self, "_last_input", None)
            if x is None:
                raise ValueError(f"KAN.{method} needs samples: pass x=[N, {self.in_features}] or call model(x) "
                                 f"first, whose input is used")
        x = x.reshape(-1, x.shape[-1]) if x.dim() > 2 else x
        if x.dim() != 2 or x.shape[-1] != self.in_features:
            raise ValueError(f"KAN.{method} needs samples of shape [N, {self.in_features}], got {tuple(x.shape)}")
        return x

    def layer_inputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The input of every layer for samples x [N, widths[0]]: [x, layer0(x), ...], len(widths) - 1 tensors."""
        inputs = []
        for layer in self.layers:
            inputs.append(x)
            x = layer(x)
        return inputs

    @torch.no_grad()
    def update_grid(self, x: torch.Tensor) -> None:
        """Fit each layer's grid to the inputs it receives from samples x [N, widths[0]].

        Layer l sees x passed through layers 0..l-1 after their update, as pykan's ``update_grid_from_samples``.
        """
        self._require("update_grid")
        saved = [{name: t.clone() for name, t in layer.state_dict().items()} for layer in self.layers]
        try:
            for index, layer in enumerate(self.layers):
                try:
                    layer.update_grid(x)
                except ValueError as error:
                    raise ValueError(f"KAN.update_grid: layer {index} ({layer.in_features} -> {layer.out_features}) "
                                     f"cannot take the grid of its inputs: {error}; no layer was changed") from error
                x = layer(x)
        except BaseException:
            for layer, state in zip(self.layers, saved):
                _restore(layer, state)
            raise

    @torch.no_grad()
    def refine(self, grid_size: int) -> None:
        """Every layer keeps its function on ``grid_size`` intervals. New coefficient tensors replace the old
        ones when the size changes, so build the optimizer afterwards."""
        self._require("refine")
        for layer in self.layers:
            layer.refine(grid_size)

    def regularization_loss(self, **kwargs) -> torch.Tensor:
        """The sum of the layers' ``regularization_loss(**kwargs)``."""
        self._require("regularization_loss")
        return sum(layer.regularization_loss(**kwargs) for layer in self.layers)

    def _require(self, method: str) -> None:
        for index, layer in enumerate(self.layers):
            if not callable(getattr(layer, method, None)):
                raise TypeError(f"KAN.{method} needs every layer to have a {method} method; "
                                f"layer {index} ({type(layer).__name__}) has none")


def _check_image_model(in_channels, n_classes, channels) -> tuple[int, ...]:
    check_positive_int("in_channels", in_channels)
    check_positive_int("n_classes", n_classes)
    if isinstance(channels, (str, bytes)) or not isinstance(channels, Sequence) or not channels:
        raise ValueError(f"channels must be a non-empty sequence of positive ints, got {channels!r}")
    return tuple(check_positive_int(f"channels[{index}]", c) for index, c in enumerate(channels))


class ConvKAN(nn.Module):
    """A convolutional KAN for images: per entry of ``channels`` a ``KANConv2d`` (``kernel_size``, padding
    "same", ``layer`` and ``layer_kwargs``) and a 2x2 max pool, then a global average pool and a KAN head
    ``[channels[-1], *head_hidden, n_classes]``. Input [N, in_channels, H, W] -> logits [N, n_classes]."""

    def __init__(self, in_channels: int, n_classes: int, channels: Sequence[int] = (8, 16), kernel_size: int = 3,
                 head_hidden: Sequence[int] = (), layer="bspline", seed: int | None = None, **layer_kwargs):
        super().__init__()
        channels = _check_image_model(in_channels, n_classes, channels)
        with _seeded(seed):
            blocks = []
            for c_in, c_out in zip((in_channels, *channels[:-1]), channels):
                blocks += [KANConv2d(c_in, c_out, kernel_size, padding="same", layer=layer, **layer_kwargs),
                           nn.MaxPool2d(2, ceil_mode=True)]
            self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.head = KAN([channels[-1], *head_hidden, n_classes], layer=layer, **layer_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, C, H, W] -> [N, n_classes]."""
        return self.head(self.features(x))


class CNNWithKANHead(nn.Module):
    """A plain CNN (per entry of ``channels``: Conv2d ``kernel_size`` padding "same", ReLU, 2x2 max pool), a global
    average pool and a KAN head ``[channels[-1], *head_hidden, n_classes]`` of family ``layer``.
    Input [N, in_channels, H, W] -> logits [N, n_classes]."""

    def __init__(self, in_channels: int, n_classes: int, channels: Sequence[int] = (16, 32), kernel_size: int = 3,
                 head_hidden: Sequence[int] = (16,), layer="bspline", seed: int | None = None, **layer_kwargs):
        super().__init__()
        channels = _check_image_model(in_channels, n_classes, channels)
        with _seeded(seed):
            blocks = []
            for c_in, c_out in zip((in_channels, *channels[:-1]), channels):
                blocks += [nn.Conv2d(c_in, c_out, kernel_size, padding="same"), nn.ReLU(),
                           nn.MaxPool2d(2, ceil_mode=True)]
            self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.head = KAN([channels[-1], *head_hidden, n_classes], layer=layer, **layer_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, C, H, W] -> [N, n_classes]."""
        return self.head(self.features(x))


# Estimated FLOPs of one basis value of each family: RBF (subtract, scale, square, exp), RSWAF (subtract, scale,
# tanh, square, subtract), ReLU bumps (two differences, two max, product, scale, square), Chebyshev (the
# three-term recurrence, its tanh shared by the input's bases).
BASIS_FLOPS = {"rbf": 6, "rswaf": 8, "relu": 7, "chebyshev": 3}
LAYERNORM_FLOPS = 8  # per input value: mean, variance, normalize, scale and shift


def count_parameters(model: nn.Module) -> int:
    """The number of trainable (requires_grad) parameter elements, each shared tensor counted once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def bspline_basis_flops(spline_order: int) -> int:
    """Estimated FLOPs to evaluate the B-spline basis at one input value: (k+1)^2 + 10."""
    return (spline_order + 1) ** 2 + 10


def forward_flops(model: nn.Module, batch_size: int = 1) -> int:
    """Estimated FLOPs of one forward pass on ``batch_size`` samples, a multiply-add counting as 2.

    Per sample: ``nn.Linear`` 2*I*O (+O for a bias); ``BSplineKAN`` 2*I*(G+k+1)*O for its matrix product plus,
    per input, ``bspline_basis_flops(k)`` for the basis and the activation's ``flops`` (:mod:`kanlib.activations`)
    for the base activation (+O for a bias); the other KAN families 2*I*S*O plus ``BASIS_FLOPS`` per basis value
    (and their layer norm, base branch and bias); an activation module in an ``nn.Sequential`` (so in an MLP) the
    activation's ``flops`` per element. Parameter-free modules such as dropout count 0; a convolution, a module
    of another kind with parameters, or an activation whose input size is unknown, raises ValueError.
    """
    check_positive_int("batch_size", batch_size)
    return batch_size * _per_sample_flops(model)


def _has_parameters(module: nn.Module, recurse: bool = True) -> bool:
    return next(module.parameters(recurse=recurse), None) is not None


def _activation_name(module: nn.Module) -> str | None:
    return next((name for name in MLP_ACTIVATIONS if isinstance(module, ACTIVATIONS[name].module)), None)


def _per_sample_flops(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        bias = module.out_features if module.bias is not None else 0
        return 2 * module.in_features * module.out_features + bias
    if isinstance(module, BSplineKAN):
        n_in, n_out, k = module.in_features, module.out_features, module.spline_order
        product = 2 * n_in * (module.grid_size + k + 1) * n_out
        per_input = bspline_basis_flops(k) + ACTIVATIONS[module.base_activation].flops
        bias = n_out if module.bias is not None else 0
        return product + n_in * per_input + bias
    if isinstance(module, BasisKAN):
        n_in, n_out, n_basis = module.in_features, module.out_features, module.n_basis
        product = 2 * n_in * n_basis * n_out
        base = (2 * n_in * n_out + n_in * ACTIVATIONS[module.base_activation].flops
                if module.base_weight is not None else 0)
        norm = LAYERNORM_FLOPS * n_in if module.layernorm is not None else 0
        bias = n_out if module.bias is not None else 0
        return product + n_in * n_basis * BASIS_FLOPS[module.spec().kind] + base + norm + bias
    if isinstance(module, (KANConv2d, nn.Conv2d)):
        raise ValueError(f"forward_flops counts per sample without the image size; a {type(module).__name__} "
                         f"costs its layer's FLOPs times the output pixels, which depend on the input")
    if isinstance(module, nn.Sequential):
        return _sequential_flops(module)
    if _activation_name(module) is not None:
        raise ValueError(f"forward_flops cannot size the input of {type(module).__name__} outside an nn.Sequential")
    if _has_parameters(module, recurse=False):
        raise ValueError(f"forward_flops has no FLOP model for {type(module).__name__}; "
                         f"it knows nn.Linear, the KAN layers and activations {sorted(MLP_ACTIVATIONS)}")
    return sum(_per_sample_flops(child) for child in module.children())


def _sequential_flops(sequence: nn.Sequential) -> int:
    """Counts each activation at the width left by the modules before it."""
    total, width = 0, None
    for child in sequence:
        activation = _activation_name(child)
        if activation is not None:
            if width is None:
                raise ValueError(f"forward_flops cannot size the input of {type(child).__name__}: "
                                 f"no module before it in the nn.Sequential gives its out_features")
            total += ACTIVATIONS[activation].flops * width
            continue
        total += _per_sample_flops(child)
        if hasattr(child, "out_features"):
            width = child.out_features
        elif _has_parameters(child):
            width = None
    return total


def _mlp_parameter_count(widths: Sequence[int], bias: bool) -> int:
    return sum(n_in * n_out + (n_out if bias else 0) for n_in, n_out in zip(widths[:-1], widths[1:]))


def mlp_with_parameter_count(n_in: int, n_out: int, n_params: int, depth: int = 2, activation: str = "silu",
                             bias: bool = True) -> MLP:
    """The MLP [n_in, h, ..., h, n_out] with ``depth`` hidden layers whose width h makes its parameter count
    closest to ``n_params`` (the smaller h on a tie; h >= 1)."""
    for name, value in (("n_in", n_in), ("n_out", n_out), ("n_params", n_params), ("depth", depth)):
        check_positive_int(name, value)
    check_activation(activation)

    def parameters_at(hidden: int) -> int:
        return _mlp_parameter_count([n_in, *[hidden] * depth, n_out], bias)

    # The count grows with h and is at least h, so the smallest h reaching n_params lies in [1, n_params].
    low, high = 1, n_params
    while low < high:
        middle = (low + high) // 2
        if parameters_at(middle) >= n_params:
            high = middle
        else:
            low = middle + 1
    hidden = min((h for h in (low - 1, low) if h >= 1), key=lambda h: abs(parameters_at(h) - n_params))
    return MLP([n_in, *[hidden] * depth, n_out], activation=activation, bias=bias)


def _restore(layer: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Put back a layer's saved parameters and buffers, whose shapes a grid change may have altered."""
    for name, value in state.items():
        module_name, _, attribute = name.rpartition(".")
        module = layer.get_submodule(module_name) if module_name else layer
        current = getattr(module, attribute)
        if current is None:
            continue
        if current.shape == value.shape:
            with torch.no_grad():
                current.copy_(value)  # in place: an optimizer keeps its references
        elif isinstance(current, nn.Parameter):
            setattr(module, attribute, nn.Parameter(value, requires_grad=current.requires_grad))
        else:
            module._buffers[attribute] = value
