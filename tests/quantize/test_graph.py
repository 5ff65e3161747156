"""GraphIndex: element types from ONNX inference (with fallbacks), float-only activations, signs."""

import numpy as np
import onnx
from onnx import TensorProto, helper

from calib.quantize.graph import FLOAT_TYPES, GraphIndex, infer_types

from quantize_helpers import make_model, weights


def _shape_subgraph_model(rng) -> onnx.ModelProto:
    """x (N, 4, T) -> transformer-style: a Reshape whose shape comes from Shape/Gather/Concat, the
    attention scale sqrt(d) computed from the shape as a float, and a bool mask."""
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["y"]),
        helper.make_node("Shape", ["y"], ["s"]),
        helper.make_node("Gather", ["s", "i0"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "ax0"], ["n1"]),
        helper.make_node("Concat", ["n1", "rest"], ["shape"], axis=0),
        helper.make_node("Reshape", ["y", "shape"], ["z"]),
        helper.make_node("Gather", ["s", "i2"], ["d"], axis=0),
        helper.make_node("Cast", ["d"], ["df"], to=TensorProto.FLOAT),
        helper.make_node("Sqrt", ["df"], ["sq"]),
        helper.make_node("Div", ["z", "sq"], ["scaled"]),
        helper.make_node("Greater", ["scaled", "zero"], ["mask"]),
        helper.make_node("Where", ["mask", "scaled", "zero"], ["out"]),
    ]
    inits = {"w": weights(rng, 6, 6), "i0": np.array(0, np.int64), "i2": np.array(2, np.int64),
             "ax0": np.array([0], np.int64), "rest": np.array([-1], np.int64), "zero": np.array(0, np.float32)}
    return make_model(nodes, {"x": ["N", 4, 6]}, {"out": None}, inits)


def test_only_float_activations_never_shape_subgraphs_or_integers():
    model = _shape_subgraph_model(np.random.default_rng(0))
    index = GraphIndex(model)
    assert index.elem_type("s") == TensorProto.INT64 and index.elem_type("mask") == TensorProto.BOOL
    assert index.elem_type("sq") == TensorProto.FLOAT and index.is_static("sq")  # from the shape only
    assert index.activations() == ["x", "y", "z", "scaled", "out"]
    assert all(index.elem_type(t) in FLOAT_TYPES for t in index.activations())
    assert not index.is_quantizable("mask") and not index.is_quantizable("w")


def test_types_without_inference_come_from_propagation():
    """An op ONNX inference does not know (a custom domain) still gets its input's type; Cast its `to`."""
    nodes = [helper.make_node("Foo", ["x"], ["y"], domain="com.example"),
             helper.make_node("Shape", ["y"], ["s"]),
             helper.make_node("Cast", ["s"], ["sf"], to=TensorProto.FLOAT16)]
    model = make_model(nodes, {"x": [1, 3]}, {"y": None})
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    types = infer_types(model)
    assert (types["y"], types["s"], types["sf"]) == (TensorProto.FLOAT, TensorProto.INT64, TensorProto.FLOAT16)


def test_types_of_models_with_external_or_large_weights(tmp_path):
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Relu", ["y"], ["out"])]
    model = make_model(nodes, {"x": [2, 64]}, {"out": None}, {"w": weights(rng, 64, 256)})
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    for m in (model, onnx.load(str(path), load_external_data=False)):  # weights in memory, or not loaded
        index = GraphIndex(m)
        assert index.elem_type("y") == TensorProto.FLOAT and index.activations() == ["x", "y", "out"]


def test_sign_analysis(tiny):
    model, _, _ = tiny
    index = GraphIndex(model)
    assert [t for t in index.activations() if index.is_nonnegative(t)] == ["r1", "r2"]
