"""Read-only views of an ONNX graph: producers, consumers, element types, activations, signs.

Only float tensors are ever observed or quantized. Element types come from ONNX shape/type
inference (`onnx.shape_inference.infer_shapes`, run on a copy stripped of large initializer data
so that models with external data or over 2 GB infer too); where inference says nothing (an op it
does not know, a model it rejects) a small propagation fills in: Shape/Size/ArgMax/NonZero give
int64, comparisons bool, Cast its `to`, anything else the type of its first typed input.

An *activation* depends on the values of the graph input. Initializers, Constant nodes, and the
outputs of Shape/Size (they depend on the input's shape only: the shape subgraphs of exported
transformers, including the float `sqrt(head_dim)` some exporters compute from them) are static,
as is everything computed only from static tensors.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

# Element types an activation may have to be observed and quantized (QuantizeLinear's inputs).
FLOAT_TYPES = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16})
# Ops whose output is >= 0 whatever their input.
_NONNEGATIVE_OPS = {"Relu", "Sigmoid", "Softmax", "Abs", "Exp", "HardSigmoid"}
# Ops that keep the sign of their (first) input.
_SIGN_PRESERVING = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Reshape",
                    "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Resize",
                    "Slice", "Split", "Gather", "Pad", "Upsample", "DepthToSpace", "SpaceToDepth"}
# Data-movement ops: int8 in, int8 out, same scale.
DATA_MOVEMENT_OPS = {"Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity",
                     "MaxPool", "Slice", "Gather", "Split", "Resize", "DepthToSpace", "SpaceToDepth"}
# Outputs that depend on the input's shape only, never on its values.
_SHAPE_OPS = {"Shape", "Size"}
_INT64_OUTPUT_OPS = {"Shape", "Size", "ArgMax", "ArgMin", "NonZero", "NonMaxSuppression"}
_BOOL_OUTPUT_OPS = {"Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Not", "And", "Or",
                    "Xor", "IsNaN", "IsInf"}
# Initializers with more values than this are emptied in the copy given to shape inference.
_INFERENCE_KEEP_VALUES = 1024


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _value_info_type(vi: onnx.ValueInfoProto) -> int | None:
    t = vi.type
    return t.tensor_type.elem_type if t.HasField("tensor_type") and t.tensor_type.elem_type else None


def inference_skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` without the data of large initializers: inference needs their types
    and dims (and the values of small ones, such as Reshape's shape), never weight values."""
    skeleton = onnx.ModelProto()
    skeleton.ir_version = model.ir_version
    skeleton.opset_import.extend(model.opset_import)
    g = skeleton.graph
    src = model.graph
    g.name = src.name
    g.input.extend(src.input)
    g.output.extend(src.output)
    g.value_info.extend(src.value_info)
    g.node.extend(src.node)
    for init in src.initializer:
        small = init.data_location != TensorProto.EXTERNAL and math.prod(init.dims) <= _INFERENCE_KEEP_VALUES
        if small:
            g.initializer.append(init)
        else:
            # Dims and type only; shape inference reads values of small (shape) tensors alone.
            g.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    # IR < 4 lists initializers as inputs already; drop the duplicates added above.
    seen: set[str] = set()
    unique = [i for i in g.input if not (i.name in seen or seen.add(i.name))]
    del g.input[:]
    g.input.extend(unique)
    if skeleton.ir_version < 4:
        skeleton.ir_version = 4
    return skeleton


