"""TensorRT backend.

Runs everywhere: the missing-tensorrt error, the version-dependent build plan, Q/DQ detection,
engine provenance (sidecar), cache header rewriting, and build() driven against a recording
stand-in for the documented TensorRT API (`FakeTrt`): that checks calib's own orchestration
(flags chosen, profile, timing cache file, atomic engine + sidecar), not TensorRT's behaviour.

Marked `tensorrt` (skipped without `import tensorrt`): real engines, FP32 and INT8, compared
with ONNX Runtime.
"""

from __future__ import annotations

import hashlib
import json
import sys
import types
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from calib.backends import get_backend
from calib.backends import tensorrt as trt_backend
from calib.backends.tensorrt import (BuildPlan, TensorRTBackend, onnx_has_qdq, plan_build,
                                     provenance_problem, sidecar_path, warn_if_foreign, write_sidecar)
from calib.cache import TrtCache, parse
from calib.errors import CalibError, MissingDependency


def tiny_classifier(path, batch="N", size=16, classes=5):
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b"),
             numpy_helper.from_array(rng.standard_normal((classes, 8)).astype(np.float32), "fc_w"),
             numpy_helper.from_array(rng.standard_normal(classes).astype(np.float32), "fc_b")]
    nodes = [helper.make_node("Conv", ["images", "w", "b"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], ["relu"]),
             helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
             helper.make_node("Flatten", ["pool"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1)]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def calibrated_amax(model_path, images):
    """max |x| of every tensor the TensorRT flavor quantizes, from ONNX Runtime on `images`."""
    import onnxruntime as ort

    from calib.quantize.flavors import required_tensors

    model = onnx.load(str(model_path))
    names = required_tensors(model, "tensorrt")
    for name in names:
        if name not in {o.name for o in model.graph.output}:
            model.graph.output.append(helper.make_empty_tensor_value_info(name))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    values = session.run(names, {"images": images})
    return {n: float(np.abs(v).max()) for n, v in zip(names, values)}


def qdq_model(tmp_path, fp32_path, images):
    from calib.quantize.flavors import quantize_model

    q, missing = quantize_model(onnx.load(str(fp32_path)), calibrated_amax(fp32_path, images), "tensorrt")
    assert not missing
    path = tmp_path / "tiny.int8.onnx"
    onnx.save(q, str(path))
    return path


@pytest.fixture
def no_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError


# -- missing tensorrt ------------------------------------------------------------------------------

def test_missing_tensorrt_is_a_one_line_install_hint(no_tensorrt):
    for make in (TensorRTBackend, lambda: get_backend("tensorrt")):
        with pytest.raises(MissingDependency) as info:
            make()
        message = str(info.value)
        assert "\n" not in message
        assert "pip install tensorrt" in message
        assert "NVIDIA GPU" in message and "CUDA" in message
        assert message.startswith("the TensorRT backend needs the 'tensorrt' package")


def test_missing_tensorrt_for_calibrators(no_tensorrt, tmp_path):
    from calib.backends.trt_calibrators import cache_calibrator, entropy_calibrator

    with pytest.raises(MissingDependency, match="pip install tensorrt"):
        cache_calibrator(TrtCache.from_scales({"x": 0.1}, "EntropyCalibration2"))
    with pytest.raises(MissingDependency, match="pip install tensorrt"):
        entropy_calibrator(None, None)


# -- version-dependent planning ----------------------------------------------------------------------

@pytest.mark.parametrize("version, precision, qdq, fp16, calibrator, expected", [
    ("10.3.0.26", "fp32", False, False, False, BuildPlan(False, (), False, "FP32")),
    ("10.3.0", "fp16", False, False, False, BuildPlan(False, ("FP16",), False, "weakly typed, FP16")),
    ("10.3.0", "fp32", False, True, False, BuildPlan(False, ("FP16",), False, "weakly typed, FP16")),
    ("10.3.0", "int8", True, False, False,
     BuildPlan(True, (), False, "strongly typed, explicit INT8 from Q/DQ")),
    ("10.3.0", "int8", True, True, False,
     BuildPlan(False, ("INT8", "FP16"), False, "weakly typed, explicit INT8 from Q/DQ, FP16 elsewhere")),
    ("10.13.0", "int8", False, False, True,
     BuildPlan(False, ("INT8",), True, "implicit INT8 with a calibrator")),
    ("11.0.0", "fp32", False, False, False, BuildPlan(True, (), False, "TensorRT 11: strongly typed, FP32")),
    ("11.4.0.106", "int8", True, False, False,
     BuildPlan(True, (), False, "TensorRT 11: strongly typed, explicit INT8 from Q/DQ")),
])
def test_plan_build(version, precision, qdq, fp16, calibrator, expected):
    assert plan_build(version, precision, qdq, fp16, calibrator) == expected


def test_plan_build_without_strongly_typed_flag_falls_back_to_int8_flag():
    plan = plan_build("8.6.1", "int8", True, strongly_typed_flag=False)
    assert plan == BuildPlan(False, ("INT8",), False, "weakly typed, explicit INT8 from Q/DQ")


@pytest.mark.parametrize("version, precision, qdq, fp16, calibrator, message", [
    ("11.0.0", "int8", False, False, True, "no implicit INT8 calibration.*Q/DQ model"),
    ("11.0.0", "int8", False, False, False, "no implicit INT8 calibration"),
    ("11.0.0", "int8", True, False, True, "no implicit INT8 calibration"),
    ("11.0.0", "fp16", False, False, False, "no FP16 builder flag.*autocast"),
    ("11.0.0", "int8", True, True, False, "no FP16 builder flag"),
    ("10.3.0", "int8", False, False, False, "no Q/DQ nodes"),
    ("10.3.0", "int8", True, False, True, "already has Q/DQ nodes"),
    ("10.3.0", "fp32", True, False, False, "build it with precision int8"),
    ("10.3.0", "fp32", False, False, True, "only to precision int8"),
    ("10.3.0", "bf16", False, False, False, "unknown precision"),
    ("ten", "fp32", False, False, False, "cannot read the TensorRT version"),
])
def test_plan_build_errors_are_one_line(version, precision, qdq, fp16, calibrator, message):
    with pytest.raises(CalibError, match=message) as info:
        plan_build(version, precision, qdq, fp16, calibrator)
    assert "\n" not in str(info.value)


def test_onnx_has_qdq(tmp_path):
    fp32 = tiny_classifier(tmp_path / "tiny.onnx")
    images = np.random.default_rng(1).standard_normal((4, 3, 16, 16)).astype(np.float32)
    assert not onnx_has_qdq(fp32)
    assert onnx_has_qdq(qdq_model(tmp_path, fp32, images))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(CalibError, match="not a readable ONNX model"):
        onnx_has_qdq(bad)


# -- provenance: engines are code --------------------------------------------------------------------

def test_sidecar_marks_calib_engines(tmp_path):
    engine = tmp_path / "m.engine"
    data = b"\x00engine bytes"
    engine.write_bytes(data)
    assert "no calib sidecar m.engine.calib.json" in provenance_problem(engine, data)
    record = write_sidecar(engine, data, {"tensorrt_version": "10.3.0"})
    assert sidecar_path(engine) == tmp_path / "m.engine.calib.json"
    on_disk = json.loads(sidecar_path(engine).read_text())
    assert on_disk == record
    assert on_disk["engine_sha256"] == hashlib.sha256(data).hexdigest()
    assert on_disk["written_by"] == "calib" and on_disk["tensorrt_version"] == "10.3.0"
    assert provenance_problem(engine, data) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_if_foreign(engine, data) is False


def test_foreign_or_changed_engine_warns_one_line(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"abc")
    with pytest.warns(UserWarning, match="executable code") as record:
        assert warn_if_foreign(engine, b"abc")
    assert "\n" not in str(record[0].message)
    write_sidecar(engine, b"abc", {})
    assert "sha256 does not match" in provenance_problem(engine, b"abd")
    sidecar_path(engine).write_text("{not json")
    assert "no calib sidecar" in provenance_problem(engine, b"abc")


# -- calibration caches for TensorRT -----------------------------------------------------------------

def test_cache_bytes_for_rewrites_header_keeps_scales():
    from calib.backends.trt_calibrators import base_for, cache_bytes_for

    cache = TrtCache.from_scales({"images": 0.02, "relu": 0.5}, "EntropyCalibration2", "8.6.1")
    data = cache_bytes_for(cache, "10.3.0.26")
    back = parse(data.decode())
    assert data.splitlines()[0] == b"TRT-100300-EntropyCalibration2"
    assert back.hex_scales == cache.hex_scales
    assert base_for("EntropyCalibration2") == "IInt8EntropyCalibrator2"
    assert base_for("MinMaxCalibration") == "IInt8MinMaxCalibrator"
    with pytest.raises(CalibError, match="LegacyCalibration"):
        base_for("LegacyCalibration")


def test_trt_written_cache_saved_with_metadata(tmp_path):
    from calib.backends.trt_calibrators import metadata_for_trt_cache
    from calib.cache import CacheKey, CacheStore, load_cache
    from calib.data.dataset import Dataset
    from calib.data.sources import ImageSource, Sample
    from calib.data.transforms import get_preset
    from calib.models import Model

    written_by_trt = b"TRT-100300-EntropyCalibration2\nimages: 3c23d70a\nrelu: 3f000000\n"
    cache = parse(written_by_trt.decode())
    pre = get_preset("torchvision", 16)
    model = Model("tiny", tmp_path / "tiny.onnx", pre, "images", ("N", 3, 16, 16), "ab" * 32)
    dataset = Dataset.of(ImageSource([Sample("a", 0), Sample("b", 1)], "toy", "two toy samples"), pre)
    key = CacheKey(model.sha256, pre.params, "toy", dataset.fingerprint(), "tensorrt-entropy2", {"batch_size": 2})
    meta = metadata_for_trt_cache(cache, key, model, dataset, samples=2, skipped=0, batch_size=2, seconds=1.5)
    assert meta.trt_version == "10.3.0" and meta.algorithm == "EntropyCalibration2"
    assert meta.tensors["relu"]["amax"] == pytest.approx(0.5 * 127)
    path = CacheStore(tmp_path / "store").save(cache, meta)
    entry = load_cache(path, require_metadata=True)
    assert entry.cache.to_text().encode() == written_by_trt
    assert CacheStore(tmp_path / "store").find(key).path == path


# -- build() against a recording stand-in for the documented API --------------------------------------

class FakeTrt(types.ModuleType):
    """Only the documented names calib uses, recording what build() asked for."""

    def __init__(self, version: str):
        super().__init__("tensorrt")
        self.__version__ = version
        self.calls: dict = {}
        fake = self

        class Flag:
            def __init__(self, name, value):
                self.name, self.value = name, value

            def __int__(self):
                return self.value

        self.NetworkDefinitionCreationFlag = types.SimpleNamespace(
            EXPLICIT_BATCH=Flag("EXPLICIT_BATCH", 0), STRONGLY_TYPED=Flag("STRONGLY_TYPED", 1))
        if int(version.split(".")[0]) >= 11:
            self.BuilderFlag = types.SimpleNamespace(TF32="TF32")  # FP16/INT8 removed in 11
        else:
            self.BuilderFlag = types.SimpleNamespace(FP16="FP16", INT8="INT8", TF32="TF32")
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")

        class ILogger:
            Severity = types.SimpleNamespace(INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3, VERBOSE=4)

            def __init__(self):
                pass

        self.ILogger = ILogger

        class Tensor:
            def __init__(self, name, shape):
                self.name, self.shape = name, shape

        class Network:
            def __init__(self, flags):
                fake.calls["network_flags"] = flags
                self.inputs = []

            @property
            def num_inputs(self):
                return len(self.inputs)

            def get_input(self, i):
                return self.inputs[i]

        class Parser:
            def __init__(self, network, logger):
                self.network = network
                self.num_errors = 0

            def parse_from_file(self, path):
                graph = onnx.load(path).graph
                for i in graph.input:
                    dims = tuple(d.dim_value if d.dim_value else -1 for d in i.type.tensor_type.shape.dim)
                    self.network.inputs.append(Tensor(i.name, dims))
                return True

        class Profile:
            def set_shape(self, name, lo, opt, hi):
                self.shape = (name, lo, opt, hi)

        class TimingCache:
            def __init__(self, data):
                self.data = bytes(data)

            def serialize(self):
                return memoryview(self.data + b"+tactics")

        class Config:
            def __init__(self):
                self.flags, self.profiles, self.int8_calibrator = [], [], None
                fake.calls["config"] = self

            def set_flag(self, flag):
                self.flags.append(flag)

            def set_memory_pool_limit(self, pool, size):
                self.pool = (pool, size)

            def add_optimization_profile(self, profile):
                self.profiles.append(profile.shape)

            def set_calibration_profile(self, profile):
                self.calibration_profile = profile.shape

            def create_timing_cache(self, data):
                return TimingCache(data)

            def set_timing_cache(self, cache, ignore_mismatch):
                self.timing_cache = cache
                return True

            def get_timing_cache(self):
                return self.timing_cache

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                return Network(flags)

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                return memoryview(b"ENGINE:" + ",".join(config.flags).encode())

        self.Builder, self.OnnxParser = Builder, Parser


def fake_backend(monkeypatch, version):
    fake = FakeTrt(version)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    return TensorRTBackend(), fake


def test_build_explicit_int8_on_trt10(monkeypatch, tmp_path):
    fp32 = tiny_classifier(tmp_path / "tiny.onnx")
    qdq = qdq_model(tmp_path, fp32, np.random.default_rng(1).standard_normal((4, 3, 16, 16)).astype(np.float32))
    backend, fake = fake_backend(monkeypatch, "10.3.0.26")
    assert backend.artifact_suffix() == ".engine"
    cache_file = tmp_path / "timing.cache"
    out = backend.build(qdq, tmp_path / "out" / "tiny.engine", "int8", max_batch=8, workspace_mib=256,
                        timing_cache=cache_file)
    config = fake.calls["config"]
    assert fake.calls["network_flags"] == 1 << 1       # STRONGLY_TYPED, nothing else
    assert config.flags == []                           # no precision flags on a strongly typed network
    assert config.pool == ("WORKSPACE", 256 << 20)
    assert config.profiles == [("images", (1, 3, 16, 16), (8, 3, 16, 16), (8, 3, 16, 16))]
    assert out.read_bytes() == b"ENGINE:"
    assert cache_file.read_bytes() == b"+tactics"      # saved after the build
    side = json.loads(sidecar_path(out).read_text())
    assert side["tensorrt_version"] == "10.3.0.26" and side["strongly_typed"] is True
    assert side["batch"] == {"min": 1, "opt": 8, "max": 8}
    assert provenance_problem(out, out.read_bytes()) is None
    # The timing cache is loaded next time.
    backend.build(qdq, out, "int8", max_batch=8, timing_cache=cache_file)
    assert cache_file.read_bytes() == b"+tactics+tactics"


def test_build_fp16_and_implicit_int8_on_trt10(monkeypatch, tmp_path):
    fp32 = tiny_classifier(tmp_path / "tiny.onnx")
    backend, fake = fake_backend(monkeypatch, "10.3.0")
    backend.build(fp32, tmp_path / "a.engine", "fp32", fp16=True)
    assert fake.calls["network_flags"] == 0 and fake.calls["config"].flags == ["FP16"]
    assert fake.calls["config"].profiles[0][3] == (32, 3, 16, 16)   # default max batch

    class Calibrator:
        error = None
        asked_for_data = False

        def get_batch_size(self):
            return 4

    calibrator = Calibrator()
    backend.build(fp32, tmp_path / "b.engine", "int8", calibrator=calibrator, max_batch=16)
    config = fake.calls["config"]
    assert config.flags == ["INT8"] and config.int8_calibrator is calibrator
    assert config.calibration_profile == ("images", (4, 3, 16, 16), (4, 3, 16, 16), (4, 3, 16, 16))
    calibrator.asked_for_data = True
    with pytest.raises(CalibError, match="did not accept the calibration cache"):
        backend.build(fp32, tmp_path / "c.engine", "int8", calibrator=calibrator)
    calibrator.error = ValueError("boom")
    with pytest.raises(CalibError, match="INT8 calibration failed: ValueError: boom"):
        backend.build(fp32, tmp_path / "c.engine", "int8", calibrator=calibrator)


def test_build_on_trt11_is_strongly_typed_and_refuses_calibration(monkeypatch, tmp_path):
    fp32 = tiny_classifier(tmp_path / "tiny.onnx", batch=2)
    backend, fake = fake_backend(monkeypatch, "11.0.0.114")
    out = backend.build(fp32, tmp_path / "a.engine", "fp32")
    assert fake.calls["network_flags"] == 0            # STRONGLY_TYPED is deprecated and implied
    assert fake.calls["config"].profiles == []         # fixed batch: no profile
    assert json.loads(sidecar_path(out).read_text())["batch"] == {"min": 2, "opt": 2, "max": 2}
    cache = tmp_path / "x.cache"
    cache.write_text(TrtCache.from_scales({"images": 0.1}, "EntropyCalibration2").to_text())
    with pytest.raises(CalibError, match="no implicit INT8 calibration"):
        backend.build(fp32, tmp_path / "b.engine", "int8", calibration_cache=cache)
    with pytest.raises(CalibError, match="no FP16 builder flag"):
        backend.build(fp32, tmp_path / "b.engine", "fp32", fp16=True)
    with pytest.raises(CalibError, match="unknown TensorRT build option"):
        backend.build(fp32, tmp_path / "b.engine", "fp32", max_batchsize=4)


def test_calibrators_refused_on_trt11(monkeypatch):
    from calib.backends.trt_calibrators import cache_calibrator

    monkeypatch.setitem(sys.modules, "tensorrt", FakeTrt("11.0.0"))
    with pytest.raises(CalibError, match="no INT8 calibrators.*Q/DQ"):
        cache_calibrator(TrtCache.from_scales({"x": 0.1}, "EntropyCalibration2"))


def test_load_warns_before_loading_a_foreign_engine(monkeypatch, tmp_path):
    backend, _ = fake_backend(monkeypatch, "10.3.0")
    engine = tmp_path / "foreign.engine"
    engine.write_bytes(b"whatever")
    seen = []
    monkeypatch.setattr(trt_backend, "TrtRunner", lambda *a: seen.append(a) or "runner")
    with pytest.warns(UserWarning, match="executable code"):
        assert backend.load(engine) == "runner"
    write_sidecar(engine, b"whatever", {"tensorrt_version": "10.2.0"})
    with pytest.raises(CalibError, match="built with TensorRT 10.2.0, this is TensorRT 10.3.0"):
        backend.load(engine)
    with pytest.raises(CalibError, match="engine not found"):
        backend.load(tmp_path / "missing.engine")


# -- real TensorRT -------------------------------------------------------------------------------------

def _real_tensorrt():
    try:
        import tensorrt
    except (ImportError, OSError) as e:
        pytest.skip(f"tensorrt is not importable ({type(e).__name__}: {e})")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("TensorRT needs a CUDA GPU")
    return tensorrt


def _ort(path, x):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]


