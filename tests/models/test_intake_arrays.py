"""Models fed named arrays (calib.models.intake, prepare, memory): any inputs of numeric types,
`--input-shape NAME=DxD` for their dynamic dimensions (a named dimension sized once for every input
that shares it), the batch axis kept as declared, and the prepared graph that keeps every input."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from calib.errors import CalibError
from calib.models import fixed_batch, parse_input_shapes, prepared_model, resolve_model
from tests.conftest import make_classifier


def _one_line(e) -> str:
    message = str(e.value)
    assert message and "\n" not in message
    return message


def _two_inputs(tmp_path, batch="N", seq="T", name="emb.onnx") -> str:
    """ids (batch, seq) int64 -> an embedding Gather, times mask (batch, seq) cast to float, summed
    with a float bias input (batch, 4): outputs (batch, seq, 4) and (batch, 4)."""
    table = numpy_helper.from_array(np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32), "table")
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"]),
             helper.make_node("Cast", ["mask"], ["m"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["m", "axis"], ["m3"]),
             helper.make_node("Mul", ["e", "m3"], ["hidden"]),
             helper.make_node("ReduceSum", ["hidden", "one"], ["pooled"], keepdims=0),
             helper.make_node("Add", ["pooled", "bias"], ["summary"])]
    inits = [table, numpy_helper.from_array(np.array([2], np.int64), "axis"),
             numpy_helper.from_array(np.array([1], np.int64), "one")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [batch, seq]),
                                            helper.make_tensor_value_info("mask", TensorProto.INT64, [batch, seq]),
                                            helper.make_tensor_value_info("bias", TensorProto.FLOAT, [batch, 4])],
                              [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, [batch, seq, 4]),
                               helper.make_tensor_value_info("summary", TensorProto.FLOAT, [batch, 4])], inits)
    path = tmp_path / name
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return str(path)


@pytest.mark.parametrize("specs, expected", [
    (["input_ids=128"], {"input_ids": (128,)}),
    (["images=3x640x640", "mask=1,16"], {"images": (3, 640, 640), "mask": (1, 16)}),
    (["scores="], {"scores": ()}),
    (["a=b=4"], {"a=b": (4,)}),
])
def test_input_shapes_are_parsed(specs, expected):
    assert parse_input_shapes(specs) == expected


@pytest.mark.parametrize("specs, words", [
    (["input_ids"], "NAME=DxD"), (["=16"], "NAME=DxD"), (["ids=16xq"], "not 'ids=16xq'"), (["ids=0"], "NAME=DxD"),
    (["ids=4", "ids=5"], "names the input ids twice"),
])
def test_bad_input_shapes_are_one_line(specs, words):
    with pytest.raises(CalibError) as e:
        parse_input_shapes(specs)
    assert words in _one_line(e)


def test_every_input_is_taken_and_a_named_dimension_is_sized_once(tmp_path):
    path = _two_inputs(tmp_path)
    m = resolve_model(path, input_shapes={"ids": (6,)}, arrays=True)
    assert m.arrays and [i.describe() for i in m.inputs] == ["ids (N, 6) int64", "mask (N, 6) int64",
                                                           "bias (N, 4) float32"]
    assert m.task == "generic" and m.input_name == "ids" and m.input_shape == ("N", 6)
    assert m.inputs_json()[1] == {"name": "mask", "shape": ["N", 6]}
    # The commands that read no data take it as arrays too (it is no image model).
    assert resolve_model(path, input_shapes={"mask": (6,)}, arrays=None) == m


@pytest.mark.parametrize("shapes, words", [
    ({}, ["input ids (N, T) has a dynamic dimension 'T' (axis 1)", "--input-shape ids=<T>"]),
    ({"tokens": (6,)}, ["--input-shape names tokens, which is not an input of emb.onnx", "ids (N, T) int64"]),
    ({"ids": (6, 2)}, ["ids is (N, T), so give its 1 dimension(s)"]),
    ({"ids": (6,), "mask": (7,)}, ["dimension 'T' two sizes, 6 and 7"]),
    ({"ids": (6,), "bias": (5,)}, ["bias fixes dimension 1 at 4"]),
])
def test_unknown_or_contradicting_shapes_are_one_line(tmp_path, shapes, words):
    with pytest.raises(CalibError) as e:
        resolve_model(_two_inputs(tmp_path), input_shapes=shapes, arrays=True)
    assert all(w in _one_line(e) for w in words), _one_line(e)


def test_an_image_model_takes_its_input_shape_as_its_input_size(tmp_path):
    path = str(make_classifier(tmp_path / "c.onnx", size=16))
    assert resolve_model(path, input_shapes={"input": (3, 16, 16)}) == resolve_model(path)
    for shapes, words in (({"input": (3, 32, 32)}, "fixed height of 16"), ({"input": (16, 16)}, "give 3xHxW"),
                          ({"x": (3, 16, 16)}, "not an input of c.onnx")):
        with pytest.raises(CalibError) as e:
            resolve_model(path, input_shapes=shapes)
        assert words in _one_line(e)
    # Fed arrays, the same file is one float input (N, 3, 16, 16).
    m = resolve_model(path, arrays=True)
    assert m.arrays and m.inputs[0].describe() == "input (batch, 3, 16, 16) float32"


def test_the_image_intake_points_a_model_it_refuses_to_named_arrays(tmp_path):
    with pytest.raises(CalibError) as e:
        resolve_model(_two_inputs(tmp_path))
    assert "found 3 inputs" in _one_line(e) and "--dataset npz" in _one_line(e)


def test_the_prepared_graph_keeps_every_input_and_a_dynamic_batch(tmp_path):
    m = resolve_model(_two_inputs(tmp_path), input_shapes={"ids": (6,)}, arrays=True)
    prepared = prepared_model(m)
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in prepared.graph.input}
    assert dims == {"ids": ["N", 6], "mask": ["N", 6], "bias": ["N", 4]}
    assert fixed_batch(prepared) is None
    # Another sequence length is another prepared graph.
    other = resolve_model(_two_inputs(tmp_path), input_shapes={"ids": (9,)}, arrays=True)
    assert [d.dim_value for d in prepared_model(other).graph.input[0].type.tensor_type.shape.dim][1] == 9


def test_a_batch_one_export_keeps_its_batch(tmp_path):
    m = resolve_model(_two_inputs(tmp_path, batch=1, name="b1.onnx"), input_shapes={"ids": (6,)}, arrays=True)
    assert m.inputs[0].batch == 1 and fixed_batch(prepared_model(m)) == 1
    with pytest.raises(CalibError, match="fix different batch sizes"):
        path = _two_inputs(tmp_path, batch=1, name="mixed.onnx")
        proto = onnx.load(path)
        proto.graph.input[2].type.tensor_type.shape.dim[0].dim_value = 2
        onnx.save(proto, path)
        resolve_model(path, input_shapes={"ids": (6,)}, arrays=True)


def test_memory_is_estimated_from_every_input(tmp_path):
    from calib.models.memory import memory_need_arrays
    from calib.onnx_io import load_model

    m = resolve_model(_two_inputs(tmp_path), input_shapes={"ids": (6,)}, arrays=True)
    need = memory_need_arrays(load_model(m.path), m.inputs)
    assert need.input == 6 * 8 * 2 + 4 * 4                       # two int64 rows of 6, one float row of 4
    assert need.activations >= 6 * 4 * 4 and need.weights == 10 * 4 * 4 + 8 + 8
