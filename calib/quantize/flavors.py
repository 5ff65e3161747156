"""The two Q/DQ flavors materialized from one set of calibrated ranges (the cache).

- `tensorrt`: TensorRT's explicit-quantization placement: Q/DQ on the inputs of weighted ops
  (Conv, ConvTranspose, Gemm, MatMul) and on the residual input of Add, int8, zero point 0,
  per-tensor activations, per-channel int8 weights, float biases (TensorRT fuses them).
  Source: TensorRT developer guide, "Working with Quantized Types" -> "Q/DQ Layer-Placement
  Recommendations" (quantize all inputs of weighted operations; quantize the residual input;
  do not quantize outputs).
- `ort`: the layout ONNX Runtime's CPU integer kernels run fastest: uint8 activations (zero point
  0 and scale amax/255 on tensors that cannot be negative, zero point 128 and scale amax/127
  elsewhere), Q/DQ on inputs and outputs of every op with an integer kernel, ReLU/ReLU6 folded
  into the quantization of the producer's output (ONNX Runtime then runs QLinearConv/QLinearAdd),
  int8 per-channel weights and int32 biases. Same ranges, so both flavors come from one cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from calib.errors import CalibError
from calib.quantize.graph import DATA_MOVEMENT_OPS, GraphIndex
from calib.quantize.qdq import ActivationQuant, QDQBuilder, activation_scale, symmetric_int8

FLAVORS = ("tensorrt", "ort")
WEIGHTED_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
# Ops with integer kernels in ONNX Runtime's CPU provider (QLinear* or via Q/DQ dropping).
ORT_QUANTIZED_OPS = WEIGHTED_OPS - {"ConvTranspose"} | {
    "Add", "Mul", "GlobalAveragePool", "AveragePool", "Concat", "Sigmoid", "LeakyRelu"} | DATA_MOVEMENT_OPS
_FOLDABLE_PRODUCERS = {"Conv", "Add", "Gemm", "MatMul"}


class MissingScales(CalibError):
    def __init__(self, missing: list[str]):
        self.missing = missing
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        super().__init__(f"the cache has no scale for {len(missing)} quantized tensor(s): {shown}")


def weight_axis(index: GraphIndex, node: onnx.NodeProto) -> int | None:
    """The output-channel axis of a weighted op's constant weight (input 1), None if not constant."""
    if len(node.input) < 2 or index.is_activation(node.input[1]):
        return None
    w = index.initializer_array(node.input[1])
    if w is None:
        return None
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return w.ndim - 1  # MatMul: per output column


@dataclass
class Plan:
    """What a flavor quantizes: activation tensor -> consumer nodes (None = all consumers)."""
    activations: dict[str, list | None] = field(default_factory=dict)
    weights: list[tuple[onnx.NodeProto, int]] = field(default_factory=list)  # (node, weight axis)
    model: onnx.ModelProto | None = None  # the (possibly rewritten) FP32 model the plan refers to
    nonnegative: set[str] = field(default_factory=set)  # sign analysis of the model *before* folding

    def require(self, tensor: str, consumers: list | None) -> None:
        if tensor in self.activations:
            old = self.activations[tensor]
            self.activations[tensor] = None if old is None or consumers is None else old + consumers
        else:
            self.activations[tensor] = consumers


def plan_tensorrt(model: onnx.ModelProto) -> Plan:
    index = GraphIndex(model)
    plan = Plan(model=model)
    for node in model.graph.node:
        if node.op_type in WEIGHTED_OPS:
            for inp in node.input[:2]:
                if index.is_activation(inp):
                    plan.require(inp, [node])
            axis = weight_axis(index, node)
            if axis is not None:
                plan.weights.append((node, axis))
        elif node.op_type == "Add":
            acts = [i for i in node.input if index.is_activation(i)]
            from_conv = [i for i in acts if getattr(index.producer.get(i), "op_type", "") == "Conv"]
            if len(acts) == 2 and len(from_conv) == 1:
                plan.require(next(i for i in acts if i not in from_conv), [node])
    return plan


