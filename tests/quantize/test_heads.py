"""Heads stay float (calib.quantize.heads), in both flavors, and the user's exclusions.

Models: YOLO-, SSD- and segmentation-style heads in plain torch (head_models.py, legacy exporter),
the tiny classifier of tests/conftest.py (its placement must not change: the bytes are held by
qdq_golden.json) and the transformer block of quantize_helpers.py. The key test is the issue's:
a YOLO head flattened to one output keeps FP32's most confident anchors under the default
placement, as well as with only the convolutions quantized and far better than with the head
quantized (the old ort placement: one uint8 scale over pixels and scores).
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest

from calib.errors import CalibError
from calib.quantize import excluded_nodes, plan_for, quantizable_layers, quantize_model, required_tensors
from calib.quantize.graph import GraphIndex
from quantize_helpers import quantized_inputs, ranges, transformer_block

torch = pytest.importorskip("torch")
import head_models as hm  # noqa: E402

FLAVORS = ("tensorrt", "ort")


def dq_readers(q: onnx.ModelProto) -> set[str]:
    """Names of the original nodes that read a DequantizeLinear output (activation or weight)."""
    dq = {o for n in q.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {n.name for n in q.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
            and any(i in dq for i in n.input)}


def images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, hm.SIZE, hm.SIZE)).astype(np.float32)


@pytest.fixture(scope="module")
def yolo():
    model = hm.export(hm.build(hm.YoloHead))
    return model, ranges(model, {"images": images(8, 1)})


def node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


# ----------------------------------------------------------------------------- placement per head
@pytest.mark.parametrize("flavor", FLAVORS)
def test_yolo_head_float_from_the_output_back_to_its_convolutions(yolo, flavor):
    model, amax = yolo
    q, _ = quantize_model(model, amax, flavor)
    layers = {layer.id for layer in quantizable_layers(model, flavor)}   # the nodes owning Q/DQ
    # The head convolutions and the backbone keep their quantization ...
    for conv in ("/cv2.0/cv2.0.1/Conv", "/cv3.0/cv3.0.1/Conv", "/cv2.1/cv2.1.1/Conv", "/cv3.1/cv3.1.1/Conv",
                 "/stem/stem.0/stem.0.0/Conv", "/down/down.0/Conv"):
        assert conv in layers and conv in dq_readers(q)
    # ... everything after them is float: the per-level and final Concats, the DFL (Softmax and
    # its 16 -> 1 convolution), the box arithmetic, the Sigmoid, the shape ops to the output.
    head = {"/Concat", "/Concat_3", "/Concat_4", "/Split", "/Softmax", "/dfl/Conv", "/Sub", "/Add_1", "/Add_2",
            "/Mul_2", "/Sigmoid", "/Concat_8", "/Unsqueeze_6", "/Reshape_4"}
    assert not head & layers
    # In the ort flavor the head convolutions write uint8 (QLinearConv), which the float head
    # reads dequantized; nothing after the first head op is quantized in either flavor.
    after = head - {"/Concat", "/Concat_3"} if flavor == "ort" else head
    assert not after & dq_readers(q)
    concat = node(model, "/Concat_8").output[0]
    assert concat not in quantized_inputs(q)
    excluded = excluded_nodes(model, flavor)
    assert set(excluded.names()) >= head and excluded.names("small weighted op") == ["/dfl/Conv"]
    assert not {"/cv2.0/cv2.0.1/Conv", "/cv3.0/cv3.0.1/Conv"} & set(excluded.names())
    # The old placement (no head analysis) quantized the box+score Concat in the ort flavor.
    old = required_tensors(model, flavor, protect_heads=False)
    assert (concat in old) == (flavor == "ort")


@pytest.mark.parametrize("flavor", FLAVORS)
def test_ssd_two_outputs_concatenated_predictions_stay_float(flavor):
    model = hm.export(hm.build(hm.SsdHead), ("boxes", "scores"))
    amax = ranges(model, {"images": images(4, 2)})
    q, _ = quantize_model(model, amax, flavor)
    readers = dq_readers(q)
    predictions = {f"/{b}.{i}/Conv" for b in ("box", "cls") for i in (0, 1)}
    # Float predictions read the float feature map and keep their float weights.
    assert not predictions & readers
    assert not predictions & {layer.id for layer in quantizable_layers(model, flavor)}
    assert {"/stem/stem.0/stem.0.0/Conv", "/stem/stem.1/stem.1.0/Conv", "/down/down.0/Conv"} <= readers
    assert set(excluded_nodes(model, flavor).names("prediction")) == predictions
    assert not {n.input[1] for n in q.graph.node if n.name in predictions} & {
        n.output[0] for n in q.graph.node if n.op_type == "DequantizeLinear"}   # float weights
    # The feature map the predictions read is still quantized for the backbone conv reading it.
    p3 = node(model, "/down/down.0/Conv").input[0]
    assert p3 in quantized_inputs(q)


@pytest.mark.parametrize("flavor", FLAVORS)
def test_segmentation_resize_stays_float_its_classifier_conv_does_not(flavor):
    model = hm.export(hm.build(hm.SegHead))
    amax = ranges(model, {"images": images(4, 3)})
    q, _ = quantize_model(model, amax, flavor)
    assert "/classifier/Conv" in dq_readers(q)     # 21 classes: not a small convolution
    assert excluded_nodes(model, flavor).names() == ["/Resize"]
    resize = next(n for n in q.graph.node if n.op_type == "Resize")
    assert resize.output[0] == "out" and "out" not in quantized_inputs(q)
    if flavor == "tensorrt":   # nothing of TensorRT's rules quantizes a weighted op's output
        assert resize.input[0] == node(model, "/classifier/Conv").output[0]


@pytest.mark.parametrize("flavor", FLAVORS)
def test_classifier_placement_is_unchanged(tiny_classifier, flavor):
    model = onnx.load(str(tiny_classifier))
    assert excluded_nodes(model, flavor).nodes == ()
    amax = {t: 1.0 for t in GraphIndex(model).activations()}
    on, _ = quantize_model(model, amax, flavor)
    off, _ = quantize_model(model, amax, flavor, protect_heads=False)
    assert on.SerializeToString() == off.SerializeToString()
    assert "Gemm:logits" in [layer.id for layer in quantizable_layers(model, flavor)]


@pytest.mark.parametrize("flavor", FLAVORS)
def test_transformer_layernorm_softmax_gelu_float_attention_matmuls_quantized(flavor):
    model, feeds = transformer_block(np.random.default_rng(0))
    q, _ = quantize_model(model, ranges(model, feeds), flavor)
    quantized = quantized_inputs(q)
    # Q.K^T and P.V: both inputs of each attention MatMul (TensorRT: a MatMul is a weighted op
    # whatever feeds it; ModelOpt quantizes BMM1/BMM2 of an MHA block in int8).
    assert {"q", "kt", "p", "v"} <= quantized
    # LayerNorm, Softmax and GELU read float (their outputs are quantized only as the inputs of
    # the MatMul that follows: n1, n2, p, g).
    dq = {o for n in q.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    for n in q.graph.node:
        if n.op_type in ("LayerNormalization", "Softmax", "Erf", "Div"):
            assert not set(n.input) & dq, n.op_type
    assert not {"x", "x1", "s", "ss", "h", "h2", "e", "e1", "he"} & quantized
    # The output's residual Add and the last bias Add are the head; the last MatMul is not.
    excluded = excluded_nodes(model, flavor)
    assert [n.op_type for n in excluded.nodes] == ["Add", "Add"]


# ----------------------------------------------------------------------------- user exclusions
def test_exclude_by_name_and_op_type(yolo):
    model, amax = yolo
    for flavor in FLAVORS:
        q, _ = quantize_model(model, amax, flavor, exclude=[r"^/cv3\.1/"], exclude_ops=["Mul"])
        readers = dq_readers(q)
        assert not {"/cv3.1/cv3.1.0/cv3.1.0.0/Conv", "/cv3.1/cv3.1.1/Conv"} & readers
        assert "/cv3.0/cv3.0.1/Conv" in readers
        layers = {layer.id for layer in quantizable_layers(model, flavor, exclude_ops=["Mul"])}
        assert not any(n.op_type == "Mul" and n.name in layers for n in model.graph.node)
        excluded = excluded_nodes(model, flavor, exclude=[r"^/cv3\.1/"], exclude_ops=["Mul"])
        users = {(n.node, n.reason, n.rule) for n in excluded.nodes if n.reason.startswith("exclude")}
        assert ("/cv3.1/cv3.1.1/Conv", "exclude", r"^/cv3\.1/") in users
        assert ("/down/down.1/Mul", "exclude-op", "Mul") in users
        layers = {layer.id for layer in quantizable_layers(model, flavor, exclude=[r"^/cv3\.1/"])}
        assert "/cv3.1/cv3.1.1/Conv" not in layers and "/cv3.0/cv3.0.1/Conv" in layers
        json = excluded.to_json()
        assert json["exclude"] == [r"^/cv3\.1/"] and json["exclude_ops"] == ["Mul"] and json["unmatched"] == []
        assert set(required_tensors(model, flavor, exclude=[r"^/cv3\.1/"])) < set(required_tensors(model, flavor))


def test_a_pattern_matching_nothing_is_a_warning_and_a_bad_one_an_error(yolo):
    model, _ = yolo
    with pytest.warns(UserWarning, match="'nothing-here' matches no node"):
        plan = plan_for(model, "ort", exclude=["nothing-here"], exclude_ops=["Conv"])
    assert plan.excluded.unmatched == ("nothing-here",)
    with pytest.warns(UserWarning, match="--exclude-op 'LSTM'"):
        plan_for(model, "tensorrt", exclude_ops=["LSTM"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan_for(model, "ort", exclude=["/dfl/"])   # a match: no warning
    with pytest.raises(CalibError, match="not a regular expression"):
        plan_for(model, "tensorrt", exclude=["(unclosed"])


# ----------------------------------------------------------------------------- the test
@pytest.mark.parametrize("flavor", FLAVORS)
def test_yolo_int8_keeps_fp32_top_anchors(yolo, flavor):
    model, _ = yolo
    amax = hm.minmax_ranges(model, images(16, 10))
    x = images(16, 20)
    concat = node(model, "/Concat_8").output[0]
    qdq = hm.placements(model, amax, flavor, concat)
    assert concat in quantized_inputs(qdq["head quantized"])
    overlap = hm.topk_overlaps(model, qdq, x)
    print(f"\n{flavor}: top-k overlap with FP32, k = {hm.KS}: " + "; ".join(f"{n} {v}" for n, v in overlap.items()))
    for i, k in enumerate(hm.KS):
        default, ref, old = overlap["default"][i], overlap["convs only"][i], overlap["head quantized"][i]
        assert default >= ref - 0.02, (k, overlap)
        assert default >= old + 0.3, (k, overlap)
