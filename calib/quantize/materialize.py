"""One materializer: a flavor's plan and the calibrated ranges in, a Q/DQ ONNX model out.

Full INT8 models, partial ones (some layers left in float: `calib sensitivity`, fallback), with or
without bias correction, for every flavor, come from `quantize_model`. The flavor decides the
placement, the activation parameters and the bias handling (calib.quantize.flavor); the graph
surgery is calib.quantize.qdq's.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np
import onnx

from calib.errors import CalibError
from calib.quantize.flavor import Flavor, Plan
from calib.quantize.heads import Excluded
from calib.quantize.layers import LayerMap, resolve_layers
from calib.quantize.naming import float_name, quantized_name
from calib.quantize.qdq import ActivationQuant, QDQBuilder
from calib.quantize.graph import GraphIndex
from calib.quantize.registry import get_flavor, registered_flavor_names


class MissingScales(CalibError):
    def __init__(self, missing: list[str]):
        self.missing = missing
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        super().__init__(f"the cache has no scale for {len(missing)} quantized tensor(s): {shown}")


def plan_for(model: onnx.ModelProto, flavor: str | Flavor, exclude: Sequence[str] = (),
             exclude_ops: Sequence[str] = (), protect_heads: bool = True) -> Plan:
    """`flavor`'s plan on a private copy of `model`, which the plan then owns. `exclude`
    (node-name regexes), `exclude_ops` (op types) and the head analysis keep nodes float
    (calib.quantize.heads)."""
    return get_flavor(flavor).plan(model, exclude=exclude, exclude_ops=exclude_ops, protect_heads=protect_heads)


def required_tensors(model: onnx.ModelProto, flavor: str | Flavor, exclude: Sequence[str] = (),
                     exclude_ops: Sequence[str] = (), protect_heads: bool = True) -> list[str]:
    """The activations `flavor` quantizes in `model` (every one needs a calibrated range)."""
    return list(plan_for(model, flavor, exclude, exclude_ops, protect_heads).activations)


def calibrated_tensors(prepared: onnx.ModelProto) -> list[str]:
    """The activations the built-in (registered) Q/DQ flavors quantize: one cache serves them all.
    Entry-point plug-ins are not loaded here, so a broken one cannot break calibration, and an
    installed one does not invalidate every existing cache; a plug-in that needs other tensors
    gets a one-line MissingScales when it is used. Conv
    outputs that only feed a ReLU6 are left out (TensorRT fuses them away; the ort flavor folds
    the ReLU): observing them would cost a third more time for scales nothing uses."""
    need = {t for name in registered_flavor_names() for t in required_tensors(prepared, name)}
    return [t for t in GraphIndex(prepared).activations() if t in need]


def weighted_inputs(prepared: onnx.ModelProto) -> list[str]:
    """Activations read by ops with constant weights: their channel means drive bias correction."""
    plan = plan_for(prepared, "tensorrt")
    return list(dict.fromkeys(node.input[0] for node, _ in plan.weights))


def excluded_nodes(model: onnx.ModelProto, flavor: str | Flavor, exclude: Sequence[str] = (),
                   exclude_ops: Sequence[str] = (), protect_heads: bool = True) -> Excluded:
    """The nodes `flavor`'s placement keeps float in `model` and why (heads, the user's
    exclusions), and the user's regexes/op types that matched nothing: for the cache metadata and
    the reports (`Excluded.to_json()`)."""
    return plan_for(model, flavor, exclude, exclude_ops, protect_heads).excluded


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


def corrected_bias(builder: QDQBuilder, node: onnx.NodeProto, axis: int,
                   channel_means: Mapping[str, list[float]] | None) -> np.ndarray | None:
    """`node`'s bias minus the mean shift its (already quantized) weight causes, or None."""
    if not channel_means or node.input[0] not in channel_means or len(node.input) < 3 or not node.input[2]:
        return None
    bias = builder.index.initializer_array(node.input[2])
    shift = bias_shift(node, axis, builder.weight_error(node.input[1]), channel_means[node.input[0]])
    if bias is None or shift is None or shift.shape != bias.shape:
        return None
    return bias.astype(np.float64) - shift


