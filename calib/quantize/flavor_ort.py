"""The `ort` flavor: the layout ONNX Runtime's CPU integer kernels run fastest.

Same ranges as the tensorrt flavor, read for ONNX Runtime's QDQ fusions (its QDQ selector/action
transformer, `onnxruntime/core/optimizer/qdq_transformer/selectors_actions/
qdq_selector_action_transformer.cc`, turns DequantizeLinear -> op -> QuantizeLinear into
QLinearConv, QLinearMatMul / MatMulIntegerToFloat, QGemm, QLinearAdd, QLinearMul,
QLinearConcat, QLinearSigmoid, QLinearGlobalAveragePool, QLinearAveragePool,
QLinearLeakyRelu, and drops Q/DQ around data movement ops that then run on uint8):

- uint8 activations: zero point 0 and scale amax/255 on tensors that cannot be negative, zero
  point 128 and scale amax/127 elsewhere; int8 per-channel weights; int32 biases at
  input_scale * weight_scale (QLinearConv and QGemm take them).
- Q/DQ only where one of those kernels runs: the inputs of every integer op, and the outputs of
  those whose kernel writes uint8 (Conv, Add, Mul, Concat, Sigmoid, the pools); MatMul and Gemm
  outputs only when their readers are integer ops too (MatMulIntegerToFloat and QGemm write
  float, so attention scores reach Softmax unquantized). Data movement ops carry the scale of a
  quantized input through. Add is an integer op on a convolution's residual connection, Mul on a
  gate (SE, SiLU), Concat when an input already is quantized, the unary ops when their input is:
  LayerNorm, Softmax, GELU, HardSwish, HardSigmoid and transformer residual streams stay float.
- ReLU/Clip(0, 6) after a Conv/Add/Gemm/MatMul whose output is quantized for every reader are
  folded into that quantization (uint8 with zero point 0 clips exactly as they did).
The rules, with what stays float and why, are in docs/quantization.md.
"""

from __future__ import annotations

import warnings
from typing import Mapping, Sequence

import onnx

from calib.quantize.flavor import Flavor, Plan, weight_axis
from calib.quantize.graph import GraphIndex
from calib.quantize.patterns import convolution_inputs, is_gate
from calib.quantize.qdq import ActivationQuant, activation_scale
from calib.quantize.registry import register_flavor

# Ops ONNX Runtime 1.32's CPU provider runs on uint8 with the Q/DQ around them dropped
# (measured: tests/quantize/test_flavor_ort.py), so they carry their input's scale through.
ORT_PASSTHROUGH = frozenset({"Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity",
                             "MaxPool", "Slice", "Gather", "Split", "Resize", "DepthToSpace",
                             "Expand", "Tile"})
# Integer ops whose kernel writes uint8: their output is quantized for every reader.
_UINT8_OUTPUT = frozenset({"Conv", "Add", "Mul", "Concat", "Sigmoid", "GlobalAveragePool",
                           "AveragePool", "LeakyRelu"})
_UNARY = frozenset({"Sigmoid", "GlobalAveragePool", "AveragePool", "LeakyRelu"})
_FOLDABLE_PRODUCERS = frozenset({"Conv", "Add", "Gemm", "MatMul"})


