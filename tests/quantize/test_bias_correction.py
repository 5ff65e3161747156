import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from calib.calibrators.channel_means import ChannelMeans
from calib.passes import expose
from calib.quantize import bias_shift, quantize_model


def _conv_node(groups):
    return helper.make_node("Conv", ["x", "w", "b"], ["y"], group=groups)


def test_bias_shift_matches_brute_force_for_conv_depthwise_and_gemm():
    rng = np.random.default_rng(0)
    mean = rng.standard_normal(8)
    # Dense conv (groups=1), grouped (2) and depthwise (8): shift = sum over the inputs each
    # output channel reads of dW * E[x].
    for groups in (1, 2, 8):
        dw = rng.standard_normal((8, 8 // groups, 3, 3))
        expected = np.array([sum(dw[o, c, i, j] * mean[(o // (8 // groups)) * (8 // groups) + c]
                                 for c in range(8 // groups) for i in range(3) for j in range(3)) for o in range(8)])
        np.testing.assert_allclose(bias_shift(_conv_node(groups), 0, dw, mean), expected)
    dw = rng.standard_normal((5, 8))
    gemm = helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)
    np.testing.assert_allclose(bias_shift(gemm, 0, dw, mean), dw @ mean)
    np.testing.assert_allclose(bias_shift(helper.make_node("MatMul", ["x", "w"], ["y"]), 1, dw.T, mean), dw @ mean)
    assert bias_shift(_conv_node(1), 0, rng.standard_normal((8, 3, 3, 3)), mean) is None  # shapes disagree


def test_channel_means_stream_and_merge():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((10, 4, 5, 5)) + np.arange(4)[None, :, None, None]
    one, a, b = ChannelMeans(["t"]), ChannelMeans(["t"]), ChannelMeans(["t"])
    one.observe("t", x)
    a.observe("t", x[:3])
    b.observe("t", x[3:])
    a.merge(b)
    np.testing.assert_allclose(one.means()["t"], x.mean(axis=(0, 2, 3)))
    np.testing.assert_allclose(a.means()["t"], one.means()["t"])
    one.observe("other", x)  # not asked for: ignored
    assert list(one.means()) == ["t"]


def test_correction_removes_the_mean_output_error(tiny_classifier):
    model = onnx.load(str(tiny_classifier))
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((64, 3, 16, 16)) + 0.5).astype(np.float32)
    exposed, names = expose(model)
    outs = dict(zip(names, ort.InferenceSession(exposed.SerializeToString()).run(names, {"input": x})))
    means = ChannelMeans(["input", "r1", "r2", "flat"])
    for n, v in outs.items():
        means.observe(n, v)
    ref = outs["logits"] if "logits" in outs else ort.InferenceSession(model.SerializeToString()).run(None, {"input": x})[0]
    errors = {}
    for corrected in (False, True):
        # Weights quantized, activations float: only the weight error (and its mean) is left.
        q, _ = quantize_model(model, {}, "tensorrt", allow_missing=True,
                              channel_means=means.means() if corrected else None)
        y = ort.InferenceSession(q.SerializeToString()).run(None, {"input": x})[0]
        errors[corrected] = np.abs((y - ref).mean(axis=0)).mean()
    assert errors[True] < 0.5 * errors[False]
