"""calib.commands.build.build: `calib build` as one call; its option and device checks come
before the model is resolved or anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from calib.commands.build import build, trt_options
from calib.errors import CalibError
from calib.session import RunConfig


def test_trt_options_are_refused_for_a_backend_that_builds_no_engine():
    assert trt_options("ort", min_batch=None, timing_cache=None) == {}
    assert trt_options("tensorrt", max_batch=8, timing_cache="t.cache") == {"max_batch": 8,
                                                                            "timing_cache": Path("t.cache")}
    with pytest.raises(CalibError, match="--min-batch applies to the TensorRT backends only"):
        trt_options("ort", min_batch=1, timing_cache="t")


@pytest.mark.parametrize("config, options, words", [
    (RunConfig(device="cuda:0,1"), {}, "one GPU"),
    (RunConfig(device="tpu"), {}, "unknown device"),
    (RunConfig(), {"workspace_mib": 64}, "--workspace-mib"),
])
def test_build_checks_options_before_the_model(tmp_path, config, options, words):
    config.model = str(tmp_path / "missing.onnx")     # resolving it would fail with another message
    with pytest.raises(CalibError, match=words):
        build(config, tmp_path / "c.cache", tmp_path / "out.onnx", **options)
    assert not (tmp_path / "out.onnx").exists()
