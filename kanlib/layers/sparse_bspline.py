"""Edge-sparse B-spline KAN layer: a pruned BSplineKAN that stores and computes only its live edges."""
from __future__ import annotations

import torch
from torch import nn

from ..checks import check_int, check_layer_input
from ..ops.edge_spline_linear import EDGE_BACKENDS, EDGE_TRITON_SPLINE_ORDERS, edge_spline_linear
from ..ops.spline_linear import under_transform
from ..prune.compact import symbolic_edges
from .bspline import BSplineKAN, SplineGrid

__all__ = ["SparseBSplineKAN", "edge_list"]


def edge_list(edges, in_features: int, out_features: int, device=None) -> torch.Tensor:
    """edges ([E, 2] integer tensor or a sequence of (input, output) pairs) checked (in range, no duplicates)
    and sorted by input, then output: an int64 tensor [E, 2]."""
    if isinstance(edges, torch.Tensor):
        if edges.dtype.is_floating_point or edges.dtype.is_complex or edges.dtype == torch.bool:
            raise TypeError(f"edges must be an integer tensor [E, 2] of (input, output) pairs, got dtype {edges.dtype}")
        pairs = edges.detach().to(device="cpu", dtype=torch.long)
    else:
        try:
            rows = [tuple(pair) for pair in edges]
        except TypeError:
            raise TypeError(f"edges must be an integer tensor [E, 2] or a sequence of (input, output) pairs, got "
                            f"{type(edges).__name__}") from None
        if not all(len(pair) == 2 for pair in rows):
            raise ValueError(f"edges must be (input, output) pairs, got {edges!r}")
        rows = [(check_int(f"edges[{n}][0]", _integer_item(a)), check_int(f"edges[{n}][1]", _integer_item(b)))
                for n, (a, b) in enumerate(rows)]
        pairs = torch.tensor(rows, dtype=torch.long, device="cpu").reshape(-1, 2)  # checked on the CPU, even
        # under a torch.device("meta") context
    if pairs.dim() != 2 or pairs.shape[1] != 2:
        raise ValueError(f"edges must have shape [E, 2] (input, output), got {tuple(pairs.shape)}")
    outside = (pairs[:, 0] < 0) | (pairs[:, 0] >= in_features) | (pairs[:, 1] < 0) | (pairs[:, 1] >= out_features)
    if bool(outside.any()):
        bad = pairs[outside][:5].tolist()
        raise ValueError(f"edges must have inputs in 0..{in_features - 1} and outputs in 0..{out_features - 1}, "
                         f"got {bad}{' ...' if int(outside.sum()) > 5 else ''}")
    keys = pairs[:, 0] * out_features + pairs[:, 1]
    ordered, order = torch.sort(keys)
    repeated = ordered[1:] == ordered[:-1]
    if bool(repeated.any()):
        bad = sorted({(int(k) // out_features, int(k) % out_features) for k in ordered[1:][repeated][:5]})
        raise ValueError(f"edges must not repeat an (input, output) pair, got duplicates {bad}")
    return pairs[order].to(device)


def _integer_item(value):
    """A 0-d integer tensor (a pair taken from ``mask.nonzero()``) as its int; anything else as it is."""
    integer = isinstance(value, torch.Tensor) and not (value.is_floating_point() or value.is_complex()
                                                       or value.dtype == torch.bool)
    return int(value) if integer and value.dim() == 0 else value


class SparseBSplineKAN(SplineGrid, nn.Module):
    """A B-spline KAN layer on a given set of live edges e = (i, o):
    ``y_o = sum over live edges (i, o) of scale_base[e] * b(x_i) + scale_sp[e] * sum_j coef[e, j] B_j(x_i)``.

    The function of the masked :class:`~kanlib.layers.bspline.BSplineKAN` it comes from (:meth:`from_dense`), with
    storage and work proportional to the live edges. Input ``[..., in_features]``, output ``[..., out_features]``.
    Edges are kept sorted by input, then output (CSR by input): buffers ``edge_inputs`` [E], ``edge_outputs``
    [E], ``input_offsets`` [I+1] and the knots ``grid`` [I, G+2k+1]; Parameters ``coef`` [E, G+k],
    ``scale_base`` [E], ``scale_sp`` [E] and ``bias`` [O] (when ``bias``). ``backend``: ``"auto"``, ``"eager"``,
    ``"cpu"`` or ``"triton"`` (see :mod:`kanlib.ops.edge_spline_linear`). The other settings are BSplineKAN's,
    the initialization ones (noise_scale, scale_base_mu, scale_base_sigma, scale_sp) drawing what the dense layer
    draws on the live edges (``grid_eps`` is kept for the dense layer ``to_dense`` gives).
    """

    def __init__(self, in_features: int, out_features: int, edges, grid_size: int = 5, spline_order: int = 3,
                 grid_range=(-1, 1), base_activation: str = "silu", bias: bool = False, backend: str = "auto",
                 grid_eps: float = 0.02, noise_scale: float = 0.5, scale_base_mu: float = 0.0,
                 scale_base_sigma: float = 1.0, scale_sp: float = 1.0, device=None, dtype=None):
        super().__init__()
        check_int("in_features", in_features, 1)
        check_int("out_features", out_features, 1)
        pairs = edge_list(edges, in_features, out_features)
        self.backend = _check_backend(backend, spline_order)
        # A dense layer with the same settings draws the initial parameters (and checks the settings); the
        # sparse one keeps its live edges' entries.
        dense = BSplineKAN(in_features, out_features, grid_size=grid_size, spline_order=spline_order,
                           grid_range=grid_range, base_activation=base_activation, bias=bias, grid_eps=grid_eps,
                           noise_scale=noise_scale, scale_base_mu=scale_base_mu, scale_base_sigma=scale_base_sigma,
                           scale_sp=scale_sp, device=device, dtype=dtype)
        self._adopt(dense, pairs)

    def _adopt(self, dense: BSplineKAN, pairs: torch.Tensor) -> None:
        """Take settings, grid, bias and the entries at pairs [E, 2] (sorted) of dense's coef and scales."""
        self.in_features, self.out_features = dense.in_features, dense.out_features
        self.spline_order = dense.spline_order
        self.base_activation = dense.base_activation
        self.grid_eps = dense.grid_eps
        pairs = pairs.cpu()  # the offsets are counted there, which the meta device cannot
        inputs, outputs = pairs[:, 0].contiguous(), pairs[:, 1].contiguous()
        offsets = torch.zeros(dense.in_features + 1, dtype=torch.long, device="cpu")
        offsets[1:] = torch.bincount(inputs, minlength=dense.in_features).cumsum(0)
        inputs, outputs, offsets = (t.to(dense.grid.device) for t in (inputs, outputs, offsets))
        self.register_buffer("grid", dense.grid.detach().clone())
        self.register_buffer("edge_inputs", inputs)
        self.register_buffer("edge_outputs", outputs)
        self.register_buffer("input_offsets", offsets)
        with torch.no_grad():
            self.coef = nn.Parameter(dense.coef[inputs, outputs].clone(), requires_grad=dense.coef.requires_grad)
            self.scale_base = nn.Parameter(dense.scale_base[inputs, outputs].clone(),
                                           requires_grad=dense.scale_base.requires_grad)
            self.scale_sp = nn.Parameter(dense.scale_sp[inputs, outputs].clone(),
                                         requires_grad=dense.scale_sp.requires_grad)
            self.bias = (None if dense.bias is None
                         else nn.Parameter(dense.bias.clone(), requires_grad=dense.bias.requires_grad))

    @classmethod
    def from_dense(cls, layer: BSplineKAN) -> "SparseBSplineKAN":
        """The sparse layer computing what ``layer`` computes: its live edges are those with ``mask != 0``; edges
        that ``auto_symbolic`` fixed to zero (switched-off edges) are left out, other symbolic edges refused. The
        layer's train or eval mode is kept."""
        if type(layer) is not BSplineKAN:
            raise TypeError(f"from_dense needs a plain BSplineKAN (not quantized, not QAT), got "
                            f"{type(layer).__name__}")
        fixed = symbolic_edges(layer).nonzero().tolist()
        if fixed:
            shown = ", ".join(map(str, map(tuple, fixed[:5]))) + (" ..." if len(fixed) > 5 else "")
            raise ValueError(f"from_dense cannot convert edges fixed to symbolic functions, got {len(fixed)}: "
                             f"(input, output) {shown}; convert before fixing them, or switch them off "
                             f"(KAN.remove_edge)")
        mask = layer.mask.detach()
        if not bool(((mask == 0) | (mask == 1)).all()):
            odd = mask[(mask != 0) & (mask != 1)].unique()[:5].tolist()
            raise ValueError(f"from_dense needs a mask of 0 (dead) and 1 (live) entries, got values {odd}")
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.backend = _backend_of_dense(layer.backend, layer.spline_order)
        new._adopt(layer, mask.nonzero())
        new.train(layer.training)
        return new

    def to_dense(self) -> BSplineKAN:
        """The masked BSplineKAN computing the same function (mask 0, coef and scales 0 on the dead edges), in
        this layer's train or eval mode."""
        with torch.random.fork_rng(devices=[]):
            dense = BSplineKAN(self.in_features, self.out_features, grid_size=self.grid_size,
                               spline_order=self.spline_order, base_activation=self.base_activation,
                               grid_eps=self.grid_eps, bias=self.bias is not None, device=self.grid.device,
                               dtype=self.coef.dtype)
        dense.backend = self.backend
        dense.train(self.training)
        with torch.no_grad():
            dense.grid.copy_(self.grid)
            for name in ("mask", "coef", "scale_base", "scale_sp"):
                getattr(dense, name).zero_()
            live = (self.edge_inputs, self.edge_outputs)
            dense.mask[live] = 1.0
            for name in ("coef", "scale_base", "scale_sp"):
                getattr(dense, name)[live] = getattr(self, name)
                getattr(dense, name).requires_grad_(getattr(self, name).requires_grad)
            if self.bias is not None:
                dense.bias.copy_(self.bias)
                dense.bias.requires_grad_(self.bias.requires_grad)
        return dense

    @property
    def n_edges(self) -> int:
        """The number of live edges E."""
        return self.edge_inputs.shape[0]

    @property
    def density(self) -> float:
        """Live edges over all I * O edges."""
        return self.n_edges / (self.in_features * self.out_features)

    @property
    def edges(self) -> torch.Tensor:
        """The live edges (input, output), sorted: int64 [E, 2]."""
        return torch.stack([self.edge_inputs, self.edge_outputs], dim=1)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, n_edges={self.n_edges}, "
                f"density={self.density:.3g}, grid_size={self.grid_size}, spline_order={self.spline_order}, "
                f"base_activation={self.base_activation!r}, bias={self.bias is not None}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., I] -> [..., O]."""
        check_layer_input(x, self.in_features, self.coef)
        flat = x.reshape(-1, self.in_features).to(self.coef.dtype)
        uniform = False if under_transform(flat, self.coef, self.grid) else self.is_uniform()
        out = edge_spline_linear(flat, self.coef, self.scale_base, self.scale_sp, self.grid, self.edge_inputs,
                                 self.edge_outputs, self.input_offsets, self.out_features, self.spline_order,
                                 uniform, self.base_activation, self.backend)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)  # under autocast, the product's dtype, as nn.Linear's
        return out.view(*x.shape[:-1], self.out_features)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        """A state dict of another layer's shape or edges is refused as torch refuses a size mismatch: its message
        joins ``error_msgs``, and ``load_state_dict`` raises a RuntimeError listing them (strict or not)."""
        errors = self._state_dict_errors(state_dict, prefix)
        if errors:
            error_msgs.extend(errors)
            return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def _state_dict_errors(self, state_dict, prefix: str) -> list[str]:
        """Why the entries under ``prefix`` cannot load into this layer (none: an empty list)."""
        where = prefix[:-1] if prefix else "the layer"
        if prefix + "mask" in state_dict:
            coef = state_dict.get(prefix + "coef")
            return [f"{where}: this is a dense BSplineKAN state dict (it has a mask "
                    f"{tuple(state_dict[prefix + 'mask'].shape)} and coef "
                    f"{tuple(coef.shape) if coef is not None else None}); a SparseBSplineKAN expects coef [E, G+k] = "
                    f"{tuple(self.coef.shape)}: load it into a BSplineKAN and convert with "
                    f"SparseBSplineKAN.from_dense"]
        expected = {"coef": "[E, G+k]", "scale_base": "[E]", "scale_sp": "[E]", "grid": "[I, G+2k+1]",
                    "edge_inputs": "[E]", "edge_outputs": "[E]", "input_offsets": "[I+1]"}
        errors = []
        for name, shape in expected.items():
            key = prefix + name
            if key in state_dict and tuple(state_dict[key].shape) != tuple(getattr(self, name).shape):
                errors.append(f"{key}: expected {shape} = {tuple(getattr(self, name).shape)} (E = {self.n_edges} "
                              f"live edges, grid {tuple(self.grid.shape)}), got {tuple(state_dict[key].shape)}")
        if errors:
            return errors
        for name in ("edge_inputs", "edge_outputs"):
            key = prefix + name
            if getattr(self, name).is_meta:  # built empty, to be assigned: nothing to compare with
                continue
            if key in state_dict and not torch.equal(state_dict[key].to(getattr(self, name).device),
                                                     getattr(self, name)):
                return [f"{key}: the state dict's live edges differ from this layer's; build the layer with the "
                        f"saved edges (torch.stack([edge_inputs, edge_outputs], 1))"]
        return []


def _check_backend(backend: str, spline_order: int) -> str:
    if backend not in EDGE_BACKENDS:
        raise ValueError(f"backend must be one of {EDGE_BACKENDS}, got {backend!r}")
    if backend == "triton" and spline_order not in EDGE_TRITON_SPLINE_ORDERS:
        raise ValueError(f"the triton backend supports spline_order {EDGE_TRITON_SPLINE_ORDERS[0]} to "
                         f"{EDGE_TRITON_SPLINE_ORDERS[-1]}, got {spline_order}")
    return backend


def _backend_of_dense(backend: str, spline_order: int) -> str:
    """The sparse layer's backend for a dense layer's: its numba paths ("cpu", "sparse") become "cpu", the
    deprecated "torch" becomes "auto"; the others keep their name."""
    if backend in ("cpu", "sparse"):
        return "cpu"
    if backend in ("eager", "triton") and not (backend == "triton" and spline_order not in EDGE_TRITON_SPLINE_ORDERS):
        return backend
    return "auto"
