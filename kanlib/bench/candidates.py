"""What the layer and kernel benchmarks share: the candidates' shape, their inputs, the competitors built
from a kanlib layer (an unfused layer in efficient-kan's layout, pykan's layer, the B-spline layers of the
pip-installable packages flashkan and inkan) and the measurement of a set of candidates in one run."""
from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata

import torch
from torch import nn

from ..basis import make_grid
from ..checks import check_int
from ..layers import BSplineKAN
from ..ops.spline_linear.reference import unfused_kan
from .timing import peak_memory_bytes, time_interleaved

__all__ = ["GRID_RANGE", "OUTSIDE_FRACTION", "DTYPES", "PEER_ORDER", "PEER_PACKAGES", "Candidate", "PeerLayer",
           "UnfusedKAN", "bspline_weights", "check_sizes", "flashkan_layer", "inkan_layer", "measure",
           "module_candidate", "nbytes", "pykan_layer", "uniform_inputs"]

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
GRID_RANGE = (-1.0, 1.0)
OUTSIDE_FRACTION = 0.1  # inputs reach this fraction of the grid range's width beyond each end
# The exact B-spline KAN layers on PyPI that the layer benchmark measures beside kanlib's: name -> requirement.
PEER_PACKAGES = {"flashkan": "flashkan==0.2.0", "inkan": "inkan==0.5.2"}
PEER_ORDER = 3  # the only spline order whose basis flashkan and inkan compute


def check_sizes(name: str, values: Sequence[int], what: str = "sizes") -> None:
    """`values` is a non-empty list of distinct ints >= 1; an error naming `name` otherwise."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise ValueError(f"{name}: expected a non-empty list of {what}, got {values!r}")
    for index, value in enumerate(values):
        check_int(f"{name}[{index}]", value, 1)
    if len(set(values)) != len(values):
        raise ValueError(f"{name}: expected distinct {what}, got {list(values)}")


@dataclass(frozen=True)
class Candidate:
    """One thing timed. forward() gives the output [B, O]; leaves are what backward differentiates (input,
    trainable params)."""

    name: str
    forward: Callable[[], torch.Tensor]
    leaves: tuple[torch.Tensor, ...]
    state_bytes: int


def nbytes(tensors) -> int:
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


def module_candidate(name: str, module: nn.Module, x: torch.Tensor,
                      forward: Callable[[], torch.Tensor] | None = None) -> Candidate:
    """A candidate calling ``module(x)`` (or ``forward``), charged for x and the module's parameters and buffers."""
    trainable = tuple(p for p in module.parameters() if p.requires_grad)
    state_bytes = nbytes([x, *module.parameters(), *module.buffers()])
    return Candidate(name, forward or functools.partial(module, x), (x, *trainable), state_bytes)


def uniform_inputs(shape, low: float, high: float, generator: torch.Generator, device, dtype) -> torch.Tensor:
    values = torch.rand(shape, generator=generator, device=device, dtype=torch.float32)
    return (low + (high - low) * values).to(dtype)


def bspline_weights(layer: BSplineKAN) -> tuple[torch.Tensor, torch.Tensor]:
    """BSplineKAN's parameters as UnfusedKAN's base_weight [O, I] and spline_weight [O, I, G+k] (differentiable)."""
    base_weight = (layer.scale_base * layer.mask).t()
    spline_weight = ((layer.scale_sp * layer.mask).unsqueeze(-1) * layer.coef).permute(1, 0, 2)
    return base_weight, spline_weight


class UnfusedKAN(nn.Module):
    """A B-spline KAN layer computed the unfused way (:func:`unfused_kan`); x [B, I] -> [B, O].

    The weights fold in BSplineKAN's scales and mask: ``base_weight[o, i] = scale_base[i, o] * mask[i, o]``,
    ``spline_weight[o, i, j] = scale_sp[i, o] * mask[i, o] * coef[i, o, j]``.
    """

    def __init__(self, in_features: int, out_features: int, grid_size: int = 5, spline_order: int = 3,
                 grid_range=GRID_RANGE, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype or torch.get_default_dtype()}
        self.spline_order = spline_order
        self.register_buffer("grid", make_grid(in_features, grid_size, spline_order, grid_range, **factory))
        bound = in_features ** -0.5
        self.base_weight = nn.Parameter(torch.empty(out_features, in_features, **factory).uniform_(-bound, bound))
        self.spline_weight = nn.Parameter(
            torch.empty(out_features, in_features, grid_size + spline_order, **factory).uniform_(-bound, bound))

    @classmethod
    def from_bspline(cls, layer: BSplineKAN) -> UnfusedKAN:
        """An UnfusedKAN computing what ``layer`` computes (its grid, scales, mask and coef)."""
        if layer.bias is not None or layer.base_activation != "silu":
            raise ValueError(f"UnfusedKAN needs a BSplineKAN without bias and with base_activation 'silu', got "
                             f"bias={layer.bias is not None}, base_activation={layer.base_activation!r}")
        new = cls(layer.in_features, layer.out_features, layer.grid_size, layer.spline_order,
                  device=layer.coef.device, dtype=layer.coef.dtype)
        base_weight, spline_weight = bspline_weights(layer)
        with torch.no_grad():
            new.grid.copy_(layer.grid)
            new.base_weight.copy_(base_weight)
            new.spline_weight.copy_(spline_weight)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return unfused_kan(x, self.grid, self.spline_order, self.base_weight, self.spline_weight)


