import glob
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from calib.errors import CalibError
from calib.models import files, image_chw, prepared_model, prepared_path, resolve_model, structure
from calib.models.files import external_data_files
from tests.conftest import make_classifier

LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
# The ONNX model zoo's graphs as the onnx wheel ships them (IR 3, opset 9, weights listed as
# inputs, batch fixed at 1, constant weights): only the mechanics count. Three of them fold to
# hundreds of MB of weights, so they run only with the slow tests.
HEAVY = {"light_bvlc_alexnet", "light_vgg19", "light_zfnet512"}
OLD_ZOO = sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(LIGHT, "*.onnx")))


def _run(model, x):
    s = ort.InferenceSession(model if isinstance(model, str) else model.SerializeToString(),
                             providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def _dims(vi):
    return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]


def _images(n, size, seed=1):
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)


def _check_form(p: onnx.ModelProto, size: int, classes: int, batch: str):
    assert len(p.graph.input) == 1
    assert _dims(p.graph.input[0]) == [batch, 3, size, size]  # batch dynamic, H and W fixed
    assert _dims(p.graph.output[0]) == [batch, classes]
    assert next(o.version for o in p.opset_import if o.domain in ("", "ai.onnx")) >= 13
    assert len(p.graph.value_info) > 0  # shape inference ran
    assert not external_data_files(p)


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.parametrize("arch", ["convnet", "squeezenet", "vit"])
def test_walkthrough_exports_are_prepared_and_compute_the_same_scores(export_model, arch, exporter):
    path = export_model(arch, exporter)
    m = resolve_model(str(path), input_size=32)
    p = prepared_model(m)
    _check_form(p, 32, 10, "batch_size")
    assert not any(n.op_type == "BatchNormalization" for n in p.graph.node)  # folded into Conv
    x = _images(3, 32)
    want = _run(str(path), x).reshape(3, 10)  # the squeezenet's (N, K, 1, 1) is flattened
    got = _run(p, x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * (1 + np.abs(want).max()))


def test_dynamo_external_data_is_read_in(export_model):
    path = export_model("convnet", "dynamo")
    assert external_data_files(onnx.load(str(path), load_external_data=False))
    out = prepared_path(resolve_model(str(path), input_size=32))
    assert not external_data_files(onnx.load(str(out), load_external_data=False))
    assert not out.with_name(out.name + ".data").exists()


def test_prepared_models_are_cached_per_input_size(export_model):
    path = export_model("convnet", "legacy")
    small, large = resolve_model(str(path), input_size=32), resolve_model(str(path), input_size=48)
    a, b = prepared_path(small), prepared_path(large)
    assert a != b
    assert _dims(onnx.load(str(b)).graph.input[0])[2:] == [48, 48]
    stamp = a.stat().st_mtime_ns
    assert prepared_path(resolve_model(str(path), input_size=32)) == a and a.stat().st_mtime_ns == stamp


def test_over_the_size_limit_the_prepared_model_keeps_external_data(export_model, monkeypatch):
    monkeypatch.setattr(files, "EXTERNAL_DATA_THRESHOLD", 1000)  # the 2 GB rule, at test scale
    monkeypatch.setattr(files, "EXTERNAL_TENSOR_MIN_BYTES", 256)
    path = export_model("convnet", "dynamo")
    m = resolve_model(str(path), input_size=40)
    out = prepared_path(m)
    assert external_data_files(onnx.load(str(out), load_external_data=False)) == [out.name + ".data"]
    x = _images(2, 40)
    np.testing.assert_allclose(_run(str(out), x), _run(str(path), x), rtol=1e-4, atol=1e-5)
    assert prepared_model(m).graph.initializer[0].data_location != TensorProto.EXTERNAL


def _old_style(tmp_path, slice_batch=False):
    """What the old model zoo wrote: IR 3, opset 9, weights also listed as inputs, batch fixed at
    1 and written into a Reshape, BatchNormalization after Conv, (1, K, 1, 1) scores."""
    rng = np.random.default_rng(0)
    arr = {"w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.3,
           "scale": rng.uniform(0.5, 1.5, 4).astype(np.float32), "bias": rng.standard_normal(4).astype(np.float32),
           "mean": rng.standard_normal(4).astype(np.float32) * 0.1, "var": rng.uniform(0.5, 2, 4).astype(np.float32),
           "shape": np.array([1, 4 * 4 * 4], np.int64), "fw": rng.standard_normal((5, 64, 1, 1)).astype(np.float32)}
    inits = [numpy_helper.from_array(v, k) for k, v in arr.items()]
    nodes = [helper.make_node("Conv", ["data", "w"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["bn"]),
             helper.make_node("Relu", ["bn"], ["r"]),
             helper.make_node("Reshape", ["r", "shape"], ["flat"]),
             helper.make_node("Unsqueeze", ["flat"], ["u"], axes=[2, 3]),
             helper.make_node("Conv", ["u", "fw"], ["prob"])]
    if slice_batch:  # a graph that keeps only the first image whatever the batch
        inits.append(numpy_helper.from_array(np.array([0], np.int64), "zero"))
        inits.append(numpy_helper.from_array(np.array([1], np.int64), "one"))
        nodes.insert(0, helper.make_node("Slice", ["image", "zero", "one", "zero"], ["data"]))
        first = "image"
    else:
        first = "data"
    graph = helper.make_graph(
        nodes, "old", [helper.make_tensor_value_info(first, TensorProto.FLOAT, [1, 3, 8, 8])]
        + [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, 5, 1, 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9 if not slice_batch else 10)])
    model.ir_version = 3
    path = tmp_path / "old.onnx"
    onnx.save(model, str(path))
    return path


