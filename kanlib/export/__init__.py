"""Export to ONNX: :func:`to_onnx` writes a float or quantized KAN (or MLP, or convolutional model) as an ONNX
file with a dynamic batch, for ONNX Runtime on servers and in the browser."""
from .onnx import INPUT_NAME, OPSET, OUTPUT_NAME, SUPPORTED_OPSETS, to_onnx

__all__ = ["to_onnx", "OPSET", "SUPPORTED_OPSETS", "INPUT_NAME", "OUTPUT_NAME"]
