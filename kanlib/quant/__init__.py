"""Quantization: low-bit tensors (this module), later post-training quantization of models, QAT and
lookup-table B-splines."""
from .tensor import QuantizedTensor, QuantSpec, calibrate, pack_bits, unpack_bits

__all__ = ["QuantSpec", "QuantizedTensor", "calibrate", "pack_bits", "unpack_bits"]
