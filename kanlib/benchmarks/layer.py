"""Layer benchmark: one B-spline KAN layer against the performance model's floor, an MLP layer, an
unfused layer and pykan, all measured in the same run.

For each grid size G, with batch B, I = O = width and spline order k, the candidates are:

- ``dense``: the floor, ``X @ W`` with X [B, K], W [K, O], K = I*(G+k+1); X and W require grad, as
  the expanded input and the weight of an unfused layer would.
- ``mlp``: ``silu(nn.Linear(I, O)(x))``, an MLP layer of the same width.
- ``bsplinekan``: ``kanlib.BSplineKAN(I, O, grid_size=G, spline_order=k)`` with ``backend="auto"``: the
  numba CPU kernels on the CPU, the Triton kernels on CUDA.
- ``unfused``: :class:`UnfusedKAN` (efficient-kan's layout) holding the same function as ``bsplinekan``;
  it keeps the [B, I, G+k] basis for backward.
- ``pykan``: pykan's ``KANLayer(I, O, num=G, k=k)`` (its first output), timed with fewer repeats.

Inputs x [B, I] are uniform on the grid range widened by 10% of its width on each side, drawn from a
seeded torch.Generator; parameters are initialized after ``torch.manual_seed(seed)``.

Figures of each row (one row per grid size and candidate); times in ms:

- ``fwd_*_ms``: the forward pass as in training (autograd recording), median, quartiles, min, max.
- ``fwdbwd_*_ms``: forward, then ``torch.autograd.grad`` of the output against the input and every
  trainable parameter with a fixed random output gradient [B, O]. Gradients are returned, never
  accumulated into ``.grad``, so every run of every candidate starts from the same state.
- ``ratio_to_dense``: forward+backward median over dense's, same grid size, same run.
- ``peak_bytes``: peak training memory of one forward+backward step: the peak of what the step
  allocates (``kanlib.bench.peak_memory_bytes``) plus ``state_bytes``, the bytes of the tensors the step
  reads: its input, the output gradient, and the parameters and buffers. The dense product is thus
  charged for its X [B, K] and W exactly as a layer is charged for its x [B, I] and parameters.
- ``memory_ratio_to_dense``: peak_bytes over dense's.
- ``flops``, ``gflops_per_s`` (dense and bsplinekan; None for the others): forward+backward counted as
  3x the dense product's forward 2*B*K*O.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..basis import make_grid
from ..bench import peak_memory_bytes, resolve_device, time_interleaved
from ..layers import BSplineKAN

__all__ = [
    "CANDIDATES",
    "DTYPES",
    "TABLE_COLUMNS",
    "UnfusedKAN",
    "bspline_weights",
    "run_layer_benchmark",
    "unfused_kan",
]

CANDIDATES = ("dense", "mlp", "bsplinekan", "unfused", "pykan")
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
TABLE_COLUMNS = (
    "grid", "candidate", "fwd_median_ms", "fwdbwd_median_ms", "fwdbwd_q25_ms", "fwdbwd_q75_ms",
    "ratio_to_dense", "peak_bytes", "memory_ratio_to_dense", "gflops_per_s",
)
GRID_RANGE = (-1.0, 1.0)
OUTSIDE_FRACTION = 0.1  # inputs reach this fraction of the grid range's width beyond each end


def unfused_kan(x: torch.Tensor, grid: torch.Tensor, spline_order: int, base_weight: torch.Tensor,
                spline_weight: torch.Tensor) -> torch.Tensor:
    """efficient-kan's forward: x [B, I], grid [I, G+2k+1], base_weight [O, I], spline_weight [O, I, G+k] -> [B, O].

    The basis [B, I, G+k] comes from the Cox-de Boor recursion and autograd keeps it for backward.
    """
    u = x.unsqueeze(-1)
    basis = ((u >= grid[:, :-1]) & (u < grid[:, 1:])).to(x.dtype)
    for d in range(1, spline_order + 1):
        rising = (u - grid[:, : -(d + 1)]) / (grid[:, d:-1] - grid[:, : -(d + 1)])
        falling = (grid[:, d + 1:] - u) / (grid[:, d + 1:] - grid[:, 1:-d])
        basis = rising * basis[..., :-1] + falling * basis[..., 1:]
    spline = F.linear(basis.reshape(x.shape[0], -1), spline_weight.reshape(spline_weight.shape[0], -1))
    return F.linear(F.silu(x), base_weight) + spline


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


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")


def check_sizes(name: str, values: Sequence[int], what: str = "sizes") -> None:
    """`values` is a non-empty list of distinct ints >= 1; ValueError naming `name` otherwise."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise ValueError(f"{name}: expected a non-empty list of {what}, got {values!r}")
    for index, value in enumerate(values):
        _check_int(f"{name}[{index}]", value, 1)
    if len(set(values)) != len(values):
        raise ValueError(f"{name}: expected distinct {what}, got {list(values)}")