@pytest.mark.tensorrt
def test_real_fp32_engine_matches_ort(tmp_path):
    _real_tensorrt()
    fp32 = tiny_classifier(tmp_path / "tiny.onnx")
    backend = TensorRTBackend()
    engine = backend.build(fp32, tmp_path / "tiny.engine", "fp32", max_batch=8,
                           timing_cache=tmp_path / "timing.cache")
    assert (tmp_path / "timing.cache").stat().st_size > 0
    x = np.random.default_rng(2).standard_normal((5, 3, 16, 16)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # calib wrote it: no provenance warning
        runner = backend.load(engine)
    try:
        got = runner.run(x)
        assert got.shape == (5, 5) and got.dtype == np.float32
        np.testing.assert_allclose(got, _ort(fp32, x), rtol=1e-2, atol=1e-2)  # TF32 may be on
        import torch

        np.testing.assert_allclose(runner.run(torch.from_numpy(x).cuda()), got, rtol=0, atol=0)
        with pytest.raises(CalibError, match="outside this engine's batch range"):
            runner.run(np.zeros((9, 3, 16, 16), np.float32))
    finally:
        runner.close()


@pytest.mark.tensorrt
def test_real_explicit_int8_engine_matches_ort_on_the_qdq_model(tmp_path):
    _real_tensorrt()
    fp32 = tiny_classifier(tmp_path / "tiny.onnx")
    rng = np.random.default_rng(3)
    qdq = qdq_model(tmp_path, fp32, rng.standard_normal((16, 3, 16, 16)).astype(np.float32))
    backend = TensorRTBackend()
    engine = backend.build(qdq, tmp_path / "tiny.int8.engine", "int8", max_batch=8)
    x = rng.standard_normal((8, 3, 16, 16)).astype(np.float32)
    runner = backend.load(engine)
    try:
        got = runner.run(x)
    finally:
        runner.close()
    want = _ort(qdq, x)
    # Same quantization, different integer kernels and accumulation order.
    assert np.abs(got - want).max() <= 0.05 * np.abs(want).max() + 1e-3
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.75


@pytest.mark.tensorrt
def test_real_implicit_int8_from_cache_or_refused(tmp_path):
    trt = _real_tensorrt()
    fp32 = tiny_classifier(tmp_path / "tiny.onnx")
    rng = np.random.default_rng(4)
    amax = calibrated_amax(fp32, rng.standard_normal((16, 3, 16, 16)).astype(np.float32))
    cache = tmp_path / "tiny.cache"
    cache.write_text(TrtCache.from_scales({n: a / 127 for n, a in amax.items()}, "EntropyCalibration2").to_text())
    backend = TensorRTBackend()
    if int(trt.__version__.split(".")[0]) >= 11:
        with pytest.raises(CalibError, match="no implicit INT8 calibration"):
            backend.build(fp32, tmp_path / "x.engine", "int8", calibration_cache=cache)
        return
    engine = backend.build(fp32, tmp_path / "x.engine", "int8", calibration_cache=cache, max_batch=8)
    x = rng.standard_normal((4, 3, 16, 16)).astype(np.float32)
    runner = backend.load(engine)
    try:
        got = runner.run(x)
    finally:
        runner.close()
    want = _ort(fp32, x)
    assert np.abs(got - want).max() <= 0.1 * np.abs(want).max() + 1e-3


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_real_entropy_calibrator_streams_images_and_saves_cache(tmp_path):
    trt = _real_tensorrt()
    if int(trt.__version__.split(".")[0]) >= 11:
        pytest.skip("TensorRT 11 has no calibrators")
    from PIL import Image

    from calib.backends.trt_calibrators import entropy_calibrator
    from calib.cache import CacheStore, load_cache
    from calib.data.dataset import Dataset
    from calib.data.sources import FolderSource, Sample
    from calib.data.transforms import get_preset
    from calib.models import Model, file_sha256

    rng = np.random.default_rng(5)
    samples = []
    for i in range(10):
        p = tmp_path / "img" / f"{i}.png"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (20 + i, 24, 3), dtype=np.uint8)).save(p)
        samples.append(Sample(str(p), i % 3))
    pre = get_preset("torchvision", 16)
    dataset = Dataset.of(FolderSource(samples, "toy", tmp_path / "img"), pre)
    fp32 = tiny_classifier(tmp_path / "tiny.onnx")
    model = Model("tiny", fp32, pre, "images", ("N", 3, 16, 16), file_sha256(fp32))
    store = CacheStore(tmp_path / "caches")
    calibrator = entropy_calibrator(model, dataset, store, batch_size=4, workers=0)
    TensorRTBackend().build(fp32, tmp_path / "x.engine", "int8", calibrator=calibrator, max_batch=8)
    assert calibrator.images == 8 and calibrator.dropped == 2   # 10 images: 2 full batches of 4
    entry = load_cache(calibrator.saved, require_metadata=True)
    assert entry.metadata.samples == 8 and entry.cache.algorithm == "EntropyCalibration2"
    # Reused next time: TensorRT reads the stored cache instead of asking for batches.
    again = entropy_calibrator(model, dataset, store, batch_size=4, workers=0)
    TensorRTBackend().build(fp32, tmp_path / "y.engine", "int8", calibrator=again, max_batch=8)
    assert again.batches == 0
