"""The `tensorrt` flavor: TensorRT's explicit-quantization placement, symmetric int8.

Q/DQ on every float activation input of weighted ops (Conv, ConvTranspose, Gemm, MatMul; both
inputs of a MatMul of two activations, as in attention), and on the residual input of a residual
Add (see calib.quantize.patterns), read by that Add only; int8, zero point 0, scale amax/127,
per-tensor activations, per-channel int8 weights, float biases (TensorRT fuses them). Nothing
else is quantized: TensorRT moves Q/DQ through MaxPool, Concat, Reshape and Transpose by itself
and fuses ReLU/Clip, Sigmoid x Mul and other pointwise epilogues into the convolution.

Source: TensorRT developer guide, "Working with Quantized Types" -> "Explicit Quantization" ->
"Q/DQ Layer-Placement Recommendations" (quantize all inputs of weighted operations; by default do
not quantize their outputs; quantize the residual input of element-wise addition so that it fuses
into the convolution; Q/DQ propagation through commuting layers), https://docs.nvidia.com/
deeplearning/tensorrt/latest/inference-library/quantized-types-explicit-quantization.html.
The rules, with what stays float and why, are in docs/quantization.md.
"""

from __future__ import annotations

from typing import Mapping

from calib.quantize.flavor import WEIGHTED_OPS, Flavor, Plan
from calib.quantize.graph import DATA_MOVEMENT_OPS, GraphIndex
from calib.quantize.patterns import residual_input
from calib.quantize.qdq import ActivationQuant, symmetric_int8
from calib.quantize.registry import register_flavor


@register_flavor
class TensorRTFlavor(Flavor):
    name = "tensorrt"
    default_backend = "tensorrt"
    int32_bias = False
    description = "symmetric int8 as TensorRT builds it (explicit quantization, strongly typed)"
    passthrough = frozenset(DATA_MOVEMENT_OPS)

    def place(self, plan: Plan, original: GraphIndex) -> None:
        index = plan.index
        for node in plan.model.graph.node:
            if plan.keeps_float(node):
                continue
            if node.op_type in WEIGHTED_OPS:
                for inp in node.input[:2]:
                    if index.is_quantizable(inp):
                        plan.require(inp, node, all_readers=False)
                plan.add_weight(node)
            elif node.op_type == "Add":
                skip = residual_input(index, node)
                if skip is not None:
                    plan.require(skip, node, all_readers=False)

    def activation_params(self, plan: Plan, tensor: str, amax: Mapping[str, float],
                          known: Mapping[str, ActivationQuant]) -> ActivationQuant:
        return symmetric_int8(amax[tensor])
