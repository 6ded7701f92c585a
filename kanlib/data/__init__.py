"""Datasets for KAN experiments, each returned as pykan's ``create_dataset`` dict (``train_input``,
``train_label``, ``test_input``, ``test_label``): :mod:`.formulas` (the formula registry), :mod:`.symbolic`
(regression data from a formula), :mod:`.images` (digits, MNIST). Nothing here downloads anything."""
from .formulas import FORMULAS, Formula, FormulaRegistry, get_formula, list_formulas
from .images import load_digits, load_mnist, read_idx
from .symbolic import symbolic_dataset

__all__ = ["FORMULAS", "Formula", "FormulaRegistry", "get_formula", "list_formulas", "load_digits", "load_mnist",
           "read_idx", "symbolic_dataset"]
