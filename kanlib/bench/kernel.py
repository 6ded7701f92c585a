"""Kernel benchmark: the fused Triton product against kanlib's torch path, unfused layers, pykan, two MLPs
and the dense-product floor, over batch sizes, widths, grid sizes and dtypes, all measured in one run.

For each dtype, batch B, width I = O and grid size G (spline order k, uniform grid), the candidates are:

- ``dense``: the floor, ``X @ W`` with X [B, K], W [K, O], K = I*(G+k+1), both requiring grad.
- ``triton_op``: :func:`kanlib.ops.spline_linear.triton.spline_linear_triton` on x [B, I] and a weight
  leaf [K, O]: the fused op alone, as the dense product takes its X and W.
- ``triton_local_op``: the same op through the local-support kernels alone
  (:func:`kanlib.ops.spline_linear.triton_local.spline_linear_triton_local`), whatever the cost model would
  pick: its row gives ``implied_sparse_slowdown``, the figure the cost model needs (below).
- ``triton``: ``BSplineKAN(backend="triton")``: the op plus building its weight matrix from coef and scales.
- ``torch``: the same layer on kanlib's PyTorch-side path: ``backend="eager"`` on a GPU, ``"auto"`` (the numba
  kernels) on the CPU.
- ``unfused``: :class:`kanlib.bench.candidates.UnfusedKAN`, efficient-kan's way: the [B, I, G+k] basis is
  materialized by Cox-de Boor, then one matrix product; it holds the same function.
- ``matrixkan``: the same, with the basis from :func:`kanlib.basis.matrix_kan` (MatrixKAN: powers of the
  span coordinate times a precomputed matrix).
- ``pykan``: pykan's ``KANLayer``, only where B*I*O <= PYKAN_MAX_ELEMENTS (it builds [B, I, O] tensors);
  fewer repeats.
- ``mlp``: ``silu(Linear(I, O))``, an MLP layer of the same width.
- ``mlp_params``: the MLP I -> h -> O whose parameter count is closest to the KAN layer's.

In bfloat16 and float16, ``dense`` and ``triton_op`` take tensors of that dtype; the layers and MLPs keep
float32 parameters and run under ``torch.autocast`` to it, as mixed-precision training does (their rows say
``autocast``), so that every layer keeps exact float32 knots and its uniform-grid path.

The Triton candidates need CUDA. On the CPU they run under the Triton interpreter when it is on (only to
check the benchmark; the rows say ``interpreted``) and are otherwise reported with ``skipped`` and no
figures; so is a candidate that runs out of GPU memory.

Figures of each row, besides those of the layer benchmark (``fwd_*_ms``, ``fwdbwd_*_ms``, ``state_bytes``,
``peak_bytes``, see :mod:`kanlib.bench.layer`):

- ``flops``: the work of forward+backward: 3 * 2*B*K*O for the KAN candidates and the dense product (the
  useful work of the layer, as if the basis were dense), the products' own for the MLPs.
- ``tflops_per_s`` (fwd+bwd) and ``fwd_tflops_per_s`` (a third of flops over the forward time).
- ``ratio_to_dense``, ``fwd_ratio_to_dense``: time over the dense product's, same configuration and run;
  ``fraction_of_dense``: the dense product's fwd+bwd time over the candidate's (its fraction of the floor's speed).
- ``memory_ratio_to_mlp_params``: peak training memory over the same-parameter-count MLP's.
- ``implied_sparse_slowdown`` (``triton_local_op`` only): the slowdown
  (:data:`kanlib.ops.spline_linear.support.TRITON_SPARSE_SLOWDOWN` for float32 without TF32,
  ``TRITON_TENSOR_CORE_SPARSE_SLOWDOWN`` for half types) at which the cost model's choice between the two kernel
  families would flip on this configuration: the local kernels' fwd+bwd time over ``triton_op``'s, times S / (k + 2)
  (they touch k + 2 of each input's S = G + k + 1 slots). Above the constant the local kernels lost here.

:func:`target_report` checks the goals (H100, bf16, B=4096, I=O=1024, G=5) on the rows.
"""
from __future__ import annotations

import copy
import functools
import gc
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..basis import matrix_kan
from ..checks import check_int, resolve_device
from ..layers import BSplineKAN
from ..models import count_parameters, mlp_with_parameter_count
from .candidates import (DTYPES, GRID_RANGE, INPUT_RANGE, Candidate, UnfusedKAN, check_sizes, measure,
                         module_candidate, nbytes, pykan_layer, uniform_inputs)