@dataclass(frozen=True)
class _Candidate:
    """forward() gives the output [B, O]; leaves are what backward differentiates (input, trainable params)."""

    name: str
    forward: Callable[[], torch.Tensor]
    leaves: tuple[torch.Tensor, ...]
    state_bytes: int


def _nbytes(tensors) -> int:
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


def _module_candidate(name: str, module: nn.Module, x: torch.Tensor,
                      forward: Callable[[], torch.Tensor] | None = None) -> _Candidate:
    """A candidate calling ``module(x)`` (or ``forward``), charged for x and the module's parameters and buffers."""
    trainable = tuple(p for p in module.parameters() if p.requires_grad)
    state_bytes = _nbytes([x, *module.parameters(), *module.buffers()])
    return _Candidate(name, forward or functools.partial(module, x), (x, *trainable), state_bytes)


def _uniform(shape, low: float, high: float, generator: torch.Generator, device, dtype) -> torch.Tensor:
    values = torch.rand(shape, generator=generator, device=device, dtype=torch.float32)
    return (low + (high - low) * values).to(dtype)


def _candidates(batch: int, width: int, grid_size: int, order: int, device: torch.device, dtype: torch.dtype,
                seed: int, skip_pykan: bool) -> list[_Candidate]:
    """The candidates for one grid size, each with its own inputs drawn from the same seed."""
    generator = torch.Generator(device=device).manual_seed(seed)
    span = GRID_RANGE[1] - GRID_RANGE[0]
    low, high = GRID_RANGE[0] - OUTSIDE_FRACTION * span, GRID_RANGE[1] + OUTSIDE_FRACTION * span
    x = _uniform((batch, width), low, high, generator, device, dtype).requires_grad_()
    expanded_width = width * (grid_size + order + 1)
    dense_x = _uniform((batch, expanded_width), low, high, generator, device, dtype).requires_grad_()
    dense_w = (torch.randn(expanded_width, width, generator=generator, device=device, dtype=torch.float32)
               * expanded_width ** -0.5).to(dtype).requires_grad_()

    torch.manual_seed(seed)
    mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU()).to(device=device, dtype=dtype)
    bspline = BSplineKAN(width, width, grid_size=grid_size, spline_order=order, grid_range=GRID_RANGE,
                         device=device, dtype=dtype)
    candidates = [
        _Candidate("dense", lambda: dense_x @ dense_w, (dense_x, dense_w), _nbytes([dense_x, dense_w])),
        _module_candidate("mlp", mlp, x),
        _module_candidate("bsplinekan", bspline, x),
        _module_candidate("unfused", UnfusedKAN.from_bspline(bspline), x),
    ]
    if not skip_pykan:
        pykan = pykan_layer(width, grid_size, order, device, dtype)
        candidates.append(_module_candidate("pykan", pykan, x, forward=lambda: pykan(x)[0]))
    return candidates


