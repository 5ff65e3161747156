"""calib.backends.tensorrt.qdq: Q/DQ detection, and the ort flavor recognised before TensorRT parses it."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from trt_fakes import make_classifier, qdq_model

from calib.backends.tensorrt.qdq import (inspect_qdq, ort_flavor_in_parser_error,
                                         ort_flavor_message)
from calib.errors import CalibError


def test_flavors(tmp_path):
    fp32 = make_classifier(tmp_path / "fp32.onnx")
    assert not inspect_qdq(fp32).qdq
    assert inspect_qdq(fp32).ort_flavor is None
    trt = inspect_qdq(qdq_model(tmp_path, "tensorrt", fp32))
    assert trt.qdq and trt.ort_flavor is None
    ort = inspect_qdq(qdq_model(tmp_path, "ort", fp32))
    assert ort.qdq and ort.ort_flavor is not None
    assert "int32 bias" in ort.ort_flavor or "uint8" in ort.ort_flavor


def _qdq_only(path, zero_type, zero_value):
    """input -> QuantizeLinear -> DequantizeLinear -> output, with the given zero point."""
    dtype = helper.tensor_dtype_to_np_dtype(zero_type)
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
             numpy_helper.from_array(np.array(zero_value, dtype), "z")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q_node"),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="dq_node")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize("zero_type, zero, evidence", [
    (TensorProto.UINT8, 128, "uint8 QuantizeLinear 'q_node'"),
    (TensorProto.UINT8, 0, "uint8 QuantizeLinear 'q_node'"),
    (TensorProto.INT8, 3, "a nonzero zero point in QuantizeLinear 'q_node'"),
    (TensorProto.INT8, 0, None),
])
def test_zero_points(tmp_path, zero_type, zero, evidence):
    assert inspect_qdq(_qdq_only(tmp_path / "m.onnx", zero_type, zero)).ort_flavor == evidence


def test_unreadable_model_is_one_line(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(CalibError, match="not a readable ONNX model"):
        inspect_qdq(bad)


def test_parser_words():
    assert ort_flavor_in_parser_error("b1_DequantizeLinear: input has type Int32 but must have type Int8") \
        == "an int32 input to a Q/DQ node"
    assert ort_flavor_in_parser_error("QuantizeLinear with UInt8 output") == "a uint8 Q/DQ node"
    assert ort_flavor_in_parser_error("Conv: kernel weights has type Int32") is None   # not a Q/DQ node
    message = ort_flavor_message("dir/m.int8.onnx", "a uint8 Q/DQ node", "TensorRT 10.3.0")
    assert message.startswith("m.int8.onnx is calib's ort Q/DQ flavor (a uint8 Q/DQ node)")
    assert message.endswith("(--qdq-flavor tensorrt)") and "\n" not in message
