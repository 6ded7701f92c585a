"""Argument checks shared by every part of kanlib, one exception type per kind of mistake.

A value of the wrong type raises TypeError, a value of the right type but out of range ValueError; each
message names the argument, what was expected and what came.
"""
from __future__ import annotations

import math
import numbers
import os
import pathlib

import torch

__all__ = ["MIB", "check_int", "check_positive_int", "check_real", "is_real", "check_device", "resolve_device",
           "check_choice", "OutputDirError", "check_output_dir",
           "check_layer_input"]

MIB = 2**20
_DEVICE_EXPECTED = "'cpu', 'cuda' or 'cuda:<index>' (a str or torch.device)"


def _range_text(minimum, maximum) -> str:
    if minimum is not None and maximum is not None:
        return f" in {minimum}..{maximum}"
    if minimum is not None:
        return f" >= {minimum}"
    if maximum is not None:
        return f" <= {maximum}"
    return ""


def check_int(name: str, value: object, minimum: int | None = None, maximum: int | None = None, *,
              expected: str | None = None) -> int:
    """``value`` as an int (bool refused): TypeError for another type, ValueError outside [minimum, maximum].
    ``expected`` replaces the generated "an int >= ..." in the message."""
    expected = f"{name} must be {expected or 'an int' + _range_text(minimum, maximum)}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{expected}, got {value!r} ({type(value).__name__})")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{expected}, got {value}")
    return value


def check_positive_int(name: str, value: object) -> int:
    """``check_int(name, value, minimum=1)``."""
    return check_int(name, value, 1, expected="a positive int")


def is_real(value: object) -> bool:
    """Whether value is a real number (bool is not)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_real(name: str, value: object, minimum: float | None = None, *, positive: bool = False) -> float:
    """``value`` as a finite float: TypeError for a non-number, ValueError when not finite, below ``minimum``
    or, with ``positive``, not above zero."""
    bound = " > 0" if positive else f" >= {minimum}" if minimum is not None else ""
    expected = f"{name} must be a finite number{bound}"
    if not is_real(value):
        raise TypeError(f"{expected}, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value) or (positive and value <= 0) or (minimum is not None and value < minimum):
        raise ValueError(f"{expected}, got {value!r}")
    return value


def check_bool(name: str, value: object) -> bool:
    """``value`` if it is True or False; TypeError naming its type otherwise (1 and None are not flags)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__}")
    return value


def check_choice(name: str, value: object, choices) -> object:
    """``value`` if it is one of ``choices``; ValueError naming them otherwise."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_device(device: str | torch.device) -> torch.device:
    """The torch.device for ``device``, checked to be a CPU or an available CUDA device."""
    if isinstance(device, str):
        try:
            device = torch.device(device)
        except RuntimeError as error:
            raise ValueError(f"device: expected {_DEVICE_EXPECTED}, got {device!r}") from error
    elif not isinstance(device, torch.device):
        raise TypeError(f"device: expected {_DEVICE_EXPECTED}, got {type(device).__name__} {device!r}")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device: expected {_DEVICE_EXPECTED}, got {str(device)!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device: got {str(device)!r}, but torch.cuda.is_available() is False; expected 'cpu'"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device: got {str(device)!r}, but {torch.cuda.device_count()} CUDA device(s) are visible"
            )
    return device


def resolve_device(device: str | torch.device) -> torch.device:
    """The torch.device for 'cpu', 'cuda' (or 'cuda:<index>') or 'auto' (cuda if available, else cpu)."""
    expected = "'cpu', 'cuda' or 'auto'"
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device: expected {expected}, got {device!r}") from error
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device: expected {expected}, got {device!r}")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device: got {str(device)!r}, but torch.cuda.is_available() is False; expected 'cpu' or 'auto'")
    return resolved


class OutputDirError(ValueError):
    """A folder outputs would go to that is not a folder, cannot be created or is not writable."""


def check_output_dir(folder: str | os.PathLike[str], name: str = "out_dir") -> pathlib.Path:
    """`folder` resolved, once it is a writable folder or one that can be created; else OutputDirError.

    Creates nothing: call it before the work whose results go there. `name` is the option named in the error.
    """
    folder = pathlib.Path(folder).resolve()
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if existing == folder and not folder.is_dir():
        problem = "which exists and is not a folder"
    elif not existing.is_dir():
        problem = f"which cannot be created: {existing} is not a folder"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = ("which is not writable" if existing == folder
                   else f"which cannot be created: {existing} is not writable")
    else:
        return folder
    raise OutputDirError(f"{name}: expected a writable folder, got {folder}, {problem}")


def check_layer_input(x: object, in_features: int, parameter: torch.Tensor) -> None:
    """What a layer with ``in_features`` inputs and a ``parameter`` takes: a floating-point tensor [..., in_features]
    of the parameter's dtype (any, under autocast) on its device."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"input must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() == 0 or x.shape[-1] != in_features:
        raise ValueError(f"input must have shape (..., {in_features}), got {tuple(x.shape)}")
    if x.dtype != parameter.dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(f"input dtype {x.dtype} does not match the layer's parameters ({parameter.dtype})")
    if x.device != parameter.device:
        raise ValueError(f"input is on {x.device} but the layer's parameters are on {parameter.device}")
