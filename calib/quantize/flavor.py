"""The Q/DQ flavor contract: where Q/DQ goes (a Plan), with which parameters, and how biases go.

A flavor is one backend's reading of the same calibrated ranges (the cache). It decides
- its placement plan (`plan(model)`): which activation tensors get a QuantizeLinear/
  DequantizeLinear pair and which of their readers read the DequantizeLinear output, and which
  weights become int8 behind a per-channel DequantizeLinear;
- its activation parameters (`activation_params`): scale, zero point and integer type of a
  tensor from its calibrated amax;
- its bias handling (`int32_bias`): a float bias that the backend fuses (TensorRT), or an int32
  bias at input_scale * weight_scale that integer kernels need (ONNX Runtime's QLinearConv/QGemm);
- its `default_backend`, the backend that runs it.

Flavors register by name (`calib.quantize.registry`), as calibrators do; `calib.quantize.materialize`
turns a plan into a Q/DQ model, the same way for every flavor. The placement rules of the built-in
flavors are written down, with the documentation they follow, in docs/quantization.md.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar, Mapping, Sequence

import onnx

from calib.quantize.graph import FLOAT_TYPES, GraphIndex
from calib.quantize.heads import Excluded, find_excluded
from calib.quantize.qdq import ActivationQuant

WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


def weight_axis(index: GraphIndex, node: onnx.NodeProto) -> int | None:
    """The output-channel axis of a weighted op's constant weight (input 1), None if not constant."""
    if node.op_type not in WEIGHTED_OPS or len(node.input) < 2 or index.is_activation(node.input[1]):
        return None
    spec = index.constant_spec(node.input[1])
    if spec is None or spec[0] not in FLOAT_TYPES or len(spec[1]) < 1:
        return None
    ndim = len(spec[1])
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return ndim - 1  # MatMul: per output column


@dataclass
class Plan:
    """What a flavor quantizes in `model`, a private copy the plan owns (its nodes are referred to).

    activations: tensor -> the readers of its DequantizeLinear output (None: every reader), in
        the order the Q/DQ pairs are made (it decides the order of the initializers written).
    readers: tensor -> the nodes whose own rule quantizes it (they own that Q/DQ: a layer left in
        float reads the float tensor again, see calib.quantize.layers).
    outputs: tensor -> the node whose integer kernel needs its output quantized (ort: QLinearConv
        writes uint8), so that node owns the Q/DQ too.
    passthrough: op types that carry their input's scale through unchanged (data movement); they
        are never layers of their own.
    folded: tensor -> the ReLU/Clip removed because the quantization of `tensor` clips as it did.
    excluded: the nodes kept float on purpose (heads, the user's exclusions: calib.quantize.heads);
        a flavor applies none of its rules to them (`keeps_float`).
    """

    model: onnx.ModelProto
    index: GraphIndex
    activations: dict[str, list[onnx.NodeProto] | None] = field(default_factory=dict)
    readers: dict[str, list[onnx.NodeProto]] = field(default_factory=dict)
    outputs: dict[str, onnx.NodeProto] = field(default_factory=dict)
    weights: list[tuple[onnx.NodeProto, int]] = field(default_factory=list)  # (node, weight axis)
    nonnegative: set[str] = field(default_factory=set)  # sign analysis of the model *before* folding
    passthrough: frozenset[str] = frozenset()
    folded: dict[str, onnx.NodeProto] = field(default_factory=dict)
    excluded: Excluded = field(default_factory=Excluded)
    float_nodes: frozenset[int] = frozenset()  # id() of the excluded nodes of `model`

    def exclude(self, exclude: Sequence[str] = (), exclude_ops: Sequence[str] = (),
                protect_heads: bool = True) -> None:
        """Decide the nodes of `model` kept float (calib.quantize.heads), before placement."""
        self.excluded, self.float_nodes = find_excluded(self.model, self.index, exclude, exclude_ops, protect_heads)

    def keeps_float(self, node: onnx.NodeProto) -> bool:
        """True for a node no rule may quantize (a head, a user exclusion)."""
        return id(node) in self.float_nodes

    def require(self, tensor: str, reader: onnx.NodeProto | None, all_readers: bool) -> None:
        """Quantize `tensor` for `reader` (its own rule), for every reader when `all_readers`:
        every reader but a weighted op kept float, which reads the float tensor with its float
        weight, as a float layer of a partial model does (calib.quantize.layers: ONNX Runtime 1.32
        miscomputes DequantizeLinear -> Conv with a float weight)."""
        consumers = None if all_readers else ([reader] if reader is not None else [])
        if all_readers and self.float_nodes:
            every = self.index.consumers.get(tensor, [])
            if any(self.keeps_float(c) and c.op_type in WEIGHTED_OPS for c in every):
                consumers = [c for c in every if not (self.keeps_float(c) and c.op_type in WEIGHTED_OPS)]
                if not consumers and reader is None:
                    return   # nothing would read its DequantizeLinear output
        if tensor in self.activations:
            old = self.activations[tensor]
            self.activations[tensor] = None if old is None or consumers is None else old + consumers
        else:
            self.activations[tensor] = consumers
        if reader is not None:
            self.readers.setdefault(tensor, []).append(reader)
        else:
            self.readers.setdefault(tensor, [])

    def require_output(self, tensor: str, producer: onnx.NodeProto) -> None:
        """Quantize `tensor` for every reader because `producer`'s integer kernel writes it."""
        self.require(tensor, None, all_readers=True)
        if tensor in self.activations:
            self.outputs.setdefault(tensor, producer)

    def add_weight(self, node: onnx.NodeProto) -> None:
        axis = weight_axis(self.index, node)
        if axis is not None:
            self.weights.append((node, axis))


