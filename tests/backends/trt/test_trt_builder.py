"""calib.backends.tensorrt.builder: ONNX -> engine + sidecar.

Two halves:
- against `FakeTrt` (TensorRT 8/10/11-shaped stand-ins): the flags, profiles, calibrator and
  timing-cache files calib asks for, everywhere;
- against the real TensorRT-RTX builder and ONNX parser, which run without a GPU: the tensorrt
  flavor of a small Q/DQ classifier parses as a strongly typed network and builds, with a dynamic
  batch profile, workspace limit, compute-capability targets and serialization; the ort flavor
  is refused in one line. Skipped (with the reason) where TensorRT-RTX is not installed.
"""

from __future__ import annotations

import hashlib
import json
import time

import numpy as np
import onnx
import pytest
from trt_fakes import FakeTrt, install, make_classifier, qdq_model, rtx_backend

from calib.backends.tensorrt import builder as builder_module
from calib.backends.tensorrt.backend import TensorRTBackend
from calib.backends.tensorrt.provenance import provenance_problem, read_sidecar, sidecar_path
from calib.backends.tensorrt.qdq import QdqFacts
from calib.cache import TrtCache
from calib.errors import CalibError


def fake_backend(monkeypatch, **kwargs):
    fake = install(monkeypatch, FakeTrt(**kwargs))
    return TensorRTBackend(), fake


# -- against the stand-in ----------------------------------------------------------------------------

def test_explicit_int8_on_trt10(monkeypatch, tmp_path):
    qdq = qdq_model(tmp_path)
    backend, fake = fake_backend(monkeypatch, version="10.3.0.26")
    assert backend.artifact_suffix() == ".engine"
    cache_file = tmp_path / "timing.cache"
    out = backend.build(qdq, tmp_path / "out" / "tiny.engine", "int8", max_batch=8, workspace_mib=256,
                        timing_cache=cache_file)
    config = fake.calls["config"]
    assert fake.calls["network_flags"] == 1 << 1       # STRONGLY_TYPED, nothing else
    assert config.flags == []                           # no precision flags on a strongly typed network
    assert config.pool == ("WORKSPACE", 256 << 20)
    assert config.profiles == [("input", (1, 3, 16, 16), (8, 3, 16, 16), (8, 3, 16, 16))]
    assert out.read_bytes() == b"ENGINE:"
    assert cache_file.read_bytes() == b"+tactics"      # saved after the build
    side = read_sidecar(out)
    assert side["tensorrt_version"] == "10.3.0.26" and side["product"] == "tensorrt"
    assert side["strongly_typed"] is True and side["compute_capability"] is None
    assert side["batch"] == {"min": 1, "opt": 8, "max": 8}
    assert side["onnx_sha256"] == hashlib.sha256(qdq.read_bytes()).hexdigest()
    assert provenance_problem(out, out.read_bytes()) is None
    # The timing cache is loaded next time and saved again.
    backend.build(qdq, out, "int8", max_batch=8, timing_cache=cache_file)
    assert cache_file.read_bytes() == b"+tactics+tactics"


def test_fp16_and_implicit_int8_on_trt10(monkeypatch, tmp_path):
    fp32 = make_classifier(tmp_path / "fp32.onnx")
    backend, fake = fake_backend(monkeypatch, version="10.3.0")
    backend.build(fp32, tmp_path / "a.engine", "fp32", fp16=True)
    assert fake.calls["network_flags"] == 0 and fake.calls["config"].flags == ["FP16"]
    assert fake.calls["config"].profiles[0][3] == (32, 3, 16, 16)   # default max batch

    class Calibrator:
        error = None
        asked_for_data = False

        def get_batch_size(self):
            return 4

        def get_batch(self, names):
            return None

        def read_calibration_cache(self):
            return b"TRT-100300-EntropyCalibration2\n"

    calibrator = Calibrator()
    backend.build(fp32, tmp_path / "b.engine", "int8", calibrator=calibrator, max_batch=16)
    config = fake.calls["config"]
    assert config.flags == ["INT8"] and config.int8_calibrator is calibrator
    assert config.calibration_profile == ("input", (4, 3, 16, 16), (4, 3, 16, 16), (4, 3, 16, 16))
    calibrator.asked_for_data = True
    with pytest.raises(CalibError, match="did not accept the calibration cache"):
        backend.build(fp32, tmp_path / "c.engine", "int8", calibrator=calibrator)
    calibrator.error = ValueError("boom")
    with pytest.raises(CalibError, match="INT8 calibration failed: ValueError: boom"):
        backend.build(fp32, tmp_path / "c.engine", "int8", calibrator=calibrator)
    assert not (tmp_path / "c.engine").exists()


