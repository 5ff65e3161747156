"""Shared helpers of the quantize tests: small graphs written out node by node, ranges and runs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from calib.passes import expose


def make_model(nodes, inputs: dict, outputs: dict, inits: dict | None = None, opset: int = 17,
               value_info: dict | None = None) -> onnx.ModelProto:
    """A model from nodes; inputs/outputs map names to a shape list (float32) or to a tuple
    (elem_type, shape list)."""
    def info(name, spec):
        elem, shape = spec if isinstance(spec, tuple) else (TensorProto.FLOAT, spec)
        return helper.make_tensor_value_info(name, elem, shape)

    graph = helper.make_graph(nodes, "g", [info(k, v) for k, v in inputs.items()],
                              [info(k, v) for k, v in outputs.items()],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()],
                              value_info=[info(k, v) for k, v in (value_info or {}).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def weights(rng, *shape, scale=0.3) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def ranges(model: onnx.ModelProto, feeds: dict) -> dict[str, float]:
    """max |x| of every float activation on `feeds` (a fixed-amax stand-in for calibration)."""
    exposed, names = expose(model)
    sess = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    return {n: float(np.abs(v).max()) for n, v in zip(names, sess.run(names, feeds))}


def run(model: onnx.ModelProto, feeds: dict, level: str = "basic"):
    """The first output; "basic" keeps Q/DQ as written, "all" runs ONNX Runtime's integer kernels."""
    from calib.onnx_io import ort_session

    return ort_session(model, level).run(None, feeds)[0]


def qdq_params(model: onnx.ModelProto):
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return [(n, inits[n.input[1]], inits[n.input[2]]) for n in model.graph.node if n.op_type == "QuantizeLinear"]


def quantized_inputs(model: onnx.ModelProto) -> set[str]:
    return {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}


def readers_of_dq(model: onnx.ModelProto, tensor: str) -> list[str]:
    """op types reading the DequantizeLinear output of `tensor`."""
    dq = f"{tensor}_DequantizeLinear_Output"
    return sorted(n.op_type for n in model.graph.node if dq in n.input)




def transformer_block(rng, tokens: int = 5, dim: int = 8):
    """A pre-LN transformer block as the legacy exporter writes it: LayerNormalization, Linear as
    MatMul + bias Add, attention with two activation MatMuls, Softmax, Erf-GELU, residual Adds."""
    from onnx import helper

    gelu = [helper.make_node("Div", ["h", "sqrt2"], ["h2"]), helper.make_node("Erf", ["h2"], ["e"]),
            helper.make_node("Add", ["e", "one"], ["e1"]), helper.make_node("Mul", ["h", "e1"], ["he"]),
            helper.make_node("Mul", ["he", "half"], ["g"])]
    nodes = [
        helper.make_node("LayerNormalization", ["x", "ln_s", "ln_b"], ["n1"], axis=-1),
        *[n for p in "qkv" for n in (helper.make_node("MatMul", ["n1", f"w{p}"], [f"{p}0"]),
                                     helper.make_node("Add", [f"{p}0", f"b{p}"], [p]))],
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["s"]),
        helper.make_node("Mul", ["s", "scale"], ["ss"]),
        helper.make_node("Softmax", ["ss"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["a"]),
        helper.make_node("MatMul", ["a", "wo"], ["o0"]), helper.make_node("Add", ["o0", "bo"], ["o"]),
        helper.make_node("Add", ["x", "o"], ["x1"]),
        helper.make_node("LayerNormalization", ["x1", "ln_s", "ln_b"], ["n2"], axis=-1),
        helper.make_node("MatMul", ["n2", "w1"], ["h0"]), helper.make_node("Add", ["h0", "b1"], ["h"]),
        *gelu,
        helper.make_node("MatMul", ["g", "w2"], ["m0"]), helper.make_node("Add", ["m0", "b2"], ["m"]),
        helper.make_node("Add", ["x1", "m"], ["out"]),
    ]
    inits = {f"w{p}": weights(rng, dim, dim) for p in "qkvo"} | {f"b{p}": weights(rng, dim) for p in "qkvo"}
    inits |= {"w1": weights(rng, dim, 2 * dim), "b1": weights(rng, 2 * dim), "w2": weights(rng, 2 * dim, dim),
              "b2": weights(rng, dim), "ln_s": np.ones(dim, np.float32), "ln_b": np.zeros(dim, np.float32),
              "scale": np.array(dim ** -0.5, np.float32), "sqrt2": np.array(2 ** 0.5, np.float32),
              "one": np.array(1, np.float32), "half": np.array(0.5, np.float32)}
    model = make_model(nodes, {"x": ["N", tokens, dim]}, {"out": ["N", tokens, dim]}, inits)
    x = rng.standard_normal((4, tokens, dim)).astype(np.float32)
    return model, {"x": x}


def se_block(rng, c: int = 8, gate: str = "Sigmoid"):
    """Conv -> ReLU -> (SE: GlobalAveragePool, Conv, ReLU, Conv, gate, Mul) -> Conv, and a
    branch; Concat -> MaxPool -> Conv -> GlobalAveragePool."""
    from onnx import helper

    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"]),
        helper.make_node("GlobalAveragePool", ["r0"], ["p"]),
        helper.make_node("Conv", ["p", "wr", "br"], ["cr"]), helper.make_node("Relu", ["cr"], ["rr"]),
        helper.make_node("Conv", ["rr", "we", "be"], ["ce"]), helper.make_node(gate, ["ce"], ["gate"]),
        helper.make_node("Mul", ["r0", "gate"], ["se"]),
        helper.make_node("Conv", ["se", "w1", "b1"], ["c1"]),
        helper.make_node("Conv", ["r0", "w2", "b2"], ["c2"]),
        helper.make_node("Concat", ["c1", "c2"], ["cat"], axis=1),
        helper.make_node("MaxPool", ["cat"], ["mp"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["mp", "w3", "b3"], ["c3"]),
        helper.make_node("GlobalAveragePool", ["c3"], ["out"]),
    ]
    inits = {"w0": weights(rng, c, 3, 3, 3), "b0": weights(rng, c), "wr": weights(rng, 4, c, 1, 1),
             "br": weights(rng, 4), "we": weights(rng, c, 4, 1, 1), "be": weights(rng, c),
             "w1": weights(rng, c, c, 1, 1), "b1": weights(rng, c), "w2": weights(rng, c, c, 1, 1),
             "b2": weights(rng, c), "w3": weights(rng, 4, 2 * c, 1, 1), "b3": weights(rng, 4)}
    model = make_model(nodes, {"x": ["N", 3, 8, 8]}, {"out": ["N", 4, 1, 1]}, inits)
    x = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    return model, {"x": x}
