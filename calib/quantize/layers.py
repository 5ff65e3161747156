"""Layers: the ops that own a flavor's Q/DQ, and which Q/DQ stay when some layers are float.

A *layer* is one op of the plan that quantizes something for itself: a weighted op (its
activation inputs, its int8 weight and, in the ort flavor, its int32 bias), or an op without
weights whose inputs or output the flavor quantizes (a residual Add; in the ort flavor also the
integer Mul/Concat/Sigmoid/pools). Data movement ops are not layers: they carry their input's
scale through and are quantized when what reads them is. Together the layers own every Q/DQ
of the plan, so "every layer float" is the FP32 model and "every layer quantized" the INT8 model.

A float layer reads the float tensor, per consumer, while the quantized readers of the same
tensor keep reading its DequantizeLinear output; it keeps its float weight (and input) together
(ONNX Runtime 1.32 miscomputes DequantizeLinear -> Conv with a float weight under ORT_ENABLE_ALL).
A tensor stays quantized when
  (a) a quantized layer reads it for its own rule, or
  (b) a data movement op whose output stays quantized reads it, or
  (c) the quantized layer that writes it needs its output quantized (ort: QLinearConv writes
      uint8) and something other than a layer reads it, or
  (d) a data movement op of the plan writes it from a quantized input and something other than
      a layer reads it;
and then its readers that are not layers read the DequantizeLinear output, as in the full model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import onnx

from calib.errors import CalibError
from calib.quantize.flavor import WEIGHTED_OPS, Flavor, Plan


@dataclass(frozen=True)
class Layer:
    id: str                 # the node name, or "<op>:<output>" for an unnamed node
    op_type: str
    position: int           # index in the (flavor-rewritten) graph: topological order
    inputs: tuple[str, ...]  # the quantized activation inputs
    weight: str | None      # the quantized weight initializer, if any

    @property
    def weighted(self) -> bool:
        return self.op_type in WEIGHTED_OPS


def _node_id(node: onnx.NodeProto) -> str:
    return node.name or f"{node.op_type}:{node.output[0]}"


class LayerMap:
    """One flavor plan, and which of its nodes are layers."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.index = plan.index
        self.nodes = list(plan.model.graph.node)
        self.weights = {id(node): axis for node, axis in plan.weights}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for tensor, consumers in plan.activations.items():
            self.consumers[tensor] = list(self.index.consumers.get(tensor, [])) if consumers is None else list(consumers)
        quantized_inputs: dict[int, list[str]] = {}
        for tensor in plan.activations:
            for node in plan.readers.get(tensor, ()):
                quantized_inputs.setdefault(id(node), []).append(tensor)
        owners = {id(node) for node in plan.outputs.values()}
        self.layers: list[Layer] = []
        self.layer_node: dict[str, onnx.NodeProto] = {}
        for pos, node in enumerate(self.nodes):
            if node.op_type in plan.passthrough:
                continue
            if id(node) not in quantized_inputs and id(node) not in self.weights and id(node) not in owners:
                continue
            lid = _node_id(node)
            if lid in self.layer_node:
                lid = f"{lid}#{pos}"
            self.layer_node[lid] = node
            weight = node.input[1] if id(node) in self.weights else None
            self.layers.append(Layer(lid, node.op_type, pos, tuple(quantized_inputs.get(id(node), ())), weight))
        # Data movement nodes of the plan: passthrough ops that read a plan tensor and write one.
        self.movers = {id(n): n for tensor in plan.activations for n in plan.readers.get(tensor, ())
                       if n.op_type in plan.passthrough and any(o in plan.activations for o in n.output)}
        self.units = {id(n) for n in self.layer_node.values()}
        position = {o: i for i, n in enumerate(self.nodes) for o in n.output}
        self.topological = sorted(plan.activations, key=lambda t: position.get(t, -1))
        # Read by something other than a layer (a data movement op or a float op).
        self.nonlayer = {t: any(id(n) not in self.units for n in self.index.consumers.get(t, []))
                         for t in plan.activations}
        self.written_by_mover = {t: self.index.producer[t] for t in plan.activations
                                 if id(self.index.producer.get(t)) in self.movers}

    def select(self, layer_ids: set[str]) -> tuple[dict[str, list[onnx.NodeProto] | None], set[int]]:
        """The Q/DQ of a model with exactly `layer_ids` quantized: tensor -> readers of its
        DequantizeLinear output (None: every reader), in plan order; and the quantized nodes."""
        unknown = sorted(layer_ids - set(self.layer_node))
        if unknown:
            raise CalibError(f"unknown layer(s) {', '.join(unknown[:3])} for this model and Q/DQ flavor")
        plan, units = self.plan, self.units
        on = {id(self.layer_node[lid]) for lid in layer_ids}
        quantized: set[str] = set()
        movers_on: set[int] = set()
        # Rules (a)-(c) of the module docstring look at readers: walk the tensors from the last.
        for tensor in reversed(self.topological):
            readers = plan.readers.get(tensor, ())
            owner = plan.outputs.get(tensor)
            if (any(id(n) in on or id(n) in movers_on for n in readers)
                    or (owner is not None and id(owner) in on and self.nonlayer[tensor])):
                quantized.add(tensor)
                if tensor in self.written_by_mover:
                    movers_on.add(id(self.written_by_mover[tensor]))
        # Rule (d) looks at the writer: walk them from the first.
        for tensor in self.topological:
            mover = self.written_by_mover.get(tensor)
            if (tensor not in quantized and mover is not None and mover.input[0] in quantized
                    and self.nonlayer[tensor]):
                quantized.add(tensor)
                movers_on.add(id(mover))
        selection: dict[str, list[onnx.NodeProto] | None] = {}
        for tensor, consumers in plan.activations.items():
            if tensor not in quantized:
                continue
            every = self.consumers[tensor]
            chosen = [n for n in every if id(n) in on or id(n) in movers_on]
            if consumers is None:
                chosen += [n for n in every if id(n) not in units and id(n) not in self.movers]
                if not chosen:
                    continue
                selection[tensor] = None if len(chosen) == len(every) else chosen
            elif chosen:
                selection[tensor] = chosen
        return selection, on | movers_on