def test_calibration_cache_file_on_trt10(monkeypatch, tmp_path):
    fp32 = make_classifier(tmp_path / "fp32.onnx")
    backend, fake = fake_backend(monkeypatch, version="10.3.0")
    cache = tmp_path / "x.cache"
    cache.write_text(TrtCache.from_scales({"input": 0.1}, "EntropyCalibration2", "8.6.1").to_text())
    backend.build(fp32, tmp_path / "a.engine", "int8", calibration_cache=cache)
    calibrator = fake.calls["config"].int8_calibrator
    assert isinstance(calibrator, fake.IInt8EntropyCalibrator2)
    assert calibrator.read_calibration_cache().startswith(b"TRT-100300-EntropyCalibration2\n")


def test_trt11_is_strongly_typed_and_refuses_calibration(monkeypatch, tmp_path):
    fp32 = make_classifier(tmp_path / "fp32.onnx")
    fixed = tmp_path / "fixed.onnx"
    model = onnx.load(str(fp32))
    for tensor in (model.graph.input[0], model.graph.output[0]):
        tensor.type.tensor_type.shape.dim[0].dim_value = 2
    onnx.save(model, str(fixed))
    backend, fake = fake_backend(monkeypatch, version="11.0.0.114", weak_typing=False, calibrators=False)
    out = backend.build(fixed, tmp_path / "a.engine", "fp32")
    assert fake.calls["network_flags"] == 0            # STRONGLY_TYPED is implied, not passed
    assert fake.calls["config"].profiles == []         # fixed batch: no profile
    assert read_sidecar(out)["batch"] == {"min": 2, "opt": 2, "max": 2}
    cache = tmp_path / "x.cache"
    cache.write_text(TrtCache.from_scales({"input": 0.1}, "EntropyCalibration2").to_text())
    with pytest.raises(CalibError, match="no implicit INT8 calibration"):
        backend.build(fp32, tmp_path / "b.engine", "int8", calibration_cache=cache)
    with pytest.raises(CalibError, match="no FP16 builder flag"):
        backend.build(fp32, tmp_path / "b.engine", "fp32", fp16=True)
    with pytest.raises(CalibError, match="unknown TensorRT build option"):
        backend.build(fp32, tmp_path / "b.engine", "fp32", max_batchsize=4)
    with pytest.raises(CalibError, match="applies to --backend tensorrt-rtx only"):
        backend.build(fp32, tmp_path / "b.engine", "fp32", compute_capability=89)
    assert fake.calls["builds"] == 1 and not (tmp_path / "b.engine").exists()


def test_trt8_asks_for_explicit_batch(monkeypatch, tmp_path):
    backend, fake = fake_backend(monkeypatch, version="8.6.1", implicit_batch=True, strongly_typed_flag=False)
    backend.build(qdq_model(tmp_path), tmp_path / "a.engine", "int8")
    assert fake.calls["network_flags"] == 1 << 0       # EXPLICIT_BATCH
    assert fake.calls["config"].flags == ["INT8"]


def test_ort_flavor_refused_before_parsing(monkeypatch, tmp_path):
    backend, fake = fake_backend(monkeypatch)
    with pytest.raises(CalibError) as info:
        backend.build(qdq_model(tmp_path, "ort"), tmp_path / "a.engine", "int8")
    message = str(info.value)
    assert "\n" not in message and "ort Q/DQ flavor" in message and message.endswith("(--qdq-flavor tensorrt)")
    assert "parsed" not in fake.calls


def test_parser_errors_are_one_line(monkeypatch, tmp_path):
    fp32 = make_classifier(tmp_path / "fp32.onnx")
    backend, fake = fake_backend(monkeypatch)
    fake.calls["parser_error"] = "In node 3 (importConv): UNSUPPORTED_NODE: something\n[dump] more"
    with pytest.raises(CalibError) as info:
        backend.build(fp32, tmp_path / "a.engine", "fp32")
    assert str(info.value) == (f"TensorRT could not parse {fp32}: In node 3 (importConv): UNSUPPORTED_NODE: "
                               f"something")
    with pytest.raises(CalibError, match="ONNX model not found"):
        backend.build(tmp_path / "missing.onnx", tmp_path / "a.engine", "fp32")


@pytest.mark.parametrize("kwargs, message", [
    ({"min_batch": 4, "max_batch": 2}, "1 <= min <= opt <= max"),
    ({"workspace_mib": 0}, "workspace_mib must be positive"),
])
def test_bad_build_options(monkeypatch, tmp_path, kwargs, message):
    backend, fake = fake_backend(monkeypatch)
    with pytest.raises(CalibError, match=message):
        backend.build(make_classifier(tmp_path / "fp32.onnx"), tmp_path / "a.engine", "fp32", **kwargs)
    assert fake.calls["builds"] == 0


