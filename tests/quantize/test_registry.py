"""Flavor registry: built-ins, unknown names, third-party flavors through entry points."""

from __future__ import annotations

import sys

import pytest

from tests.conftest import install_fake_plugin

from calib.errors import CalibError
from calib.quantize import Flavor, OrtFlavor, TensorRTFlavor, flavor_names, get_flavor, register_flavor, reload_plugins

PLUGIN = "calib_test_flavor_plugin_51c2"


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """An installed-looking distribution with `calib.flavors` entry points."""
    install_fake_plugin(tmp_path, PLUGIN, '''
        from calib.quantize import TensorRTFlavor

        class WeightsOnly(TensorRTFlavor):
            """Test plugin: the tensorrt placement without activation Q/DQ."""
            name = "weights-only"

            def place(self, plan, original):
                super().place(plan, original)
                plan.activations.clear()
                plan.readers.clear()

        NotAFlavor = object
    ''', "calib.flavors",
                        {"weights-only": f"{PLUGIN}:WeightsOnly", "broken": f"{PLUGIN}_missing_module:Thing",
                         "notflavor": f"{PLUGIN}:NotAFlavor", "ort": f"{PLUGIN}:WeightsOnly"})
    monkeypatch.syspath_prepend(str(tmp_path))
    reload_plugins()
    yield tmp_path
    reload_plugins()
    sys.modules.pop(PLUGIN, None)


def test_builtins_know_their_backend_and_bias():
    assert {"ort", "tensorrt"} <= set(flavor_names())
    trt, ort = get_flavor("tensorrt"), get_flavor("ort")
    assert isinstance(trt, TensorRTFlavor) and isinstance(ort, OrtFlavor)
    assert (trt.default_backend, trt.int32_bias) == ("tensorrt", False)
    assert (ort.default_backend, ort.int32_bias) == ("ort", True)
    assert get_flavor(ort) is ort


def test_unknown_flavor_is_one_line_with_the_choices():
    with pytest.raises(CalibError, match=r"unknown Q/DQ flavor 'openvino' \(choose from: .*ort.*tensorrt"):
        get_flavor("openvino")
    with pytest.raises(CalibError):
        get_flavor(3)


def test_register_checks_the_class():
    with pytest.raises(TypeError):
        register_flavor(object)

    class Nameless(TensorRTFlavor):
        name = ""

    with pytest.raises(TypeError, match="non-empty"):
        register_flavor(Nameless)

    class Clash(TensorRTFlavor):
        name = "ort"

    with pytest.raises(TypeError, match="already registered"):
        register_flavor(Clash)


def test_plugins_load_on_request_and_builtins_win(plugin_dir, tiny):
    from calib.quantize import quantize_model

    with pytest.warns(UserWarning, match="ignored: a built-in"):
        names = flavor_names()
    assert "weights-only" in names and PLUGIN not in sys.modules  # listed, not imported
    model, _, amax = tiny
    q, _ = quantize_model(model, amax, "weights-only")
    ops = [n.op_type for n in q.graph.node]
    assert "QuantizeLinear" not in ops and ops.count("DequantizeLinear") == 4
    assert isinstance(get_flavor("ort"), OrtFlavor)
    with pytest.raises(CalibError, match="failed to load"):
        get_flavor("broken")
    with pytest.raises(CalibError, match="not a calib.quantize.Flavor"):
        get_flavor("notflavor")
    assert issubclass(type(get_flavor("weights-only")), Flavor)