def layer_map(model: onnx.ModelProto, flavor: Flavor, types: dict[str, int] | None = None,
              exclude: Sequence[str] = (), exclude_ops: Sequence[str] = (), protect_heads: bool = True) -> LayerMap:
    return LayerMap(flavor.plan(model, types, exclude=exclude, exclude_ops=exclude_ops, protect_heads=protect_heads))


def quantizable_layers(model: onnx.ModelProto, flavor: "str | Flavor", exclude: Sequence[str] = (),
                       exclude_ops: Sequence[str] = (), protect_heads: bool = True) -> list[Layer]:
    """The layers of `model` under `flavor`, in graph order (nodes kept float by the head
    analysis or the user's `exclude`/`exclude_ops` are none: calib.quantize.heads)."""
    from calib.quantize.registry import get_flavor

    return layer_map(model, get_flavor(flavor), None, exclude, exclude_ops, protect_heads).layers


def resolve_layers(layers: LayerMap, float_layers: Iterable[str] = (),
                   quantized_layers: Iterable[str] | None = None) -> set[str]:
    """The ids of the quantized layers: exactly `quantized_layers` when given, else every layer
    but `float_layers`."""
    if quantized_layers is not None:
        return set(quantized_layers)
    every = {layer.id for layer in layers.layers}
    float_set = set(float_layers)
    unknown = sorted(float_set - every)
    if unknown:
        raise CalibError(f"unknown layer(s) {', '.join(unknown[:3])} for this model and Q/DQ flavor")
    return every - float_set
