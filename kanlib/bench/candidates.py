"""What the layer, kernel and families benchmarks share: the candidates' shape, their inputs, the competitors
built from a kanlib layer (an unfused layer in efficient-kan's layout, pykan's layer, the B-spline layers of the
pip-installable packages flashkan and inkan, fast-kan's FastKANLayer formula beside an RBFKAN) and the measurement
of a set of candidates in one run."""
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
from ..layers import BSplineKAN, RBFKAN
from ..ops.spline_linear.reference import unfused_kan
from .timing import peak_memory_bytes, time_interleaved

__all__ = ["GRID_RANGE", "OUTSIDE_FRACTION", "INPUT_RANGE", "DTYPES", "PEER_ORDER", "PEER_PACKAGES", "Candidate",
           "PeerLayer", "UnfusedKAN", "FastKANFormula", "bspline_weights", "check_sizes", "cuda_graphed",
           "dense_candidate", "failure_reason", "flashkan_layer", "inkan_layer", "measure", "module_candidate",
           "nbytes", "pykan_layer", "training_step", "training_step_failure", "uniform_inputs"]

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
GRID_RANGE = (-1.0, 1.0)
OUTSIDE_FRACTION = 0.1  # inputs reach this fraction of the grid range's width beyond each end
# the benchmarks' inputs: the grid range widened by OUTSIDE_FRACTION of its width on each side
INPUT_RANGE = (GRID_RANGE[0] - OUTSIDE_FRACTION * (GRID_RANGE[1] - GRID_RANGE[0]),
               GRID_RANGE[1] + OUTSIDE_FRACTION * (GRID_RANGE[1] - GRID_RANGE[0]))
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
    trainable params). step, when given, is the training step in place of the gradients of forward() (a CUDA
    graph's replay, :func:`cuda_graphed`), and step_peak_bytes its peak memory, measured when it was built."""

    name: str
    forward: Callable[[], object]
    leaves: tuple[torch.Tensor, ...]
    state_bytes: int
    step: Callable[[], object] | None = None
    step_peak_bytes: int | None = None


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


def dense_candidate(name: str, batch: int, k: int, width: int, low: float, high: float, generator: torch.Generator,
                    device, dtype) -> Candidate:
    """The performance model's floor ``X @ W``, X [batch, k] uniform on [low, high) and W [k, width] normal with
    std k^-1/2, both drawn from ``generator`` (in that order) and requiring grad."""
    x = uniform_inputs((batch, k), low, high, generator, device, dtype).requires_grad_()
    w = (torch.randn(k, width, generator=generator, device=device, dtype=torch.float32) * k ** -0.5).to(dtype)
    w.requires_grad_()
    return Candidate(name, lambda: x @ w, (x, w), nbytes([x, w]))


def training_step(candidate: Candidate, grad_out: torch.Tensor) -> Callable[[], tuple[torch.Tensor, ...]]:
    """A function running the candidate's training step: forward, then the gradients of its leaves against
    grad_out [B, O] (returned, never accumulated); the candidate's own ``step`` where it has one."""
    if candidate.step is not None:
        return candidate.step
    return lambda: torch.autograd.grad(candidate.forward(), candidate.leaves, grad_out)


def cuda_graphed(name: str, candidate: Candidate, grad_out: torch.Tensor, warmup: int = 3) -> Candidate:
    """``candidate`` with its forward and its training step (against grad_out [B, O]) each recorded once in a CUDA
    graph and replayed: the same kernels in the same order, launched by one call from the host. The graphs keep
    reading the tensors they recorded (the candidate's inputs, parameters and grad_out) and writing the outputs
    they recorded, which the replays return: forward's [B, O], the step's gradients (one per leaf). The candidate
    runs ``warmup`` times on a side stream first, so that kernels compile and caches fill outside the recording, as
    CUDA graphs require (PyTorch's CUDA semantics notes, "CUDA Graphs"). step_peak_bytes is the peak of what the
    step allocated while it was recorded: the graph's private memory, which it holds while it lives."""
    device = grad_out.device
    if device.type != "cuda":
        raise ValueError(f"{name}: CUDA graphs need a CUDA device, got grad_out on {device}")
    eager_step = training_step(candidate, grad_out)
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(warmup):  # the step's forward warms what the forward graph records too
            eager_step()
    torch.cuda.current_stream(device).wait_stream(side)
    forward_graph, step_graph, recorded = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph(), {}
    with torch.cuda.graph(forward_graph):
        recorded["forward"] = candidate.forward()

    def record_step():
        with torch.cuda.graph(step_graph):
            recorded["step"] = eager_step()

    step_peak_bytes = peak_memory_bytes(record_step, device=device)

    def replay(graph: torch.cuda.CUDAGraph, outputs: str):
        graph.replay()
        return recorded[outputs]

    return Candidate(name, functools.partial(replay, forward_graph, "forward"), candidate.leaves,
                     candidate.state_bytes, step=functools.partial(replay, step_graph, "step"),
                     step_peak_bytes=step_peak_bytes)


def training_step_failure(candidate: Candidate, grad_out: torch.Tensor) -> str | None:
    """Why the candidate's training step cannot run here (what it raised, first line; e.g. torch.compile finding no
    compiler), or None."""
    try:
        training_step(candidate, grad_out)()
    except Exception as error:  # a third-party package or a kernel: whatever it raises is reported in the row
        return failure_reason(error)
    return None


def failure_reason(error: Exception) -> str:
    """A skipped row's reason: 'failed: <type>: <first line of the message>'."""
    first_line = (str(error).strip().splitlines() or [""])[0]
    return f"failed: {type(error).__name__}: {first_line}"


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
    forward = time_interleaved({c.name: c.forward for c in candidates}, device=device, warmup=warmup,
                               repeat=repeat)
    forward_backward = time_interleaved({c.name: training_step(c, grad_out) for c in candidates}, device=device,
                                        warmup=warmup, repeat=repeat)
    figures = {}
    for candidate in candidates:
        state_bytes = candidate.state_bytes + nbytes([grad_out])
        figures[candidate.name] = {
            **forward[candidate.name].as_dict("fwd_"),
            **forward_backward[candidate.name].as_dict("fwdbwd_"),
            "state_bytes": state_bytes,
            "peak_bytes": state_bytes + (candidate.step_peak_bytes if candidate.step_peak_bytes is not None else
                                         peak_memory_bytes(training_step(candidate, grad_out), device=device)),
        }
    return figures


class _GaussianGrid(nn.Module):
    """fast-kan's ``RadialBasisFunction`` state: ``grid`` [S] (a parameter that takes no gradient, as there) and
    the float ``denominator``."""

    def __init__(self, grid: torch.Tensor, denominator: float):
        super().__init__()
        self.grid = nn.Parameter(grid, requires_grad=False)
        self.denominator = denominator


class FastKANFormula(nn.Module):
    """fast-kan's ``FastKANLayer`` forward rebuilt in plain PyTorch from its published definition (Li 2024,
    "Kolmogorov-Arnold Networks are Radial Basis Function Networks"; github.com/ZiyaoLi/fast-kan):

        y = spline_linear(exp(-((LayerNorm(x)[..., None] - grid) / denominator)^2).flatten(-2))
            [+ base_linear(silu(x))]

    x [..., I] -> [..., O]. Its parameters have fast-kan's names and shapes (a state dict loads into either):
    ``layernorm.weight/bias`` [I], ``rbf.grid`` [S] (no gradient), ``spline_linear.weight`` [O, I*S] (no bias),
    and with the base update ``base_linear.weight`` [O, I], ``base_linear.bias`` [O]. The expansion is flattened
    input-major (column i*S + s), as fast-kan's ``view``. Initialized as fast-kan: grid ``linspace(grid_min,
    grid_max, num_grids)``, denominator its spacing, spline weights truncated normal with std
    ``spline_weight_init_scale``.
    """

    def __init__(self, in_features: int, out_features: int, grid_min: float = -2.0, grid_max: float = 2.0,
                 num_grids: int = 8, use_base_update: bool = True, spline_weight_init_scale: float = 0.1,
                 device=None, dtype=None):
        super().__init__()
        check_int("in_features", in_features, 1)
        check_int("out_features", out_features, 1)
        check_int("num_grids", num_grids, 2)
        if not grid_min < grid_max:
            raise ValueError(f"expected grid_min < grid_max, got grid_min={grid_min!r}, grid_max={grid_max!r}")
        factory = {"device": device, "dtype": dtype or torch.get_default_dtype()}
        self.layernorm = nn.LayerNorm(in_features, **factory)
        grid = torch.linspace(grid_min, grid_max, num_grids, **factory)
        self.rbf = _GaussianGrid(grid, (grid_max - grid_min) / (num_grids - 1))
        self.spline_linear = nn.Linear(in_features * num_grids, out_features, bias=False, **factory)
        nn.init.trunc_normal_(self.spline_linear.weight, std=spline_weight_init_scale)
        self.base_linear = nn.Linear(in_features, out_features, **factory) if use_base_update else None

    @classmethod
    def from_rbfkan(cls, layer: RBFKAN) -> FastKANFormula:
        """The formula holding ``layer``'s function: its layer norm, grid and width, ``weight.T`` as spline_linear's
        weight, ``base_weight.T`` and ``bias`` as base_linear's. fast-kan's layer always normalizes and has a bias
        only in its base update, so ``layer`` needs ``layernorm=True`` and either a silu base branch with a bias
        (RBFKAN's default) or neither."""
        if not isinstance(layer, RBFKAN):
            raise TypeError(f"expected a kanlib RBFKAN, got {type(layer).__name__}")
        with_base = layer.base_activation == "silu" and layer.bias is not None
        without_base = layer.base_activation is None and layer.bias is None
        if layer.layernorm is None or not (with_base or without_base):
            raise ValueError(f"fast-kan's formula holds an RBFKAN with layernorm=True and either "
                             f"base_activation='silu' with bias=True or base_activation=None with bias=False, got "
                             f"layernorm={layer.layernorm is not None}, base_activation={layer.base_activation!r}, "
                             f"bias={layer.bias is not None}")
        grid = layer.grid
        new = cls(layer.in_features, layer.out_features, grid_min=float(grid[0]), grid_max=float(grid[-1]),
                  num_grids=layer.n_basis, use_base_update=with_base, device=layer.weight.device,
                  dtype=layer.weight.dtype)
        new.rbf.denominator = layer.width
        with torch.no_grad():
            new.rbf.grid.copy_(grid)
            new.layernorm.load_state_dict(layer.layernorm.state_dict())
            new.spline_linear.weight.copy_(layer.weight.t())
            if with_base:
                new.base_linear.weight.copy_(layer.base_weight.t())
                new.base_linear.bias.copy_(layer.bias)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = self.layernorm(x)
        basis = torch.exp(-((normed.unsqueeze(-1) - self.rbf.grid) / self.rbf.denominator) ** 2)  # [..., I, S]
        out = self.spline_linear(basis.flatten(-2))
        if self.base_linear is not None:
            out = out + self.base_linear(nn.functional.silu(x))
        return out
