"""calib.backends.tensorrt.probe: importing either product, and reading features off its API."""

from __future__ import annotations

import sys

import pytest
from trt_fakes import FakeTrt, rtx_backend

from calib.backends.tensorrt.probe import TENSORRT, TENSORRT_RTX, import_product, probe
from calib.errors import MissingDependency


def test_missing_tensorrt_is_one_line(monkeypatch):
    for module in ("tensorrt", "tensorrt_bindings"):
        monkeypatch.setitem(sys.modules, module, None)   # `import` raises ImportError
    with pytest.raises(MissingDependency) as info:
        import_product(TENSORRT)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("the TensorRT backend needs the 'tensorrt' package: pip install tensorrt")
    assert "NVIDIA GPU" in message and "CUDA" in message


def test_missing_tensorrt_rtx_is_one_line(monkeypatch):
    for module in ("tensorrt_rtx_bindings", "tensorrt_rtx"):
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingDependency) as info:
        import_product(TENSORRT_RTX)
    message = str(info.value)
    assert "\n" not in message
    assert "TensorRT-RTX backend" in message and "calib[tensorrt-rtx]" in message


def test_second_module_name_is_tried(monkeypatch):
    fake = FakeTrt("10.8.0", name="tensorrt_bindings")
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt_bindings", fake)
    assert import_product(TENSORRT) is fake


@pytest.mark.parametrize("kwargs, weak, calibrators, implicit, network", [
    ({"version": "10.3.0"}, True, True, False, {"EXPLICIT_BATCH", "STRONGLY_TYPED"}),
    ({"version": "11.0.0", "weak_typing": False, "calibrators": False}, False, False, False,
     {"EXPLICIT_BATCH", "STRONGLY_TYPED"}),
    ({"version": "8.6.1", "implicit_batch": True, "strongly_typed_flag": False}, True, True, True,
     {"EXPLICIT_BATCH"}),
])
def test_probe_fakes(kwargs, weak, calibrators, implicit, network):
    f = probe(FakeTrt(**kwargs), TENSORRT)
    assert f.weak_typing is weak
    assert f.int8_calibrator is calibrators and f.calibration_profile is calibrators
    assert f.implicit_batch is implicit
    assert f.network_flags == network
    assert f.timing_cache and not f.ahead_of_time and f.compute_capabilities == ()
    assert f.display == f"TensorRT {kwargs['version']}"


def test_probe_real_tensorrt_rtx():
    backend = rtx_backend()
    f = probe(backend.trt, TENSORRT_RTX)
    assert f == backend.features
    assert f.product == TENSORRT_RTX and f.display.startswith("TensorRT-RTX ")
    # What the issue measured by hand: no EXPLICIT_BATCH, no precision flags, no calibrators,
    # strong typing only, compute-capability targets for ahead-of-time builds.
    assert "EXPLICIT_BATCH" not in f.network_flags
    assert not f.weak_typing and not f.int8_calibrator and not f.implicit_batch
    assert f.ahead_of_time and {86, 89, 120} <= set(f.compute_capabilities)
    assert 90 not in f.compute_capabilities          # no Hopper target: H100/H200 cannot run it
