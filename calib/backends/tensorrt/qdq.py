"""What Q/DQ an ONNX model carries, read before TensorRT parses it: any at all (explicit INT8),
and whether it is calib's `ort` flavor, which no TensorRT builds.

TensorRT's explicit quantization is symmetric signed INT8: QuantizeLinear/DequantizeLinear with
an int8 zero point of 0, and biases left in float (TensorRT fuses them itself). calib's `ort`
flavor is ONNX Runtime's integer-kernel layout: uint8 activations with nonzero zero points and
int32 biases behind a DequantizeLinear. TensorRT-RTX 1.7's parser rejects the int32 bias
("input has type Int32 but must have type FP8, FP4, Int4, Int8, or UInt8"), and TensorRT takes
uint8 Q/DQ only on DLA (OnnxParserFlag.ENABLE_UINT8_AND_ASYMMETRIC_QUANTIZATION_DLA). calib
spots the layout here and says, in one line, to build the `tensorrt` flavor instead of showing a
parser dump. Pages:
https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/quantized-types-explicit-quantization.html
https://docs.nvidia.com/deeplearning/tensorrt-rtx/latest/inference-library/work-with-quantized-types.html
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}
FLAVOR_HINT = "build the tensorrt flavor (--qdq-flavor tensorrt)"


@dataclass(frozen=True)
class QdqFacts:
    qdq: bool                  # the model has QuantizeLinear/DequantizeLinear nodes
    ort_flavor: str | None     # what marks it as the ort flavor (None: not that layout)


def _constants(graph) -> dict:
    """Initializers and Constant-node outputs of one graph, by name (TensorProto, data unread)."""
    found = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and node.output:
                    found[node.output[0]] = a.t
    return found


def _nonzero(tensor) -> bool:
    from onnx import numpy_helper

    try:
        return bool(np.any(numpy_helper.to_array(tensor) != 0))
    except Exception:  # external or unreadable data: say nothing rather than guess
        return False


def ort_flavor_evidence(model) -> str | None:
    """Why `model` (an onnx.ModelProto) is in ONNX Runtime's Q/DQ layout, or None."""
    from onnx import TensorProto

    graphs = [model.graph]
    for graph in graphs:  # subgraphs of If/Loop bodies too
        for node in graph.node:
            graphs.extend(a.g for a in node.attribute if a.HasField("g"))
    for graph in graphs:
        consts = _constants(graph)
        for node in graph.node:
            if node.op_type not in QDQ_OPS:
                continue
            if node.op_type == "DequantizeLinear" and node.input[0] in consts \
                    and consts[node.input[0]].data_type == TensorProto.INT32:
                return f"an int32 bias into DequantizeLinear '{node.name or node.output[0]}'"
            zero = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            if zero is None:
                continue
            if zero.data_type == TensorProto.UINT8:
                return f"uint8 {node.op_type} '{node.name or node.output[0]}'"
            if _nonzero(zero):
                return f"a nonzero zero point in {node.op_type} '{node.name or node.output[0]}'"
    return None


def inspect_qdq(onnx_path: Path) -> QdqFacts:
    from calib.onnx_io import load_model

    model = load_model(onnx_path, external_data=False)
    nodes = list(model.graph.node)
    for fn in model.functions:
        nodes.extend(fn.node)
    qdq = any(n.op_type in QDQ_OPS for n in nodes)
    return QdqFacts(qdq, ort_flavor_evidence(model) if qdq else None)


def ort_flavor_in_parser_error(text: str) -> str | None:
    """The parser's own words for the ort layout (a Q/DQ node fed int32 or uint8), else None."""
    if not any(op in text for op in QDQ_OPS):
        return None
    for marker, what in (("Int32", "an int32 input to a Q/DQ node"), ("UInt8", "a uint8 Q/DQ node"),
                         ("zero point", "a nonzero zero point"), ("zero_point", "a nonzero zero point")):
        if marker in text:
            return what
    return None


def ort_flavor_message(onnx_path: Path, evidence: str, product: str) -> str:
    return (f"{Path(onnx_path).name} is calib's ort Q/DQ flavor ({evidence}), which {product} cannot build: "
            f"{FLAVOR_HINT}")
