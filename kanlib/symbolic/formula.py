"""The sympy formula of a KAN whose live edges are all fixed to symbolic functions (pykan's symbolic_formula)."""
from __future__ import annotations

from collections.abc import Sequence

from ..checks import check_int
from .library import FUNCTION_NAMES, SYMBOLIC_LIBRARY

__all__ = ["spline_edges", "symbolic_formula", "round_floats"]


def spline_edges(layers) -> list[tuple[int, int, int]]:
    """The edges (l, i, j) that still compute a spline: spline mask on and not fixed to a function."""
    edges = []
    for index, layer in enumerate(layers):
        fixed = layer.symbolic.mask if layer.symbolic is not None else None
        for i, j in (layer.mask != 0).nonzero().tolist():
            if fixed is None or not bool(fixed[i, j]):
                edges.append((index, i, j))
    return edges


def round_floats(expression, digits: int):
    """expression with every float rounded to ``digits`` decimals. Products and powers of sums are multiplied out
    first (``c * (a x + b)**2`` -> ``c a^2 x^2 + ...``), so the constants rounded are the final ones."""
    import sympy

    expression = sympy.expand(expression, power_exp=False, power_base=False, log=False)
    for _ in range(4):  # rounding can let sympy combine constants again
        rounded = expression.xreplace({number: sympy.Float(round(float(number), digits))
                                       for number in expression.atoms(sympy.Float)})
        if rounded == expression:
            break
        expression = rounded
    return expression


def _input_symbols(var, n_inputs: int):
    import sympy

    if var is None:
        return [sympy.Symbol(f"x_{index + 1}") for index in range(n_inputs)]
    if isinstance(var, str) or not isinstance(var, Sequence) or len(var) != n_inputs:
        raise ValueError(f"var must be None or {n_inputs} names or sympy expressions (one per input), got {var!r}")
    return [sympy.Symbol(v) if isinstance(v, str) else sympy.sympify(v) for v in var]


def symbolic_formula(layers, var=None, digits: int | None = None) -> list:
    """One sympy expression per output of the stack ``layers`` (BSplineKANs whose live edges are fixed).

    Node j of layer l+1 is ``sum_i c * f(a * x_i + b) + d`` over the fixed edges (i, j), plus the layer's bias
    if it has one; edges switched off count 0. ``var``: the input symbols (default x_1, x_2, ...); ``digits``
    rounds every constant. Raises ValueError naming the edges that are still splines.
    """
    import sympy

    if digits is not None:
        check_int("digits", digits, 0, expected="None or an int >= 0 (the decimals kept)")
    left = spline_edges(layers)
    if left:
        shown = ", ".join(map(str, left[:10])) + (f" and {len(left) - 10} more" if len(left) > 10 else "")
        raise ValueError(f"symbolic_formula needs every live edge fixed to a symbolic function; edges (l, i, j) "
                         f"{shown} are still splines: call auto_symbolic() or fix_symbolic(l, i, j, name) first "
                         f"(or remove those edges)")
    nodes = _input_symbols(var, layers[0].in_features)
    for layer in layers:
        outputs = [sympy.Integer(0)] * layer.out_features
        branch = layer.symbolic
        if branch is not None:
            for i, j in (branch.mask != 0).nonzero().tolist():
                a, b, c, d = (sympy.Float(float(v)) for v in branch.affine[i, j].detach())
                function = SYMBOLIC_LIBRARY[FUNCTION_NAMES[int(branch.function_index[i, j])]].sympy
                outputs[j] = outputs[j] + c * function(a * nodes[i] + b) + d
        if layer.bias is not None:
            outputs = [out + sympy.Float(float(bias)) for out, bias in zip(outputs, layer.bias.detach())]
        nodes = outputs
    if digits is not None:
        nodes = [round_floats(node, digits) for node in nodes]
    return nodes
