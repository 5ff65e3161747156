"""calib.backends.tensorrt.calibrators: TensorRT IInt8 calibrators (implicit INT8, TensorRT <= 10).

The calibrator classes are made from a stand-in module's base classes (`FakeTrt`), so their own
logic runs here: full batches only (TensorRT needs them), errors kept for after the build, the
cache TensorRT writes saved with metadata that counts the images actually used.
"""

from __future__ import annotations

import sys
import types

import pytest
from trt_fakes import FakeTrt, install

from calib.backends.tensorrt import calibrators
from calib.backends.tensorrt.calibrators import (_calibrator_class, base_for, cache_bytes_for, cache_calibrator,
                                                 entropy_calibrator, metadata_for_trt_cache,
                                                 raise_calibrator_problem)
from calib.cache import CacheKey, CacheStore, TrtCache, load_cache, parse
from calib.errors import CalibError, MissingDependency

WRITTEN_BY_TRT = b"TRT-100300-EntropyCalibration2\nimages: 3c23d70a\nrelu: 3f000000\n"


def test_missing_tensorrt(monkeypatch):
    for module in ("tensorrt", "tensorrt_bindings"):
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingDependency, match="pip install tensorrt"):
        cache_calibrator(TrtCache.from_scales({"x": 0.1}, "EntropyCalibration2"))
    with pytest.raises(MissingDependency, match="pip install tensorrt"):
        entropy_calibrator(None, None)


def test_refused_without_int8_calibrator(monkeypatch):
    install(monkeypatch, FakeTrt("11.0.0", weak_typing=False, calibrators=False))
    with pytest.raises(CalibError, match=r"TensorRT 11.0.0 has no INT8 calibrators.*--qdq-flavor tensorrt") as info:
        cache_calibrator(TrtCache.from_scales({"x": 0.1}, "EntropyCalibration2"))
    assert "\n" not in str(info.value) and "--flavor " not in str(info.value)


def test_cache_bytes_for_rewrites_header_keeps_scales():
    cache = TrtCache.from_scales({"images": 0.02, "relu": 0.5}, "EntropyCalibration2", "8.6.1")
    data = cache_bytes_for(cache, "10.3.0.26")
    back = parse(data.decode())
    assert data.splitlines()[0] == b"TRT-100300-EntropyCalibration2"
    assert back.hex_scales == cache.hex_scales
    assert base_for("EntropyCalibration2") == "IInt8EntropyCalibrator2"
    assert base_for("MinMaxCalibration") == "IInt8MinMaxCalibrator"
    with pytest.raises(CalibError, match="LegacyCalibration"):
        base_for("LegacyCalibration")


def test_cache_calibrator_hands_over_the_rewritten_cache(monkeypatch, tmp_path):
    fake = install(monkeypatch, FakeTrt("10.3.0.26"))
    cache = TrtCache.from_scales({"images": 0.02}, "MinMaxCalibration", "8.6.1")
    calibrator = cache_calibrator(cache)
    assert isinstance(calibrator, fake.IInt8MinMaxCalibrator)      # the class TensorRT checks
    assert calibrator.read_calibration_cache().splitlines()[0] == b"TRT-100300-MinMaxCalibration"
    assert calibrator.get_batch(["images"]) is None and calibrator.asked_for_data
    with pytest.raises(CalibError, match="did not accept the calibration cache"):
        raise_calibrator_problem(calibrator)


def _batches(sizes, pointer=1000):
    """A get_batch() stand-in: (pointer, valid count) per batch, then None."""
    items = iter([(pointer + i, n) for i, n in enumerate(sizes)])
    return lambda: next(items, None)


def test_only_full_batches_reach_tensorrt(monkeypatch):
    fake = install(monkeypatch, FakeTrt("10.3.0"))
    cls = _calibrator_class(fake, "IInt8EntropyCalibrator2")
    calibrator = cls(4, _batches([4, 3, 4, 2]), lambda: None, lambda data: None)
    assert calibrator.get_batch_size() == 4
    got = []
    while (batch := calibrator.get_batch(["images"])) is not None:
        got.append(batch)
    assert got == [[1000], [1002]]                 # the 3- and 2-image batches never reach TensorRT
    assert (calibrator.batches, calibrator.images, calibrator.dropped) == (2, 8, 5)
    raise_calibrator_problem(calibrator)           # nothing went wrong


