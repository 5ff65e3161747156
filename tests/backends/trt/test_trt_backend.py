"""calib.backends.tensorrt.backend: TensorRTBackend and TensorRTRTXBackend as commands use them.

Runs everywhere: missing bindings, can_run() and the one line it gives, load() refusing what it
cannot run (no GPU, compute capability 9.0, another target, another product or version), the
foreign-engine warning. Marked `gpu` (and `tensorrt` for TensorRT itself): real engines compared
with ONNX Runtime; each skips with its reason where the GPU, TensorRT or an RTX GPU is missing.
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest
from trt_fakes import (FakeTrt, calibrated_amax, install, make_classifier, ort_logits, qdq_model,
                       rtx_backend)

from calib.backends import get_backend
from calib.backends.tensorrt import backend as backend_module
from calib.backends.tensorrt.backend import TensorRTBackend, TensorRTRTXBackend
from calib.backends.tensorrt.gpu import Gpu
from calib.backends.tensorrt.provenance import write_sidecar
from calib.cache import TrtCache
from calib.errors import CalibError, MissingDependency

RTX_4090 = Gpu("NVIDIA GeForce RTX 4090", (8, 9))
RTX_3090 = Gpu("NVIDIA GeForce RTX 3090", (8, 6))
H200 = Gpu("NVIDIA H200", (9, 0))


def test_class_attributes():
    assert (TensorRTBackend.name, TensorRTBackend.qdq_flavor) == ("tensorrt", "tensorrt")
    assert (TensorRTRTXBackend.name, TensorRTRTXBackend.qdq_flavor) == ("tensorrt-rtx", "tensorrt")


def test_missing_tensorrt_is_one_line(monkeypatch):
    for module in ("tensorrt", "tensorrt_bindings"):
        monkeypatch.setitem(sys.modules, module, None)
    for make in (TensorRTBackend, lambda: get_backend("tensorrt")):
        with pytest.raises(MissingDependency) as info:
            make()
        assert "\n" not in str(info.value) and "pip install tensorrt" in str(info.value)


def test_tensorrt_can_run_needs_a_gpu(monkeypatch):
    install(monkeypatch, FakeTrt())
    backend = TensorRTBackend()
    monkeypatch.setattr(backend_module, "find_gpu", lambda device: "PyTorch 2.x sees no CUDA GPU here")
    ok, why = backend.can_run()
    assert not ok and "TensorRT engines run only on an NVIDIA GPU" in why and "\n" not in why
    monkeypatch.setattr(backend_module, "find_gpu", lambda device: H200)
    assert backend.can_run() == (True, "")


def test_rtx_can_run_here_or_says_why_in_one_line():
    backend = rtx_backend()
    ok, why = backend.can_run()
    if not ok:
        assert why and "\n" not in why and "TensorRT-RTX" in why



def run_engine(backend, engine, x: np.ndarray) -> np.ndarray:
    """The engine's output for `x`, its runner closed."""
    runner = backend.load(engine)
    try:
        return runner.run(x)
    finally:
        runner.close()

@pytest.mark.parametrize("gpu, runs", [(RTX_4090, True), (RTX_3090, True), (H200, False),
                                       (Gpu("NVIDIA A100", (8, 0)), False),   # no SM80 engines from calib
                                       ("PyTorch 2.x is a CPU build", False)])
def test_rtx_can_run_by_compute_capability(monkeypatch, gpu, runs):
    backend = rtx_backend()
    monkeypatch.setattr(backend_module, "find_gpu", lambda device: gpu)
    ok, why = backend.can_run()
    assert ok is runs and (why == "") is runs
    if gpu is H200:
        assert "does not run on NVIDIA H200 (compute capability 9.0)" in why
        assert "8.6, 8.9, 12.0" in why


