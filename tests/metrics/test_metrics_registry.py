"""The metric registry: built-ins named lazily, plug-ins through the `calib.metrics` entry-point
group (calib.plugins), decoders through `calib.metrics.decoders`."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from tests.conftest import install_fake_plugin

from calib.errors import CalibError
from calib.metrics import Metric, MetricResult, available_metrics, get_metric, metric_class
from calib.metrics import registry
from calib.metrics.decode import available_decoders, choose_decoder, get_decoder, _decoders

PLUGIN = "calib_metrics_plugin_5b1e"


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    install_fake_plugin(tmp_path, PLUGIN, '''
        import numpy as np
        from calib.metrics import Metric, MetricResult
        from calib.metrics.decode import Decoder

        class Count(Metric):
            name = "count"

            def __init__(self, **params):
                super().__init__(**params)
                self.seen = {}

            def update(self, model_name, keys, outputs, labels=None):
                self.seen[model_name] = self.seen.get(model_name, 0) + len(keys)

            def result(self):
                a, b = self.seen[self.reference_model], self.seen[self.test_model]
                return MetricResult("count", "images", a, b, a - b, None, "fp32", a, "count")

        class Rows(Decoder):
            name = "rows"

            def candidates(self, outputs, n):
                x = np.asarray(outputs["det"])
                return [(x[i, :, :4], x[i, :, 4:]) for i in range(n)]
    ''', "calib.metrics", {"count": f"{PLUGIN}:Count", "classify": f"{PLUGIN}:Count"})
    (tmp_path / f"{PLUGIN}-0.1.dist-info" / "entry_points.txt").write_text(
        f"[calib.metrics]\ncount = {PLUGIN}:Count\nclassify = {PLUGIN}:Count\n"
        f"[calib.metrics.decoders]\nrows = {PLUGIN}:Rows\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.reload_plugins()
    _decoders.reload_plugins()
    yield
    registry.reload_plugins()
    _decoders.reload_plugins()
    sys.modules.pop(PLUGIN, None)


def test_builtins_in_order_and_lazy():
    assert available_metrics()[:4] == ["classify", "detect", "segment", "generic"]
    for name in ("classify", "detect", "segment", "generic"):
        assert issubclass(metric_class(name), Metric) and metric_class(name).name == name
    assert {"ultralytics", "boxes-scores"} <= set(available_decoders())


def test_unknown_metric_is_one_line():
    with pytest.raises(CalibError, match="unknown metric 'pose'.*classify") as err:
        get_metric("pose")
    assert "\n" not in str(err.value)
    with pytest.raises(CalibError, match="takes no parameter"):
        get_metric("generic", labels="x")


def test_plugins_through_entry_points(plugins):
    with pytest.warns(UserWarning, match="built-in"):
        assert "count" in available_metrics()
    m = get_metric("count")
    m.update("fp32", ["a", "b"], {})
    m.update("int8", ["a"], {})
    r = m.result()
    assert isinstance(r, MetricResult) and r.drop == 1
    assert metric_class("classify").__module__ == "calib.metrics.classify"
    dec = get_decoder("rows", conf_threshold=0.1)
    det = np.zeros((1, 2, 6))
    det[0, 0] = [0, 0, 10, 10, 0.9, 0.0]
    (d,) = dec.decode({"det": det}, 1)
    assert len(d) == 1 and d.classes[0] == 0
    assert choose_decoder({"det": det}, "rows").name == "rows"