def test_old_zoo_style_file_is_prepared(tmp_path):
    path = _old_style(tmp_path)
    m = resolve_model(str(path))
    assert m.input_shape == ("batch", 3, 8, 8)
    p = prepared_model(m)
    _check_form(p, 8, 5, "batch")
    assert p.ir_version >= 7
    x = _images(3, 8)
    want = np.concatenate([_run(str(path), x[i:i + 1]).reshape(1, 5) for i in range(3)])
    np.testing.assert_allclose(_run(p, x), want, rtol=1e-4, atol=1e-5)


def test_image_chw_reads_the_prepared_input_after_its_batch_axis(tmp_path):
    p = prepared_model(resolve_model(str(_old_style(tmp_path))))
    assert image_chw(p) == (3, 8, 8)


def test_a_batch_the_graph_fixes_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("CALIB_HOME", str(tmp_path / "home"))
    path = _old_style(tmp_path, slice_batch=True)
    with pytest.raises(CalibError) as e:
        prepared_model(resolve_model(str(path)))
    message = str(e.value)
    assert "\n" not in message and "dynamic batch" in message and "batch size at 1" in message


def test_opset_conversion_failure_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("CALIB_HOME", str(tmp_path / "home"))  # not the prepared model of another test
    def refuse(model, version):
        raise RuntimeError("No Adapter To Version 13 for Frobnicate\nmore detail")

    monkeypatch.setattr(structure, "convert_opset", refuse)
    with pytest.raises(CalibError) as e:
        prepared_model(resolve_model(str(_old_style(tmp_path))))
    assert str(e.value).endswith("cannot convert it from opset 9 to 13, which per-channel Q/DQ needs "
                                 "(No Adapter To Version 13 for Frobnicate)")


def test_an_input_size_the_model_cannot_run_is_one_line(export_model):
    path = export_model("vit", "dynamo")  # its position embedding fits 32x32 only
    with pytest.raises(CalibError) as e:
        prepared_model(resolve_model(str(path), input_size=64))
    assert "\n" not in str(e.value) and "cannot run it on 64x64 images" in str(e.value)


def test_a_user_file_named_like_a_zoo_model_is_prepared(tmp_path):
    path = make_classifier(tmp_path / "efficientnet_lite0.onnx", classes=10)
    m = resolve_model(str(path))
    assert prepared_path(m) != path
    _check_form(prepared_model(m), 16, 10, "batch")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in OLD_ZOO])
def test_old_model_zoo_graphs(name):
    path = os.path.join(LIGHT, f"{name}.onnx")
    original = onnx.load(path, load_external_data=False)
    assert original.ir_version < 4 and len(original.graph.input) > 1  # weights listed as inputs
    m = resolve_model(path)
    p = prepared_model(m)
    _check_form(p, 224, 1000, "batch")
    y = _run(p, _images(2, 224))
    assert y.shape == (2, 1000) and np.isfinite(y).all()


@pytest.mark.parametrize("arch,exporter,opset", [("vit", "legacy", 9), ("vit", "legacy", 11), ("squeezenet", "legacy", 12),
                                                 ("vit", "dynamo", 21)])
def test_opsets_9_to_21(export_model, arch, exporter, opset):
    path = export_model(arch, exporter, opset=opset)
    assert onnx.load(str(path), load_external_data=False).opset_import[0].version == opset
    p = prepared_model(resolve_model(str(path), input_size=32))
    _check_form(p, 32, 10, "batch_size")
    x = _images(2, 32)
    want = _run(str(path), x).reshape(2, 10)
    np.testing.assert_allclose(_run(p, x), want, rtol=1e-4, atol=1e-5 * (1 + np.abs(want).max()))


def batch_one_model(path, classes=10, size=16):
    """A classifier whose input declares a dynamic batch but whose Reshape fixes the tokens at
    (8, 64), with no batch axis: the dynamo export of a ViT reshapes to a fixed (197, 192) the same
    way. ONNX Runtime runs it on one image, and fails on two."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32), "w"),
             numpy_helper.from_array((rng.standard_normal((classes, 8)) * 0.3).astype(np.float32), "fc"),
             numpy_helper.from_array(np.array([8, (size // 2) ** 2], np.int64), "tokens")]
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Reshape", ["r", "tokens"], ["t"]),
             helper.make_node("Transpose", ["t"], ["tt"], perm=[1, 0]),
             helper.make_node("ReduceMean", ["tt"], ["m"], axes=[0], keepdims=1),
             helper.make_node("Gemm", ["m", "fc"], ["output"], transB=1)]
    graph = helper.make_graph(nodes, "batch_one",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_a_dynamic_batch_that_runs_only_at_batch_1_is_fixed_at_1(tmp_path, monkeypatch):
    """Issue 22: a batch axis declared dynamic that ONNX Runtime cannot run at 2 was refused; the
    prepared graph now fixes it at 1, which every command reads (fixed_batch) to run at batch 1."""
    from calib.models.prepare import fixed_batch

    monkeypatch.setenv("CALIB_HOME", str(tmp_path / "home"))
    path = batch_one_model(tmp_path / "vitlike.onnx")
    with pytest.raises(Exception):
        _run(str(path), _images(2, 16))  # the defect itself
    m = resolve_model(str(path))
    assert m.input_shape == ("N", 3, 16, 16)  # as declared: only the probe tells
    p = prepared_model(m)
    assert fixed_batch(p) == 1
    assert _dims(p.graph.input[0]) == [1, 3, 16, 16] and _dims(p.graph.output[0]) == [1, 10]
    x = _images(1, 16)
    np.testing.assert_allclose(_run(p, x), _run(str(path), x), rtol=1e-4, atol=1e-5)
    # A model that runs batched keeps its dynamic batch.
    assert fixed_batch(prepared_model(resolve_model(str(make_classifier(tmp_path / "ok.onnx", classes=10))))) is None
