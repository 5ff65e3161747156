"""The integer-exact evaluation graph: exact integer sums, the same bits on every ONNX Runtime
optimisation level, equal to an int64 reference, and only where the float32 bound allows."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from calib.backends.ort import OrtRunner
from calib.quantize import quantizable_layers, quantize_model
from calib.quantize.exact import emulates_integer_kernels, has_qdq, integer_exact
from calib.quantize.naming import EXACT_ACCUMULATOR
from quantize_helpers import run


def _outputs(model, x, level):
    return run(model, {"input": x}, level)


@pytest.mark.parametrize("flavor", ["tensorrt", "ort"])
def test_every_conv_and_gemm_is_rewritten_and_levels_agree_bit_for_bit(tiny, flavor):
    model, x, amax = tiny
    qdq, _ = quantize_model(model, amax, flavor)
    exact = integer_exact(qdq)
    onnx.checker.check_model(exact.model)
    computes = [n for n in qdq.graph.node if n.op_type in ("Conv", "Gemm")]
    assert len(exact.rewritten) == len(computes) and not exact.kept and exact.all_exact
    outs = [_outputs(exact.model, x, level) for level in ("all", "basic", "disabled")]
    assert all(np.array_equal(outs[0], o) for o in outs[1:])
    # Rounding the exact accumulator changes nothing.
    rounded = _outputs(integer_exact(qdq, round_accumulator=True).model, x, "all")
    assert np.array_equal(rounded, outs[0])
    # It is the same model up to the float noise of the original graph.
    plain = _outputs(qdq, x, "basic")
    assert np.abs(plain - outs[0]).max() < 0.05 * np.abs(plain).max()
    assert not has_qdq(model) and has_qdq(exact.model)


def _single_conv(x_zero: int, x_type: int, w: np.ndarray, bias: np.ndarray | None, s_x: float, s_w: np.ndarray):
    """DQ(x) -> Conv(DQ(w), bias) -> output: one layer, to check against int64 arithmetic."""
    c = w.shape[0]
    inits = [numpy_helper.from_array(np.array(s_x, np.float32), "sx"),
             numpy_helper.from_array(np.array(x_zero, np.uint8 if x_type == TensorProto.UINT8 else np.int8), "zx"),
             numpy_helper.from_array(w, "wq"), numpy_helper.from_array(s_w.astype(np.float32), "sw"),
             numpy_helper.from_array(np.zeros(c, np.int8), "zw")]
    nodes = [helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["x"]),
             helper.make_node("DequantizeLinear", ["wq", "sw", "zw"], ["w"], axis=0)]
    conv_in = ["x", "w"]
    if bias is not None:
        inits.append(numpy_helper.from_array(bias.astype(np.float32), "b"))
        conv_in.append("b")
    nodes.append(helper.make_node("Conv", conv_in, ["y"], name="conv", pads=[1, 1, 1, 1]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("xq", x_type, [None, w.shape[1], 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("x_type,x_zero", [(TensorProto.INT8, 0), (TensorProto.UINT8, 128)])
def test_equals_int64_arithmetic(x_type, x_zero):
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    c_in, c_out = 24, 5
    w = rng.integers(-127, 128, (c_out, c_in, 3, 3)).astype(np.int8)
    bias = rng.standard_normal(c_out).astype(np.float32)
    s_x, s_w = 0.0173, rng.uniform(0.001, 0.01, c_out).astype(np.float32)
    model = _single_conv(x_zero, x_type, w, bias, s_x, s_w)
    lo, hi = (-128, 127) if x_type == TensorProto.INT8 else (0, 255)
    xq = rng.integers(lo, hi + 1, (2, c_in, 6, 6)).astype(np.int8 if x_type == TensorProto.INT8 else np.uint8)
    exact = integer_exact(model)
    assert exact.rewritten == ["conv"]
    got = ort.InferenceSession(exact.model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"xq": xq})[0]
    # int64 reference: exact sums of (q - z) * w, then float32 rescale and bias.
    xi = np.pad(xq.astype(np.int64) - x_zero, ((0, 0), (0, 0), (1, 1), (1, 1)))
    acc = np.zeros((2, c_out, 6, 6), np.int64)
    for i in range(3):
        for j in range(3):
            acc += np.einsum("nchw,oc->nohw", xi[:, :, i:i + 6, j:j + 6], w[:, :, i, j].astype(np.int64))
    scale = (np.float32(s_x) * s_w).astype(np.float32).reshape(1, -1, 1, 1)
    want = acc.astype(np.float32) * scale + bias.reshape(1, -1, 1, 1)
    assert np.array_equal(got, want.astype(np.float32))


def test_layers_past_the_float32_bound_are_kept():
    rng = np.random.default_rng(1)
    w = np.full((2, 1200, 3, 3), 127, np.int8)   # 128 * 127 * 10800 >> 2**24
    model = _single_conv(0, TensorProto.INT8, w, None, 0.01, np.full(2, 0.01, np.float32))
    exact = integer_exact(model)
    assert exact.rewritten == [] and "2**24" in exact.kept["conv"] and not exact.all_exact
    assert onnx.helper.printable_graph(exact.model.graph) == onnx.helper.printable_graph(model.graph)
    del rng


def _weights_with_abs_sum(total: int, c_in: int) -> np.ndarray:
    """One output channel of 3x3 int8 weights, signs alternating, whose |w| sum to `total` (their
    signed sum stays near 0)."""
    flat = np.zeros(c_in * 9, np.int64)
    full, rest = divmod(total, 127)
    flat[:full] = 127
    flat[full] = rest
    flat[1::2] *= -1
    assert np.abs(flat).sum() == total and abs(flat.sum()) <= 127
    return flat.reshape(1, c_in, 3, 3).astype(np.int8)


@pytest.mark.parametrize("x_type,x_zero", [(TensorProto.INT8, 0), (TensorProto.UINT8, 128)])
def test_the_bound_is_the_largest_sum_any_input_can_reach(x_type, x_zero):
    """A layer is rewritten only if max|q - z| * sum|w| < 2**24: the input that matches every
    weight's sign with the extreme level (-128 - 0, or 0 - 128) reaches that sum. Weights with
    mixed signs (a signed sum near 0) and the extreme level 128, not 127, decide it here."""
    limit = 2 ** 24
    for total, rewritten in ((limit // 128 - 1, True), (limit // 128, False), (137_000, False)):
        w = np.concatenate([_weights_with_abs_sum(total, 120), np.ones((1, 120, 3, 3), np.int8)])
        model = _single_conv(x_zero, x_type, w, None, 0.01, np.full(2, 0.01, np.float32))
        # the largest |sum| an input can reach: each x_int = -128 * sign(w), i.e. 128 * sum|w|
        worst = -128 * np.sign(w[0].astype(np.int64))
        assert abs(int(np.sum(worst * w[0]))) == 128 * total
        exact = integer_exact(model)
        assert (exact.rewritten == ["conv"]) == rewritten == (128 * total < limit), total
        if not rewritten:
            assert "2**24" in exact.kept["conv"]


def test_float_layers_are_left_float(tiny):
    model, x, amax = tiny
    gemm = next(layer for layer in quantizable_layers(model, "tensorrt") if layer.op_type == "Gemm")
    qdq, _ = quantize_model(model, amax, "tensorrt", float_layers=[gemm.id])
    exact = integer_exact(qdq)
    assert exact.kept and all("float layer" in why for why in exact.kept.values())
    assert not exact.all_exact
    assert any(n.op_type == "Gemm" and not n.name.endswith(EXACT_ACCUMULATOR) for n in exact.model.graph.node)


def test_which_models_the_cpu_runs_exactly(tiny, tmp_path):
    model, x, amax = tiny
    paths = {}
    for name, m in (("fp32", model), ("tensorrt", quantize_model(model, amax, "tensorrt")[0]),
                    ("ort", quantize_model(model, amax, "ort")[0])):
        paths[name] = tmp_path / f"{name}.onnx"
        onnx.save(m, paths[name])
    assert emulates_integer_kernels(onnx.load(paths["tensorrt"]))
    assert not emulates_integer_kernels(onnx.load(paths["ort"]))
    assert OrtRunner(paths["fp32"]).exact is None
    assert OrtRunner(paths["tensorrt"]).exact is not None
    assert OrtRunner(paths["ort"]).exact is None               # ORT's integer kernels: what it deploys
    assert OrtRunner(paths["ort"], exact=True).exact is not None
    assert OrtRunner(paths["tensorrt"], exact=False).exact is None
    # The runner's output is the exact graph's.
    want = _outputs(integer_exact(onnx.load(paths["tensorrt"])).model, x, "all")
    assert np.array_equal(OrtRunner(paths["tensorrt"]).run(x), want)


def test_a_model_runs_alike_from_its_file_its_bytes_or_its_proto(tiny, tmp_path, monkeypatch):
    """A ModelProto is run as it is (not serialised and parsed back first); one past protobuf's
    2 GB limit from a temporary file with external data, as written, the folder removed after."""
    from calib.models import files

    model, x, amax = tiny
    qdq = quantize_model(model, amax, "tensorrt")[0]
    path = tmp_path / "int8.onnx"
    onnx.save(qdq, path)
    want = OrtRunner(path).run(x)
    for given in (qdq, qdq.SerializeToString()):
        runner = OrtRunner(given)
        assert runner.exact is not None and np.array_equal(runner.run(x), want)
    monkeypatch.setattr(files, "EXTERNAL_DATA_THRESHOLD", 1000)  # the 2 GB rule, at test scale
    runner = OrtRunner(qdq)
    assert runner.exact is None and runner._tmp is None
    assert np.array_equal(runner.run(x), OrtRunner(path, exact=False).run(x))


def test_reports_claim_the_exact_graph_only_where_the_runner_runs_it(tiny, tmp_path):
    """The report's note follows the runner's rule on each model file, not the flavor's."""
    from calib.backends.ort import runs_integer_exact
    from calib.report.header import exact_note

    model, x, amax = tiny
    paths = {}
    for flavor in ("tensorrt", "ort"):
        paths[flavor] = tmp_path / f"{flavor}.onnx"
        onnx.save(quantize_model(model, amax, flavor)[0], paths[flavor])
    # A Q/DQ model with a subgraph: the runner leaves it as written, so no claim.
    looped = quantize_model(model, amax, "tensorrt")[0]
    then = helper.make_graph([helper.make_node("Identity", ["cond_in"], ["cond_out"])], "then", [],
                             [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, [])])
    looped.graph.initializer.append(numpy_helper.from_array(np.array(True), "cond_in"))
    looped.graph.node.append(helper.make_node("If", ["cond_in"], ["flag"], then_branch=then, else_branch=then))
    paths["subgraph"] = tmp_path / "subgraph.onnx"
    onnx.save(looped, paths["subgraph"])
    assert [runs_integer_exact(paths[k]) for k in ("tensorrt", "ort", "subgraph")] == [True, False, False]
    assert [runs_integer_exact(paths[k], "cuda:0") for k in ("tensorrt", "ort", "subgraph")] == [True, True, False]
    assert "ran the INT8 model as its integer-exact graph" in exact_note({"int8": paths["tensorrt"]}, "cpu")
    assert exact_note({"int8": paths["ort"]}, "cpu") is None              # ONNX Runtime's integer kernels
    assert exact_note({"int8": paths["subgraph"]}, "cuda:0") is None
    both = exact_note({"a": paths["tensorrt"], "b": paths["ort"]}, "cpu")
    assert "INT8 models a as" in both
    on_gpu = exact_note({"a": paths["tensorrt"], "b": paths["ort"]}, "cuda:0")
    assert "every INT8 model" in on_gpu and "on the CPU ONNX Runtime runs b with its own integer kernels" in on_gpu
    assert exact_note({"int8": paths["tensorrt"]}, "cuda:0").endswith("the CPU and the GPU compute the same INT8 figures")


