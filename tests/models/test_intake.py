import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from calib.errors import CalibError
from calib.fsutil import file_sha256
from calib.models import check_classes, parse_input_size, prepared_model, resolve_model
from tests.conftest import make_classifier


def _one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message
    return message


def _save(tmp_path, inputs, outputs, nodes, inits=(), name="m.onnx", opset=17):
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, list(inits)),
                              opset_imports=[helper.make_opsetid("", opset)])
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def _image(name="input", shape=("N", 3, "H", "W"), elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, list(shape))


def _scores(shape=("N", 10), elem=TensorProto.FLOAT, name="output"):
    return helper.make_tensor_value_info(name, elem, list(shape) if shape is not None else None)


def _pool_model(tmp_path, image=None, out_shape=("N", 3), **kw):
    """GlobalAveragePool + Flatten: a shape-agnostic 'classifier' with 3 classes."""
    nodes = [helper.make_node("GlobalAveragePool", ["input"], ["p"]), helper.make_node("Flatten", ["p"], ["output"])]
    return _save(tmp_path, [image or _image()], [_scores(out_shape)], nodes, **kw)


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.parametrize("arch", ["convnet", "vit"])
def test_dynamic_batch_height_width_take_the_input_size(export_model, arch, exporter):
    path = export_model(arch, exporter)
    m = resolve_model(str(path), input_size=32)
    assert m.input_shape == ("batch_size", 3, 32, 32) and m.size == (32, 32)
    assert m.preprocess.size == 32 and m.preprocess.name == "torchvision"
    assert resolve_model(str(path), input_size=(32, 32)) == m


def test_dynamic_size_defaults_to_the_preset_size(tmp_path):
    path = _pool_model(tmp_path)
    assert resolve_model(str(path)).size == (224, 224)  # torchvision's crop
    assert resolve_model(str(path), "efficientnet-lite-260").size == (260, 260)
    assert resolve_model(str(path), input_size=96).preprocess.size == 96


def test_fixed_height_and_width_refuse_another_input_size(tmp_path):
    path = make_classifier(tmp_path / "fixed.onnx", size=16)
    assert resolve_model(str(path)).size == (16, 16)
    assert resolve_model(str(path), input_size=16).size == (16, 16)
    with pytest.raises(CalibError) as e:
        resolve_model(str(path), input_size=32)
    assert "fixed height of 16" in _one_line(e) and "32x32" in _one_line(e)


def test_one_fixed_side_sets_the_other(tmp_path):
    path = _pool_model(tmp_path, _image(shape=("N", 3, 64, "W")))
    assert resolve_model(str(path)).size == (64, 64)


def test_non_square_sizes_are_refused(tmp_path):
    with pytest.raises(CalibError) as e:
        resolve_model(str(_pool_model(tmp_path)), input_size=(32, 48))
    assert "square" in _one_line(e)
    with pytest.raises(CalibError):
        resolve_model(str(_pool_model(tmp_path, _image(shape=(1, 3, 32, 48)), name="r.onnx")))


def test_bad_input_size_values(tmp_path):
    for bad in (0, (32,), (32, -1), "32"):
        with pytest.raises(CalibError):
            resolve_model(str(_pool_model(tmp_path)), input_size=bad)


def test_preset_size_must_match_a_fixed_model(tmp_path):
    path = make_classifier(tmp_path / "fixed.onnx", size=16)
    with pytest.raises(CalibError) as e:
        resolve_model(str(path), "efficientnet-lite-260")
    assert "260x260" in _one_line(e) and "16x16" in _one_line(e)


def test_zoo_model_refuses_another_size_before_exporting():
    with pytest.raises(CalibError) as e:
        resolve_model("efficientnet_lite0", input_size=256)
    assert "224x224" in _one_line(e)


def test_two_inputs_are_refused(tmp_path):
    path = _save(tmp_path, [_image("a"), _image("b")], [_scores(("N", 3, "H", "W"))],
                 [helper.make_node("Add", ["a", "b"], ["output"])])
    with pytest.raises(CalibError) as e:
        resolve_model(str(path))
    message = _one_line(e)
    assert "found 2 inputs" in message and "a (N, 3, H, W) float32" in message and "(N, 3, H, W)" in message


