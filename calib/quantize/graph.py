"""Read-only views of an ONNX graph: producers, consumers, activations, sign analysis."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import numpy_helper

# Ops whose output is >= 0 whatever their input.
_NONNEGATIVE_OPS = {"Relu", "Sigmoid", "Softmax", "Abs", "Exp"}
# Ops that keep the sign of their (first) input.
_SIGN_PRESERVING = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Reshape",
                    "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Resize",
                    "Slice", "Split", "Gather", "Pad", "Upsample", "DepthToSpace", "SpaceToDepth"}
# Data-movement ops: int8 in, int8 out, same scale (ONNX Runtime drops Q/DQ around them).
DATA_MOVEMENT_OPS = {"Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity",
                     "MaxPool", "Slice", "Gather", "Split", "Resize", "DepthToSpace", "SpaceToDepth"}


class GraphIndex:
    def __init__(self, model: onnx.ModelProto):
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
        self._static: dict[str, bool] = {}
        self._nonneg: dict[str, bool] = {}

    def is_static(self, name: str) -> bool:
        """True for initializers, constants and anything computed only from them."""
        if name in self._static:
            return self._static[name]
        if name in self.initializers or name in self.constants or not name:
            result = True
        elif name in self.graph_inputs:
            result = False
        else:
            node = self.producer.get(name)
            result = node is not None and all(self.is_static(i) for i in node.input)
        self._static[name] = result
        return result

    def is_activation(self, name: str) -> bool:
        return bool(name) and not self.is_static(name)

    def initializer_array(self, name: str) -> np.ndarray | None:
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        if name in self.constants:
            for attr in self.constants[name].attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
        return None

    def activations(self) -> list[str]:
        """Float activation tensors in topological order: the graph inputs, then node outputs."""
        names = list(self.graph_inputs)
        for node in self.model.graph.node:
            if node.op_type in ("Constant", "Shape", "Size"):
                continue
            names.extend(o for o in node.output if o and self.is_activation(o))
        return names

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