def test_unnamed_nodes_give_a_valid_graph(tiny):
    model, x, amax = tiny
    qdq, _ = quantize_model(model, amax, "tensorrt")
    want = _outputs(integer_exact(qdq).model, x, "all")
    for node in qdq.graph.node:
        node.name = ""
    exact = integer_exact(qdq)
    onnx.checker.check_model(exact.model)
    names = [n.name for n in exact.model.graph.node if n.name]
    assert exact.rewritten and not exact.kept and len(names) == len(set(names))
    assert np.array_equal(_outputs(exact.model, x, "all"), want)


def _gemm(bias: np.ndarray | None, x_type: int = TensorProto.INT8, scale_type=np.float32, opset: int = 17):
    """DQ(x) -> Gemm(DQ(w), transB=1, bias): 6 outputs from 8 inputs."""
    rng = np.random.default_rng(2)
    w = rng.integers(-127, 128, (6, 8)).astype(np.int8)
    zx = np.array(0, np.int8 if x_type == TensorProto.INT8 else np.int16)
    inits = [numpy_helper.from_array(np.array(0.02, scale_type), "sx"), numpy_helper.from_array(zx, "zx"),
             numpy_helper.from_array(w, "wq"), numpy_helper.from_array(np.full(6, 0.01, scale_type), "sw"),
             numpy_helper.from_array(np.zeros(6, np.int8), "zw")]
    ins = ["x", "w"]
    if bias is not None:
        inits.append(numpy_helper.from_array(bias.astype(scale_type), "b"))
        ins.append("b")
    nodes = [helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["x"]),
             helper.make_node("DequantizeLinear", ["wq", "sw", "zw"], ["w"], axis=0),
             helper.make_node("Gemm", ins, ["y"], name="gemm", transB=1)]
    elem = TensorProto.FLOAT16 if scale_type == np.float16 else TensorProto.FLOAT
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("xq", x_type, [None, 8])],
                              [helper.make_tensor_value_info("y", elem, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_a_broadcast_gemm_bias_is_spread_over_the_channels():
    import onnxruntime as ort

    model = _gemm(np.array([0.5]))
    exact = integer_exact(model)
    assert exact.rewritten == ["gemm"]
    xq = np.random.default_rng(0).integers(-128, 128, (3, 8)).astype(np.int8)
    run_ = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"xq": xq})[0]  # noqa: E731
    np.testing.assert_allclose(run_(exact.model), run_(model), rtol=1e-6, atol=1e-5)
    assert "one value per output channel" in integer_exact(_gemm(np.zeros((3, 6)))).kept["gemm"]