from .targets import target_entry

__all__ = ["CANDIDATES", "TABLE_COLUMNS", "DEFAULTS", "TARGETS", "run_kernel_benchmark", "target_report",
           "matrix_kan_layer"]

CANDIDATES = ("dense", "triton_op", "triton_local_op", "triton", "torch", "unfused", "matrixkan", "pykan", "mlp",
              "mlp_params")
TRITON_CANDIDATES = ("triton_op", "triton_local_op", "triton")
HALF_DTYPES = (torch.bfloat16, torch.float16)
KAN_CANDIDATES = ("triton_op", "triton_local_op", "triton", "torch", "unfused", "matrixkan", "pykan")
DEFAULTS = {"batches": (1024, 4096, 16384), "widths": (256, 1024), "grids": (5, 10, 20),
            "dtypes": ("float32", "bfloat16")}
TABLE_COLUMNS = (
    "dtype", "batch", "width", "grid", "candidate", "fwd_median_ms", "fwdbwd_median_ms", "ratio_to_dense",
    "tflops_per_s", "peak_bytes", "memory_ratio_to_mlp_params", "implied_sparse_slowdown", "interpreted", "skipped",
)
PYKAN_MAX_ELEMENTS = 2**26  # B*I*O: pykan keeps several [B, I, O] tensors for backward
# (name, configuration, numerator candidate and figure, denominator candidate and figure, goal, direction)
TARGETS = (
    ("fwd+bwd time of triton / dense", "fwdbwd_median_ms", "triton", "dense", 1.3, "<="),
    ("fwd+bwd time of unfused / triton", "fwdbwd_median_ms", "unfused", "triton", 5.0, ">="),
    ("peak training memory of triton / mlp_params", "peak_bytes", "triton", "mlp_params", 1.2, "<="),
)
TARGET_CONFIGURATION = {"dtype": "bfloat16", "batch": 4096, "width": 1024, "grid": 5}


def matrix_kan_layer(x: torch.Tensor, grid: torch.Tensor, spline_order: int, base_weight: torch.Tensor,
                     spline_weight: torch.Tensor) -> torch.Tensor:
    """:func:`kanlib.ops.spline_linear.reference.unfused_kan` with the MatrixKAN basis: x [B, I] -> [B, O]."""
    basis = matrix_kan(x, grid, spline_order)
    spline = F.linear(basis.reshape(x.shape[0], -1), spline_weight.reshape(spline_weight.shape[0], -1))
    return F.linear(F.silu(x), base_weight) + spline


def _triton_unavailable(device: torch.device) -> str | None:
    """Why the Triton candidates cannot run on ``device``, or None when they can."""
    try:
        from ..ops.spline_linear import triton as spline_linear_triton
    except ImportError as error:
        return f"triton is not importable ({error})"
    if device.type != "cuda" and not spline_linear_triton.INTERPRET:
        return "needs a CUDA device (GPU figures missing; TRITON_INTERPRET=1 runs it on the CPU, for checks only)"
    return None


def _autocast(fn, device: torch.device, dtype: torch.dtype | None):
    """fn, called under torch.autocast to dtype (None: as it is)."""
    if dtype is None:
        return fn

    def autocast_fn():
        with torch.autocast(device.type, dtype=dtype):
            return fn()

    return autocast_fn


