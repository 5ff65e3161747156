"""Which ops stay float whatever the flavor: the model's heads, and what the user excludes.

Why: a detector's outputs are read by rank (the most confident anchors, then NMS), not by their
power. One int8 scale over boxes in pixels and scores in [0, 1] (a box+score Concat quantized, as
the ort flavor's QLinearConcat did) rounds every score to a level or two: a whole-output SQNR can
still read 50 dB while 4% of FP32's top-10 anchors survive. So, in both flavors, the ops that
produce graph outputs and the chains that feed them through shape ops and decode math stay float.

Rules, read off the graph's structure (never off names), one pass from the last node back:
- a node is *in a head* when each of its outputs is a graph output or is read only by nodes in a
  head (or by Shape/Size, which read no values), and it is a shape op (Reshape, Flatten, Transpose, Squeeze, Unsqueeze, Identity, Concat,
  Split, Slice, Gather, Expand, Tile) or decode math (Sigmoid, Softmax, Exp, Log, the box
  arithmetic Add/Sub/Mul/Div/Pow/Sqrt/Clip/Max/Min, reductions, Resize, Cast, ...): it stays float
  and the walk goes on through its float inputs;
- a weighted op (Conv, ConvTranspose, Gemm, MatMul) stops the walk and keeps its quantization (a
  classifier's final Gemm, the head convolutions of a detector that feed its decode), except
  - a *small weighted op*: a convolution with fewer than 16 output channels (ModelOpt's rule: the
    DFL's 16 -> 1 convolution), or a Gemm/MatMul with one output feature (ModelOpt's GEMV rule: a
    DFL written as a MatMul by the bin values) that feeds decode math rather than an output; it
    stays float and the walk goes on through it;
  - a *prediction*: a weighted op whose output reaches a graph output through shape ops only,
    joined there by a Concat with other predictions (SSD/RetinaNet box and score convolutions
    concatenated over levels): the output values are its values, so it stays float (the walk
    stops there);
- any other node that writes a graph output (through nothing) stays float: ModelOpt's rule
  (non-Conv/Gemm/MatMul nodes producing graph outputs are not quantized).
The user adds node-name regexes (`exclude`, `re.search`) and op types (`exclude_ops`); a regex or
op type matching no node is a warning. Excluded nodes are float the same way: a flavor applies none
of its rules to them (calib.quantize.flavor.Plan.keeps_float).

Follows: NVIDIA TensorRT Model Optimizer (ModelOpt), ONNX PTQ, `modelopt/onnx/quantization/
partitioning.py` `get_skipped_output_layers` (nodes producing graph outputs other than
Conv/Gemm/MatMul are not quantized) and `graph_utils.py` `find_nodes_from_convs_to_exclude`
(convolutions with fewer than 16 input or output channels excluded; in int8 ModelOpt keeps those
whose channels are a multiple of 8, which would keep the DFL convolution: inside a head calib does
not) and `find_nodes_from_matmul_to_exclude` (GEMV-shaped MatMuls excluded), `nodes_to_exclude`
(regexes) and `op_types_to_exclude`; TensorRT's Q/DQ placement recommendations (quantize the
inputs of weighted ops; by default do not quantize their outputs), docs/quantization.md.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Iterable, Sequence

import onnx

from calib.errors import CalibError
from calib.quantize.graph import GraphIndex

SHAPE_OPS = frozenset({"Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Concat",
                       "Split", "Slice", "Gather", "Expand", "Tile"})
DECODE_OPS = frozenset({"Sigmoid", "HardSigmoid", "Softmax", "LogSoftmax", "Exp", "Log", "Tanh", "Add", "Sub",
                        "Mul", "Div", "Pow", "Sqrt", "Reciprocal", "Neg", "Abs", "Clip", "Max", "Min",
                        "ReduceSum", "ReduceMax", "ReduceMin", "ReduceMean", "Resize", "Upsample", "Cast",
                        "Floor", "Ceil", "Round", "Where"})
SHAPE_READERS = frozenset({"Shape", "Size"})  # read a tensor's shape, never its values
HEAD_WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
SMALL_CHANNELS = 16  # ModelOpt: convolutions with fewer channels are not quantized

# Why a node stays float (ExcludedNode.reason).
OUTPUT, HEAD, SMALL, PREDICTION, USER_NAME, USER_OP = (
    "graph output", "head", "small weighted op", "prediction", "exclude", "exclude-op")


@dataclass(frozen=True)
class ExcludedNode:
    node: str      # the node's id as in calib.quantize.layers: its name, or "<op>:<first output>"
    op_type: str
    reason: str    # one of OUTPUT, HEAD, SMALL, PREDICTION, USER_NAME, USER_OP
    rule: str = ""  # for the user's exclusions: the regex or op type that matched

    def to_json(self) -> dict:
        return {"node": self.node, "op_type": self.op_type, "reason": self.reason, **({"rule": self.rule} if self.rule else {})}


@dataclass(frozen=True)
class Excluded:
    """The nodes a placement keeps float on purpose, in graph order, for the cache metadata and
    the reports; `unmatched` are the user's regexes and op types that matched no node."""

    nodes: tuple[ExcludedNode, ...] = ()
    unmatched: tuple[str, ...] = ()
    protect_heads: bool = True
    patterns: tuple[str, ...] = ()
    op_types: tuple[str, ...] = ()

    def names(self, *reasons: str) -> list[str]:
        """Node ids, of the given reasons only when any are given."""
        return [n.node for n in self.nodes if not reasons or n.reason in reasons]

    def to_json(self) -> dict:
        return {"protect_heads": self.protect_heads, "exclude": list(self.patterns), "exclude_ops": list(self.op_types),
                "nodes": [n.to_json() for n in self.nodes], "unmatched": list(self.unmatched)}


