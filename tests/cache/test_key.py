"""The cache key (calib.calibration.cache_key, calib.cache.metadata.CacheKey): what must match for
`calib run` to reuse a cache."""

import pytest

from calib.cache import CacheMetadata, CacheStore, TrtCache


@pytest.fixture()
def dynamic_hw_model(tmp_path):
    """The tiny classifier with dynamic height and width: --input-size decides what it runs at."""
    from tests.conftest import make_classifier

    return make_classifier(tmp_path / "dynamic.onnx", size="side")


def test_the_key_holds_the_input_size(tmp_path, dynamic_hw_model):
    """One model file, one sample list, one calibrator; only --input-size differs (224 vs 256 with
    the torchvision preset, whose name does not carry the size). Activations at 256x256 are not
    those at 224x224, so a cache calibrated at 224 must never be reused at 256."""
    from calib.calibration import cache_key
    from calib.calibrators import get_calibrator
    from calib.data.plan import plan_data
    from calib.models import resolve_model

    at224 = resolve_model(str(dynamic_hw_model), input_size=224)
    at256 = resolve_model(str(dynamic_hw_model), input_size=256)
    assert at224.sha256 == at256.sha256 and at224.preprocess.name == at256.preprocess.name == "torchvision"
    assert (at224.size, at256.size) == ((224, 224), (256, 256))
    data = plan_data("demo", None, at224.preprocess, 4, evaluate=False).calibration
    cal = get_calibrator("minmax")
    key224, key256 = cache_key(at224, data, cal), cache_key(at256, data, cal)
    assert key224 != key256 and key224.digest() != key256.digest()
    assert key224.preprocess["size"] == 224 and key256.preprocess["size"] == 256
    # The sidecar keeps it, and the store does not hand the 224 cache to a 256 run.
    meta = CacheMetadata(key=key224, model_name=at224.name,
                         model_inputs=[{"name": "input", "shape": ["batch", 3, 224, 224]}],
                         dataset_description="demo", samples=4, skipped=0, batch_size=4, trt_version="10.3.0",
                         algorithm="MinMaxCalibration",
                         tensors={"input": {"scale": 0.5, "amax": 63.5, "min": -1, "max": 1, "nonfinite": 0}})
    assert CacheMetadata.from_json(meta.to_json()).key == key224
    store = CacheStore(tmp_path / "caches")
    store.save(TrtCache.from_scales({"input": 0.5}, "MinMaxCalibration"), meta)
    assert store.find(key224) is not None
    assert store.find(key256) is None
