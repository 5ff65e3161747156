"""Registry: built-ins, unknown names, third-party calibrators through entry points."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from tests.conftest import install_fake_plugin

from calib.calibrators import available_calibrators, get_calibrator, register, reload_plugins
from calib.calibrators import Calibrator
from calib.errors import CalibError

PLUGIN = "calib_test_plugin_7f3a"


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A tiny installed-looking distribution with a `calib.calibrators` entry point."""
    install_fake_plugin(tmp_path, PLUGIN, '''
        from calib.calibrators import Calibrator

        class HalfMax(Calibrator):
            """Test plugin: half of max |x|."""
            name = "halfmax"
            trt_algorithm = "EntropyCalibration2"
            needs_histogram = False
            defaults = {"factor": 0.5}

            def compute_amax(self, counts, edges, lo, hi):
                return self.params["factor"] * max(-lo, hi)

        NotACalibrator = object
    ''', "calib.calibrators",
                        {"halfmax": f"{PLUGIN}:HalfMax", "broken": f"{PLUGIN}_missing_module:Thing",
                         "notcal": f"{PLUGIN}:NotACalibrator", "minmax": f"{PLUGIN}:HalfMax"})
    monkeypatch.syspath_prepend(str(tmp_path))
    reload_plugins()
    yield tmp_path
    reload_plugins()
    sys.modules.pop(PLUGIN, None)


def test_builtins():
    names = available_calibrators()
    assert names == sorted(names)
    assert {"entropy", "minmax", "percentile", "mse"} <= set(names)


def test_unknown_name_lists_available():
    with pytest.raises(CalibError) as err:
        get_calibrator("kl-divergence")
    msg = str(err.value)
    assert "\n" not in msg and "kl-divergence" in msg
    for name in ("entropy", "minmax", "mse", "percentile"):
        assert name in msg


def test_entry_point_plugin_is_found(plugin_dir):
    with pytest.warns(UserWarning, match="built-in"):
        names = available_calibrators()  # the plugin claiming "minmax" is ignored, with a warning
    assert {"halfmax", "broken", "notcal"} <= set(names)
    assert PLUGIN not in sys.modules  # listed, not imported
    cal = get_calibrator("halfmax", factor=0.25)
    cal.observe("x", np.array([-8.0, 2.0], np.float32))
    assert cal.compute()["x"].amax == 2.0
    assert cal.params == {"factor": 0.25}
    assert type(get_calibrator("minmax")).__module__ == "calib.calibrators.minmax"
    with pytest.raises(CalibError, match="failed to load"):
        get_calibrator("broken")
    with pytest.raises(CalibError, match="not a calib.calibrators.Calibrator"):
        get_calibrator("notcal")


def test_plugin_gone_after_reload():
    reload_plugins()
    assert "halfmax" not in available_calibrators()


def test_register_validates():
    with pytest.raises(TypeError):
        register(object)  # type: ignore[arg-type]

    class Nameless(Calibrator):
        def compute_amax(self, counts, edges, lo, hi):
            return 0.0

    with pytest.raises(TypeError):
        register(Nameless)
