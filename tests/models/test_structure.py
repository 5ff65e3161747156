import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper, version_converter

from calib.models import structure
from calib.models.structure import convert_opset, element_types, infer_shapes, restore, skeleton


@pytest.fixture(autouse=True)
def _stub_everything(monkeypatch):
    monkeypatch.setattr(structure, "STUB_BYTES", 16)  # every weight of these tiny graphs is a stub


def _old_graph() -> onnx.ModelProto:
    """Opset 9: Unsqueeze with an axes attribute (an input since opset 13), Gemm weights."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((5, 6)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "b")
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1),
             helper.make_node("Unsqueeze", ["y"], ["u"], axes=[2]),
             helper.make_node("Shape", ["u"], ["s"]),
             helper.make_node("Relu", ["u"], ["z"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                          [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], [w, b])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 9)])
    m.ir_version = 4
    return m


def test_skeleton_drops_large_data_and_restore_puts_it_back():
    m = _old_graph()
    light = skeleton(m)
    stub = next(t for t in light.graph.initializer if t.name == "w")
    assert stub.data_location == TensorProto.EXTERNAL and not stub.raw_data and list(stub.dims) == [5, 6]
    assert restore(light, m) == m


def test_restore_refuses_a_changed_weight():
    m = _old_graph()
    light = skeleton(m)
    next(t for t in light.graph.initializer if t.name == "w").dims[0] = 7
    with pytest.raises(RuntimeError, match="weight tensor w"):
        restore(light, m)


def test_infer_shapes_on_the_skeleton_matches_full_inference():
    m = _old_graph()
    full = onnx.shape_inference.infer_shapes(m, data_prop=True)
    infer_shapes(m)
    assert {v.name: v.type for v in m.graph.value_info} == {v.name: v.type for v in full.graph.value_info}
    assert [d.dim_param or d.dim_value for d in m.graph.output[0].type.tensor_type.shape.dim] == ["N", 5, 1]
    assert m.graph.initializer[0].raw_data  # the weights were never touched


def test_element_types_tell_integer_from_float():
    types = element_types(_old_graph())
    assert types["s"] == TensorProto.INT64
    assert types["y"] == types["u"] == types["z"] == TensorProto.FLOAT
    assert types["w"] == TensorProto.FLOAT


def test_convert_opset_matches_the_converter_and_keeps_the_weights():
    m = _old_graph()
    converted = convert_opset(m, 13)
    assert converted == version_converter.convert_version(m, 13)
    unsqueeze = next(n for n in converted.graph.node if n.op_type == "Unsqueeze")
    assert len(unsqueeze.input) == 2  # axes became an input, as opset 13 defines it