def pykan_layer(width: int, grid_size: int, order: int, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """pykan's KANLayer (width -> width) on the benchmarks' grid range; a clear error without pykan."""
    try:
        from kan import KANLayer
    except ImportError as error:
        raise ImportError("the pykan candidate needs pykan (pip install pykan==0.2.8); "
                          "pass skip_pykan=True (--skip-pykan) to leave it out") from error
    layer = KANLayer(width, width, num=grid_size, k=order, grid_range=list(GRID_RANGE), device=str(device))
    return layer.to(dtype)


def _measure(candidates: Sequence[_Candidate], grad_out: torch.Tensor, device: torch.device, repeat: int,
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
        state_bytes = candidate.state_bytes + _nbytes([grad_out])
        figures[candidate.name] = {
            **forward[candidate.name].as_dict("fwd_"),
            **forward_backward[candidate.name].as_dict("fwdbwd_"),
            "state_bytes": state_bytes,
            "peak_bytes": peak_memory_bytes(training_step(candidate), device=device) + state_bytes,
        }
    return figures


def run_layer_benchmark(device: str | torch.device, batch: int, width: int, grids: Sequence[int], order: int = 3,
                        dtype: torch.dtype = torch.float32, repeat: int = 20, warmup: int = 3,
                        skip_pykan: bool = False, seed: int = 0) -> list[dict]:
    """Time every candidate (CANDIDATES) at each grid size in ``grids``; one row per grid and candidate.

    device: 'cpu', 'cuda' or 'auto'. batch B, width I = O, order k. pykan runs
    ``min(repeat, max(3, repeat // 10))`` times after at most one warm-up. Row keys: see the module docstring.
    """
    device = resolve_device(device)
    _check_int("batch", batch, 1)
    _check_int("width", width, 1)
    _check_int("order", order, 1)
    _check_int("repeat", repeat, 1)
    _check_int("warmup", warmup, 0)
    _check_int("seed", seed, 0)
    check_sizes("grids", grids, "grid sizes")
    if dtype not in DTYPES.values():
        raise ValueError(f"dtype: expected one of {list(DTYPES.values())}, got {dtype!r}")

    dtype_name = str(dtype).removeprefix("torch.")
    rows = []
    for grid_size in grids:
        grad_out = torch.randn(batch, width, generator=torch.Generator(device=device).manual_seed(seed + 1),
                               device=device, dtype=torch.float32).to(dtype)
        expanded_width = width * (grid_size + order + 1)
        forward_backward_flops = 3 * 2 * batch * expanded_width * width
        grid_rows = []
        candidates = _candidates(batch, width, grid_size, order, device, dtype, seed, skip_pykan)
        fast = [c for c in candidates if c.name != "pykan"]
        slow = [c for c in candidates if c.name == "pykan"]
        measured = _measure(fast, grad_out, device, repeat, warmup)
        if slow:
            measured.update(_measure(slow, grad_out, device, min(repeat, max(3, repeat // 10)), min(warmup, 1)))
        for candidate in candidates:
            figures = measured[candidate.name]
            counted = candidate.name in ("dense", "bsplinekan")
            grid_rows.append({
                "grid": grid_size, "candidate": candidate.name, "batch": batch, "width": width, "order": order,
                "dtype": dtype_name, "dense_k": expanded_width, **figures,
                "flops": forward_backward_flops if counted else None,
                "gflops_per_s": forward_backward_flops / (figures["fwdbwd_median_ms"] * 1e6) if counted else None,
            })
        dense = grid_rows[0]
        for row in grid_rows:
            row["ratio_to_dense"] = row["fwdbwd_median_ms"] / dense["fwdbwd_median_ms"]
            row["memory_ratio_to_dense"] = row["peak_bytes"] / dense["peak_bytes"]
        rows.extend(grid_rows)
    return rows
