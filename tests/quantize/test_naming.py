"""The names of added tensors: what readers of a Q/DQ model (SQNR, sensitivity) look up."""

from calib.quantize import naming, quantizable_layers, quantize_model


def test_names_of_activation_weight_and_bias_tensors(tiny):
    model, _, amax = tiny
    q, _ = quantize_model(model, amax, "ort")
    produced = {o for n in q.graph.node for o in n.output}
    inits = {i.name for i in q.graph.initializer}
    assert {naming.quantized_name("input"), naming.dequantized_name("input")} <= produced
    assert {naming.scale_name("input"), naming.zero_point_name("input")} <= inits
    assert {naming.quantized_constant_name("w1"), naming.quantized_constant_name("b1"), naming.scale_name("w1")} <= inits
    assert naming.dequantized_name("w1") in produced
    assert naming.dequantized_name("x") == "x_DequantizeLinear_Output" and naming.quantized_name("x") == "x_QuantizeLinear_Output"


def test_bias_corrected_and_float_names(tiny):
    model, x, amax = tiny
    means = {"r1": [0.5] * 8, "r2": [0.5] * 8}
    q, _ = quantize_model(model, amax, "tensorrt", channel_means=means)
    assert naming.bias_corrected_name("b2") in {i.name for i in q.graph.initializer}
    # A float reader of a folded ReLU output reads the ReLU restored under float_name.
    conv = next(l.id for l in quantizable_layers(model, "ort") if l.inputs == ("r1",))
    partial, _ = quantize_model(model, amax, "ort", float_layers=[conv])
    assert naming.float_name("r1") in {o for n in partial.graph.node for o in n.output}
