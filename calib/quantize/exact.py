"""The integer-exact evaluation graph of a Q/DQ model: int8 x int8 products summed exactly, then
a float rescale and the float bias, the arithmetic of an integer kernel (int32 accumulation,
float epilogue; TensorRT's int8 convolutions, ONNX Runtime's QLinearConv), in plain ONNX ops
that every execution provider runs literally.

Why: a Q/DQ graph run as written (DequantizeLinear -> float Conv -> QuantizeLinear) sums
products of float32 numbers, so its result depends on the order of the additions, which differs
between ONNX Runtime's CPU kernels, cuDNN's algorithms and TF32. Those differences are tiny, but
every QuantizeLinear turns a difference that crosses a rounding boundary into a whole level, and
the following layers amplify it: on EfficientNet-Lite0 the CPU and CUDA providers, or two CPU
optimisation levels, disagree on 0.2-0.8% of the top-1 predictions (99.2% on the 500 sample
images, benchmarks/RESULTS.md, "GPU"), about as many as INT8 itself changes. Summed as integers
the products are exact in any order, so every provider computes the same bits.

The rewrite, per Conv or Gemm whose input and weight both come from DequantizeLinear:

    x_int = DequantizeLinear(x_q, 1.0, x_zero_point)          # q - z: integer-valued float32
    w_int = DequantizeLinear(w_q, 1.0 per channel, w_zero_point)
    acc   = Conv(x_int, w_int)                                  # exact: see the bound below
    [acc  = Round(acc)]                                         # optional: absorbs any error < 0.5
    y     = acc * float32(s_x * s_w[c])  (+ the float bias the original Conv added)

float32 holds every integer below 2**24 exactly, so the sum is exact in any order when
max|x_int| * max_c sum|w_int[c]| < 2**24; layers past that bound (very wide, large weights) are
left as they were and listed in `kept`. Weights stay behind DequantizeLinear (scale 1) rather than
becoming float initializers, so ONNX Runtime's constant folding and Conv+Mul fusion, which would
fold the rescale back into float weights, cannot apply. TF32 is exact on these operands (integers
below 2**11 are exact in TF32's mantissa), so a session whose every Conv/Gemm was rewritten may
use it (`all_exact`).

Not rewritten: MatMul (attention's activation x activation products, and Linear layers exported
as MatMul + Add), float16/bfloat16 Q/DQ, activations that are not int8/uint8, models with
subgraphs (If/Loop), and the float ops between the Q/DQ pairs (pools, Add, Sigmoid), whose float
results are still order-dependent and amplified like any other when a QuantizeLinear reads them.
So bit-identity across providers holds for graphs whose order-dependent work is in the rewritten
layers (measured on EfficientNet-Lite0: benchmarks/RESULTS.md, "GPU"), not for every graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from calib.quantize.flavor import WEIGHTED_OPS as _COMPUTE_OPS   # the ops whose inputs get Q/DQ
from calib.quantize.naming import EXACT_ACCUMULATOR, EXACT_INTEGER, EXACT_RESCALE, EXACT_ROUNDED

EXACT_LIMIT = 2 ** 24
_RANGES = {onnx.TensorProto.INT8: (-128, 127), onnx.TensorProto.UINT8: (0, 255)}
# Ops whose float math TF32 may change (cuDNN/cuBLAS products).
_TF32_OPS = _COMPUTE_OPS | frozenset({"Einsum", "LSTM", "GRU", "RNN", "Attention", "MultiHeadAttention", "FusedMatMul"})


@dataclass
class ExactGraph:
    """The rewritten model, the layers rewritten, and those left as they were (with why)."""
    model: onnx.ModelProto
    rewritten: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)
    accumulators: set[str] = field(default_factory=set)   # names of the integer Conv/Gemm nodes made

    @property
    def all_exact(self) -> bool:
        """No float product op is left: TF32 cannot change any result of this graph."""
        return not any(n.op_type in _TF32_OPS and n.name not in self.accumulators for n in self.model.graph.node)


def has_qdq(model: onnx.ModelProto) -> bool:
    return any(n.op_type == "QuantizeLinear" for n in model.graph.node)


def emulates_integer_kernels(model: onnx.ModelProto) -> bool:
    """Whether ONNX Runtime's CPU provider only emulates this Q/DQ model: activations quantized
    to int8 (the tensorrt flavor's symmetric layout, which ONNX Runtime runs mostly as float
    convolutions on dequantized inputs) rather than uint8 (the ort flavor, fused into its integer
    kernels, which is what it deploys)."""
    inits = {i.name: i.data_type for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and len(node.input) > 2 and node.input[2]:
            if inits.get(node.input[2]) == onnx.TensorProto.INT8:
                return True
    return False


def has_subgraphs(model: onnx.ModelProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for n in model.graph.node for a in n.attribute)


def runs_exact(model: onnx.ModelProto, device_kind: str) -> bool:
    """Whether ONNX Runtime should run this Q/DQ graph as its integer-exact graph on a "cpu" or
    "cuda" provider: a Q/DQ model without subgraphs, on CUDA always (no integer kernels there),
    on the CPU only where ONNX Runtime emulates it. The one rule for the runner and the reports."""
    if not has_qdq(model) or has_subgraphs(model):
        return False
    return device_kind == "cuda" or emulates_integer_kernels(model)


def integer_exact(model: onnx.ModelProto, round_accumulator: bool = False) -> ExactGraph:
    """A copy of `model` with every eligible Conv/Gemm rewritten (see the module docstring).
    A model with subgraphs (If/Loop/Scan) comes back unchanged."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    result = ExactGraph(out)
    if has_subgraphs(model):
        result.kept = {n.name or n.output[0]: "the model has subgraphs" for n in graph.node if n.op_type in _COMPUTE_OPS}
        return result
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    types = _known_types(graph)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    taken = ({n.name for n in graph.node} | {t for n in graph.node for t in (*n.input, *n.output)}
             | set(inits) | {i.name for i in graph.input} | {o.name for o in graph.output})
    nodes: list[onnx.NodeProto] = []
    for index, node in enumerate(graph.node):
        why = _ineligible(node, producer, inits, types)
        if why is None:
            stem = _unique(node.name or f"node{index}", taken)
            built = _rewrite(node, stem, producer, inits, graph, round_accumulator and opset >= 11, types)
            if isinstance(built, str):
                why = built
            else:
                nodes.extend(built)
                result.rewritten.append(node.name or node.output[0])
                result.accumulators.add(_names(stem)["acc"])
                continue
        if node.op_type in _COMPUTE_OPS:
            result.kept[node.name or node.output[0]] = why
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    _drop_unused_dequantize(graph)
    return result


