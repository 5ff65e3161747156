from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from calib.backends.ort import optimized_op_counts
from calib.collect import expose_activations
from calib.quantize.flavors import MissingScales, quantize_model, required_tensors
from calib.quantize.graph import GraphIndex


def _ranges(model: onnx.ModelProto, x: np.ndarray) -> dict[str, float]:
    exposed, names = expose_activations(model)
    sess = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = sess.run(names, {"input": x})
    return {n: float(np.abs(v).max()) for n, v in zip(names, outs)}


@pytest.fixture()
def tiny(tiny_classifier):
    model = onnx.load(str(tiny_classifier))
    x = np.random.default_rng(1).standard_normal((8, 3, 16, 16)).astype(np.float32)
    return model, x, _ranges(model, x)


def _qdq_params(model: onnx.ModelProto):
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return [(n, inits[n.input[1]], inits[n.input[2]]) for n in model.graph.node if n.op_type == "QuantizeLinear"]


def _run(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def test_tensorrt_flavor_placement_and_types(tiny):
    model, x, amax = tiny
    q, missing = quantize_model(model, amax, "tensorrt")
    assert missing == []
    onnx.checker.check_model(q)
    quantized = {n.input[0] for n in q.graph.node if n.op_type == "QuantizeLinear"}
    # Inputs of the three Conv and the Gemm, and the residual (non-Conv) input of the Add.
    assert quantized == {"input", "r1", "r2", "flat"}
    for node, scale, zp in _qdq_params(q):
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
    y, yq = _run(model, x), _run(q, x)
    assert np.abs(y - yq).max() < 0.05 * np.abs(y).max()


def test_ort_flavor_uint8_layout_and_integer_kernels(tiny, tmp_path):
    model, x, amax = tiny
    q, _ = quantize_model(model, amax, "ort")
    onnx.checker.check_model(q)
    params = {n.input[0]: (scale, zp) for n, scale, zp in _qdq_params(q)}
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
    path = tmp_path / "q.onnx"
    onnx.save(q, str(path))
    ops = optimized_op_counts(path)
    assert ops["QLinearConv"] == 3 and ops["Conv"] == 0 and ops.get("FusedConv", 0) == 0
    assert ops["QLinearAdd"] == 1
    y, yq = _run(model, x), _run(q, x)
    assert np.abs(y - yq).max() < 0.05 * np.abs(y).max()


def test_both_flavors_come_from_the_same_ranges(tiny):
    model, _, amax = tiny
    trt, _ = quantize_model(model, amax, "tensorrt")
    ort_q, _ = quantize_model(model, amax, "ort")
    t = {n.input[0]: s for n, s, _ in _qdq_params(trt)}
    o = {n.input[0]: s for n, s, _ in _qdq_params(ort_q)}
    np.testing.assert_allclose(t["r1"] * 127, o["r1"] * 255, rtol=1e-6)
    np.testing.assert_allclose(t["input"], o["input"], rtol=1e-6)


def test_missing_scales_are_reported_or_tolerated(tiny):
    model, _, amax = tiny
    partial = {k: v for k, v in amax.items() if k != "r2"}
    with pytest.raises(MissingScales, match="r2"):
        quantize_model(model, partial, "tensorrt")
    q, missing = quantize_model(model, partial, "tensorrt", allow_missing=True)
    assert missing == ["r2"]
    assert "r2" not in {n.input[0] for n in q.graph.node if n.op_type == "QuantizeLinear"}
    assert set(required_tensors(model, "tensorrt")) == {"input", "r1", "r2", "flat"}


def test_sign_analysis(tiny):
    model, _, _ = tiny
    index = GraphIndex(model)
    assert [t for t in index.activations() if index.is_nonnegative(t)] == ["r1", "r2"]