def test_errors_in_callbacks_are_kept_and_raised_after_the_build(monkeypatch):
    fake = install(monkeypatch, FakeTrt("10.3.0"))
    cls = _calibrator_class(fake, "IInt8EntropyCalibrator2")

    def broken():
        raise ValueError("decode failed")

    calibrator = cls(4, broken, lambda: None, lambda data: None)
    assert calibrator.get_batch(["images"]) is None            # never raises into TensorRT
    with pytest.raises(CalibError, match="INT8 calibration failed: ValueError: decode failed"):
        raise_calibrator_problem(calibrator)
    calibrator.error = CalibError("one line")
    with pytest.raises(CalibError, match="^one line$"):
        raise_calibrator_problem(calibrator)


def _model_and_dataset(tmp_path, n_images):
    from calib.data.dataset import Dataset
    from calib.data.sources import ImageSource, Sample
    from calib.data.transforms import get_preset
    from calib.models import Model
    from calib.models.memory import MemoryNeed

    pre = get_preset("torchvision", 16)
    model = Model("tiny", tmp_path / "tiny.onnx", pre, "images", ("N", 3, 16, 16), "ab" * 32, MemoryNeed(0, 3072, 0))
    dataset = Dataset.of(ImageSource([Sample(f"img{i}", i % 3) for i in range(n_images)], "toy",
                                     f"{n_images} toy samples"), pre)
    return model, dataset


def test_trt_written_cache_saved_with_metadata(tmp_path):
    model, dataset = _model_and_dataset(tmp_path, 2)
    cache = parse(WRITTEN_BY_TRT.decode())
    key = CacheKey(model.sha256, model.preprocess.params, "toy", dataset.fingerprint(), "tensorrt-entropy2",
                   {"batch_size": 2})
    meta = metadata_for_trt_cache(cache, key, model, dataset, samples=2, skipped=0, batch_size=2, seconds=1.5)
    assert meta.trt_version == "10.3.0" and meta.algorithm == "EntropyCalibration2"
    assert meta.tensors["relu"]["amax"] == pytest.approx(0.5 * 127)
    assert meta.model_inputs == [{"name": "images", "shape": ["N", 3, 16, 16]}]
    path = CacheStore(tmp_path / "store").save(cache, meta)
    entry = load_cache(path, require_metadata=True)
    assert entry.cache.to_text().encode() == WRITTEN_BY_TRT
    assert CacheStore(tmp_path / "store").find(key).path == path


def test_data_calibrator_records_the_images_tensorrt_used(monkeypatch, tmp_path):
    """10 images in batches of 4: TensorRT gets 2 full batches, and the saved cache says 8 samples."""
    install(monkeypatch, FakeTrt("10.3.0"))
    model, dataset = _model_and_dataset(tmp_path, 10)

    class Stream:  # GpuBatchStream's get_batch contract, without a GPU
        def __init__(self, dataset, batch_size, workers, progress=None):
            sizes = [min(batch_size, len(dataset) - i) for i in range(0, len(dataset), batch_size)]
            self.get_batch = _batches(sizes)
            self.skips = types.SimpleNamespace(skipped=[])

    monkeypatch.setattr("calib.data.gpu_stream.GpuBatchStream", Stream)
    store = CacheStore(tmp_path / "caches")
    calibrator = calibrators.entropy_calibrator(model, dataset, store, batch_size=4)
    assert calibrator.read_calibration_cache() is None           # nothing stored yet
    while calibrator.get_batch(["images"]) is not None:
        pass
    calibrator.write_calibration_cache(WRITTEN_BY_TRT)           # what TensorRT does after calibrating
    raise_calibrator_problem(calibrator)
    assert (calibrator.images, calibrator.dropped) == (8, 2)
    entry = load_cache(calibrator.saved, require_metadata=True)
    assert entry.metadata.samples == 8 and entry.metadata.batch_size == 4
    assert entry.metadata.key.calibrator_params == {"batch_size": 4, "partial_batches": "dropped"}
    # Next time the stored cache is handed to TensorRT (header for the running version).
    again = calibrators.entropy_calibrator(model, dataset, store, batch_size=4)
    assert again.read_calibration_cache() == WRITTEN_BY_TRT
