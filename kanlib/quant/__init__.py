"""Quantization: low-bit tensors, post-training quantization of models, quantization-aware training and
lookup-table B-splines (KANtize)."""
from .cost import bitops, model_size_bytes
from ..ops.lut_linear import IntegerWeights, lut_linear
from .ptq import QuantizedBSplineKAN, quantize
from .qat import FakeQuantize, QATBSplineKAN, QATCallback, QATConfig, calibrate_inputs, prepare_qat
from .table import BasisTable
from .tensor import QuantizedTensor, QuantSpec, calibrate, pack_bits, unpack_bits

__all__ = ["QuantSpec", "QuantizedTensor", "calibrate", "pack_bits", "unpack_bits", "BasisTable", "IntegerWeights",
           "lut_linear", "QuantizedBSplineKAN", "quantize", "bitops", "model_size_bytes", "FakeQuantize",
           "QATBSplineKAN", "QATCallback", "QATConfig", "calibrate_inputs", "prepare_qat"]