def infer_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type (TensorProto enum) of every tensor of the main graph that can be known."""
    g = model.graph
    types: dict[str, int] = {}
    for init in g.initializer:
        types[init.name] = init.data_type
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        t = _value_info_type(vi)
        if t is not None:
            types.setdefault(vi.name, t)
    try:
        inferred = onnx.shape_inference.infer_shapes(inference_skeleton(model), strict_mode=False)
        for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
            t = _value_info_type(vi)
            if t is not None:
                types.setdefault(vi.name, t)
    except Exception:  # an op or model inference rejects: the propagation below decides
        pass
    for node in g.node:  # topological order
        if node.op_type == "Constant":
            value = _attr(node, "value")
            if isinstance(value, TensorProto):
                types.setdefault(node.output[0], value.data_type)
            continue
        if node.op_type in _INT64_OUTPUT_OPS:
            default = TensorProto.INT64
        elif node.op_type in _BOOL_OUTPUT_OPS:
            default = TensorProto.BOOL
        elif node.op_type == "Cast":
            default = _attr(node, "to")
        else:
            default = next((types[i] for i in node.input if i in types), None)
        for out in node.output:
            if out and out not in types and default is not None:
                types[out] = default
    return types


class GraphIndex:
    def __init__(self, model: onnx.ModelProto, types: dict[str, int] | None = None):
        self.model = model
        g = model.graph
        self.initializers = {i.name: i for i in g.initializer}
        self.constants = {n.output[0]: n for n in g.node if n.op_type == "Constant"}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in g.node:
            for out in node.output:
                self.producer[out] = node
            for name in node.input:
                if name:
                    self.consumers[name].append(node)
        self.graph_inputs = [i.name for i in g.input if i.name not in self.initializers]
        self.graph_outputs = {o.name for o in g.output}
        self._types = types
        self._static: dict[str, bool] = {}
        self._nonneg: dict[str, bool] = {}

    # -- types -------------------------------------------------------------------------------
    @property
    def types(self) -> dict[str, int]:
        if self._types is None:
            self._types = infer_types(self.model)
        return self._types

    def elem_type(self, name: str) -> int | None:
        return self.types.get(name)

    def is_float(self, name: str) -> bool:
        return self.types.get(name) in FLOAT_TYPES

    # -- static vs activation ----------------------------------------------------------------
    def is_static(self, name: str) -> bool:
        """True for initializers, constants, shape-only values and anything computed from them."""
        if name in self._static:
            return self._static[name]
        if name in self.initializers or name in self.constants or not name:
            result = True
        elif name in self.graph_inputs:
            result = False
        else:
            node = self.producer.get(name)
            result = node is not None and (node.op_type in _SHAPE_OPS or all(self.is_static(i) for i in node.input))
        self._static[name] = result
        return result

    def is_activation(self, name: str) -> bool:
        return bool(name) and not self.is_static(name)

    def is_quantizable(self, name: str) -> bool:
        """A float activation: the only kind of tensor calib observes or quantizes."""
        return self.is_activation(name) and self.is_float(name)

    def initializer_array(self, name: str) -> np.ndarray | None:
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        if name in self.constants:
            value = _attr(self.constants[name], "value")
            if isinstance(value, TensorProto):
                return numpy_helper.to_array(value)
        return None

    def constant_spec(self, name: str) -> tuple[int, tuple[int, ...]] | None:
        """(element type, dims) of a constant, without converting its values (weights can be big)."""
        if name in self.initializers:
            init = self.initializers[name]
            return init.data_type, tuple(init.dims)
        if name in self.constants:
            value = _attr(self.constants[name], "value")
            if isinstance(value, TensorProto):
                return value.data_type, tuple(value.dims)
        return None

    def activations(self) -> list[str]:
        """Float activation tensors in topological order: the graph inputs, then node outputs."""
        names = [i for i in self.graph_inputs if self.is_float(i)]
        for node in self.model.graph.node:
            names.extend(o for o in node.output if o and self.is_quantizable(o))
        return names

    # -- signs -------------------------------------------------------------------------------
    def is_nonnegative(self, name: str) -> bool:
        """Structural sign analysis: the tensor can never hold a negative value."""
        if name in self._nonneg:
            return self._nonneg[name]
        self._nonneg[name] = False  # guards against cycles
        node = self.producer.get(name)
        result = False
        if node is not None:
            op = node.op_type
            if op in _NONNEGATIVE_OPS:
                result = True
            elif op == "Clip":
                lo = self.initializer_array(node.input[1]) if len(node.input) > 1 and node.input[1] else None
                result = lo is not None and float(np.min(lo)) >= 0
            elif op in _SIGN_PRESERVING:
                result = self.is_nonnegative(node.input[0])
            elif op in ("Add", "Concat", "Max", "Mul"):
                acts = [i for i in node.input if self.is_activation(i)]
                consts = [self.initializer_array(i) for i in node.input if i and not self.is_activation(i)]
                result = bool(acts) and all(self.is_nonnegative(i) for i in acts) and all(
                    c is not None and float(np.min(c)) >= 0 for c in consts)
        self._nonneg[name] = result
        return result
