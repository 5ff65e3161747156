"""Compatibility names for the modules that still import `calib.quantize.flavors` (pipeline, build,
compare, calibration, sensitivity, benchmarks). New code imports from `calib.quantize`; delete this
module once nothing imports it (sensitivity.py's `_Partial` is the last user of the private names).
"""

from __future__ import annotations

from calib.quantize import (WEIGHTED_OPS, MissingScales, bias_shift, flavor_names, plan_for, quantize_model,
                            required_tensors, weight_axis)
from calib.quantize.graph import DATA_MOVEMENT_OPS, GraphIndex
from calib.quantize.materialize import corrected_bias as _corrected_bias
from calib.quantize.qdq import ActivationQuant, activation_scale

FLAVORS = tuple(flavor_names())
# The ops calib.sensitivity's `_Partial` treats as integer readers in the ort flavor (old rule).
ORT_QUANTIZED_OPS = WEIGHTED_OPS - {"ConvTranspose"} | {
    "Add", "Mul", "GlobalAveragePool", "AveragePool", "Concat", "Sigmoid", "LeakyRelu"} | DATA_MOVEMENT_OPS


def _ort_params(index: GraphIndex, tensor: str, amax: dict[str, float],
                known: dict[str, ActivationQuant], nonnegative: set[str]) -> ActivationQuant:
    producer = index.producer.get(tensor)
    if producer is not None and producer.op_type in DATA_MOVEMENT_OPS and producer.input[0] in known:
        return known[producer.input[0]]
    a = amax[tensor]
    if tensor in nonnegative:
        return ActivationQuant(activation_scale(a, 255), 0, "uint8")
    return ActivationQuant(activation_scale(a, 127), 128, "uint8")


__all__ = ["FLAVORS", "MissingScales", "ORT_QUANTIZED_OPS", "WEIGHTED_OPS", "bias_shift", "plan_for",
           "quantize_model", "required_tensors", "weight_axis", "_corrected_bias", "_ort_params"]
