"""Sensitivity: layers, partial Q/DQ models, and a ranking that finds a broken layer."""

import json

import numpy as np
import onnx
import pytest

from calib.calibrators.channel_means import ChannelMeans
from calib.passes import expose
from calib.errors import CalibError
from calib.passes import Images
from calib.stats.sqnr import sqnr
from calib.onnx_io import ort_session
from calib.quantize import quantizable_layers, quantize_model
from calib.restore.ranker import rank_layers


def build_partial(*args, **kwargs):
    """The Q/DQ model of quantize_model (the one materializer) with some layers float."""
    return quantize_model(*args, **kwargs)[0]


def _activations(model: onnx.ModelProto, x: np.ndarray):
    exposed, names = expose(model)
    return names, ort_session(exposed, "basic").run(names, {"input": x})


def _ranges(model: onnx.ModelProto, x: np.ndarray) -> dict[str, float]:
    return {n: float(np.abs(v).max()) for n, v in zip(*_activations(model, x))}


@pytest.fixture()
def tiny(tiny_classifier):
    model = onnx.load(str(tiny_classifier))
    x = np.random.default_rng(1).standard_normal((48, 3, 16, 16)).astype(np.float32)
    return model, x, _ranges(model, x)


def _logits(model, x, level="all"):
    return ort_session(model, level).run(None, {"input": x})[0]


@pytest.mark.parametrize("flavor", ["ort", "tensorrt"])
def test_the_two_ends_are_the_int8_model_and_the_fp32_model(tiny, flavor):
    model, x, amax = tiny
    layers = quantizable_layers(model, flavor)
    ops = sorted(layer.op_type for layer in layers)
    # Every op owning a Q/DQ: 3 Conv + Gemm, the Add; the ort flavor also quantizes the pool.
    assert ops == sorted(["Conv"] * 3 + ["Gemm", "Add"] + (["GlobalAveragePool"] if flavor == "ort" else []))
    full = build_partial(model, amax, flavor)
    assert full.SerializeToString() == quantize_model(model, amax, flavor)[0].SerializeToString()
    # ... with bias correction too (the default of calib run)
    means = ChannelMeans()
    for name, value in zip(*_activations(model, x)):
        means.observe(name, value)
    corrected = build_partial(model, amax, flavor, channel_means=means.means())
    reference = quantize_model(model, amax, flavor, channel_means=means.means())[0]
    assert corrected.SerializeToString() == reference.SerializeToString() != full.SerializeToString()
    none = build_partial(model, amax, flavor, float_layers=[layer.id for layer in layers])
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in none.graph.node)
    y = _logits(model, x)
    for level in ("basic", "all"):  # folded ReLUs are restored for float readers
        np.testing.assert_allclose(_logits(none, x, level), y, rtol=1e-5, atol=1e-5)


def test_a_float_layer_keeps_its_weight_and_input_float_and_runs_right_under_enable_all(tiny):
    model, x, amax = tiny
    layers = quantizable_layers(model, "ort")
    middle = next(layer for layer in layers if layer.op_type == "Conv" and layer.inputs == ("r1",))
    q = build_partial(model, amax, "ort", float_layers=[middle.id])
    conv = next(n for n in q.graph.node if n.op_type == "Conv" and middle.weight in n.input)
    assert conv.input[0] == "r1_float"  # the ReLU6 output, restored for this float reader
    assert conv.input[1] == middle.weight  # the float weight, not a DequantizeLinear output
    # The same numbers with and without ORT's Q/DQ fusions (the known ORT bug would break this).
    y_basic, y_all = _logits(q, x, "basic"), _logits(q, x, "all")
    assert sqnr(y_basic, y_all) > 30
    assert sqnr(_logits(model, x), y_all) > 25


def test_unknown_layer_is_a_one_line_error(tiny):
    model, _, amax = tiny
    with pytest.raises(CalibError, match="unknown layer"):
        build_partial(model, amax, "ort", float_layers=["no-such-layer"])


@pytest.mark.parametrize("flavor", ["ort", "tensorrt"])
def test_a_deliberately_broken_layer_tops_the_ranking(tiny, flavor):
    model, x, amax = tiny
    broken = dict(amax)
    broken["r2"] = amax["r2"] / 30  # a scale 30x too small: the depthwise output is clipped hard
    victim = next(layer for layer in quantizable_layers(model, flavor) if "r2" in layer.inputs)
    images = Images(x, np.zeros(len(x), np.int64), [str(i) for i in range(len(x))])
    result = rank_layers(model, broken, flavor, images, batch_size=16, progress=False)
    assert result.ranking()[0] == victim.id
    first, second = result.rows[0], result.rows[1]
    assert first.logits_sqnr_db < second.logits_sqnr_db - 10
    assert result.all_float_max_abs_diff < 1e-4
    assert len(result.rows) == len(quantizable_layers(model, flavor))
    # With the healthy scale the same layer is harmless: its SQNR is far higher.
    healthy = rank_layers(model, amax, flavor, images, batch_size=16, progress=False)
    assert {r.layer: r.logits_sqnr_db for r in healthy.rows}[victim.id] > first.logits_sqnr_db + 10


def test_sensitivity_command_writes_its_outputs(tmp_path, tiny_classifier):
    from PIL import Image

    from calib.commands.sensitivity import rank_sensitivity as sensitivity
    from calib.session import RunConfig

    cfg = RunConfig(model=str(tiny_classifier), dataset="demo", samples=8, cache_dir=str(tmp_path / "caches"),
                    batch_size=4, workers=0, progress=False)
    d = sensitivity(cfg, tmp_path / "out", images=5)
    out = tmp_path / "out"
    for name in ("sensitivity.json", "sensitivity.md", "sensitivity.png", "report.html"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "sensitivity.json").read_text())
    assert saved["sensitivity"]["ranking"] == d["sensitivity"]["ranking"]
    assert len(saved["sensitivity"]["rows"]) == 6
    assert "only this layer quantized" in (out / "sensitivity.md").read_text()
    Image.open(out / "sensitivity.png").verify()
    assert not list(tmp_path.glob(".*partial"))
