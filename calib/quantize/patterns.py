"""Structural patterns the placement rules look for, read off the graph (never off names).

- *convolution branch*: a tensor that a Conv/ConvTranspose wrote, seen through views (Reshape,
  Transpose, Flatten, Squeeze, Unsqueeze, Identity), per-channel affine ops with a constant
  operand (a bias Add, a scale Mul/Div, an unfolded BatchNormalization). TensorRT fuses such an
  epilogue and a following element-wise Add into the convolution.
- *residual Add*: an Add of two float activations of which exactly one is a convolution branch;
  the other input is the skip connection (the "residual input").
- *gate*: a tensor a Sigmoid or HardSigmoid wrote (through views): the second operand of an SE
  block's or a SiLU/x*hardsigmoid(x)'s Mul. GELU's x*(1+erf(x/sqrt 2)) is not a gate, and stays float.
"""

from __future__ import annotations

import onnx

from calib.quantize.graph import GraphIndex

CONV_OPS = frozenset({"Conv", "ConvTranspose"})
GATE_OPS = frozenset({"Sigmoid", "HardSigmoid"})
VIEW_OPS = frozenset({"Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Expand"})
_AFFINE_OPS = frozenset({"Add", "Sub", "Mul", "Div"})


def _through(index: GraphIndex, tensor: str, affine: bool) -> onnx.NodeProto | None:
    """The first producer of `tensor` that is not a view (nor, with `affine`, a constant affine op)."""
    seen = 0
    while seen < 64:  # guards against cycles in malformed graphs
        seen += 1
        node = index.producer.get(tensor)
        if node is None:
            return None
        if node.op_type in VIEW_OPS and node.input:
            tensor = node.input[0]
        elif affine and node.op_type == "BatchNormalization":
            tensor = node.input[0]
        elif affine and node.op_type in _AFFINE_OPS:
            acts = [i for i in node.input if index.is_activation(i)]
            if len(acts) != 1 or len(node.input) != 2:
                return node
            tensor = acts[0]
        else:
            return node
    return None


def is_convolution_branch(index: GraphIndex, tensor: str) -> bool:
    node = _through(index, tensor, affine=True)
    return node is not None and node.op_type in CONV_OPS


def residual_input(index: GraphIndex, node: onnx.NodeProto) -> str | None:
    """The skip-connection input of a residual Add, None when `node` is not one (see module doc)."""
    if node.op_type != "Add" or len(node.input) != 2:
        return None
    acts = [i for i in node.input if index.is_quantizable(i)]
    if len(acts) != 2 or acts[0] == acts[1]:
        return None
    conv = [i for i in acts if is_convolution_branch(index, i)]
    if len(conv) != 1:
        return None
    return next(i for i in acts if i not in conv)


def convolution_inputs(index: GraphIndex, node: onnx.NodeProto) -> list[str]:
    """The inputs of an Add of two float activations that come from a convolution branch."""
    if node.op_type != "Add" or len(node.input) != 2:
        return []
    acts = [i for i in node.input if index.is_quantizable(i)]
    if len(acts) != 2:
        return []
    return [i for i in acts if is_convolution_branch(index, i)]


def is_gate(index: GraphIndex, tensor: str) -> bool:
    node = _through(index, tensor, affine=False)
    return node is not None and node.op_type in GATE_OPS