def _names(stem: str) -> dict[str, str]:
    """Every node and tensor name `_rewrite` makes from `stem`, by role."""
    i, r = stem + EXACT_INTEGER, stem + EXACT_RESCALE
    return {"one": i + "_one", "ones": i + "_ones", "x": i + "_x", "w": i + "_w", "acc": stem + EXACT_ACCUMULATOR,
            "rounded": stem + EXACT_ROUNDED, "rescale": r, "multiplier": r + "_multiplier", "bias": r + "_bias"}


def _unique(stem: str, taken: set[str]) -> str:
    """`stem`, or `stem_2`, `stem_3`, ...: the first whose generated names are all new."""
    candidate, k = stem, 1
    while any(name in taken for name in _names(candidate).values()):
        k += 1
        candidate = f"{stem}_{k}"
    taken.update(_names(candidate).values())
    return candidate


def _known_types(graph: onnx.GraphProto) -> dict[str, int]:
    """Element types of tensors known without inference: initializers, inputs, value_info,
    outputs, and QuantizeLinear outputs (the zero point's type, `output_dtype`, else uint8)."""
    types = {i.name: i.data_type for i in graph.initializer}
    for v in list(graph.input) + list(graph.value_info) + list(graph.output):
        if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type:
            types.setdefault(v.name, v.type.tensor_type.elem_type)
    for n in graph.node:
        if n.op_type != "QuantizeLinear":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if len(n.input) > 2 and n.input[2] and n.input[2] in types:
            types[n.output[0]] = types[n.input[2]]
        elif attrs.get("output_dtype"):
            types[n.output[0]] = int(attrs["output_dtype"])
        else:
            types[n.output[0]] = onnx.TensorProto.UINT8
    return types


