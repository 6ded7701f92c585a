"""Symbolic regression of KAN edges: the function library, the affine fit, the symbolic branch of a layer and
the sympy formula of a fixed network (pykan's suggest_symbolic, fix_symbolic, auto_symbolic, symbolic_formula)."""
from .branch import SymbolicBranch
from .fit import AffineFit, fit_affine
from .formula import symbolic_formula
from .library import FUNCTION_NAMES, SYMBOLIC_LIBRARY, SymbolicFunction, get_function, resolve_library
from .suggest import Candidate, EdgeChoice, rank_candidates

__all__ = ["SymbolicBranch", "AffineFit", "fit_affine", "symbolic_formula", "FUNCTION_NAMES", "SYMBOLIC_LIBRARY",
           "SymbolicFunction", "get_function", "resolve_library", "Candidate", "EdgeChoice", "rank_candidates"]
