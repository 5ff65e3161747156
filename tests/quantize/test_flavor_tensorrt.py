"""The tensorrt flavor: weighted-op inputs, residual inputs, symmetric int8, nothing else."""

from collections import Counter

import numpy as np
import pytest
from onnx import numpy_helper

from calib.quantize import quantize_model

from quantize_helpers import (qdq_params, quantized_inputs, ranges, readers_of_dq, run, se_block,
                              transformer_block)


def test_tensorrt_flavor_placement_and_types(tiny):
    model, x, amax = tiny
    q, missing = quantize_model(model, amax, "tensorrt")
    assert missing == []
    quantized = quantized_inputs(q)
    # Inputs of the three Conv and the Gemm, and the residual (non-Conv) input of the Add.
    assert quantized == {"input", "r1", "r2", "flat"}
    for node, scale, zp in qdq_params(q):
        assert zp.dtype == np.int8 and zp == 0  # TensorRT: symmetric int8, zero point 0
        np.testing.assert_allclose(scale, amax[node.input[0]] / 127, rtol=1e-6)
    # Weights: int8 initializers behind per-channel DequantizeLinear on the output-channel axis.
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    dq_w = [n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.input[0].endswith("_quantized")]
    assert {n.input[0] for n in dq_w} == {"w1_quantized", "w2_quantized", "w3_quantized", "wf_quantized"}
    for n in dq_w:
        assert inits[n.input[0]].dtype == np.int8 and inits[n.input[1]].ndim == 1
        assert {a.name: a.i for a in n.attribute}["axis"] == 0
    # Biases stay float for TensorRT; ReLU6 stays a Clip.
    assert "b1" in inits and inits["b1"].dtype == np.float32
    assert Counter(n.op_type for n in q.graph.node)["Clip"] == 2
    y, yq = run(model, {"input": x}), run(q, {"input": x})
    assert np.abs(y - yq).max() < 0.05 * np.abs(y).max()


def test_transformer_block_quantizes_matmul_inputs_only():
    model, feeds = transformer_block(np.random.default_rng(0))
    q, _ = quantize_model(model, ranges(model, feeds), "tensorrt")
    # Every float input of every MatMul, both of the attention MatMuls included ...
    assert quantized_inputs(q) == {"n1", "q", "kt", "p", "v", "a", "n2", "g"}
    for t in ("q", "kt", "p", "v"):
        assert readers_of_dq(q, t) == ["MatMul"]
    # ... and LayerNorm, Softmax, GELU and the residual stream stay float (no residual Add has a
    # convolution branch).
    assert not {"x", "x1", "ss", "s", "h", "h2", "e1", "he", "o", "m"} & quantized_inputs(q)
    assert {n.input[0] for n in q.graph.node if n.op_type == "DequantizeLinear"} >= {"wq_quantized", "w2_quantized"}
    y = run(model, feeds)
    assert np.abs(run(q, feeds) - y).max() < 0.05 * np.abs(y).max()


@pytest.mark.parametrize("gate", ["Sigmoid", "HardSigmoid"])
def test_se_concat_and_maxpool_leave_placement_to_tensorrt(gate):
    model, feeds = se_block(np.random.default_rng(1), gate=gate)
    q, _ = quantize_model(model, ranges(model, feeds), "tensorrt")
    # Conv inputs only: the SE gate Mul, the Concat and the MaxPool are TensorRT's to fuse.
    assert quantized_inputs(q) == {"x", "r0", "p", "rr", "se", "mp"}  # not the pool: no weights
    assert readers_of_dq(q, "r0") == ["Conv"]  # the Mul reads the float r0
    assert not any(n.op_type in ("Mul", "Concat", "MaxPool", gate) and any(i.endswith("_Output") for i in n.input)
                   for n in q.graph.node)