@pytest.mark.parametrize("shape,words", [
    (("N", 3, 224), "(N, 3, 224)"),
    (("N", 1, 28, 28), "C must be 3"),
    (("N", 224, 224, 3), "channels last"),
])
def test_inputs_that_are_not_nchw_rgb_are_refused(tmp_path, shape, words):
    path = _save(tmp_path, [_image(shape=shape)], [_scores(("N", 3))],
                 [helper.make_node("ReduceMean", ["input"], ["r"], keepdims=0),
                  helper.make_node("Identity", ["r"], ["output"])])
    with pytest.raises(CalibError) as e:
        resolve_model(str(path))
    assert words in _one_line(e) and "expected one float32 NCHW image input (N, 3, H, W)" in _one_line(e)


def test_fp16_input_is_refused(tmp_path):
    path = _pool_model(tmp_path, _image(elem=TensorProto.FLOAT16))
    with pytest.raises(CalibError) as e:
        resolve_model(str(path))
    assert _one_line(e).endswith("FP16 model: calib calibrates FP32 models; export in FP32")


def test_fp16_weights_are_refused(tmp_path):
    w = numpy_helper.from_array(np.ones((3,), np.float16), "w")
    nodes = [helper.make_node("Cast", ["w"], ["wf"], to=TensorProto.FLOAT),
             helper.make_node("GlobalAveragePool", ["input"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Mul", ["f", "wf"], ["output"])]
    path = _save(tmp_path, [_image()], [_scores(("N", 3))], nodes, [w])
    with pytest.raises(CalibError, match="FP16 model: calib calibrates FP32 models; export in FP32"):
        resolve_model(str(path))


@pytest.mark.parametrize("out,words", [(("N", 3, 7), "(N, K) or (N, K, 1, 1)"), (("N", 3, 2, 2), "found (N, 3, 2, 2)")])
def test_outputs_that_are_not_class_scores_are_refused_as_a_classifier(tmp_path, out, words):
    """--task classify needs class scores; --task auto takes such a model as generic (issue 21)."""
    path = _save(tmp_path, [_image()], [_scores(out)], [helper.make_node("Identity", ["input"], ["output"])])
    with pytest.raises(CalibError) as e:
        resolve_model(str(path), task="classify")
    assert words in _one_line(e)
    assert resolve_model(str(path)).task == "generic"


def test_integer_output_is_refused(tmp_path):
    nodes = [helper.make_node("GlobalAveragePool", ["input"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("ArgMax", ["f"], ["output"], axis=1)]
    path = _save(tmp_path, [_image()], [_scores(("N", 1), TensorProto.INT64)], nodes)
    with pytest.raises(CalibError) as e:
        resolve_model(str(path), task="classify")
    assert "float32 class scores, found int64" in _one_line(e)


def test_unknown_names_and_unreadable_files(tmp_path):
    with pytest.raises(CalibError, match="unknown model 'resnet9000'"):
        resolve_model("resnet9000")
    with pytest.raises(CalibError, match="model file not found"):
        resolve_model(str(tmp_path / "absent.onnx"))
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf at all \xff\xff")
    with pytest.raises(CalibError, match="not a readable ONNX model"):
        resolve_model(str(tmp_path / "junk.onnx"))


def test_dynamo_export_hash_covers_its_data_file(export_model, tmp_path):
    src = export_model("convnet", "dynamo")
    assert (src.parent / (src.name + ".data")).is_file()  # what the dynamo exporter writes
    for f in (src, src.parent / (src.name + ".data")):
        shutil.copy(f, tmp_path / f.name)
    path = tmp_path / src.name
    m = resolve_model(str(path), input_size=32)
    assert m.sha256 != file_sha256(path)
    data = tmp_path / (src.name + ".data")
    raw = bytearray(data.read_bytes())
    raw[-1] ^= 1
    data.write_bytes(bytes(raw))
    assert resolve_model(str(path), input_size=32).sha256 != m.sha256
    data.unlink()
    with pytest.raises(CalibError) as e:
        resolve_model(str(path), input_size=32)
    assert f"external data file {data.name} is missing" in _one_line(e)


def test_check_classes(export_model):
    m = resolve_model(str(export_model("convnet", "legacy")), input_size=32)
    assert check_classes(m, 10, "the test labels") == 10
    assert check_classes(m, 10, "the test labels", prepared=prepared_model(m)) == 10
    with pytest.raises(CalibError) as e:
        check_classes(m, 1000, "ImageNet val")
    assert "outputs 10 classes" in _one_line(e) and "ImageNet val has 1000 labels" in _one_line(e)


def test_check_classes_on_a_dynamic_class_axis(tmp_path):
    # K is symbolic in the file: prepared_model learns it from one ONNX Runtime run.
    path = _pool_model(tmp_path, out_shape=("N", "K"))
    m = resolve_model(str(path), input_size=8)
    assert check_classes(m, 3, "three labels") == 3


def test_parse_input_size():
    assert parse_input_size(None) is None
    assert parse_input_size("224") == (224, 224)
    assert parse_input_size("256x192") == (256, 192) and parse_input_size("256,192") == (256, 192)
    for bad in ("x", "0", "224x", "a1", "1x2x3", "-5"):
        with pytest.raises(CalibError, match="--input-size must be"):
            parse_input_size(bad)


@pytest.mark.parametrize("shape,layout", [(("N", 3, 224, 224), False), (("N", 224, 224, 3), True)])
def test_a_uint8_input_is_refused_naming_its_data_type(tmp_path, shape, layout):
    """Issue 22: a uint8 image input (a model that does its own preprocessing) was refused with a
    message about channels; the data type is what calib cannot feed."""
    nodes = [helper.make_node("Cast", ["input"], ["x"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["x"], ["r"], axes=[2, 3], keepdims=0),
             helper.make_node("Identity", ["r"], ["output"])]
    path = _save(tmp_path, [_image(shape=shape, elem=TensorProto.UINT8)], [_scores(("N", 3))], nodes)
    with pytest.raises(CalibError) as e:
        resolve_model(str(path))
    message = _one_line(e)
    assert "uint8 input" in message and "float32 NCHW input" in message
    assert ("channels last" in message) == layout and "C must be 3" not in message


def _calib_int8(tmp_path, flavor):
    """calib's own int8.onnx of the tiny classifier, in `flavor`, with the amax of a random cache."""
    from calib.models import prepared_model as prepare
    from calib.quantize import quantize_model, required_tensors

    fp32 = resolve_model(str(make_classifier(tmp_path / "fp32.onnx", classes=10)))
    prepared = prepare(fp32)
    amax = {name: 2.0 for name in required_tensors(prepared, flavor)}
    qdq, _ = quantize_model(prepared, amax, flavor)
    path = tmp_path / f"int8-{flavor}.onnx"
    onnx.save(qdq, str(path))
    return path


@pytest.mark.parametrize("flavor", ["ort", "tensorrt"])
def test_calibs_own_int8_model_is_refused_as_the_fp32_reference(tmp_path, flavor):
    """Issue 22: int8.onnx passed back as --model was quantized again (ort flavor) or failed in ONNX
    Runtime (tensorrt flavor)."""
    path = _calib_int8(tmp_path, flavor)
    with pytest.raises(CalibError) as e:
        resolve_model(str(path))
    message = _one_line(e)
    assert "already quantized" in message and "QuantizeLinear" in message and "FP32" in message


@pytest.mark.parametrize("op", ["ConvInteger", "MatMulInteger"])
def test_a_model_of_integer_ops_is_refused_as_the_fp32_reference(tmp_path, op):
    """ONNX Runtime's QOperator models (ConvInteger, MatMulInteger, QLinearConv, QGemm...) hold no
    QuantizeLinear, but are just as quantized."""
    inits = [numpy_helper.from_array(np.ones((3, 3, 1, 1) if op == "ConvInteger" else (3, 3), np.uint8), "w")]
    nodes = [helper.make_node("DynamicQuantizeLinear", ["input"], ["q", "s", "z"]),
             helper.make_node(op, ["q", "w", "z"], ["i"]),
             helper.make_node("Cast", ["i"], ["c"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["c"], ["output"], axes=[2, 3], keepdims=0)]
    path = _save(tmp_path, [_image(shape=("N", 3, 8, 8))], [_scores(("N", 3))], nodes, inits)
    with pytest.raises(CalibError) as e:
        resolve_model(str(path))
    assert "already quantized" in _one_line(e) and op in _one_line(e)
