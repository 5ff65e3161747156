"""calib.calibration: which tensors a cache covers, and that plug-ins cannot break it."""

import importlib.metadata

import onnx

from calib.calibration import calibrated_tensors
from calib.quantize import flavor_names, registry, required_tensors


def test_a_broken_flavor_plugin_breaks_neither_calibration_nor_existing_caches(tiny_classifier, monkeypatch):
    model = onnx.load(str(tiny_classifier))
    before = calibrated_tensors(model)
    point = importlib.metadata.EntryPoint("broken", "no_such_module_here:Flavor", registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group: [point] if group == registry.ENTRY_POINT_GROUP else [])
    registry.reload_plugins()
    try:
        assert "broken" in flavor_names()          # it is listed ...
        assert calibrated_tensors(model) == before  # ... but calibration never loads it
    finally:
        monkeypatch.undo()
        registry.reload_plugins()
    assert set(before) == set(required_tensors(model, "tensorrt")) | set(required_tensors(model, "ort"))