def fold_relus(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove Relu/Clip(min >= 0) after Conv/Add/Gemm/MatMul: the uint8 quantization of the
    output (zero point 0, range [0, amax]) clips exactly as they would. The activation's output
    name is kept, so the calibrated range of that tensor applies."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    index = GraphIndex(out)
    drop = []
    for node in out.graph.node:
        if node.op_type not in ("Relu", "Clip") or not index.is_nonnegative(node.output[0]):
            continue
        src = node.input[0]
        producer = index.producer.get(src)
        if (producer is None or producer.op_type not in _FOLDABLE_PRODUCERS
                or len(index.consumers[src]) != 1 or src in index.graph_outputs):
            continue
        producer.output[list(producer.output).index(src)] = node.output[0]
        drop.append(node)
    for node in drop:
        out.graph.node.remove(node)
    return out


def plan_ort(model: onnx.ModelProto) -> Plan:
    original = GraphIndex(model)
    folded = fold_relus(model)
    index = GraphIndex(folded)
    # A folded ReLU's output is now produced by the Conv: its sign comes from the original graph.
    plan = Plan(model=folded, nonnegative={t for t in original.activations() if original.is_nonnegative(t)})
    for node in folded.graph.node:
        if node.op_type not in ORT_QUANTIZED_OPS:
            continue
        for inp in node.input:
            if index.is_activation(inp):
                plan.require(inp, None)
        for out in node.output:
            if out and out not in index.graph_outputs:
                plan.require(out, None)
        if node.op_type in WEIGHTED_OPS:
            axis = weight_axis(index, node)
            if axis is not None:
                plan.weights.append((node, axis))
    return plan


def plan_for(model: onnx.ModelProto, flavor: str) -> Plan:
    """Plan on a private copy of `model`, which the plan then owns."""
    if flavor not in FLAVORS:
        raise CalibError(f"unknown Q/DQ flavor '{flavor}' (choose from: {', '.join(FLAVORS)})")
    if flavor == "ort":
        return plan_ort(model)  # fold_relus already copies
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return plan_tensorrt(copy)


def required_tensors(model: onnx.ModelProto, flavor: str) -> list[str]:
    return list(plan_for(model, flavor).activations)


def bias_shift(node: onnx.NodeProto, axis: int, weight_error: np.ndarray, mean: np.ndarray) -> np.ndarray | None:
    """Mean output shift (W_q - W) . E[x] per output channel, or None when the shapes do not
    fit the patterns below (the bias is then left alone). Border padding is ignored."""
    mean = np.asarray(mean, np.float64)
    dw = weight_error
    if node.op_type == "Conv" and dw.ndim >= 3:
        groups = next((a.i for a in node.attribute if a.name == "group"), 1)
        out_ch, per_group = dw.shape[0], dw.shape[1]
        if mean.size != groups * per_group or out_ch % groups:
            return None
        dsum = dw.reshape(out_ch, per_group, -1).sum(axis=2)
        x = mean.reshape(groups, per_group)[np.arange(out_ch) // (out_ch // groups)]
        return np.einsum("oc,oc->o", dsum, x)
    if node.op_type in ("Gemm", "MatMul") and dw.ndim == 2:
        if axis == 0 and dw.shape[1] == mean.size:   # weight (N, K)
            return dw @ mean
        if axis == 1 and dw.shape[0] == mean.size:   # weight (K, N)
            return mean @ dw
    return None


def quantize_model(model: onnx.ModelProto, amax: dict[str, float], flavor: str,
                   allow_missing: bool = False,
                   channel_means: dict[str, list[float]] | None = None) -> tuple[onnx.ModelProto, list[str]]:
    """Materialize the Q/DQ model of `flavor`; returns it and the tensors left in float
    (only non-empty with allow_missing, for `calib build --force`).

    With `channel_means` (per-channel means of weighted ops' inputs, from calibration), biases
    are corrected for the mean shift that weight quantization causes (see bias_shift)."""
    plan = plan_for(model, flavor)
    missing = [t for t in plan.activations if t not in amax]
    if missing and not allow_missing:
        raise MissingScales(missing)
    builder = QDQBuilder(plan.model)
    index = builder.index
    params: dict[str, ActivationQuant] = {}
    for tensor, consumers in plan.activations.items():
        if tensor in missing:
            continue
        if flavor == "tensorrt":
            params[tensor] = symmetric_int8(amax[tensor])
        else:
            params[tensor] = _ort_params(index, tensor, amax, params, plan.nonnegative)
        builder.quantize_activation(tensor, params[tensor], consumers)
    for node, axis in plan.weights:
        w_scale = builder.quantize_weight(node, 1, axis)
        bias = _corrected_bias(builder, node, axis, channel_means)
        if flavor == "ort" and len(node.input) > 2 and node.input[2] and node.input[0] in params:
            # Integer Conv/Gemm kernels need an int32 bias at scale input_scale * weight_scale.
            builder.quantize_bias(node, 2, np.float32(params[node.input[0]].scale) * w_scale, bias)
        elif bias is not None:
            builder.replace_constant(node, 2, bias, "bias_corrected")
    return builder.build(), missing


def _corrected_bias(builder: QDQBuilder, node: onnx.NodeProto, axis: int,
                    channel_means: dict[str, list[float]] | None) -> np.ndarray | None:
    if not channel_means or node.input[0] not in channel_means or len(node.input) < 3 or not node.input[2]:
        return None
    bias = builder.index.initializer_array(node.input[2])
    shift = bias_shift(node, axis, builder.weight_errors[node.input[1]], channel_means[node.input[0]])
    if bias is None or shift is None or shift.shape != bias.shape:
        return None
    return bias.astype(np.float64) - shift


def _ort_params(index: GraphIndex, tensor: str, amax: dict[str, float],
                known: dict[str, ActivationQuant], nonnegative: set[str]) -> ActivationQuant:
    producer = index.producer.get(tensor)
    if producer is not None and producer.op_type in DATA_MOVEMENT_OPS and producer.input[0] in known:
        return known[producer.input[0]]  # same scale in and out: ORT drops the Q/DQ pair
    a = amax[tensor]
    if tensor in nonnegative:
        return ActivationQuant(activation_scale(a, 255), 0, "uint8")
    return ActivationQuant(activation_scale(a, 127), 128, "uint8")