# -- against the real TensorRT-RTX builder and parser (no GPU needed) -----------------------------------

@pytest.fixture
def rtx():
    return rtx_backend()


def test_rtx_builds_the_tensorrt_flavor(rtx, tmp_path, capsys):
    qdq = qdq_model(tmp_path)
    out = rtx.build(qdq, tmp_path / "out" / "tiny.int8.engine", "int8", min_batch=1, opt_batch=4, max_batch=8,
                    workspace_mib=64)
    data = out.read_bytes()
    assert len(data) > 10_000
    side = json.loads(sidecar_path(out).read_text())
    assert side["product"] == "tensorrt-rtx" and side["tensorrt_version"] == rtx.version
    assert side["strongly_typed"] is True                     # read back from the parsed network
    assert side["compute_capability"] == 89                   # the default target
    assert side["batch"] == {"min": 1, "opt": 4, "max": 8}
    assert "explicit INT8 from Q/DQ" in side["plan"]
    assert side["engine_sha256"] == hashlib.sha256(data).hexdigest()
    assert provenance_problem(out, data) is None
    # A second build in the same process reuses the logger: no "logger differs" warning.
    rtx.build(qdq, tmp_path / "again.engine", "int8")
    assert "differs" not in capsys.readouterr().err


def _two_input_model(tmp_path, batch="N", seq=16):
    """int64 ids (batch, seq) and a float mask (batch, seq): an embedding Gather times the mask."""
    from onnx import TensorProto, helper, numpy_helper

    table = numpy_helper.from_array(np.ones((10, 4), np.float32), "table")
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"]),
             helper.make_node("Unsqueeze", ["mask", "axis"], ["m"]), helper.make_node("Mul", ["e", "m"], ["out"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [batch, seq]),
                                            helper.make_tensor_value_info("mask", TensorProto.FLOAT, [batch, seq])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [batch, seq, 4])],
                              [table, numpy_helper.from_array(np.array([2], np.int64), "axis")])
    path = tmp_path / f"two-{batch}-{seq}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_one_profile_sets_every_input_of_a_model_with_several(monkeypatch, tmp_path):
    backend, fake = fake_backend(monkeypatch, version="10.3.0.26")
    out = backend.build(_two_input_model(tmp_path), tmp_path / "two.engine", "fp32", max_batch=8)
    assert fake.calls["config"].profiles == [(("ids", (1, 16), (8, 16), (8, 16)),
                                              ("mask", (1, 16), (8, 16), (8, 16)))]
    assert read_sidecar(out)["batch"] == {"min": 1, "opt": 8, "max": 8}
    # A dimension the file leaves dynamic: given by input_shapes (min = opt = max), else one line.
    dynamic = _two_input_model(tmp_path, seq="T")
    with pytest.raises(CalibError, match="input 'ids' must be fixed dimensions after the batch axis"):
        backend.build(dynamic, tmp_path / "d.engine", "fp32")
    backend.build(dynamic, tmp_path / "d.engine", "fp32", max_batch=4, input_shapes={"ids": (5,), "mask": (5,)})
    assert fake.calls["config"].profiles == [(("ids", (1, 5), (4, 5), (4, 5)), ("mask", (1, 5), (4, 5), (4, 5)))]
    with pytest.raises(CalibError, match="does not fit"):
        backend.build(_two_input_model(tmp_path), tmp_path / "e.engine", "fp32", input_shapes={"ids": (5,)})


def test_rtx_builds_a_model_with_an_int64_input_and_a_float_one(rtx, tmp_path):
    out = rtx.build(_two_input_model(tmp_path), tmp_path / "two.engine", "fp32", max_batch=4)
    assert read_sidecar(out)["batch"] == {"min": 1, "opt": 4, "max": 4}


def test_rtx_builds_an_fp32_model_with_a_fixed_batch(rtx, tmp_path):
    fp32 = make_classifier(tmp_path / "fp32.onnx")
    model = onnx.load(str(fp32))
    for tensor in (model.graph.input[0], model.graph.output[0]):
        tensor.type.tensor_type.shape.dim[0].dim_value = 2
    fixed = tmp_path / "fixed.onnx"
    onnx.save(model, str(fixed))
    out = rtx.build(fixed, tmp_path / "fixed.engine", "fp32")
    side = read_sidecar(out)
    assert side["batch"] == {"min": 2, "opt": 2, "max": 2} and side["precision"] == "fp32"
    assert "FP32" in side["plan"] and side["strongly_typed"] is True
    dynamic = rtx.build(fp32, tmp_path / "dynamic.engine", "fp32", max_batch=16)
    assert read_sidecar(dynamic)["batch"] == {"min": 1, "opt": 16, "max": 16}