@pytest.mark.parametrize("case,why", [("int16", "int8/uint8"), ("float16", "float32")])
def test_what_is_not_int8_or_float32_is_left_as_written(case, why):
    model = _gemm(None, x_type=TensorProto.INT16) if case == "int16" else _gemm(None, scale_type=np.float16)
    exact = integer_exact(model)
    assert exact.rewritten == [] and why in exact.kept["gemm"]


def test_no_round_before_opset_11_and_subgraphs_are_left_alone():
    exact = integer_exact(_gemm(None, opset=10), round_accumulator=True)
    assert exact.rewritten == ["gemm"] and not any(n.op_type == "Round" for n in exact.model.graph.node)
    assert any(n.op_type == "Round" for n in integer_exact(_gemm(None), round_accumulator=True).model.graph.node)
    model = _gemm(None)
    branch = helper.make_graph([helper.make_node("Identity", ["x"], ["z"])], "b", [],
                               [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)])
    model.graph.node.append(helper.make_node("If", ["cond"], ["out"], then_branch=branch, else_branch=branch))
    exact = integer_exact(model)
    assert exact.rewritten == [] and exact.model == model


def test_generated_names_never_collide_with_existing_ones():
    model = _gemm(None)
    model.graph.node.append(helper.make_node("Identity", ["y"], ["gemm_integer_x"], name="gemm_rescale"))
    model.graph.output.append(helper.make_tensor_value_info("gemm_integer_x", TensorProto.FLOAT, None))
    exact = integer_exact(model)
    assert exact.rewritten == ["gemm"]
    names = [n.name for n in exact.model.graph.node if n.name]
    outputs = [o for n in exact.model.graph.node for o in n.output]
    assert len(names) == len(set(names)) and len(outputs) == len(set(outputs))
    import onnxruntime as ort

    xq = np.zeros((2, 8), np.int8)
    ort.InferenceSession(exact.model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"xq": xq})
