"""Datasets for KAN experiments, each returned as pykan's ``create_dataset`` dict (``train_input``,
``train_label``, ``test_input``, ``test_label``): :mod:`.formulas` (the formula registry), :mod:`.symbolic`
(regression data from a formula), :mod:`.images` (digits offline; MNIST, Fashion-MNIST and CIFAR-10 from their
files, downloaded with ``download=True``, checksums checked; :mod:`.download`)."""
from .download import ChecksumError, DatasetNotFoundError
from .formulas import FORMULAS, Formula, FormulaRegistry, get_formula, list_formulas
from .images import load_cifar10, load_digits, load_fashion_mnist, load_mnist, read_idx
from .symbolic import symbolic_dataset

__all__ = ["FORMULAS", "Formula", "FormulaRegistry", "get_formula", "list_formulas", "load_digits", "load_mnist",
           "load_fashion_mnist", "load_cifar10", "read_idx", "symbolic_dataset", "DatasetNotFoundError",
           "ChecksumError"]