def _candidates(batch: int, width: int, grid_size: int, order: int, device: torch.device, dtype: torch.dtype,
                seed: int, with_triton: bool, with_pykan: bool) -> tuple[list[Candidate], dict[str, int]]:
    """The candidates of one configuration, inputs drawn from the same seed; and each one's fwd+bwd flops."""
    generator = torch.Generator(device=device).manual_seed(seed)
    low, high = INPUT_RANGE
    amp = dtype if dtype in HALF_DTYPES else None
    module_dtype = torch.float32 if amp else dtype
    x_module = uniform_inputs((batch, width), low, high, generator, device, module_dtype).requires_grad_()
    x = x_module.detach().to(dtype).requires_grad_()
    dense_k = width * (grid_size + order + 1)
    dense_x = uniform_inputs((batch, dense_k), low, high, generator, device, dtype).requires_grad_()
    dense_w = (torch.randn(dense_k, width, generator=generator, device=device, dtype=torch.float32)
               * dense_k ** -0.5).to(dtype).requires_grad_()

    torch.manual_seed(seed)
    factory = {"device": device, "dtype": module_dtype}
    layer = BSplineKAN(width, width, grid_size=grid_size, spline_order=order, grid_range=GRID_RANGE,
                       backend="auto" if device.type == "cpu" else "eager", **factory)
    mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU()).to(**factory)
    mlp_params = mlp_with_parameter_count(width, width, count_parameters(layer), depth=1).to(**factory)
    hidden = mlp_params.widths[1]
    unfused = UnfusedKAN.from_bspline(layer)
    kan_flops = 3 * 2 * batch * dense_k * width
    flops = {name: kan_flops for name in ("dense", *KAN_CANDIDATES)}
    flops["mlp"] = 3 * 2 * batch * width * width
    flops["mlp_params"] = 3 * 2 * batch * hidden * 2 * width

    def module(name, net, forward=None):
        call = forward or functools.partial(net, x_module)
        return module_candidate(name, net, x_module, _autocast(call, device, amp))

    def matrixkan():
        return matrix_kan_layer(x_module, unfused.grid, order, unfused.base_weight, unfused.spline_weight)

    candidates = [Candidate("dense", lambda: dense_x @ dense_w, (dense_x, dense_w), nbytes([dense_x, dense_w]))]
    if with_triton:
        from ..ops.spline_linear.triton import spline_linear_triton
        from ..ops.spline_linear.triton_local import spline_linear_triton_local

        weight = layer.weight_matrix().detach().to(dtype).requires_grad_()
        grid = layer.grid.float()
        for name, op in (("triton_op", spline_linear_triton), ("triton_local_op", spline_linear_triton_local)):
            candidates.append(Candidate(name, functools.partial(op, x, weight, grid, order, True, "silu"), (x, weight),
                                        nbytes([x, weight, grid])))
        triton_layer = copy.deepcopy(layer)
        triton_layer.backend = "triton"
        candidates.append(module("triton", triton_layer))
    candidates += [module("torch", layer), module("unfused", unfused), module("matrixkan", unfused, matrixkan)]
    if with_pykan:
        pykan = pykan_layer(width, grid_size, order, device, module_dtype)
        candidates.append(module("pykan", pykan, lambda: pykan(x_module)[0]))
    candidates += [module("mlp", mlp), module("mlp_params", mlp_params)]
    return candidates, flops


def _runs(candidate: Candidate, grad_out: torch.Tensor) -> str | None:
    """None when one training step of the candidate runs; else why not (out of GPU memory)."""
    try:
        torch.autograd.grad(candidate.forward(), candidate.leaves, grad_out)
    except torch.cuda.OutOfMemoryError:
        return "out of GPU memory"
    finally:
        gc.collect()
        if grad_out.is_cuda:
            torch.cuda.empty_cache()
    return None


