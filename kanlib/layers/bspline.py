"""B-spline KAN layer with pykan's semantics, computed as one matrix product."""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..activations import ACTIVATIONS, BASE_ACTIVATIONS, activation_of_module, get_activation
from ..basis import check_grid, cox_de_boor, extend_grid, local_basis, make_grid
from ..checks import check_int, check_layer_input, check_real, is_real
from ..ops.spline_linear import (BACKENDS, CPU_KERNEL_DTYPES, TRITON_SPLINE_ORDERS, assembled_weight,
                                 backend_from_method, parameter_gradients, prefers_sparse, run_fused_layer,
                                 spline_linear, torch_backend, under_transform)
from ..ops.spline_linear.compiled import compiling_with_kernels, grid_is_uniform
from ..ops.spline_linear.reference import assemble_weight_matrix, layer_weight_matrix
from ..ops.spline_linear.support import TRITON_DTYPES, TRITON_WEIGHT_DTYPES
from ..prune.penalty import sparsity_penalty
from ..symbolic.branch import SymbolicBranch
from ..symbolic.fit import fit_affine
from ..symbolic.library import get_function

__all__ = ["BSplineKAN", "SplineGrid", "BACKENDS", "assemble_weight_matrix", "fit_spline_coefficients"]

# The old ``backend="torch"`` (deprecated): the PyTorch-side paths only, chosen as "auto" would among them.
_LEGACY_TORCH = "torch"


def check_backend(backend: str, method: str | None, spline_order: int) -> str:
    """The backend a layer runs on, from ``backend`` and the deprecated ``method`` (with a DeprecationWarning)."""
    if backend == _LEGACY_TORCH:
        warnings.warn("backend='torch' is deprecated and will be removed in the next release; use backend='auto' "
                      "(or 'eager', 'cpu', 'sparse')", DeprecationWarning, stacklevel=3)
    elif backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if method is not None:
        from_method = backend_from_method(method, stacklevel=4)
        torch_backend_asked_for_triton = backend == _LEGACY_TORCH and from_method == "triton"
        if backend not in ("auto", _LEGACY_TORCH, from_method) or torch_backend_asked_for_triton:
            raise ValueError(f"method={method!r} (deprecated) and backend={backend!r} disagree; "
                             f"give backend= alone, one of {BACKENDS}")
        if from_method != "auto":
            backend = from_method
    if backend == "triton" and spline_order not in TRITON_SPLINE_ORDERS:
        raise ValueError(f"the triton backend supports spline_order {TRITON_SPLINE_ORDERS[0]} to "
                         f"{TRITON_SPLINE_ORDERS[-1]}, got {spline_order}")
    return backend


def _check_range(grid_range):
    if isinstance(grid_range, str) or not isinstance(grid_range, Sequence) or len(grid_range) != 2 \
            or not all(is_real(v) for v in grid_range):
        raise ValueError(f"grid_range must be a pair of numbers (low, high), got {grid_range!r}")
    low, high = (float(v) for v in grid_range)
    if not (math.isfinite(low) and math.isfinite(high)) or not low < high:
        raise ValueError(f"grid_range must be finite with low < high, got {tuple(grid_range)}")
    return low, high