def _ineligible(node: onnx.NodeProto, producer: dict, inits: dict, types: dict) -> str | None:
    if node.op_type not in ("Conv", "Gemm"):
        return "not a Conv or Gemm" if node.op_type in _COMPUTE_OPS else "not a compute op"
    if len(node.input) < 2:
        return "no weight"
    dq_x, dq_w = producer.get(node.input[0]), producer.get(node.input[1])
    if dq_x is None or dq_w is None or dq_x.op_type != "DequantizeLinear" or dq_w.op_type != "DequantizeLinear":
        return "input or weight not from DequantizeLinear (a float layer)"
    if dq_w.input[0] not in inits or any(i not in inits for i in dq_w.input[1:] if i) \
            or any(i not in inits for i in dq_x.input[1:] if i):
        return "weight or scales are not constants"
    if types.get(dq_x.input[0]) not in _RANGES or inits[dq_w.input[0]].data_type not in _RANGES:
        return "input or weight is not int8/uint8"
    if inits[dq_x.input[1]].data_type != onnx.TensorProto.FLOAT or inits[dq_w.input[1]].data_type != onnx.TensorProto.FLOAT:
        return "scales are not float32"
    if node.op_type == "Gemm":
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            return "Gemm with transA, alpha or beta"
    if len(node.input) > 2 and node.input[2]:
        if node.input[2] in inits:
            if inits[node.input[2]].data_type != onnx.TensorProto.FLOAT:
                return "bias is not float32"
        else:
            b = producer.get(node.input[2])
            if b is None or b.op_type != "DequantizeLinear" or any(i not in inits for i in b.input if i):
                return "bias is not a constant"
            if inits[b.input[1]].data_type != onnx.TensorProto.FLOAT:
                return "bias scale is not float32"
    return None


def _array(name: str, inits: dict) -> np.ndarray:
    return numpy_helper.to_array(inits[name])


def _zero_point(dq: onnx.NodeProto, inits: dict) -> np.ndarray:
    if len(dq.input) > 2 and dq.input[2]:
        return _array(dq.input[2], inits).astype(np.int64)
    return np.zeros((), np.int64)




def _bias(node: onnx.NodeProto, producer: dict, inits: dict) -> np.ndarray | None:
    """The float32 bias the original node adds (a DequantizeLinear'd int32 bias evaluated as
    that op computes it: float32(q) * float32(scale))."""
    if len(node.input) < 3 or not node.input[2]:
        return None
    if node.input[2] in inits:
        return _array(node.input[2], inits).astype(np.float32)
    dq = producer[node.input[2]]
    q = _array(dq.input[0], inits).astype(np.int64) - _zero_point(dq, inits)
    return (q.astype(np.float32) * _array(dq.input[1], inits).astype(np.float32)).astype(np.float32)