def _configuration_rows(batch, width, grid_size, order, device, dtype, repeat, warmup, seed, skip_pykan,
                        triton_reason):
    base = {"dtype": str(dtype).removeprefix("torch."), "batch": batch, "width": width, "grid": grid_size,
            "order": order, "dense_k": width * (grid_size + order + 1)}
    with_pykan = not skip_pykan and batch * width * width <= PYKAN_MAX_ELEMENTS
    candidates, flops = _candidates(batch, width, grid_size, order, device, dtype, seed, triton_reason is None,
                                    with_pykan)
    grad_out = torch.randn(batch, width, generator=torch.Generator(device=device).manual_seed(seed + 1),
                           device=device, dtype=torch.float32).to(dtype)
    skipped = {name: triton_reason for name in TRITON_CANDIDATES if triton_reason is not None}
    if skip_pykan:
        skipped["pykan"] = "left out (skip_pykan)"
    elif not with_pykan:
        skipped["pykan"] = f"left out: B*I*O > {PYKAN_MAX_ELEMENTS} (pykan builds [B, I, O] tensors)"
    for candidate in candidates:
        reason = _runs(candidate, grad_out)
        if reason is not None:
            skipped[candidate.name] = reason
    runnable = [c for c in candidates if c.name not in skipped]
    fast = [c for c in runnable if c.name != "pykan"]
    measured = measure(fast, grad_out, device, repeat, warmup) if fast else {}
    slow = [c for c in runnable if c.name == "pykan"]
    if slow:
        measured.update(measure(slow, grad_out, device, min(repeat, max(3, repeat // 10)), min(warmup, 1)))
    interpreted = device.type != "cuda"
    rows = []
    for name in CANDIDATES:
        if name in skipped:
            rows.append({**base, "candidate": name, "skipped": skipped[name]})
            continue
        if name not in measured:
            continue
        figures = measured[name]
        row = {**base, "candidate": name, **figures, "flops": flops[name],
               "tflops_per_s": flops[name] / (figures["fwdbwd_median_ms"] * 1e9),
               "fwd_tflops_per_s": flops[name] / 3 / (figures["fwd_median_ms"] * 1e9)}
        row["autocast"] = dtype in HALF_DTYPES and name not in ("dense", "triton_op")
        if name in TRITON_CANDIDATES:
            row["interpreted"] = interpreted
        rows.append(row)
    measured_rows = {row["candidate"]: row for row in rows if "fwdbwd_median_ms" in row}
    dense, mlp_params = measured_rows.get("dense"), measured_rows.get("mlp_params")
    for row in measured_rows.values():
        if dense is not None:
            row["ratio_to_dense"] = row["fwdbwd_median_ms"] / dense["fwdbwd_median_ms"]
            row["fwd_ratio_to_dense"] = row["fwd_median_ms"] / dense["fwd_median_ms"]
            row["fraction_of_dense"] = dense["fwdbwd_median_ms"] / row["fwdbwd_median_ms"]
        if mlp_params is not None:
            row["memory_ratio_to_mlp_params"] = row["peak_bytes"] / mlp_params["peak_bytes"]
    dense_kernels, local_kernels = measured_rows.get("triton_op"), measured_rows.get("triton_local_op")
    if dense_kernels is not None and local_kernels is not None:
        time_ratio = local_kernels["fwdbwd_median_ms"] / dense_kernels["fwdbwd_median_ms"]
        local_kernels["implied_sparse_slowdown"] = time_ratio * (grid_size + order + 1) / (order + 2)
    del candidates
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def run_kernel_benchmark(device: str | torch.device, batches: Sequence[int] = DEFAULTS["batches"],
                         widths: Sequence[int] = DEFAULTS["widths"], grids: Sequence[int] = DEFAULTS["grids"],
                         dtypes: Sequence[torch.dtype] = (torch.float32, torch.bfloat16), order: int = 3,
                         repeat: int = 20, warmup: int = 3, skip_pykan: bool = False, seed: int = 0) -> list[dict]:
    """Time every candidate (CANDIDATES) at each dtype, batch, width and grid size; one row per candidate.

    device: 'cpu', 'cuda' or 'auto'. Row keys: see the module docstring.
    """
    device = resolve_device(device)
    for name, values in (("batches", batches), ("widths", widths), ("grids", grids)):
        check_sizes(name, values)
    check_int("order", order, 1)
    check_int("repeat", repeat, 1)
    check_int("warmup", warmup, 0)
    check_int("seed", seed, 0)
    if isinstance(dtypes, (str, bytes)) or not dtypes or any(d not in DTYPES.values() for d in dtypes):
        raise ValueError(f"dtypes: expected a non-empty list of {list(DTYPES.values())}, got {dtypes!r}")
    triton_reason = _triton_unavailable(device)
    if triton_reason is None and not 1 <= order <= 5:
        triton_reason = f"the triton backend supports spline_order 1 to 5, got {order}"
    rows = []
    for dtype in dtypes:
        for batch in batches:
            for width in widths:
                for grid_size in grids:
                    rows += _configuration_rows(batch, width, grid_size, order, device, dtype, repeat, warmup,
                                                seed, skip_pykan, triton_reason)
    return rows


def target_report(rows: Sequence[dict]) -> list[dict]:
    """The targets (TARGETS) at TARGET_CONFIGURATION: one :func:`~kanlib.bench.targets.target_entry` per target.
    Meaningful only for rows measured on an H100 or H200."""
    chosen = {row["candidate"]: row for row in rows
              if all(row.get(key) == value for key, value in TARGET_CONFIGURATION.items())}
    report = []
    for name, figure, numerator, denominator, goal, direction in TARGETS:
        top, bottom = chosen.get(numerator, {}).get(figure), chosen.get(denominator, {}).get(figure)
        interpreted = chosen.get("triton", {}).get("interpreted", False)
        value = top / bottom if top is not None and bottom and not interpreted else None
        report.append(target_entry(name, value, direction, goal))
    return report
