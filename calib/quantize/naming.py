"""The names calib gives the tensors and nodes it adds to a Q/DQ model, in one place.

Everything that reads a Q/DQ model back (per-tensor SQNR, sensitivity, reports) finds a tensor's
quantized form by these names, so they are defined once, as ONNX Runtime's quantization package
does with its suffixes (`onnxruntime/python/tools/quantization/quant_utils.py`: `QUANT_OUTPUT_SUFFIX
= "_QuantizeLinear_Output"`, `DEQUANT_OUTPUT_SUFFIX = "_DequantizeLinear_Output"`, `_scale`,
`_zero_point`, `_quantized`). Changing one changes the bytes of every model calib writes.
"""

from __future__ import annotations

QUANTIZE_OUTPUT = "_QuantizeLinear_Output"
DEQUANTIZE_OUTPUT = "_DequantizeLinear_Output"
QUANTIZE_NODE = "_QuantizeLinear"
DEQUANTIZE_NODE = "_DequantizeLinear"
SCALE = "_scale"
ZERO_POINT = "_zero_point"
QUANTIZED = "_quantized"          # an int8 weight / int32 bias initializer
FLOAT = "_float"                  # a folded ReLU restored for float readers (partial models)
BIAS_CORRECTED = "_bias_corrected"  # a float bias corrected for the weight-quantization shift
# The integer-exact evaluation graph (calib.quantize.exact): never written to a model file.
EXACT_INTEGER = "_integer"          # an integer-valued float input (q - z) and its scale-1 constants
EXACT_ACCUMULATOR = "_accumulator"  # the exact sum of integer products
EXACT_ROUNDED = "_accumulator_rounded"
EXACT_RESCALE = "_rescale"          # accumulator * (s_x * s_w), then the float bias


def quantized_name(tensor: str) -> str:
    """The QuantizeLinear output of activation `tensor`."""
    return f"{tensor}{QUANTIZE_OUTPUT}"


def dequantized_name(tensor: str) -> str:
    """The DequantizeLinear output of `tensor`: what its quantized readers read."""
    return f"{tensor}{DEQUANTIZE_OUTPUT}"


def float_name(tensor: str) -> str:
    """What float readers of a folded-ReLU tensor read in a partially quantized model (the
    ReLU is restored for them under this name)."""
    return f"{tensor}{FLOAT}"


def scale_name(tensor: str) -> str:
    return f"{tensor}{SCALE}"


def zero_point_name(tensor: str) -> str:
    return f"{tensor}{ZERO_POINT}"


def quantized_constant_name(tensor: str) -> str:
    """The int8/int32 initializer that replaces constant `tensor` (a weight or a bias)."""
    return f"{tensor}{QUANTIZED}"


def bias_corrected_name(tensor: str) -> str:
    return f"{tensor}{BIAS_CORRECTED}"
