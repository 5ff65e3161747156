"""Ten architecture families x two exporters through calib: float-only observation, a derived
logits SQNR floor for both flavors and calibrators, ONNX Runtime integer kernels for the ort
flavor, TensorRT-RTX's parser and builder for the tensorrt flavor, and partial models spanning
FP32 to INT8. The pipeline and the floor's derivation: corpus_pipeline.py."""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

from calib.backends.ort import optimized_op_counts
from calib.onnx_io import ort_session
from calib.quantize import flavor_names, plan_for, quantizable_layers, quantize_model
from calib.quantize.graph import GraphIndex

from corpus_archs import ARCHS, FIXED_SIZE
from corpus_pipeline import CALIBRATORS, EXPORTERS, SIZE, not_float, quantized_tensor_types

pytestmark = pytest.mark.slow  # ten architectures x two exporters: about a minute on 2 cores

CASES = [pytest.param(arch, exporter, id=f"{arch}-{exporter}") for arch in ARCHS for exporter in EXPORTERS]
# What ONNX Runtime runs in float when an integer kernel did not take a weighted op.
FLOAT_WEIGHTED = {"Conv", "FusedConv", "ConvTranspose", "Gemm", "MatMul", "FusedMatMul", "FusedGemm"}
INTEGER_WEIGHTED = {"QLinearConv", "QGemm", "QLinearMatMul", "MatMulIntegerToFloat", "MatMulInteger",
                    "DynamicQuantizeMatMul"}


@pytest.mark.parametrize("arch, exporter", CASES)
def test_only_float_tensors_are_observed_or_quantized(corpus, arch, exporter):
    r = corpus.result(arch, exporter)
    # The raw export (shape subgraphs, int64 indices, bool masks still in it) and the prepared model.
    for model in (r.raw, r.prepared):
        index = GraphIndex(model)
        assert index.activations() and not not_float(index.activations(), index)
        for flavor in flavor_names():
            assert not not_float(plan_for(model, flavor).activations, index)
    reference = GraphIndex(r.prepared)
    for qdq in r.models.values():
        types = quantized_tensor_types(qdq, reference)
        assert types and not not_float(types, reference)


@pytest.mark.parametrize("arch, exporter", CASES)
def test_input_size_fixed_and_batch_axis_dynamic(corpus, arch, exporter):
    r = corpus.result(arch, exporter)
    raw = r.raw.graph.input[0].type.tensor_type.shape.dim
    dynamic_hw = arch not in FIXED_SIZE
    assert [bool(d.dim_param) for d in raw] == [True, False, dynamic_hw, dynamic_hw]
    for model in [r.prepared, *r.models.values()]:
        dims = model.graph.input[0].type.tensor_type.shape.dim
        assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, SIZE, SIZE]
    batch = np.concatenate([r.images[:3], r.images[:2]])  # another batch size runs too
    for qdq in r.models.values():
        assert ort_session(qdq, "basic").run(None, {"input": batch})[0].shape[0] == 5


@pytest.mark.parametrize("arch, exporter", CASES)
def test_logits_sqnr_floor(corpus, arch, exporter):
    r = corpus.result(arch, exporter)
    for calibrator in CALIBRATORS:
        for flavor in flavor_names():
            got, floor = r.sqnr_db[calibrator, flavor], r.floor_db[calibrator, flavor]
            assert np.isfinite(r.logits[calibrator, flavor]).all()
            assert got >= floor, f"{calibrator}/{flavor}: logits SQNR {got:.1f} dB below its floor {floor:.1f} dB"
    # Ranges that cover the data leave a usable model: the floor itself is not vacuous for minmax.
    for flavor in flavor_names():
        assert r.floor_db["minmax", flavor] > 0


@pytest.mark.parametrize("arch, exporter", CASES)
def test_ort_flavor_runs_integer_kernels(corpus, arch, exporter):
    r = corpus.result(arch, exporter)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ort.onnx"
        onnx.save(r.models["minmax", "ort"], str(path))
        ops = optimized_op_counts(path)
    weighted = Counter(n.op_type for n in r.prepared.graph.node if n.op_type in FLOAT_WEIGHTED)
    assert not {op: n for op, n in ops.items() if op in FLOAT_WEIGHTED}, ops
    assert sum(ops[op] for op in INTEGER_WEIGHTED) == sum(weighted.values()), ops
    assert ops["QLinearConv"] == weighted["Conv"]


@pytest.mark.parametrize("arch, exporter", CASES)
def test_tensorrt_flavor_parses_and_builds_in_tensorrt_rtx(corpus, tensorrt_rtx, arch, exporter):
    r = corpus.result(arch, exporter)
    qdq = r.models["minmax", "tensorrt"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trt.onnx"
        onnx.save(qdq, str(path))
        build = tensorrt_rtx.build(path, "input", (3, SIZE, SIZE))
    r.trt["tensorrt"] = build
    assert build.parsed, build.errors
    ops = Counter(n.op_type for n in qdq.graph.node)
    assert build.layers["QUANTIZE"] == ops["QuantizeLinear"]
    assert build.layers["DEQUANTIZE"] == ops["DequantizeLinear"]
    assert build.built and build.engine_bytes > 0


@pytest.mark.parametrize("flavor", ["tensorrt", "ort"])
@pytest.mark.parametrize("arch, exporter", [c for c in CASES if c.values[1] == "legacy"])
def test_partial_models_span_fp32_to_int8(corpus, arch, exporter, flavor):
    r = corpus.result(arch, exporter)
    amax = r.amax["minmax"]
    ids = [layer.id for layer in quantizable_layers(r.prepared, flavor)]
    every, _ = quantize_model(r.prepared, amax, flavor, quantized_layers=ids)
    assert every.SerializeToString() == r.models["minmax", flavor].SerializeToString()
    none, _ = quantize_model(r.prepared, amax, flavor, float_layers=ids)
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in none.graph.node)
    for level in ("basic", "all"):
        np.testing.assert_allclose(ort_session(none, level).run(None, {"input": r.images})[0], r.fp32,
                                   rtol=1e-4, atol=1e-4)