def solve_positive_definite(matrix: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """matrix [B, n, n] (symmetric positive definite) solved for rhs [B, n, m], by Cholesky; a matrix whose
    factorization fails (not numerically positive definite, or not finite) by LU on its own.

    Not torch.linalg.solve on the batch: with MKL its batched LU calls getrf from several threads at once, which
    after ``torch.set_num_threads`` gives wrong pivots and hangs for n above about 150 (pytorch/pytorch#141358,
    #142815), as a grid of 200 intervals has."""
    factor, info = torch.linalg.cholesky_ex(matrix)
    solution = torch.cholesky_solve(rhs, factor)
    for b in torch.nonzero(info).flatten().tolist():
        solution[b] = torch.linalg.solve(matrix[b], rhs[b])
    return solution


# fit_spline_coefficients solves a few inputs at a time, so that its float64 work arrays ([inputs, G+k, O] and the
# like) stay near this size whatever the layer's: all inputs at once, a wide layer at a large G took several times the
# memory of the coefficients it fits.
FIT_CHUNK_BYTES = 64 << 20


def fit_spline_coefficients(x: torch.Tensor, y: torch.Tensor, grid: torch.Tensor, spline_order: int,
                            ridge: float = 1e-10, chunk_bytes: int = FIT_CHUNK_BYTES) -> torch.Tensor:
    """Least-squares coefficients [I, O, G+k] so that splines on ``grid`` match y [N, I, O] at x [N, I], in float64,
    returned in y's dtype; the inputs in chunks whose float64 work arrays (basis, y, the normal equations' matrices
    and right-hand sides) take about chunk_bytes."""
    n_samples, n_in, n_out = y.shape
    n_basis = grid.shape[1] - spline_order - 1
    coef = torch.empty(n_in, n_out, n_basis, dtype=y.dtype, device=y.device)
    if y.device.type == "meta":  # shapes only (a model built on the meta device to be loaded later)
        return coef
    per_input = 8 * (n_basis * (n_basis + n_out + n_samples) + n_samples * n_out)  # gram, rhs, basis, y in float64
    step = max(1, chunk_bytes // per_input)
    eye = torch.eye(n_basis, dtype=torch.float64, device=y.device)
    for first in range(0, n_in, step):
        inputs = slice(first, min(n_in, first + step))
        basis = cox_de_boor(x[:, inputs].double(), grid[inputs].double(), spline_order).permute(1, 0, 2)  # [i, N, G+k]
        gram = basis.transpose(1, 2) @ basis
        scale = gram.diagonal(dim1=1, dim2=2).mean(-1).clamp(min=1e-300)[:, None, None]
        rhs = basis.transpose(1, 2) @ y[:, inputs].double().permute(1, 0, 2)  # [i, G+k, O]
        coef[inputs] = solve_positive_definite(gram + ridge * scale * eye, rhs).transpose(1, 2)
    return coef


class _WeightMatrix(torch.autograd.Function):
    """``assemble_weight_matrix(scale_base * mask, scale_sp * mask * coef)`` in one kernel pass each way: numba on the
    CPU, or with ``triton`` the kernels of :mod:`kanlib.ops.spline_linear.triton_weight` (CUDA tensors, or CPU ones
    under the Triton interpreter).

    scale_base, scale_sp, mask [I, O] (mask takes no gradient), coef [I, O, G+k] -> [I * (G+k+1), O].
    """

    @staticmethod
    def forward(ctx, scale_base, scale_sp, mask, coef, triton=False):
        ctx.save_for_backward(scale_sp, mask, coef)
        ctx.differentiable_inputs = (scale_base, scale_sp, mask, coef)
        ctx.triton = triton
        if triton:
            from ..ops.spline_linear.triton_weight import assemble_weight

            return assemble_weight(scale_base, scale_sp, mask, coef)
        return assembled_weight(scale_base, scale_sp, mask, coef, narrow_layout=False)

    @staticmethod
    def backward(ctx, grad):
        if torch.is_grad_enabled():
            # create_graph=True: differentiable gradients, through the plain formula.
            scale_base, scale_sp, mask, coef = ctx.differentiable_inputs
            with torch.enable_grad():
                out = layer_weight_matrix(scale_base, scale_sp, mask, coef)
                wanted = [(i, t) for i, t in enumerate((scale_base, scale_sp, None, coef))
                          if t is not None and ctx.needs_input_grad[i]]
                grads = torch.autograd.grad(out, [t for _, t in wanted], grad, create_graph=True, allow_unused=True)
            result = [None] * 5
            for (i, _), g in zip(wanted, grads):
                result[i] = g
            return tuple(result)
        if ctx.triton:
            from ..ops.spline_linear.triton_weight import weight_gradients

            needs = ctx.needs_input_grad
            grad_scale_base, grad_scale_sp, grad_coef = weight_gradients(*ctx.saved_tensors, grad.detach(),
                                                                         (needs[0], needs[1], needs[3]))
            return grad_scale_base, grad_scale_sp, None, grad_coef, None
        scale_sp, mask, coef = (t.detach().contiguous() for t in ctx.saved_tensors)
        grad_scale_base, grad_scale_sp, grad_coef = parameter_gradients(scale_sp, mask, coef,
                                                                        grad.detach().contiguous())
        return grad_scale_base, grad_scale_sp, None, grad_coef, None


class SplineGrid:
    """What a B-spline layer's knots ``grid`` [I, G+2k+1] and ``spline_order`` k tell: its grid size G, its
    G + k bases per edge, and whether the grid is uniform."""

    grid: torch.Tensor
    spline_order: int

    @property
    def grid_size(self) -> int:
        return self.grid.shape[1] - 2 * self.spline_order - 1

    @property
    def n_basis(self) -> int:
        """G + k: spline coefficients per edge."""
        return self.grid.shape[1] - self.spline_order - 1

    def is_uniform(self) -> bool:
        """Whether the grid is uniform (then the closed-form local basis is used); cached per grid version and
        storage."""
        return grid_is_uniform(self.grid)


class BSplineKAN(SplineGrid, nn.Module):
    """A KAN layer: ``y_o = sum_i scale_base[i,o] * b(x_i) + scale_sp[i,o] * sum_j coef[i,o,j] B_j(x_i)``.

    Drop-in for ``nn.Linear``: input ``[..., in_features]``, output ``[..., out_features]``.
    ``backend`` picks where the product runs (see :mod:`kanlib.ops.spline_linear`): ``"eager"`` (PyTorch
    operations, any device), ``"cpu"`` (fused numba kernels and BLAS), ``"sparse"`` (numba kernels that touch
    only the nonzero bases), ``"triton"`` (fused GPU kernels; on the CPU only under the Triton interpreter, for
    tests) or ``"auto"``: Triton for CUDA inputs it supports, on the CPU the numba kernels (sparse when the grid
    is large), eager elsewhere. All compute the same function; under autocast the Triton path runs in the
    autocast dtype. ``method`` is the deprecated name of ``backend`` ("dense" is now "cpu").
    The knots ``grid`` [I, G+2k+1] are pykan's extended grid; ``mask`` [I, O] switches edges off.
    ``symbolic`` is None or the :class:`~kanlib.symbolic.SymbolicBranch` of the edges fixed to symbolic functions
    (``fix_symbolic``), whose values are added to the output.
    """

    def __init__(self, in_features: int, out_features: int, grid_size: int = 5, spline_order: int = 3,
                 grid_range=(-1.0, 1.0), base_activation: str = "silu", noise_scale: float = 0.5,
                 scale_base_mu: float = 0.0, scale_base_sigma: float = 1.0, scale_sp: float = 1.0,
                 grid_eps: float = 0.02, bias: bool = False, method: str | None = None, backend: str = "auto",
                 device=None, dtype=None):
        super().__init__()
        check_int("in_features", in_features, 1)
        check_int("out_features", out_features, 1)
        check_int("grid_size", grid_size, 1)
        check_int("spline_order", spline_order, 0)
        low, high = _check_range(grid_range)
        get_activation(base_activation, BASE_ACTIVATIONS, "base_activation")
        backend = check_backend(backend, method, spline_order)
        if not is_real(grid_eps) or not 0.0 <= grid_eps <= 1.0:
            raise ValueError(f"grid_eps must be in [0, 1], got {grid_eps}")
        noise_scale = check_real("noise_scale", noise_scale, 0.0)
        scale_base_mu = check_real("scale_base_mu", scale_base_mu)
        scale_base_sigma = check_real("scale_base_sigma", scale_base_sigma, 0.0)
        scale_sp = check_real("scale_sp", scale_sp)
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
        factory = {"device": device, "dtype": dtype or torch.get_default_dtype()}
        self.in_features, self.out_features = in_features, out_features
        self.spline_order = spline_order
        self.base_activation = base_activation
        self.grid_eps = grid_eps
        self.backend = backend
        self.register_buffer("grid", make_grid(in_features, grid_size, spline_order, (low, high), **factory))
        self.register_buffer("mask", torch.ones(in_features, out_features, **factory))
        knots = self.grid[:, spline_order:-spline_order] if spline_order else self.grid
        # in place, in the order of (rand - 0.5) * noise_scale / grid_size: the same values without its temporaries
        noise = torch.rand(grid_size + 1, in_features, out_features, **factory).sub_(0.5).mul_(noise_scale)
        noise = noise.div_(grid_size)
        self.coef = nn.Parameter(fit_spline_coefficients(knots.t(), noise, self.grid, spline_order))
        self.scale_base = nn.Parameter(
            (scale_base_mu + scale_base_sigma * (torch.rand(in_features, out_features, **factory) * 2 - 1))
            / math.sqrt(in_features))
        self.scale_sp = nn.Parameter(torch.full((in_features, out_features), scale_sp / math.sqrt(in_features),
                                                **factory))
        self.bias = nn.Parameter(torch.zeros(out_features, **factory)) if bias else None
        # Edges fixed to symbolic functions (kanlib.symbolic): None until one is fixed, so the fast path is untouched.
        self.symbolic: SymbolicBranch | None = None

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, grid_size={self.grid_size}, "
                f"spline_order={self.spline_order}, base_activation={self.base_activation!r}, "
                f"bias={self.bias is not None}")

    def base_weight(self) -> torch.Tensor:
        """The base branch's weights ``scale_base * mask``: [I, O]."""
        return self.scale_base * self.mask

    def spline_weight(self) -> torch.Tensor:
        """The spline coefficients with the per-edge scale folded in, ``scale_sp * mask * coef``: [I, O, G+k]."""
        return (self.scale_sp * self.mask).unsqueeze(-1) * self.coef

    def weight_matrix(self) -> torch.Tensor:
        """The [I * (G+k+1), O] matrix: per input, the base weight row then the G+k spline rows."""
        kernels = self._weight_kernels()
        if kernels is None:
            return assemble_weight_matrix(self.base_weight(), self.spline_weight())
        return _WeightMatrix.apply(self.scale_base, self.scale_sp, self.mask, self.coef, kernels == "triton")

    def _weight_kernels(self) -> str | None:
        """What builds :meth:`weight_matrix` in one pass: "numba" (CPU), "triton" (CUDA), or None (PyTorch
        operations: the eager backend, a mask that takes a gradient, mixed devices or dtypes, transforms)."""
        parts = (self.scale_base, self.scale_sp, self.mask, self.coef)
        dtype, device = self.coef.dtype, self.coef.device
        if (self.backend == "eager" or self.mask.requires_grad
                or any(t.device != device or t.dtype != dtype for t in parts) or under_transform(*parts)):
            return None
        if device.type == "cpu" and dtype in CPU_KERNEL_DTYPES:
            return "numba"
        if device.type == "cuda" and dtype in TRITON_WEIGHT_DTYPES:
            return "triton"
        return None

    def _check_input(self, x: torch.Tensor) -> None:
        check_layer_input(x, self.in_features, self.coef)

    def _layer_tensors(self) -> tuple:
        """(scale_base, scale_sp, mask, coef, grid), read from the module's dicts: nn.Module's attribute lookup costs
        more on every call. A reparametrized tensor (torch.nn.utils.prune, torch.nn.utils.parametrize) is not in
        them: then the attributes."""
        parameters, buffers = self._parameters, self._buffers
        try:
            return (parameters["scale_base"], parameters["scale_sp"], buffers["mask"], parameters["coef"],
                    buffers["grid"])
        except KeyError:
            return self.scale_base, self.scale_sp, self.mask, self.coef, self.grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., I] -> [..., O]."""
        scale_base, scale_sp, mask, coef, grid = self._layer_tensors()
        check_layer_input(x, self.in_features, coef)
        # Under autocast the Triton path casts x and the weights to the autocast dtype; the torch path's
        # product follows autocast's own rules.
        flat = x if x.dim() == 2 else x.reshape(-1, self.in_features)
        if flat.dtype != coef.dtype:
            flat = flat.to(coef.dtype)
        tensors = (flat, scale_base, scale_sp, mask, coef, grid)
        # Under a transform the grid's values cannot be read: torch.func and torch.export compute the plain formula,
        # which does not look at uniformity, and torch.compile's operators look at the grid when they run.
        transformed = under_transform(*tensors)
        uniform = False if transformed else self.is_uniform()
        fused = self._fused_cpu_backend(flat, tensors, transformed)
        if fused is not None:
            out = run_fused_layer(*tensors, self.spline_order, uniform, self.base_activation, fused == "sparse")
        elif not transformed and self._fused_triton(tensors):
            from ..ops.spline_linear.triton_layer import triton_spline_layer

            out = triton_spline_layer(*tensors, self.spline_order, uniform, self.base_activation)
        else:
            weight = self.weight_matrix()
            out = spline_linear(flat, weight, grid, self.spline_order, uniform, self.base_activation,
                                self.backend_for(flat, weight))
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)  # under autocast, the product's dtype, as nn.Linear's
        if self.symbolic is not None:
            out = out + self.symbolic(flat)
        return out if x.dim() == 2 else out.view(*x.shape[:-1], self.out_features)

    def _fused_cpu_backend(self, flat: torch.Tensor, tensors: tuple | None = None,
                           transformed: bool | None = None) -> str | None:
        """The backend, "cpu" or "sparse", where forward runs the CPU kernels straight from the parameters
        (:class:`~kanlib.ops.spline_linear.FusedSplineLayer`, one autograd node): the product's backend is one of
        them, outside autocast and transforms other than torch.compile (``transformed``: whether
        :func:`~kanlib.ops.spline_linear.under_transform` holds, found here when None), and the weight is this
        class's (a subclass that changes ``weight_matrix``, as quantization-aware training does, takes the weight
        matrix); else None (the weight matrix, then :func:`spline_linear`)."""
        backend = self.backend
        if (backend not in ("auto", "cpu", "sparse", _LEGACY_TORCH) or torch.is_autocast_enabled("cpu")
                or type(self).weight_matrix is not BSplineKAN.weight_matrix):
            return None
        dtype = flat.dtype
        if tensors is None:
            tensors = (flat, self.scale_base, self.scale_sp, self.mask, self.coef, self.grid)
        if dtype not in CPU_KERNEL_DTYPES or tensors[3].requires_grad:
            return None
        for t in tensors:
            if t.dtype != dtype or not t.is_cpu:
                return None
        if transformed is None:
            transformed = under_transform(*tensors)
        if transformed and not compiling_with_kernels():
            return None
        if backend in ("cpu", "sparse"):
            return backend
        return "sparse" if prefers_sparse(self.n_basis + 1, self.spline_order) else "cpu"

    def _fused_triton(self, tensors: tuple) -> bool:
        """Whether forward runs the Triton kernels straight from the parameters
        (:class:`~kanlib.ops.spline_linear.triton_layer.TritonSplineLayer`, one autograd node), outside transforms:
        the backend is "triton", or "auto" on a CUDA tensor the kernels run; the weight is this class's and the mask
        takes no gradient; ``tensors`` (flat x, scale_base, scale_sp, mask, coef, grid) share one dtype and one
        device, a CUDA one (a CPU one under the Triton interpreter); the kernels compute in a dtype they run (x's,
        or the autocast dtype). Elsewhere the weight matrix and :func:`spline_linear` give the result or the error."""
        backend, coef = self.backend, tensors[4]
        device, dtype = coef.device, coef.dtype
        if (backend not in ("auto", "triton") or type(self).weight_matrix is not BSplineKAN.weight_matrix
                or tensors[3].requires_grad or self.spline_order not in TRITON_SPLINE_ORDERS):
            return False
        for t in tensors:
            if t.dtype != dtype or t.device != device:
                return False
        if device.type == "cpu":
            from ..ops.triton_tuning import interpreting

            if backend != "triton" or not interpreting():
                return False
        elif device.type != "cuda" or (backend == "auto" and dtype not in TRITON_DTYPES):
            return False  # "auto" sends float64 to the torch backends, under autocast too
        compute = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else dtype
        return dtype in TRITON_WEIGHT_DTYPES and compute in TRITON_DTYPES

    def backend_for(self, flat: torch.Tensor, weight: torch.Tensor) -> str:
        """The :func:`spline_linear` backend a call on flat [N, I] with weight [I*S, O] uses."""
        if self.backend == _LEGACY_TORCH:
            return torch_backend(flat, weight, self.spline_order)
        return self.backend

    def activations(self, x: torch.Tensor) -> torch.Tensor:
        """Every edge's activation phi_{i,o}(x_i) (pykan's postacts), symbolic edges included: x [..., I] ->
        [..., I, O]."""
        self._check_input(x)
        flat = x.reshape(-1, self.in_features)
        bases = local_basis(flat, self.grid, self.spline_order, self.is_uniform()).to_dense(self.n_basis)
        spline = torch.einsum("nij,ioj->nio", bases, self.coef)
        base = get_activation(self.base_activation).function(flat).unsqueeze(-1)
        values = (self.scale_base * base + self.scale_sp * spline) * self.mask
        if self.symbolic is not None:
            values = values + self.symbolic.edge_values(flat)
        return values.view(*x.shape[:-1], self.in_features, self.out_features)

    def fix_symbolic(self, i: int, j: int, name: str, x: torch.Tensor | None = None, fit_params: bool = True,
                     a_range=(-10.0, 10.0), b_range=(-10.0, 10.0)) -> float | None:
        """Fix edge (i, j) to the library function ``name`` (:mod:`kanlib.symbolic.library`); returns the R^2.

        With ``fit_params``, ``c * f(a x_i + b) + d`` is fitted (:func:`kanlib.symbolic.fit_affine`) to the edge's
        current values at samples x [N, I]; otherwise a = c = 1, b = d = 0 and None is returned. As pykan, the
        edge's spline is switched off (``mask[i, j] = 0``) and its symbolic mask on.
        """
        self._check_edge(i, j)
        function = get_function(name)
        if not fit_params:
            self.set_symbolic(i, j, name)
            return None
        if x is None:
            raise ValueError(f"fix_symbolic with fit_params=True needs samples x [N, {self.in_features}] of the "
                             f"layer's input; pass x, or fit_params=False for a = c = 1, b = d = 0")
        self._check_input(x)
        x = x.reshape(-1, self.in_features)
        with torch.no_grad():
            y = self.activations(x)[:, i, j]
        fit = fit_affine(x[:, i].detach(), y, function.torch, a_range, b_range)
        self.set_symbolic(i, j, name, (fit.a, fit.b, fit.c, fit.d))
        return fit.r2

    def set_symbolic(self, i: int, j: int, name: str, params=(1.0, 0.0, 1.0, 0.0)) -> None:
        """Fix edge (i, j) to ``c * name(a x_i + b) + d`` with params (a, b, c, d); its spline is switched off."""
        self._check_edge(i, j)
        if self.symbolic is None:
            self.symbolic = SymbolicBranch(self.in_features, self.out_features, device=self.coef.device,
                                           dtype=self.coef.dtype)
        self.symbolic.set_edge(i, j, name, params)
        with torch.no_grad():
            self.mask[i, j] = 0.0

    def unfix_symbolic(self, i: int, j: int) -> None:
        """Edge (i, j) is a spline again (mask 1, as pykan, even if it had been removed); the branch goes away
        with its last fixed edge."""
        self._check_edge(i, j)
        with torch.no_grad():
            self.mask[i, j] = 1.0
        if self.symbolic is not None:
            self.symbolic.clear_edge(i, j)
            if not bool(self.symbolic.mask.any()):
                self.symbolic = None

    def _check_edge(self, i: int, j: int) -> None:
        check_int("i", i, 0, self.in_features - 1, expected=f"an input index in 0..{self.in_features - 1}")
        check_int("j", j, 0, self.out_features - 1, expected=f"an output index in 0..{self.out_features - 1}")

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # A state with fixed edges builds the branch it loads into; a strict load of one without removes it.
        has_branch = any(key.startswith(prefix + "symbolic.") for key in state_dict)
        if has_branch and self.symbolic is None:
            self.symbolic = SymbolicBranch(self.in_features, self.out_features, device=self.coef.device,
                                           dtype=self.coef.dtype)
        elif strict and not has_branch and self.symbolic is not None:
            self.symbolic = None
        if prefix + "edge_inputs" in state_dict and prefix + "mask" not in state_dict:
            where = prefix[:-1] if prefix else "the layer"
            coef = state_dict.get(prefix + "coef")
            error_msgs.append(f"{where}: this is an edge-sparse SparseBSplineKAN state dict (edge_inputs, coef "
                              f"{None if coef is None else tuple(coef.shape)} per live edge); a BSplineKAN expects "
                              f"mask and coef {tuple(self.coef.shape)}: load it into the SparseBSplineKAN of those "
                              f"edges (KAN.to_sparse() of the pruned model) and convert with to_dense()")
            return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def numerical_edges(self, x: torch.Tensor) -> torch.Tensor:
        """Every edge's base and spline value, masked, from the Cox-de Boor basis (traceable; edges fixed to symbolic
        functions not included): x [N, I] -> [N, I, O]."""
        base = get_activation(self.base_activation).function(x).unsqueeze(-1)
        return (self.scale_base * base + self.scale_sp * self.spline_values(x)) * self.mask

    def spline_values(self, x: torch.Tensor) -> torch.Tensor:
        """The spline part of every edge, ``sum_j coef[i,o,j] B_j(x_i)``: x [N, I] -> [N, I, O]."""
        return torch.einsum("nij,ioj->nio", cox_de_boor(x, self.grid, self.spline_order), self.coef)

    @torch.no_grad()
    def update_grid(self, x: torch.Tensor, grid_eps: float | None = None) -> None:
        """Move the knots to the sample distribution of x [N, I] and refit coef to keep the function.

        The new grid is ``grid_eps * uniform + (1 - grid_eps) * quantiles`` over the samples' range, as pykan.
        """
        ordered = self._ordered_samples(x, "update_grid")
        knots = self._knots_from_samples(ordered, self.grid_size, self.grid_eps if grid_eps is None else grid_eps)
        self._set_grid_and_fit(knots, ordered, self.spline_values(ordered))

    @torch.no_grad()
    def refine(self, grid_size: int, x: torch.Tensor | None = None) -> "BSplineKAN":
        """The same function on ``grid_size`` intervals (pykan's grid extension); returns self.

        With samples x [N, I] (the inputs the layer sees), the new knots follow them as in ``update_grid`` and
        coef are fitted by least squares to the old splines at those samples. Without x, the new knots
        interpolate the old ones piecewise linearly (a uniform grid stays uniform) and coef are fitted on dense
        points of the grid range. When the size changes, ``coef`` is a new Parameter: build optimizers after.
        """
        check_int("grid_size", grid_size, 1)
        if x is not None:
            ordered = self._ordered_samples(x, "refine")
            knots = self._knots_from_samples(ordered, grid_size, self.grid_eps)
            self._set_grid_and_fit(knots, ordered, self.spline_values(ordered))
            return self
        old_knots = self._interior_knots()
        knots = self._interpolated_knots(grid_size)
        samples_per_row = 8 * (max(grid_size, self.grid_size) + self.spline_order + 1)
        fractions = torch.linspace(0, 1, samples_per_row, device=self.grid.device, dtype=self.grid.dtype)
        samples = (old_knots[:, :1] + (old_knots[:, -1:] - old_knots[:, :1]) * fractions).t()  # [P, I]
        self._set_grid_and_fit(knots, samples, self.spline_values(samples))
        return self

    def _interior_knots(self) -> torch.Tensor:
        """The grid without its k extension knots on each side: [I, G+1]."""
        k = self.spline_order
        return self.grid[:, k:self.grid.shape[1] - k]

    def _interpolated_knots(self, grid_size: int) -> torch.Tensor:
        """``grid_size + 1`` knots per input spaced evenly along the old knots' index: [I, grid_size+1]."""
        positions = torch.linspace(0, self.grid_size, grid_size + 1, device=self.grid.device, dtype=torch.float64)
        return _interpolate_rows(self._interior_knots().double(), positions).to(self.grid.dtype)

    def _ordered_samples(self, x: torch.Tensor, method: str) -> torch.Tensor:
        """x [..., I] checked (at least 2 finite samples) and sorted per input: [N, I]."""
        self._check_input(x)
        x = x.reshape(-1, self.in_features)
        if x.shape[0] < 2:
            raise ValueError(f"{method} needs at least 2 samples, got {x.shape[0]}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{method} needs finite samples; the input has NaN or inf")
        return torch.sort(x, dim=0).values

    def _knots_from_samples(self, ordered: torch.Tensor, grid_size: int, eps: float) -> torch.Tensor:
        """``grid_size + 1`` knots per input, ``eps * uniform + (1 - eps) * quantiles`` of the sorted samples
        ordered [N, I] over their range: [I, grid_size+1]. An input whose samples are all equal would collapse
        to a point; it keeps its old grid (interpolated to ``grid_size``), with a RuntimeWarning."""
        n = ordered.shape[0]
        picks = [int(n / grid_size * i) for i in range(grid_size)] + [n - 1]
        adaptive = ordered[picks].t()  # [I, G+1]
        steps = torch.arange(grid_size + 1, device=ordered.device, dtype=ordered.dtype)
        uniform = adaptive[:, :1] + (adaptive[:, -1:] - adaptive[:, :1]) / grid_size * steps
        knots = eps * uniform + (1 - eps) * adaptive
        collapsed = adaptive[:, -1] <= adaptive[:, 0]
        if bool(collapsed.any()):
            rows = collapsed.nonzero().flatten().tolist()
            warnings.warn(f"the samples of input(s) {rows} are all equal, which would collapse their grid to a "
                          f"point; those inputs keep their old grid", RuntimeWarning, stacklevel=3)
            knots = torch.where(collapsed.unsqueeze(-1), self._interpolated_knots(grid_size), knots)
        return knots

    def _set_grid_and_fit(self, knots: torch.Tensor, samples: torch.Tensor, targets: torch.Tensor) -> None:
        """Replace the grid by ``knots`` [I, G+1] (extended) and refit coef so the splines match targets
        [N, I, O] at samples [N, I]; nothing changes when the new grid or coefficients would not be finite."""
        new_grid = extend_grid(knots, self.spline_order)
        if not bool(torch.isfinite(new_grid).all()):
            low, high = samples.min().item(), samples.max().item()
            raise ValueError(f"the new grid is not finite in {new_grid.dtype}: the samples span [{low:g}, {high:g}], "
                             f"whose knots overflow; the grid was left unchanged")
        check_grid(new_grid, self.spline_order)
        coef = fit_spline_coefficients(samples, targets, new_grid, self.spline_order)
        if not bool(torch.isfinite(coef).all()):
            raise ValueError("refitting the splines to the new grid gave non-finite coefficients; the grid was left "
                             "unchanged")
        if new_grid.shape != self.grid.shape:
            self.grid = new_grid
            self.coef = nn.Parameter(coef, requires_grad=self.coef.requires_grad)
        else:
            self.grid.copy_(new_grid)
            self.coef.copy_(coef)

    def regularization_loss(self, x: torch.Tensor, l1: float = 1.0, entropy: float = 2.0, coef: float = 0.0,
                            coefdiff: float = 0.0) -> torch.Tensor:
        """pykan's sparsity penalty (``reg('edge_forward_spline_n', ...)``) on the batch x [N, I], N >= 2: a
        scalar, differentiable in the parameters and in x (see :func:`kanlib.prune.sparsity_penalty`). It looks
        at the numerical edges only (base and spline, masked), not at edges fixed to symbolic functions."""
        self._check_input(x)
        x = x.reshape(-1, self.in_features)
        return sparsity_penalty(self.numerical_edges(x), x, self.coef, l1=l1, entropy=entropy, coef_l1=coef,
                                coefdiff_l1=coefdiff)

    def select(self, inputs, outputs) -> "BSplineKAN":
        """A new layer (same settings, backend, dtype, device and train/eval mode) on the given input and output
        indices: their grid rows, coef, scales and mask entries and bias entries (and the symbolic branch's, when
        present)."""
        if type(self) is not BSplineKAN:
            raise TypeError(f"select makes a plain BSplineKAN; a {type(self).__name__} holds more state (prune "
                            f"before converting the layer)")
        rows = _indices("inputs", inputs, self.in_features, self.grid.device)
        columns = _indices("outputs", outputs, self.out_features, self.grid.device)
        with torch.random.fork_rng(devices=[]):
            new = BSplineKAN(len(rows), len(columns), grid_size=self.grid_size, spline_order=self.spline_order,
                             base_activation=self.base_activation, grid_eps=self.grid_eps,
                             bias=self.bias is not None, device=self.grid.device, dtype=self.coef.dtype)
        new.backend = self.backend
        with torch.no_grad():
            new.grid.copy_(self.grid[rows])
            new.mask.copy_(self.mask[rows][:, columns])
            for name in ("coef", "scale_base", "scale_sp"):
                old = getattr(self, name)
                getattr(new, name).copy_(old[rows][:, columns])
                getattr(new, name).requires_grad_(old.requires_grad)
            if self.bias is not None:
                new.bias.copy_(self.bias[columns])
                new.bias.requires_grad_(self.bias.requires_grad)
        symbolic = getattr(self, "symbolic", None)
        if symbolic is not None:
            new.symbolic = symbolic.select(rows.tolist(), columns.tolist())
        return new.train(self.training)

    @classmethod
    def from_pykan(cls, layer) -> "BSplineKAN":
        """A BSplineKAN computing exactly what pykan's ``KANLayer`` computes (grid, coef, scales, mask)."""
        activation = _activation_name(layer.base_fun)
        k = int(layer.k)
        grid = layer.grid.detach()
        new = cls(int(layer.in_dim), int(layer.out_dim), grid_size=grid.shape[1] - 2 * k - 1, spline_order=k,
                  base_activation=activation, grid_eps=float(layer.grid_eps), device=grid.device, dtype=grid.dtype)
        with torch.no_grad():
            new.grid.copy_(grid)
            new.coef.copy_(layer.coef)
            new.scale_base.copy_(layer.scale_base)
            new.scale_sp.copy_(layer.scale_sp)
            new.mask.copy_(layer.mask)
        return new

    @classmethod
    def from_efficient_kan(cls, layer) -> "BSplineKAN":
        """The BSplineKAN computing exactly what efficient-kan's ``KANLinear`` computes, from the layer or its
        state dict: ``grid`` [I, G+2k+1], ``base_weight`` [O, I], ``spline_weight`` [O, I, G+k] and, with the
        standalone spline scaler, ``spline_scaler`` [O, I]. efficient-kan's output
        ``b(x) @ base_weight^T + B(x) @ (spline_weight * spline_scaler)^T`` is pykan's function with
        ``scale_base = base_weight^T``, ``scale_sp = spline_scaler^T`` (ones without it), ``coef`` =
        spline_weight with inputs first. A module's base activation and grid_eps are read; a state dict means
        efficient-kan's defaults (SiLU, 0.02)."""
        state = layer.state_dict() if isinstance(layer, nn.Module) else layer
        if not isinstance(state, Mapping):
            raise TypeError(f"expected an efficient-kan KANLinear or its state dict, got {type(layer).__name__}")
        needed = ("grid", "base_weight", "spline_weight")
        missing = [key for key in needed if key not in state]
        if missing:
            raise ValueError(f"expected a KANLinear state dict with keys {list(needed)} (and spline_scaler), "
                             f"missing {missing}; got keys {sorted(state)}")
        grid, base, spline = state["grid"], state["base_weight"], state["spline_weight"]
        n_out, n_in = base.shape if base.dim() == 2 else (None, None)
        k = grid.shape[-1] - spline.shape[-1] - 1 if grid.dim() == 2 and spline.dim() == 3 else -1
        if (n_in is None or grid.shape[0] != n_in or spline.shape[:2] != (n_out, n_in) or k < 0
                or spline.shape[2] <= k):
            raise ValueError(f"expected grid [I, G+2k+1], base_weight [O, I], spline_weight [O, I, G+k], got "
                             f"{tuple(grid.shape)}, {tuple(base.shape)}, {tuple(spline.shape)}")
        scaler = state.get("spline_scaler")
        if scaler is not None and tuple(scaler.shape) != (n_out, n_in):
            raise ValueError(f"expected spline_scaler [O, I] = {(n_out, n_in)}, got {tuple(scaler.shape)}")
        activation = "silu"
        if isinstance(layer, nn.Module) and hasattr(layer, "base_activation"):
            activation = _activation_name(layer.base_activation)
        new = cls(n_in, n_out, grid_size=spline.shape[2] - k, spline_order=k, base_activation=activation,
                  grid_eps=float(getattr(layer, "grid_eps", 0.02)), device=grid.device, dtype=spline.dtype)
        with torch.no_grad():
            new.grid.copy_(grid)
            new.coef.copy_(spline.permute(1, 0, 2))
            new.scale_base.copy_(base.t())
            new.scale_sp.copy_(scaler.t() if scaler is not None else torch.ones_like(new.scale_sp))
            new.mask.fill_(1.0)
        return new

    def to_pykan(self):
        """pykan's ``KANLayer`` with this layer's grid, coef, scales and mask (no bias there)."""
        from kan import KANLayer

        if self.bias is not None:
            raise ValueError("pykan's KANLayer has no bias; this layer was built with bias=True")
        k = self.spline_order
        low, high = float(self.grid[0, k]), float(self.grid[0, self.grid.shape[1] - k - 1])
        layer = KANLayer(self.in_features, self.out_features, num=self.grid_size, k=k,
                         base_fun=ACTIVATIONS[self.base_activation].module(), grid_eps=self.grid_eps,
                         grid_range=[low, high], device=str(self.grid.device))
        with torch.no_grad():
            for name in ("grid", "coef", "scale_base", "scale_sp", "mask"):
                getattr(layer, name).data = getattr(self, name).detach().clone()
        return layer


def _activation_name(module) -> str:
    name = activation_of_module(module)
    if name in BASE_ACTIVATIONS:
        return name
    raise ValueError(f"base_fun must be one of {[ACTIVATIONS[n].module.__name__ for n in BASE_ACTIVATIONS]}, "
                     f"got {type(module).__name__}")


def _indices(name: str, indices, size: int, device) -> torch.Tensor:
    """indices (a sequence of ints or a 1-D integer tensor, non-empty, each in 0..size-1) as a long tensor."""
    if isinstance(indices, torch.Tensor):
        if indices.dim() != 1 or indices.dtype.is_floating_point or indices.dtype == torch.bool:
            raise ValueError(f"{name} must be a 1-D integer tensor or a sequence of ints, got a "
                             f"{indices.dtype} tensor of shape {tuple(indices.shape)}")
        values = indices.tolist()
    elif isinstance(indices, Sequence) and not isinstance(indices, str):
        values = [check_int(f"{name}[{k}]", v) for k, v in enumerate(indices)]
    else:
        raise TypeError(f"{name} must be a sequence of ints or a 1-D integer tensor, got {type(indices).__name__}")
    if not values or not all(0 <= v < size for v in values):
        raise ValueError(f"{name} must be a non-empty list of indices in 0..{size - 1}, got {values}")
    return torch.tensor(values, dtype=torch.long, device=device)


def _interpolate_rows(values: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation of each row of values [I, n] at fractional indices positions [m]."""
    low = positions.floor().long().clamp(max=values.shape[1] - 2)
    frac = positions - low
    return values[:, low] * (1 - frac) + values[:, low + 1] * frac
