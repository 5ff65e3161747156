"""The ort flavor: Q/DQ exactly where ONNX Runtime's CPU integer kernels run, uint8 activations."""

import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from calib.backends.ort import optimized_op_counts
from calib.quantize import get_flavor, plan_for, quantize_model
from calib.quantize.flavor_ort import ORT_PASSTHROUGH

from quantize_helpers import (make_model, qdq_params, quantized_inputs, ranges, readers_of_dq, run, se_block,
                              transformer_block, weights)


def _ops(model: onnx.ModelProto) -> Counter:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "q.onnx"
        onnx.save(model, str(path))
        return optimized_op_counts(path)


def test_ort_flavor_uint8_layout_and_integer_kernels(tiny):
    model, x, amax = tiny
    q, _ = quantize_model(model, amax, "ort")
    onnx.checker.check_model(q)
    params = {n.input[0]: (scale, zp) for n, scale, zp in qdq_params(q)}
    # Clips folded: the Conv outputs now carry the ReLU6 outputs' names and ranges, uint8 zero point 0.
    assert Counter(n.op_type for n in q.graph.node)["Clip"] == 0
    for name in ("r1", "r2"):
        scale, zp = params[name]
        assert zp.dtype == np.uint8 and zp == 0, name
        np.testing.assert_allclose(scale, amax[name] / 255, rtol=1e-6)
    # Signed tensors (the Add mixes a Conv output in): zero point 128, scale amax/127.
    for name in ("input", "c3", "sum", "pool", "flat"):
        scale, zp = params[name]
        assert zp.dtype == np.uint8 and zp == 128, name
        np.testing.assert_allclose(scale, amax[name if name != "flat" else "pool"] / 127, rtol=1e-6)
    assert params["flat"] == params["pool"]  # Reshape: same scale in and out
    assert "logits" not in params
    # int32 biases at input_scale * weight_scale, as integer kernels need.
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    assert inits["b1_quantized"].dtype == np.int32
    ops = _ops(q)
    assert ops["QLinearConv"] == 3 and ops["Conv"] == 0 and ops.get("FusedConv", 0) == 0
    assert ops["QLinearAdd"] == 1
    y, yq = run(model, {"input": x}), run(q, {"input": x})
    assert np.abs(y - yq).max() < 0.05 * np.abs(y).max()


def _around(op: str, inputs=(), outputs: int = 1, shape=(1, 4, 8, 8), **attrs) -> onnx.ModelProto:
    """x -> Q -> DQ -> op -> (Q -> DQ per output), one scale and zero point throughout."""
    outs = [f"y{i}" for i in range(outputs)]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node(op, ["xd", *[name for name, _ in inputs]], outs, **attrs)]
    for o in outs:
        nodes += [helper.make_node("QuantizeLinear", [o, "s", "z"], [f"{o}q"]),
                  helper.make_node("DequantizeLinear", [f"{o}q", "s", "z"], [f"{o}d"])]
    inits = {"s": np.array(0.05, np.float32), "z": np.array(128, np.uint8), **dict(inputs)}
    return make_model(nodes, {"x": list(shape)}, {f"{o}d": None for o in outs}, inits)


def _i64(*v):
    return np.array(v, np.int64)


PASSTHROUGH_CASES = {
    "Reshape": dict(inputs=[("shape", _i64(1, -1))]), "Flatten": dict(axis=1),
    "Transpose": dict(perm=[0, 2, 3, 1]), "Squeeze": dict(inputs=[("axes", _i64(0))]),
    "Unsqueeze": dict(inputs=[("axes", _i64(0))]), "Identity": {}, "MaxPool": dict(kernel_shape=[2, 2]),
    "Slice": dict(inputs=[("st", _i64(0)), ("en", _i64(2)), ("ax", _i64(1))]),
    "Gather": dict(inputs=[("ix", _i64(0, 2))], axis=1), "Split": dict(outputs=2, axis=1, num_outputs=2),
    "Resize": dict(inputs=[("roi", np.zeros(0, np.float32)), ("sc", np.array([1, 1, 2, 2], np.float32))]),
    "DepthToSpace": dict(blocksize=2), "Expand": dict(inputs=[("to", _i64(2, 4, 8, 8))]),
    "Tile": dict(inputs=[("rep", _i64(1, 1, 2, 1))]),
}


@pytest.mark.parametrize("op", sorted(ORT_PASSTHROUGH))
def test_passthrough_ops_are_the_ones_onnx_runtime_runs_on_uint8(op):
    """ONNX Runtime drops the DequantizeLinear/QuantizeLinear pair around them (same parameters)."""
    case = dict(PASSTHROUGH_CASES[op])
    if op == "Split":
        case.pop("num_outputs")
    ops = _ops(_around(op, **case))
    outputs = case.get("outputs", 1)
    assert ops["QuantizeLinear"] == 1 and ops["DequantizeLinear"] == outputs, ops