def fold_relus(model: onnx.ModelProto, keep: set[str] = frozenset()) -> tuple[onnx.ModelProto, dict[str, onnx.NodeProto]]:
    """A copy of `model` without the Relu/Clip(min >= 0) that follow a Conv/Add/Gemm/MatMul as
    its only reader, and the removed nodes by their output. The activation's output name is kept,
    so the calibrated range of that tensor applies; the producer now writes the pre-ReLU values
    and the uint8 quantization (zero point 0, range [0, amax]) clips exactly as the ReLU did.
    ReLUs whose outputs are in `keep` (or are graph outputs) stay."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    index = GraphIndex(out, {})
    drop, folded = [], {}
    for node in out.graph.node:
        if node.op_type not in ("Relu", "Clip") or not index.is_nonnegative(node.output[0]):
            continue
        src = node.input[0]
        producer = index.producer.get(src)
        if (producer is None or producer.op_type not in _FOLDABLE_PRODUCERS
                or len(index.consumers[src]) != 1 or src in index.graph_outputs
                or node.output[0] in index.graph_outputs or node.output[0] in keep):
            continue
        producer.output[list(producer.output).index(src)] = node.output[0]
        removed = onnx.NodeProto()
        removed.CopyFrom(node)
        folded[node.output[0]] = removed
        drop.append(node)
    for node in drop:
        out.graph.node.remove(node)
    return out, folded


@register_flavor
class OrtFlavor(Flavor):
    name = "ort"
    default_backend = "ort"
    int32_bias = True
    description = "uint8 activations for ONNX Runtime's CPU integer kernels (QLinearConv, QLinearMatMul, QGemm ...)"
    passthrough = ORT_PASSTHROUGH

    def plan(self, model: onnx.ModelProto, types: dict[str, int] | None = None, *, exclude: Sequence[str] = (),
             exclude_ops: Sequence[str] = (), protect_heads: bool = True) -> Plan:
        original = GraphIndex(model, types)
        # A folded ReLU's output is now produced by the Conv: its sign comes from the original graph.
        nonnegative = {t for t in original.activations() if original.is_nonnegative(t)}
        keep: set[str] = set()
        while True:
            folded_model, folded = fold_relus(model, keep)
            plan = Plan(model=folded_model, index=GraphIndex(folded_model, original.types),
                        nonnegative=nonnegative, passthrough=self.passthrough, folded=folded)
            with warnings.catch_warnings():
                if keep:   # warned on the first round already
                    warnings.simplefilter("ignore")
                plan.exclude(exclude, exclude_ops, protect_heads)
            self.place(plan, original)
            # A fold is right only where the tensor is quantized for every reader.
            wrong = {t for t in folded if t not in plan.activations or plan.activations[t] is not None}
            if not wrong:
                return plan
            keep |= wrong

    def place(self, plan: Plan, original: GraphIndex) -> None:
        index = plan.index
        for node in plan.model.graph.node:
            if plan.keeps_float(node):
                continue
            if node.op_type in self.passthrough:
                data = node.input[0] if node.input else ""
                if data in plan.activations and index.is_quantizable(data):
                    plan.require(data, node, all_readers=True)
                    for out in node.output:
                        if out and index.is_quantizable(out) and out not in index.graph_outputs:
                            plan.require(out, None, all_readers=True)
                continue
            inputs = self._integer_inputs(plan, node)
            if inputs is None:
                continue
            for inp in inputs:
                plan.require(inp, node, all_readers=True)
            if node.op_type in _UINT8_OUTPUT:
                for out in node.output:
                    if out and index.is_quantizable(out) and out not in index.graph_outputs:
                        plan.require_output(out, node)
            plan.add_weight(node)

    def _integer_inputs(self, plan: Plan, node: onnx.NodeProto) -> list[str] | None:
        """The activation inputs ONNX Runtime's integer kernel for `node` reads quantized, or
        None where it has none (the node stays float)."""
        index, op = plan.index, node.op_type
        acts = [i for i in node.input if i and index.is_quantizable(i)]
        if op in ("Conv", "Gemm"):
            ok = weight_axis(index, node) is not None and node.input[0] in acts
            return [node.input[0]] if ok else None
        if op == "MatMul":
            if weight_axis(index, node) is not None:
                return [node.input[0]] if node.input[0] in acts else None
            return list(node.input[:2]) if len(acts) == 2 and len(node.input) == 2 else None
        if op == "Add":
            return acts if convolution_inputs(index, node) else None
        if op == "Mul":
            ok = len(acts) == 2 == len(node.input) and any(is_gate(index, i) for i in acts)
            return acts if ok else None
        if op == "Concat":
            ok = len(acts) == len(node.input) and any(i in plan.activations for i in acts)
            return acts if ok else None
        if op in _UNARY:
            return acts[:1] if acts and acts[0] == node.input[0] and acts[0] in plan.activations else None
        return None

    def activation_params(self, plan: Plan, tensor: str, amax: Mapping[str, float],
                          known: Mapping[str, ActivationQuant]) -> ActivationQuant:
        producer = plan.index.producer.get(tensor)
        if producer is not None and producer.op_type in self.passthrough and producer.input[0] in known:
            return known[producer.input[0]]  # same scale in and out: ORT drops the Q/DQ pair
        a = amax[tensor]
        if tensor in plan.nonnegative:
            return ActivationQuant(activation_scale(a, 255), 0, "uint8")
        return ActivationQuant(activation_scale(a, 127), 128, "uint8")
