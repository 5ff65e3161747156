"""calib.commands.cache: the `calib cache` subcommands as library calls (moved out of the CLI)."""

from __future__ import annotations

import json

import pytest

from calib.cache import CacheKey, CacheMetadata, CacheStore, TrtCache
from calib.commands.cache import diff_caches, export_trt_cache, list_caches, show_cache, verify_cache
from calib.errors import CalibError
from calib.session import RunConfig


def saved(folder, scales):
    key = CacheKey("a" * 64, {}, "imagenet-val", "f" * 64, "minmax", {})
    meta = CacheMetadata(key=key, model_name="m", model_inputs=[], dataset_description="t", samples=1, skipped=0,
                         batch_size=1, trt_version="10.3.0", algorithm="MinMaxCalibration",
                         tensors={n: {"scale": s, "amax": s * 127, "min": -s * 127, "max": s * 127, "nonfinite": 0}
                                  for n, s in scales.items()})
    return CacheStore(folder).save(TrtCache.from_scales(scales, "MinMaxCalibration"), meta)


def test_list_show_and_diff(tmp_path):
    a = saved(tmp_path / "c", {"x": 0.5, "y": 1.0})
    b = saved(tmp_path / "d", {"x": 1.0})
    assert [r["file"] for r in list_caches(tmp_path / "c")] == [a.name]
    assert list_caches(tmp_path / "empty") == []
    view = show_cache(a)
    assert [r["tensor"] for r in view.scales] == ["y", "x"] and view.problems == []
    data = view.to_json()
    assert json.dumps(data) and data["metadata"]["model_name"] == "m" and data["header"] == view.entry.cache.header
    d = diff_caches(a, b)
    assert d["rows"][0]["tensor"] == "x" and d["only_a"] == ["y"]


def test_verify_names_the_problems_in_one_error(tmp_path, tiny_classifier):
    cache = saved(tmp_path / "c", {"not_a_tensor": 0.5})
    with pytest.raises(CalibError, match="is not valid for tiny"):
        verify_cache(RunConfig(model=str(tiny_classifier)), cache)


def test_export_writes_the_requested_header(tmp_path):
    cache = saved(tmp_path / "c", {"x": 0.5})
    result = export_trt_cache(cache, "8.6.1", tmp_path / "out.cache")
    assert result.path.read_text().startswith("TRT-8601")
