"""Layers: which ops own which Q/DQ, and what stays quantized when some layers are float."""

import numpy as np
import pytest
from onnx import helper

from calib.quantize import plan_for, quantizable_layers, quantize_model
from calib.quantize.layers import LayerMap

from quantize_helpers import make_model, quantized_inputs, ranges, readers_of_dq, run, weights


@pytest.mark.parametrize("flavor", ["tensorrt", "ort"])
def test_layers_own_every_qdq_and_data_movement_is_not_a_layer(tiny, flavor):
    model, _, _ = tiny
    layers = quantizable_layers(model, flavor)
    ops = sorted(layer.op_type for layer in layers)
    assert ops == sorted(["Conv"] * 3 + ["Gemm", "Add"] + (["GlobalAveragePool"] if flavor == "ort" else []))
    assert [l.position for l in layers] == sorted(l.position for l in layers)
    owned = {t for l in layers for t in l.inputs}
    plan = plan_for(model, flavor)
    outputs = set(plan.outputs)
    assert owned | outputs | {"flat"} >= set(plan.activations)  # flat: the Reshape carries pool's scale


def _conv_transpose_layernorm():
    """Conv -> Transpose -> LayerNormalization (ConvNeXt's channels-last norm): the Conv's uint8
    output reaches a float reader through data movement."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Transpose", ["c"], ["t"], perm=[0, 2, 3, 1]),
             helper.make_node("LayerNormalization", ["t", "s", "z"], ["out"], axis=-1)]
    inits = {"w": weights(rng, 4, 3, 3, 3), "b": weights(rng, 4), "s": np.ones(4, np.float32), "z": np.zeros(4, np.float32)}
    model = make_model(nodes, {"x": ["N", 3, 6, 6]}, {"out": None}, inits)
    feeds = {"x": rng.standard_normal((2, 3, 6, 6)).astype(np.float32)}
    return model, feeds


def test_a_layer_owns_the_output_its_integer_kernel_writes():
    model, feeds = _conv_transpose_layernorm()
    amax = ranges(model, feeds)
    full, _ = quantize_model(model, amax, "ort")
    assert quantized_inputs(full) == {"x", "c", "t"} and readers_of_dq(full, "t") == ["LayerNormalization"]
    [conv] = quantizable_layers(model, "ort")
    assert conv.op_type == "Conv" and conv.inputs == ("x",)
    assert quantize_model(model, amax, "ort", quantized_layers=[conv.id])[0] == full
    fp32, _ = quantize_model(model, amax, "ort", float_layers=[conv.id])
    assert not quantized_inputs(fp32)
    np.testing.assert_allclose(run(fp32, feeds), run(model, feeds), rtol=1e-6, atol=1e-6)


def test_selection_of_partial_models(tiny):
    model, _, _ = tiny
    layers = LayerMap(plan_for(model, "ort"))
    selection, on = layers.select(set())
    assert selection == {} and not on
    every, _ = layers.select({l.id for l in layers.layers})
    assert every == {t: c for t, c in layers.plan.activations.items()}
    gap = next(l.id for l in layers.layers if l.op_type == "GlobalAveragePool")
    only_gap, _ = layers.select({gap})
    # The pool's input (its own rule); its uint8 output has no quantized reader: no Q/DQ there.
    assert set(only_gap) == {"sum"}
