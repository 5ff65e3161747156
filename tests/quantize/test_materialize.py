"""The one materializer: the bytes of every model it wrote before the flavor registry, missing
ranges, both flavors from one set of ranges, partial models."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from calib.errors import CalibError
from calib.quantize import MissingScales, get_flavor, quantizable_layers, quantize_model, required_tensors

import qdq_golden
from quantize_helpers import qdq_params, quantized_inputs, run

GOLDEN = json.loads((Path(__file__).parent / "qdq_golden.json").read_text())


def _new_api():
    def quantize(model, amax, flavor, means):
        return quantize_model(model, amax, flavor, channel_means=means)[0]

    def partial(model, amax, flavor, float_layers, quantized_layers, means):
        return quantize_model(model, amax, flavor, channel_means=means, float_layers=float_layers,
                              quantized_layers=quantized_layers)[0]

    return quantize, partial, lambda m, f: [layer.id for layer in quantizable_layers(m, f)]


@pytest.mark.parametrize("name", sorted(qdq_golden.models()))
def test_bytes_of_tiny_models_are_those_before_the_flavor_registry(name):
    model = qdq_golden.models()[name]
    assert qdq_golden.cases(model, *_new_api()) == GOLDEN["models"][name]


@pytest.mark.slow
def test_bytes_of_efficientnet_lite0_are_those_before_the_flavor_registry():
    digest, model = qdq_golden.lite0()
    if digest != GOLDEN["lite0_fp32_sha256"]:
        pytest.skip("this torch/onnx exports EfficientNet-Lite0 to other FP32 bytes than the golden run")
    assert qdq_golden.cases(model, *_new_api()) == GOLDEN["models"]["efficientnet_lite0"]


def test_missing_scales_are_reported_or_tolerated(tiny):
    model, _, amax = tiny
    partial = {k: v for k, v in amax.items() if k != "r2"}
    with pytest.raises(MissingScales, match="r2"):
        quantize_model(model, partial, "tensorrt")
    q, missing = quantize_model(model, partial, "tensorrt", allow_missing=True)
    assert missing == ["r2"]
    assert "r2" not in quantized_inputs(q)
    assert set(required_tensors(model, "tensorrt")) == {"input", "r1", "r2", "flat"}


def test_both_flavors_come_from_the_same_ranges(tiny):
    model, _, amax = tiny
    trt, _ = quantize_model(model, amax, "tensorrt")
    ort_q, _ = quantize_model(model, amax, get_flavor("ort"))  # a name or a Flavor
    t = {n.input[0]: s for n, s, _ in qdq_params(trt)}
    o = {n.input[0]: s for n, s, _ in qdq_params(ort_q)}
    np.testing.assert_allclose(t["r1"] * 127, o["r1"] * 255, rtol=1e-6)
    np.testing.assert_allclose(t["input"], o["input"], rtol=1e-6)


def test_bias_handling_follows_the_flavor(tiny):
    model, _, amax = tiny
    for flavor in ("tensorrt", "ort"):
        q, _ = quantize_model(model, amax, flavor)
        inits = {i.name: i for i in q.graph.initializer}
        int32 = get_flavor(flavor).int32_bias
        assert ("b1_quantized" in inits) == int32 and ("b1" in inits) != int32
        if int32:
            assert inits["b1_quantized"].data_type == onnx.TensorProto.INT32


@pytest.mark.parametrize("flavor", ["tensorrt", "ort"])
def test_partial_models_choose_layers_by_id(tiny, flavor):
    model, x, amax = tiny
    layers = quantizable_layers(model, flavor)
    full, _ = quantize_model(model, amax, flavor)
    assert quantize_model(model, amax, flavor, quantized_layers=[l.id for l in layers])[0] == full
    gemm = next(l for l in layers if l.op_type == "Gemm")
    assert gemm.weighted and gemm.weight == "wf" and gemm.inputs == ("flat",)
    one_float, _ = quantize_model(model, amax, flavor, float_layers=[gemm.id])
    assert "flat" not in quantized_inputs(one_float)  # its only reader is float now
    assert not any(n.input[0] == "wf_quantized" for n in one_float.graph.node)
    only, _ = quantize_model(model, amax, flavor, quantized_layers=[gemm.id])
    # The Gemm's input, and in the ort flavor the Reshape's input it carries its scale from.
    assert quantized_inputs(only) == ({"flat", "pool"} if flavor == "ort" else {"flat"})
    y = run(model, {"input": x})
    assert 0 < np.abs(run(only, {"input": x}) - y).max() < 0.05 * np.abs(y).max()
    with pytest.raises(CalibError, match="unknown layer"):
        quantize_model(model, amax, flavor, float_layers=["no-such-layer"])
