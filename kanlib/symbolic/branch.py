"""The symbolic branch of a KAN layer: edges fixed to ``c * f(a * x_i + b) + d`` (pykan's Symbolic_KANLayer)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..checks import check_int, check_layer_input
from .library import FUNCTION_NAMES, SYMBOLIC_LIBRARY, get_function

__all__ = ["SymbolicBranch"]


class SymbolicBranch(nn.Module):
    """Edges (i, o) with ``mask[i, o] = 1`` compute ``c * f(a * x_i + b) + d``; the others give 0.

    ``affine`` [I, O, 4] holds (a, b, c, d) per edge (an nn.Parameter: trainable, as pykan's). Which function
    an edge has is the buffer ``function_index`` [I, O] (positions in :data:`FUNCTION_NAMES`), so a state dict
    carries the names. With ``singularity_threshold`` set (a float y_th) the singularity-safe forms are used.
    Input [N, I] -> output [N, O] (``forward``) or per edge [N, I, O] (``edge_values``).
    """

    def __init__(self, in_features: int, out_features: int, device=None, dtype=None):
        super().__init__()
        check_int("in_features", in_features, 1)
        check_int("out_features", out_features, 1)
        factory = {"device": device, "dtype": dtype or torch.get_default_dtype()}
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("mask", torch.zeros(in_features, out_features, **factory))
        self.register_buffer("function_index", torch.full((in_features, out_features), FUNCTION_NAMES.index("0"),
                                                          dtype=torch.long, device=device))
        identity = torch.tensor([1.0, 0.0, 1.0, 0.0], **factory)
        self.affine = nn.Parameter(identity.repeat(in_features, out_features, 1))
        self.singularity_threshold: float | None = None

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fixed={int(self.mask.sum())}"

    def name(self, i: int, j: int) -> str | None:
        """The function of edge (i, j), or None when the edge is not fixed."""
        self._check_edge(i, j)
        return FUNCTION_NAMES[int(self.function_index[i, j])] if bool(self.mask[i, j]) else None

    def names(self) -> list[list[str | None]]:
        """``name(i, j)`` for every edge: I lists of O entries."""
        return [[self.name(i, j) for j in range(self.out_features)] for i in range(self.in_features)]

    def _check_edge(self, i: int, j: int) -> None:
        check_int("i", i, 0, self.in_features - 1)
        check_int("j", j, 0, self.out_features - 1)

    @torch.no_grad()
    def set_edge(self, i: int, j: int, name: str, params: Sequence[float] = (1.0, 0.0, 1.0, 0.0)) -> None:
        """Fix edge (i, j) to ``name`` with params (a, b, c, d)."""
        self._check_edge(i, j)
        get_function(name)
        if len(params) != 4:
            raise ValueError(f"params must be (a, b, c, d), got {params!r}")
        self.function_index[i, j] = FUNCTION_NAMES.index(name)
        self.affine[i, j] = torch.as_tensor([float(p) for p in params], dtype=self.affine.dtype)
        self.mask[i, j] = 1.0

    @torch.no_grad()
    def clear_edge(self, i: int, j: int) -> None:
        """Edge (i, j) gives 0 again."""
        self._check_edge(i, j)
        self.mask[i, j] = 0.0
        self.function_index[i, j] = FUNCTION_NAMES.index("0")

    def select(self, inputs: Sequence[int], outputs: Sequence[int]) -> "SymbolicBranch":
        """A new branch on those input and output indices (pykan's ``get_subset``), parameters copied."""
        inputs, outputs = list(inputs), list(outputs)
        new = SymbolicBranch(len(inputs), len(outputs), device=self.mask.device, dtype=self.mask.dtype)
        new.singularity_threshold = self.singularity_threshold
        with torch.no_grad():
            rows, cols = torch.as_tensor(inputs, dtype=torch.long)[:, None], torch.as_tensor(outputs, dtype=torch.long)
            new.mask.copy_(self.mask[rows, cols])
            new.function_index.copy_(self.function_index[rows, cols])
            new.affine.copy_(self.affine[rows, cols])
        new.affine.requires_grad_(self.affine.requires_grad)
        return new

    def edge_values(self, x: torch.Tensor) -> torch.Tensor:
        """Every edge's value ``mask * (c * f(a x_i + b) + d)``: x [N, I] -> [N, I, O].

        Only fixed edges are evaluated (each function on its own edges), so an unfixed edge can neither give
        nor take a NaN.
        """
        check_layer_input(x, self.in_features, self.affine)
        x = x.reshape(-1, self.in_features).to(self.affine.dtype)
        n_edges = self.in_features * self.out_features
        out = x.new_zeros(x.shape[0], n_edges)
        fixed = self.mask.reshape(-1).nonzero().flatten()
        if fixed.numel() == 0:
            return out.view(-1, self.in_features, self.out_features)
        affine = self.affine.reshape(n_edges, 4)
        codes = self.function_index.reshape(-1)[fixed]
        for code in codes.unique().tolist():
            edges = fixed[codes == code]
            a, b, c, d = affine[edges].unbind(-1)
            inner = a * x[:, edges // self.out_features] + b
            entry = SYMBOLIC_LIBRARY[FUNCTION_NAMES[code]]
            values = entry.torch(inner) if self.singularity_threshold is None \
                else entry.safe(inner, float(self.singularity_threshold))
            out = out.index_copy(1, edges, c * values + d)
        return out.view(-1, self.in_features, self.out_features) * self.mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, I] -> [N, O]: the sum of ``edge_values`` over inputs."""
        return self.edge_values(x).sum(1)