def pykan_layer(width: int, grid_size: int, order: int, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """pykan's KANLayer (width -> width) on the benchmarks' grid range; a clear error without pykan."""
    try:
        from kan import KANLayer
    except ImportError as error:
        raise ImportError("the pykan candidate needs pykan (pip install pykan==0.2.8); "
                          "pass skip_pykan=True (--skip-pykan) to leave it out") from error
    layer = KANLayer(width, width, num=grid_size, k=order, grid_range=list(GRID_RANGE), device=str(device))
    return layer.to(dtype)


@dataclass(frozen=True)
class PeerLayer:
    """A pip-installable package's B-spline layer built beside a kanlib layer: the module (x [B, I] -> [B, O]),
    what it was built as (package and version, its constructor call, its basis and contraction), and whether it
    computes exactly the kanlib layer's function (its weights copied from it)."""

    module: nn.Module
    built_as: str
    same_function: bool


def _peer_source(layer: BSplineKAN, grid_range) -> tuple[torch.Tensor, torch.Tensor]:
    """``layer``'s weights as base_weight [O, I] and spline_weight [O, I, G+k] (detached); an error unless it is a
    layer a peer can hold: uniform grid on ``grid_range``, silu base branch, no bias, no symbolic edges."""
    if layer.bias is not None or layer.base_activation != "silu" or layer.symbolic is not None:
        raise ValueError(f"a peer layer needs a BSplineKAN without bias or symbolic edges and with base_activation "
                         f"'silu', got bias={layer.bias is not None}, symbolic={layer.symbolic is not None}, "
                         f"base_activation={layer.base_activation!r}")
    uniform = make_grid(layer.in_features, layer.grid_size, layer.spline_order, grid_range, dtype=layer.grid.dtype,
                        device=layer.grid.device)
    if not torch.allclose(layer.grid, uniform):
        raise ValueError(f"a peer layer needs the uniform grid on {tuple(grid_range)} (peers have no other), got "
                         f"knots from {layer.grid.min().item():g} to {layer.grid.max().item():g} that differ from it")
    return tuple(weight.detach() for weight in bspline_weights(layer))


def _import_peer(name: str):
    """The peer package's module; an ImportError saying how to install it otherwise."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise ImportError(f"the {name} candidate needs {PEER_PACKAGES[name]} (pip install {PEER_PACKAGES[name]}), "
                          f"got {type(error).__name__}: {error}") from error


def _peer_built_as(name: str, layer: BSplineKAN, grid_range, details: str) -> str:
    """'<package> <version>: KANLayer(I, O, grid_size=G, spline_order=3, grid_range=(a, b)); <details>'."""
    return (f"{name} {metadata.version(name)}: KANLayer({layer.in_features}, {layer.out_features}, "
            f"grid_size={layer.grid_size}, spline_order={PEER_ORDER}, "
            f"grid_range=({float(grid_range[0])}, {float(grid_range[1])})); {details}")


def flashkan_layer(layer: BSplineKAN, grid_range=GRID_RANGE) -> PeerLayer:
    """flashkan's ``KANLayer`` (flashkan 0.2.0) beside ``layer``.

    flashkan computes ``y = sum_{i,j} spline_weight[o, i, j] N((x_i - s_j) / h) + silu(x) @ base_weight.T`` with
    h = (b - a) / G on the grid range (a, b), basis starts s_j = a + (j - 3) h for j < G + 3 (the knots of kanlib's
    extended uniform grid, kept in float32) and N the cubic B-spline by its truncated-power closed form
    ``(relu(u)^3 - 4 relu(u-1)^3 + 6 relu(u-2)^3 - 4 relu(u-3)^3 + relu(u-4)^3) / 6``, compiled with torch.compile;
    no bias. Its basis is cubic whatever ``spline_order`` says, so it is a B-spline layer of order k only at k = 3.
    At k = 3 its weights are ``layer``'s folded ones (:func:`bspline_weights`) and it computes what ``layer``
    computes; at another k it is the nearest exact layer, k = 3 on the same grid size and range with flashkan's own
    initialization (``same_function`` False).
    """
    base_weight, spline_weight = _peer_source(layer, grid_range)
    flashkan = _import_peer("flashkan")
    peer = flashkan.KANLayer(layer.in_features, layer.out_features, grid_size=layer.grid_size,
                             spline_order=PEER_ORDER, grid_range=tuple(grid_range))
    peer.to(device=layer.coef.device, dtype=layer.coef.dtype)
    same_function = layer.spline_order == PEER_ORDER
    if same_function:
        with torch.no_grad():
            peer.base_weight.copy_(base_weight)
            peer.spline_weight.copy_(spline_weight)
    built_as = _peer_built_as("flashkan", layer, grid_range, "truncated-power basis under torch.compile, einsum")
    return PeerLayer(peer, built_as, same_function)


def inkan_layer(layer: BSplineKAN, grid_range=GRID_RANGE) -> PeerLayer:
    """inkan's ``KANLayer`` (inkan 0.5.2) beside ``layer``, with inkan's defaults (basis_mode "local",
    compile_basis True, contraction "auto").

    inkan computes ``y = [B(x) | silu(x)] @ weight.T`` with the packed weight [O, I (G+3) + I] = [spline weights
    [O, I, G+3] flattened | base weights [O, I]], no bias. B(x) [B, I, G+3] is the cubic B-spline basis on the same
    extended uniform grid as kanlib's (basis j is N(t - j), t = (x - a) / h + 3), N evaluated piecewise
    (symmetric about u = 2); "local" evaluates the 4 nonzero bases by span lookup and scatters them into the dense
    [B, I, G+3] tensor, compiled with torch.compile; "auto" contracts densely with F.linear unless O <= 16 and
    G + 3 >= 32. inkan accepts only k = 3. At k = 3 its weights are ``layer``'s folded ones and it computes what
    ``layer`` computes; at another k it is the nearest exact layer, k = 3 on the same grid size and range with
    inkan's own initialization (``same_function`` False).
    """
    base_weight, spline_weight = _peer_source(layer, grid_range)
    inkan = _import_peer("inkan")
    peer = inkan.KANLayer(layer.in_features, layer.out_features, grid_size=layer.grid_size, spline_order=PEER_ORDER,
                          grid_range=tuple(grid_range))
    peer.to(device=layer.coef.device, dtype=layer.coef.dtype)
    same_function = layer.spline_order == PEER_ORDER
    if same_function:
        with torch.no_grad():
            peer.weight.copy_(torch.cat([spline_weight.flatten(1), base_weight], dim=1))
    contraction = "direct gather" if "contraction='direct'" in peer.extra_repr() else "dense F.linear"
    built_as = _peer_built_as("inkan", layer, grid_range,
                              f"piecewise basis, {peer.basis_mode}, under torch.compile, {contraction}")
    return PeerLayer(peer, built_as, same_function)


def measure(candidates: Sequence[Candidate], grad_out: torch.Tensor, device: torch.device, repeat: int,
             warmup: int) -> dict[str, dict[str, float | int]]:
    """Forward and forward+backward timings of candidates, measured in alternation so that they share the
    machine's state, and the peak memory of each training step; keyed by candidate name."""

    def training_step(candidate):
        return lambda: torch.autograd.grad(candidate.forward(), candidate.leaves, grad_out)

    forward = time_interleaved({c.name: c.forward for c in candidates}, device=device, warmup=warmup,
                               repeat=repeat)
    forward_backward = time_interleaved({c.name: training_step(c) for c in candidates}, device=device,
                                        warmup=warmup, repeat=repeat)
    figures = {}
    for candidate in candidates:
        state_bytes = candidate.state_bytes + nbytes([grad_out])
        figures[candidate.name] = {
            **forward[candidate.name].as_dict("fwd_"),
            **forward_backward[candidate.name].as_dict("fwdbwd_"),
            "state_bytes": state_bytes,
            "peak_bytes": peak_memory_bytes(training_step(candidate), device=device) + state_bytes,
        }
    return figures
