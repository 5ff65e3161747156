import json

import pytest

from calib.cache import CacheKey, CacheMetadata, CacheStore, TrtCache, load_cache
from calib.errors import CalibError


def _meta(calibrator="entropy", fingerprint="f" * 64) -> CacheMetadata:
    key = CacheKey("a" * 64, {"name": "efficientnet-lite-224"}, "imagenet-val", fingerprint, calibrator, {})
    return CacheMetadata(key=key, model_name="efficientnet_lite0", model_inputs=[{"name": "input", "shape": ["batch", 3, 224, 224]}],
                         dataset_description="test", samples=10, skipped=0, batch_size=4, trt_version="10.3.0",
                         algorithm="EntropyCalibration2",
                         tensors={"input": {"scale": 0.5, "amax": 63.5, "min": -1, "max": 1, "nonfinite": 0}})


def test_save_find_and_index(tmp_path):
    store = CacheStore(tmp_path)
    meta = _meta()
    path = store.save(TrtCache.from_scales({"input": 0.5}, "EntropyCalibration2"), meta)
    assert path.suffix == ".cache" and path.with_suffix(".json").is_file()
    found = store.find(meta.key)
    assert found is not None and found.path == path and found.cache.scales == {"input": 0.5}
    assert store.find(_meta(fingerprint="e" * 64).key) is None  # another sample list
    assert store.find(_meta(calibrator="minmax").key) is None
    rows = store.entries()
    assert len(rows) == 1 and rows[0]["file"] == path.name and rows[0]["calibrator"] == "entropy"
    assert not list(tmp_path.glob("*.tmp"))


def test_corrupt_sidecar_and_truncated_cache(tmp_path):
    store = CacheStore(tmp_path)
    path = store.save(TrtCache.from_scales({"input": 0.5}, "EntropyCalibration2"), _meta())
    side = path.with_suffix(".json")
    side.write_text(side.read_text()[:40])
    with pytest.raises(CalibError, match=side.name) as e:
        load_cache(path)
    assert "\n" not in str(e.value)
    side.unlink()
    path.write_text("TRT-100300-EntropyCalibration2\ninput: 3f00")
    with pytest.raises(CalibError, match="line 2"):
        load_cache(path)


def test_sidecar_disagreeing_with_cache_is_refused(tmp_path):
    store = CacheStore(tmp_path)
    path = store.save(TrtCache.from_scales({"input": 0.5}, "EntropyCalibration2"), _meta())
    path.write_text("TRT-100300-EntropyCalibration2\nother: 3f000000\n")
    with pytest.raises(CalibError, match="disagree"):
        load_cache(path)


def test_metadata_round_trip(tmp_path):
    meta = _meta()
    again = CacheMetadata.from_json(meta.to_json())
    assert again == meta
    d = json.loads(meta.to_json())
    assert d["key"]["digest"] == meta.key.digest()
    for field in ("format_version", "calib_version", "model_inputs", "created", "trt_version", "batch_size"):
        assert field in d
