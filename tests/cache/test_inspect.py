from calib.cache import CacheStore, TrtCache, load_cache
from calib.cache.inspect import diff, scale_table


def _meta(scales):
    from calib.cache import CacheKey, CacheMetadata

    key = CacheKey("a" * 64, {}, "imagenet-val", "f" * 64, "entropy", {})
    return CacheMetadata(key=key, model_name="m", model_inputs=[], dataset_description="t", samples=1, skipped=0,
                         batch_size=1, trt_version="10.3.0", algorithm="EntropyCalibration2",
                         tensors={n: {"scale": s, "amax": s * 127, "min": -s * 127, "max": s * 127, "nonfinite": 0}
                                  for n, s in scales.items()})


def test_scale_table_of_a_cache_without_observed_ranges(tmp_path):
    # Sidecars of caches TensorRT computed carry min/max None.
    from calib.cache.inspect import scale_table

    meta = _meta({"a": 0.5, "b": 0.25})
    for info in meta.tensors.values():
        info.update(min=None, max=None, nonfinite=None)
    path = CacheStore(tmp_path).save(TrtCache.from_scales({"a": 0.5, "b": 0.25}, "EntropyCalibration2"), meta)
    rows = scale_table(load_cache(path))
    assert [r["tensor"] for r in rows] == ["a", "b"] and all(r["observed_max"] is None for r in rows)


def test_scale_table_flags_outliers_and_invalid_scales(tmp_path):
    scales = {f"t{i}": 0.01 for i in range(10)} | {"big": 0.5}
    path = CacheStore(tmp_path).save(TrtCache.from_scales(scales, "EntropyCalibration2"), _meta(scales))
    path.write_text(path.read_text().replace(TrtCache.from_scales({"x": 0.01}, "x").hex_scales["x"] + "\n", "7fc00000\n", 1))
    rows = {r["tensor"]: r for r in scale_table(load_cache(path))}   # a broken cache still shows
    assert rows["big"]["flags"] == [">20x median"] and rows["t0"]["flags"] == ["invalid: not finite"]


def test_diff_ratios(tmp_path):
    a = CacheStore(tmp_path / "a").save(TrtCache.from_scales({"x": 0.5, "y": 1.0}, "EntropyCalibration2"),
                                        _meta({"x": 0.5, "y": 1.0}))
    b = CacheStore(tmp_path / "b").save(TrtCache.from_scales({"x": 1.0, "z": 1.0}, "EntropyCalibration2"),
                                        _meta({"x": 1.0, "z": 1.0}))
    d = diff(load_cache(a), load_cache(b))
    assert [(r["tensor"], r["ratio"]) for r in d["rows"]] == [("x", 2.0)]
    assert d["only_a"] == ["y"] and d["only_b"] == ["z"]