def test_rtx_load_refuses_in_one_line_without_a_supported_gpu(monkeypatch, tmp_path):
    backend = rtx_backend()
    engine = backend.build(qdq_model(tmp_path), tmp_path / "m.engine", "int8")
    for gpu in ("PyTorch 2.x sees no CUDA GPU here", H200):
        monkeypatch.setattr(backend_module, "find_gpu", lambda device, gpu=gpu: gpu)
        with pytest.raises(CalibError) as info:
            backend.load(engine)
        assert str(info.value) == backend.can_run()[1] and "\n" not in str(info.value)
    # An RTX GPU of another compute capability than the engine's target.
    monkeypatch.setattr(backend_module, "find_gpu", lambda device: RTX_3090)
    with pytest.raises(CalibError, match=r"built for compute capability 8\.9.*--compute-capability 86"):
        backend.load(engine)
    with pytest.raises(CalibError, match="engine not found"):
        backend.load(tmp_path / "missing.engine")


def test_load_checks_provenance_product_and_version(monkeypatch, tmp_path):
    install(monkeypatch, FakeTrt("10.3.0"))
    backend = TensorRTBackend()
    monkeypatch.setattr(backend_module, "find_gpu", lambda device: H200)
    seen = []
    monkeypatch.setattr(backend_module, "TrtRunner", lambda *a, **k: seen.append(a) or "runner")
    engine = tmp_path / "foreign.engine"
    engine.write_bytes(b"whatever")
    with pytest.warns(UserWarning, match="executable code"):
        assert backend.load(engine) == "runner"
    write_sidecar(engine, b"whatever", {"product": "tensorrt", "tensorrt_version": "10.2.0"})
    with pytest.raises(CalibError, match="built with TensorRT 10.2.0, this is TensorRT 10.3.0"):
        backend.load(engine)
    write_sidecar(engine, b"whatever", {"product": "tensorrt-rtx", "tensorrt_version": "1.7.1.116"})
    with pytest.raises(CalibError, match="built with TensorRT-RTX, not TensorRT: load it with --backend tensorrt-rtx"):
        backend.load(engine)
    write_sidecar(engine, b"whatever", {"product": "tensorrt", "tensorrt_version": "10.3.0"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backend.load(engine) == "runner"
    assert len(seen) == 2 and seen[-1][1] == b"whatever"


# -- real engines ------------------------------------------------------------------------------------

def _real_tensorrt():
    try:
        backend = TensorRTBackend()
    except MissingDependency as e:
        pytest.skip(f"TensorRT is not installed here ({e})")
    ok, why = backend.can_run()
    if not ok:
        pytest.skip(why)
    return backend


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_real_fp32_engine_matches_ort(tmp_path):
    backend = _real_tensorrt()
    fp32 = make_classifier(tmp_path / "fp32.onnx")
    engine = backend.build(fp32, tmp_path / "tiny.engine", "fp32", max_batch=8, timing_cache=tmp_path / "timing.cache")
    assert (tmp_path / "timing.cache").stat().st_size > 0
    x = np.random.default_rng(2).standard_normal((5, 3, 16, 16)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # calib wrote it: no provenance warning
        runner = backend.load(engine)
    try:
        got = runner.run(x)
        assert got.shape == (5, 10) and got.dtype == np.float32
        np.testing.assert_allclose(got, ort_logits(fp32, x), rtol=1e-2, atol=1e-2)  # TF32 may be on
        import torch

        np.testing.assert_allclose(runner.run(torch.from_numpy(x).cuda()), got, rtol=0, atol=0)
        with pytest.raises(CalibError, match="outside this engine's batch range"):
            runner.run(np.zeros((9, 3, 16, 16), np.float32))
    finally:
        runner.close()


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_real_explicit_int8_engine_matches_ort_on_the_qdq_model(tmp_path):
    backend = _real_tensorrt()
    fp32 = make_classifier(tmp_path / "fp32.onnx")
    qdq = qdq_model(tmp_path, "tensorrt", fp32)
    engine = backend.build(qdq, tmp_path / "tiny.int8.engine", "int8", max_batch=8)
    x = np.random.default_rng(3).standard_normal((8, 3, 16, 16)).astype(np.float32)
    got = run_engine(backend, engine, x)
    want = ort_logits(qdq, x)
    # Same quantization, different integer kernels and accumulation order.
    assert np.abs(got - want).max() <= 0.05 * np.abs(want).max() + 1e-3
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.75


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_real_implicit_int8_from_cache_or_refused(tmp_path):
    backend = _real_tensorrt()
    fp32 = make_classifier(tmp_path / "fp32.onnx")
    rng = np.random.default_rng(4)
    amax = calibrated_amax(fp32, rng.standard_normal((16, 3, 16, 16)).astype(np.float32))
    cache = tmp_path / "tiny.cache"
    cache.write_text(TrtCache.from_scales({n: a / 127 for n, a in amax.items()}, "EntropyCalibration2").to_text())
    if not backend.features.int8_calibrator:
        with pytest.raises(CalibError, match="no implicit INT8 calibration"):
            backend.build(fp32, tmp_path / "x.engine", "int8", calibration_cache=cache)
        return
    engine = backend.build(fp32, tmp_path / "x.engine", "int8", calibration_cache=cache, max_batch=8)
    x = rng.standard_normal((4, 3, 16, 16)).astype(np.float32)
    got = run_engine(backend, engine, x)
    want = ort_logits(fp32, x)
    assert np.abs(got - want).max() <= 0.1 * np.abs(want).max() + 1e-3


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_real_entropy_calibrator_streams_images_and_saves_cache(tmp_path):
    backend = _real_tensorrt()
    if not backend.features.int8_calibrator:
        pytest.skip(f"{backend.features.display} has no calibrators")
    from PIL import Image

    from calib.backends.tensorrt.calibrators import entropy_calibrator
    from calib.cache import CacheStore, load_cache
    from calib.data.dataset import Dataset
    from calib.data.sources import FolderSource, Sample
    from calib.data.transforms import get_preset
    from calib.fsutil import file_sha256
    from calib.models import Model
    from calib.models.memory import MemoryNeed

    rng = np.random.default_rng(5)
    samples = []
    for i in range(10):
        p = tmp_path / "img" / f"{i}.png"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (20 + i, 24, 3), dtype=np.uint8)).save(p)
        samples.append(Sample(str(p), i % 3))
    pre = get_preset("torchvision", 16)
    dataset = Dataset.of(FolderSource(samples, "toy", tmp_path / "img"), pre)
    fp32 = make_classifier(tmp_path / "fp32.onnx")
    model = Model("tiny", fp32, pre, "input", ("batch", 3, 16, 16), file_sha256(fp32), MemoryNeed(0, 3072, 0))
    store = CacheStore(tmp_path / "caches")
    calibrator = entropy_calibrator(model, dataset, store, batch_size=4, workers=0)
    backend.build(fp32, tmp_path / "x.engine", "int8", calibrator=calibrator, max_batch=8)
    assert calibrator.images == 8 and calibrator.dropped == 2   # 10 images: 2 full batches of 4
    entry = load_cache(calibrator.saved, require_metadata=True)
    assert entry.metadata.samples == 8 and entry.cache.algorithm == "EntropyCalibration2"
    # Reused next time: TensorRT reads the stored cache instead of asking for batches.
    again = entropy_calibrator(model, dataset, store, batch_size=4, workers=0)
    backend.build(fp32, tmp_path / "y.engine", "int8", calibrator=again, max_batch=8)
    assert again.batches == 0


@pytest.mark.gpu
def test_real_rtx_engines_match_ort_on_an_rtx_gpu(tmp_path):
    backend = rtx_backend()
    ok, why = backend.can_run()
    if not ok:
        pytest.skip(why)
    from calib.backends.tensorrt.gpu import find_gpu

    cc = find_gpu().sm
    fp32 = make_classifier(tmp_path / "fp32.onnx")
    qdq = qdq_model(tmp_path, "tensorrt", fp32)
    x = np.random.default_rng(6).standard_normal((6, 3, 16, 16)).astype(np.float32)
    for model, precision, tolerance in ((fp32, "fp32", 1e-2), (qdq, "int8", 5e-2)):
        engine = backend.build(model, tmp_path / f"{precision}.engine", precision, max_batch=8, compute_capability=cc)
        got = run_engine(backend, engine, x)
        want = ort_logits(model, x)
        assert got.shape == want.shape and not np.allclose(got, 0)
        assert np.abs(got - want).max() <= tolerance * np.abs(want).max() + 1e-3