def quantize_model(model: onnx.ModelProto, amax: Mapping[str, float], flavor: str | Flavor,
                   allow_missing: bool = False, channel_means: Mapping[str, list[float]] | None = None,
                   float_layers: Iterable[str] = (),
                   quantized_layers: Iterable[str] | None = None, exclude: Sequence[str] = (),
                   exclude_ops: Sequence[str] = (), protect_heads: bool = True) -> tuple[onnx.ModelProto, list[str]]:
    """The Q/DQ model of `flavor` from the calibrated `amax` of each tensor, and the tensors left
    in float for lack of a range (only non-empty with `allow_missing`: `calib build --force`).

    `float_layers` leaves those layers (ids from `quantizable_layers`) in float; with
    `quantized_layers`, exactly those are quantized. With `channel_means` (per-channel means of
    weighted ops' inputs, from calibration), biases are corrected for the mean shift that weight
    quantization causes (see bias_shift); a float layer keeps its own bias. `exclude` (node-name
    regexes), `exclude_ops` (op types) and `protect_heads` (the head analysis) choose the nodes
    the placement keeps float (calib.quantize.heads); layer ids are those of the same placement."""
    flavor = get_flavor(flavor)
    plan = flavor.plan(model, exclude=exclude, exclude_ops=exclude_ops, protect_heads=protect_heads)
    float_layers = list(float_layers)
    partial = bool(float_layers) or quantized_layers is not None
    if partial:
        layers = LayerMap(plan)
        selection, on = layers.select(resolve_layers(layers, float_layers, quantized_layers))
    else:
        selection, on = plan.activations, None
    missing = [t for t in selection if t not in amax]
    if missing and not allow_missing:
        raise MissingScales(missing)
    builder = QDQBuilder(plan.model, plan.index.types)
    params: dict[str, ActivationQuant] = {}
    for tensor in plan.activations:
        if tensor not in amax:
            continue
        # Parameters of tensors left float too: a data-movement output after them may reuse them.
        params[tensor] = flavor.activation_params(plan, tensor, amax, params)
        if tensor in selection:
            builder.quantize_activation(tensor, params[tensor], selection[tensor])
    for node, axis in plan.weights:
        if on is not None and id(node) not in on:
            continue  # a float layer keeps its float weight (and its float input)
        w_scale = builder.quantize_weight(node, 1, axis)
        bias = corrected_bias(builder, node, axis, channel_means)
        has_bias = len(node.input) > 2 and bool(node.input[2])
        if flavor.int32_bias and has_bias and node.input[0] in params and _reads_quantized(selection, node):
            # Integer Conv/Gemm kernels need an int32 bias at scale input_scale * weight_scale.
            builder.quantize_bias(node, 2, np.float32(params[node.input[0]].scale) * w_scale, bias)
        elif bias is not None:
            builder.replace_bias(node, 2, bias)
    qdq = builder.build()
    return (_unfold(qdq, plan) if partial else qdq), missing


def _reads_quantized(selection: Mapping[str, list | None], node: onnx.NodeProto) -> bool:
    if node.input[0] not in selection:
        return False
    readers = selection[node.input[0]]
    return readers is None or any(r is node for r in readers)


def _unfold(model: onnx.ModelProto, plan: Plan) -> onnx.ModelProto:
    """Give the float readers of a folded-ReLU tensor the ReLU back. The producer keeps writing
    the pre-ReLU values under the tensor's name and its QuantizeLinear keeps reading them (uint8
    with zero point 0 clips as the ReLU would), so a model whose readers are all quantized is
    unchanged; a float reader reads `<tensor>_float` = ReLU(tensor)."""
    nodes = list(model.graph.node)
    position = {o: i for i, n in enumerate(nodes) for o in n.output}
    inserts = []
    for tensor, act in plan.folded.items():
        raw = [n for n in nodes if tensor in n.input
               and not (n.op_type == "QuantizeLinear" and n.output[0] == quantized_name(tensor))]
        if not raw:
            continue
        fixed = float_name(tensor)
        for n in raw:
            for i, name in enumerate(n.input):
                if name == tensor:
                    n.input[i] = fixed
        relu = onnx.NodeProto()
        relu.CopyFrom(act)
        relu.input[0] = tensor
        relu.output[0] = fixed
        relu.name = f"{fixed}_{act.op_type}"
        after = max(position.get(i, -1) for i in relu.input if i)
        inserts.append((after, relu))
    for after, relu in sorted(inserts, key=lambda x: -x[0]):
        nodes.insert(after + 1, relu)
    if inserts:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return model