def node_id(node: onnx.NodeProto) -> str:
    return node.name or f"{node.op_type}:{node.output[0] if node.output else ''}"


def _out_channels(index: GraphIndex, node: onnx.NodeProto) -> int | None:
    """Output channels (features) of a weighted op with a constant weight, None otherwise."""
    if len(node.input) < 2 or index.is_activation(node.input[1]):
        return None
    spec = index.constant_spec(node.input[1])
    if spec is None or len(spec[1]) < 2:
        return None
    dims = spec[1]
    if node.op_type == "Conv":
        return dims[0]
    if node.op_type == "ConvTranspose":
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        return dims[1] * group
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return dims[0] if trans_b else dims[1]
    return dims[-1]  # MatMul


def _through_shapes(index: GraphIndex, tensor: str) -> tuple[bool, bool]:
    """(every reader of `tensor`, followed through shape ops only, ends in a graph output;
    a Concat of two or more activations is on the way)."""
    reached, joined, stack, seen = False, False, [tensor], set()
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        reached |= t in index.graph_outputs
        for reader in index.consumers.get(t, []):
            if reader.op_type in SHAPE_READERS:
                continue
            if reader.op_type not in SHAPE_OPS:
                return False, False
            if reader.op_type == "Concat" and sum(index.is_quantizable(i) for i in reader.input) >= 2:
                joined = True
            stack.extend(o for o in reader.output if o)
    return reached, joined


def _head_nodes(index: GraphIndex, nodes: Sequence[onnx.NodeProto]) -> dict[int, str]:
    """id(node) -> reason, for the nodes the head analysis keeps float (see the module doc)."""
    walk: set[int] = set()    # nodes the walk goes on through
    found: dict[int, str] = {}
    for node in reversed(nodes):
        outs = [o for o in node.output if o and index.is_quantizable(o)]
        if not outs:
            continue
        if not any(o in index.graph_outputs or index.consumers.get(o) for o in outs):
            continue   # writes nothing anyone reads
        if not all(o in index.graph_outputs or all(id(c) in walk or c.op_type in SHAPE_READERS
                                                     for c in index.consumers.get(o, [])) for o in outs):
            continue
        op = node.op_type
        if op in HEAD_WEIGHTED_OPS:
            channels = _out_channels(index, node)
            reached, joined = _through_shapes(index, outs[0]) if len(outs) == 1 else (False, False)
            small = channels is not None and (
                channels < SMALL_CHANNELS if op in ("Conv", "ConvTranspose") else channels == 1 and not reached)
            if small:
                found[id(node)] = SMALL
                walk.add(id(node))
            elif reached and joined and op != "MatMul":
                found[id(node)] = PREDICTION
        elif op in SHAPE_OPS or op in DECODE_OPS:
            found[id(node)] = HEAD
            walk.add(id(node))
        elif any(o in index.graph_outputs for o in outs):
            found[id(node)] = OUTPUT
    return found


def _compile(patterns: Iterable[str]) -> list[tuple[str, re.Pattern]]:
    out = []
    for p in patterns:
        try:
            out.append((p, re.compile(p)))
        except re.error as e:
            raise CalibError(f"--exclude {p!r} is not a regular expression: {e}") from None
    return out


def find_excluded(model: onnx.ModelProto, index: GraphIndex | None = None, exclude: Sequence[str] = (),
                  exclude_ops: Sequence[str] = (), protect_heads: bool = True) -> tuple[Excluded, frozenset[int]]:
    """The nodes of `model` kept float (and their ids, id(node), for the flavors): the head
    analysis when `protect_heads`, the nodes whose names match a regex of `exclude` (re.search)
    and those of an op type in `exclude_ops`. A regex or op type matching no node is a warning."""
    index = index or GraphIndex(model)
    nodes = list(model.graph.node)
    if isinstance(exclude, str) or isinstance(exclude_ops, str):
        raise CalibError("exclude and exclude_ops are sequences of strings, not one string")
    compiled = _compile(exclude)
    ops = tuple(dict.fromkeys(exclude_ops))
    reasons: dict[int, tuple[str, str]] = {}
    used: set[str] = set()
    for node in nodes:
        for p, rx in compiled:
            if node.name and rx.search(node.name):
                reasons.setdefault(id(node), (USER_NAME, p))
                used.add(p)
        if node.op_type in ops:
            reasons.setdefault(id(node), (USER_OP, node.op_type))
            used.add(node.op_type)
    if protect_heads:
        for key, why in _head_nodes(index, nodes).items():
            reasons.setdefault(key, (why, ""))
    unmatched = tuple(p for p, _ in compiled if p not in used) + tuple(o for o in ops if o not in used)
    for p in unmatched:
        kind = "--exclude-op" if p in ops and p not in dict(compiled) else "--exclude"
        warnings.warn(f"{kind} {p!r} matches no node of the model", stacklevel=3)
    record = tuple(ExcludedNode(node_id(n), n.op_type, *reasons[id(n)]) for n in nodes if id(n) in reasons)
    return (Excluded(record, unmatched, protect_heads, tuple(p for p, _ in compiled), ops),
            frozenset(reasons))


def exclusions_record(rules: dict) -> dict:
    """What a written model's provenance says of the user's exclusions (nothing when there are none,
    so default builds keep their provenance as it was)."""
    given = {k: list(v) for k, v in rules.items() if v}
    return {"excluded": given} if given else {}