@pytest.mark.parametrize("cc", [86, 89, 120])
def test_rtx_compute_capability_targets(rtx, tmp_path, cc):
    out = rtx.build(qdq_model(tmp_path), tmp_path / f"sm{cc}.engine", "int8", compute_capability=cc)
    side = read_sidecar(out)
    assert side["compute_capability"] == cc and f"SM{cc} target" in side["plan"]


def test_rtx_unknown_compute_capability_lists_choices(rtx, tmp_path):
    with pytest.raises(CalibError) as info:
        rtx.build(qdq_model(tmp_path), tmp_path / "x.engine", "int8", compute_capability=90)
    assert str(info.value) == ("unknown compute capability 90 (choose from: 86, 89, 120); written as NVIDIA does, "
                               "8.6, 8.9, 12.0")
    assert not (tmp_path / "x.engine").exists()


def test_rtx_refuses_the_ort_flavor_in_one_line(rtx, tmp_path, monkeypatch):
    ort = qdq_model(tmp_path, "ort")
    with pytest.raises(CalibError) as info:
        rtx.build(ort, tmp_path / "x.engine", "int8")
    message = str(info.value)
    assert "\n" not in message and "TensorRT-RTX cannot build" in message
    assert message.endswith("(--qdq-flavor tensorrt)")
    # Had calib not recognised the layout first, the real parser's error says the same in one line.
    monkeypatch.setattr(builder_module, "inspect_qdq", lambda path: QdqFacts(True, None))
    with pytest.raises(CalibError) as info:
        rtx.build(ort, tmp_path / "x.engine", "int8")
    message = str(info.value)
    assert "\n" not in message and "ort Q/DQ flavor" in message and message.endswith("(--qdq-flavor tensorrt)")
    assert not (tmp_path / "x.engine").exists()


@pytest.mark.parametrize("precision, kwargs, message", [
    ("int8", {}, r"no implicit INT8 calibration.*--qdq-flavor tensorrt"),          # float model, int8
    ("fp16", {}, "no FP16 builder flag"),
    ("fp32", {"fp16": True}, "no FP16 builder flag"),
    ("int8", {"calibration_cache": "x.cache"}, r"no implicit INT8 calibration.*--qdq-flavor tensorrt"),
])
def test_rtx_has_no_calibrators_and_no_precision_flags(rtx, tmp_path, precision, kwargs, message):
    with pytest.raises(CalibError, match=message) as info:
        rtx.build(make_classifier(tmp_path / "fp32.onnx"), tmp_path / "x.engine", precision, **kwargs)
    assert "\n" not in str(info.value)


def test_rtx_leaves_timing_caches_alone(rtx, tmp_path):
    cache = tmp_path / "timing.cache"
    with pytest.warns(UserWarning, match="TensorRT-RTX does not use timing caches"):
        rtx.build(qdq_model(tmp_path), tmp_path / "a.engine", "int8", timing_cache=cache)
    assert not cache.exists()
    cache.write_bytes(b"from a TensorRT build")
    with pytest.warns(UserWarning, match="left as it is"):
        rtx.build(qdq_model(tmp_path), tmp_path / "a.engine", "int8", timing_cache=cache)
    assert cache.read_bytes() == b"from a TensorRT build"


@pytest.mark.slow
def test_rtx_builds_efficientnet_lite0_tensorrt_flavor(rtx, tmp_path):
    from calib.models import prepared_model, resolve_model
    from calib.quantize import quantize_model
    from trt_fakes import amax_for

    prepared = prepared_model(resolve_model("efficientnet_lite0"))
    q, missing = quantize_model(prepared, amax_for(prepared, "tensorrt"), "tensorrt")
    assert not missing
    path = tmp_path / "lite0.int8.onnx"
    onnx.save(q, str(path))
    ops = [n.op_type for n in q.graph.node]
    assert ops.count("QuantizeLinear") >= 49 and ops.count("Conv") == 49
    started = time.perf_counter()
    out = rtx.build(path, tmp_path / "lite0.int8.engine", "int8", max_batch=32)
    seconds = time.perf_counter() - started
    side = read_sidecar(out)
    assert side["strongly_typed"] is True and side["batch"]["max"] == 32
    assert out.stat().st_size > 1_000_000 and np.isfinite(seconds)