@pytest.mark.parametrize("op", ["SpaceToDepth", "HardSigmoid", "HardSwish", "Relu"])
def test_other_unary_ops_keep_their_qdq_in_onnx_runtime(op):
    attrs = {"blocksize": 2} if op == "SpaceToDepth" else {}
    ops = _ops(_around(op, **attrs))
    assert ops["QuantizeLinear"] == 2 and ops["DequantizeLinear"] == 2, ops


def test_transformer_block_integer_matmuls_float_softmax_layernorm_gelu_and_residuals():
    model, feeds = transformer_block(np.random.default_rng(0))
    q, _ = quantize_model(model, ranges(model, feeds), "ort")
    quantized = quantized_inputs(q)
    assert {"n1", "q", "kt", "p", "v", "a", "n2", "g"} <= quantized
    # Attention scores reach Softmax unquantized (MatMulIntegerToFloat writes float), and nothing
    # of LayerNorm, GELU or the residual stream is quantized.
    assert not {"s", "ss", "x", "x1", "o", "m", "out", "h", "h2", "e", "e1", "he"} & quantized
    ops = _ops(q)
    assert not {"MatMul", "FusedMatMul"} & {k for k, v in ops.items() if v}, ops
    assert ops["MatMulIntegerToFloat"] + ops["QLinearMatMul"] == 8
    y = run(model, feeds)
    assert np.abs(run(q, feeds, level="all") - y).max() < 0.05 * np.abs(y).max()


@pytest.mark.parametrize("gate", ["Sigmoid", "HardSigmoid"])
def test_se_gate_concat_and_maxpool_run_as_integer_kernels(gate):
    model, feeds = se_block(np.random.default_rng(1), gate=gate)
    amax = ranges(model, feeds)
    q, _ = quantize_model(model, amax, "ort")
    quantized = quantized_inputs(q)
    assert {"r0", "gate", "se", "c1", "c2", "cat", "mp"} <= quantized
    params = {n.input[0]: (s, z) for n, s, z in qdq_params(q)}
    assert params["mp"] == params["cat"]  # MaxPool carries the Concat's scale
    assert params["gate"][1] == 0  # a gate cannot be negative: uint8 from zero
    ops = _ops(q)
    assert ops["QLinearMul"] == 1 and ops["QLinearConcat"] == 1 and ops["QLinearConv"] == 6
    assert ops.get("QLinearSigmoid", 0) == (gate == "Sigmoid")
    assert ops.get("Conv", 0) == ops.get("FusedConv", 0) == 0
    y = run(model, feeds)
    assert np.abs(run(q, feeds, level="all") - y).max() < 0.05 * np.abs(y).max()


def test_a_relu_is_folded_only_where_its_input_is_quantized_for_every_reader():
    rng = np.random.default_rng(2)
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["g"], transB=1),
             helper.make_node("Relu", ["g"], ["r"]),  # Gemm writes float here (its reader is float)
             helper.make_node("LayerNormalization", ["r", "s", "z"], ["n"], axis=-1),
             helper.make_node("Conv", ["img", "wc", "bc"], ["c"]),
             helper.make_node("Relu", ["c"], ["rc"]),  # QLinearConv writes uint8: folded
             helper.make_node("Conv", ["rc", "wc2", "bc2"], ["out2"])]  # 16 channels: not a small conv
    inits = {"w": weights(rng, 6, 6), "b": weights(rng, 6), "s": np.ones(6, np.float32), "z": np.zeros(6, np.float32),
             "wc": weights(rng, 4, 3, 3, 3), "bc": weights(rng, 4), "wc2": weights(rng, 16, 4, 1, 1), "bc2": weights(rng, 16)}
    model = make_model(nodes, {"x": ["N", 6], "img": ["N", 3, 6, 6]}, {"n": None, "out2": None}, inits)
    plan = plan_for(model, "ort")
    assert list(plan.folded) == ["rc"]
    assert [n.op_type for n in plan.model.graph.node].count("Relu") == 1
    feeds = {"x": rng.standard_normal((3, 6)).astype(np.float32), "img": rng.standard_normal((3, 3, 6, 6)).astype(np.float32)}
    q, _ = quantize_model(model, ranges(model, feeds), "ort")
    y = run(model, feeds)
    yq = run(q, feeds, level="all")
    assert np.abs(yq - y).max() < 0.05 * np.abs(y).max() + 1e-3
    assert readers_of_dq(q, "x") == ["Gemm"] and "g" not in quantized_inputs(q)


def test_flavor_objects_do_not_branch_on_names():
    ort = get_flavor("ort")
    assert ort.passthrough == ORT_PASSTHROUGH and "SpaceToDepth" not in ort.passthrough