class Flavor(ABC):
    """A Q/DQ flavor. Subclasses set `name`, `default_backend`, `int32_bias`, `description`,
    `passthrough`, and implement `place` (and `activation_params`); `rewrite` may change the
    private copy of the model first (the ort flavor folds ReLUs there)."""

    name: ClassVar[str]
    default_backend: ClassVar[str]
    int32_bias: ClassVar[bool] = False
    description: ClassVar[str] = ""
    passthrough: ClassVar[frozenset[str]] = frozenset()

    def plan(self, model: onnx.ModelProto, types: dict[str, int] | None = None, *, exclude: Sequence[str] = (),
             exclude_ops: Sequence[str] = (), protect_heads: bool = True) -> Plan:
        """The placement plan of this flavor on a private copy of `model` (`model` is not touched).
        `types` (tensor -> ONNX element type) skips type inference when the caller has them.
        `exclude` (node-name regexes), `exclude_ops` (op types) and the head analysis
        (`protect_heads`) keep nodes float (calib.quantize.heads); `place` skips them."""
        index = GraphIndex(model, types)
        copy = self.rewrite(model, index)
        plan = Plan(model=copy, index=GraphIndex(copy, index.types), passthrough=self.passthrough)
        plan.exclude(exclude, exclude_ops, protect_heads)
        self.place(plan, index)
        return plan

    def rewrite(self, model: onnx.ModelProto, index: GraphIndex) -> onnx.ModelProto:
        """A private copy of `model` for the plan to refer to (default: an exact copy)."""
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        return copy

    @abstractmethod
    def place(self, plan: Plan, original: GraphIndex) -> None:
        """Fill `plan` (activations, readers, outputs, weights) for `plan.model`; `original`
        indexes the model as given, before `rewrite`. Nodes for which `plan.keeps_float(node)`
        get no rule: no Q/DQ of their own, no integer kernel, no int8 weight."""

    @abstractmethod
    def activation_params(self, plan: Plan, tensor: str, amax: Mapping[str, float],
                          known: Mapping[str, ActivationQuant]) -> ActivationQuant:
        """Scale, zero point and type of `tensor`; `known` holds the tensors decided before it,
        in plan order (a data-movement output may reuse its input's parameters)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