def _rewrite(node, stem: str, producer: dict, inits: dict, graph, round_accumulator: bool, types: dict):
    dq_x, dq_w = producer[node.input[0]], producer[node.input[1]]
    s_x = _array(dq_x.input[1], inits).astype(np.float32)
    if s_x.size != 1:
        return "per-channel activation scale"
    x_range = _RANGES[types[dq_x.input[0]]]
    z_x = _zero_point(dq_x, inits)
    if z_x.size != 1:
        return "per-channel activation zero point"
    x_max = max(abs(x_range[0] - int(z_x.reshape(-1)[0])), abs(x_range[1] - int(z_x.reshape(-1)[0])))

    w_q = _array(dq_w.input[0], inits).astype(np.int64)
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    # Output channels of the weight: axis 0 for Conv and for Gemm with transB, axis 1 otherwise.
    channel_axis = 0 if node.op_type == "Conv" or attrs.get("transB", 0) else 1
    w_axis = {a.name: helper.get_attribute_value(a) for a in dq_w.attribute}.get("axis", 1)
    s_w = _array(dq_w.input[1], inits).astype(np.float32)
    z_w = _zero_point(dq_w, inits)
    channels = w_q.shape[channel_axis]
    if s_w.size != 1 and (w_axis % w_q.ndim != channel_axis or s_w.size != channels):
        return "weight scale is not per output channel"
    shape = [1] * w_q.ndim
    if s_w.size != 1:
        shape[channel_axis] = channels
    w_int = w_q - (z_w.reshape(shape) if z_w.size > 1 else z_w.reshape(()))
    per_channel = np.moveaxis(np.abs(w_int), channel_axis, 0).reshape(channels, -1).sum(axis=1)
    bound = x_max * int(per_channel.max(initial=0))
    if bound >= EXACT_LIMIT:
        return f"sums may reach {bound} >= 2**24 (not exact in float32)"

    bias = _bias(node, producer, inits)
    if bias is not None:
        if bias.size == 1:
            bias = np.full(channels, bias.reshape(-1)[0], np.float32)
        elif bias.size != channels:
            return "bias is not one value per output channel"

    n = _names(stem)
    graph.initializer.append(numpy_helper.from_array(np.array(1.0, np.float32), n["one"]))
    graph.initializer.append(numpy_helper.from_array(np.ones(s_w.shape, np.float32), n["ones"]))
    zero_x = [dq_x.input[2]] if len(dq_x.input) > 2 and dq_x.input[2] else []
    zero_w = [dq_w.input[2]] if len(dq_w.input) > 2 and dq_w.input[2] else []
    new = [helper.make_node("DequantizeLinear", [dq_x.input[0], n["one"]] + zero_x, [n["x"]], name=n["x"]),
           helper.make_node("DequantizeLinear", [dq_w.input[0], n["ones"]] + zero_w, [n["w"]], name=n["w"],
                            **({"axis": w_axis} if s_w.size != 1 else {}))]
    core = helper.make_node(node.op_type, [n["x"], n["w"]], [n["acc"]], name=n["acc"])
    core.attribute.extend(a for a in node.attribute if a.name not in ("alpha", "beta"))
    new.append(core)
    acc = n["acc"]
    if round_accumulator:
        new.append(helper.make_node("Round", [acc], [n["rounded"]], name=n["rounded"]))
        acc = n["rounded"]
    # One float32 multiplier per channel, rounded once, as an integer kernel's epilogue does.
    scale = (s_x.reshape(()) * s_w.reshape(-1)).astype(np.float32)
    out_shape = [1, channels, *([1] * (w_q.ndim - 2))] if node.op_type == "Conv" else [1, channels]
    graph.initializer.append(numpy_helper.from_array(
        scale.reshape(out_shape) if scale.size > 1 else scale.reshape(()), n["multiplier"]))
    scaled = node.output[0] if bias is None else n["rescale"]
    new.append(helper.make_node("Mul", [acc, n["multiplier"]], [scaled], name=n["rescale"]))
    if bias is not None:
        graph.initializer.append(numpy_helper.from_array(bias.reshape(out_shape).astype(np.float32), n["bias"]))
        new.append(helper.make_node("Add", [scaled, n["bias"]], [node.output[0]], name=n["bias"]))
    return new


def _drop_unused_dequantize(graph: onnx.GraphProto) -> None:
    """DequantizeLinear nodes nothing reads any more, and the constants only they read."""
    dropped: set[str] = set()
    while True:
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.output[0] not in used]
        if not dead:
            break
        dropped.update(i for n in dead for i in n.input)
        keep = [n for n in graph.node if n not in dead]
        del graph.node[:]
        graph.node.extend(keep)
    used = {i for n in graph.node for i in n.input} | {i.name for i in graph.input} | {o.name for o in graph.output}
    keep_inits = [i for i in graph.initializer if i.name in used or i.name not in dropped]
    del graph.initializer[:]
    graph.initializer.extend(keep_inits)
