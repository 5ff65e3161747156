"""calib.commands.bench on ONNX Runtime, with a tiny classifier built here (Conv + GlobalAveragePool + Gemm)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from calib.commands.bench import bench_model as bench
from calib.errors import CalibError, MissingDependency

ROW_KEYS = {"backend", "model", "precision", "batch_size", "iterations", "latency_ms_p50",
            "latency_ms_p90", "latency_ms_p99", "throughput", "device"}


def tiny_classifier(path, batch="N", size=16, classes=5):
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b")
    fc_w = numpy_helper.from_array(rng.standard_normal((classes, 8)).astype(np.float32), "fc_w")
    fc_b = numpy_helper.from_array(rng.standard_normal(classes).astype(np.float32), "fc_b")
    nodes = [helper.make_node("Conv", ["images", "w", "b"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], ["relu"]),
             helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
             helper.make_node("Flatten", ["pool"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1)]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])], [w, b, fc_w, fc_b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_bench_ort_rows_per_batch_size(tmp_path):
    model = tiny_classifier(tmp_path / "tiny.onnx")
    rows = bench(model, "ort", [1, 4], seconds=0.05)
    assert [r["batch_size"] for r in rows] == [1, 4]
    for r in rows:
        assert set(r) == ROW_KEYS
        assert r["backend"] == "ort" and r["precision"] == "fp32"
        assert r["iterations"] >= 5
        assert 0 < r["latency_ms_p50"] <= r["latency_ms_p90"] <= r["latency_ms_p99"]
        assert r["throughput"] > 0


def test_bench_fixed_batch_model_refuses_other_batch_sizes(tmp_path):
    model = tiny_classifier(tmp_path / "fixed.onnx", batch=2)
    assert [r["batch_size"] for r in bench(model, "ort", [2], seconds=0.02)] == [2]
    with pytest.raises(CalibError, match="fixed batch size of 2"):
        bench(model, "ort", [1, 2], seconds=0.02)


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_sizes": [0]}, "positive"),
    ({"batch_sizes": []}, "positive"),
    ({"seconds": 0}, "seconds must be positive"),
    ({"backend": "nope"}, "unknown backend"),
    ({"fp16": True}, "TensorRT only"),
])
def test_bench_argument_errors(tmp_path, kwargs, message):
    model = tiny_classifier(tmp_path / "tiny.onnx")
    args = {"backend": "ort", "batch_sizes": [1], "seconds": 0.02, **kwargs}
    with pytest.raises(CalibError, match=message):
        bench(model, **args)


def test_bench_missing_model_and_engine_on_ort(tmp_path):
    with pytest.raises(CalibError, match="not found"):
        bench(tmp_path / "nope.onnx", "ort", [1], 0.02)
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"\0")
    with pytest.raises(CalibError, match="backend tensorrt"):
        bench(engine, "ort", [1], 0.02)


def test_bench_tensorrt_without_tensorrt(tmp_path):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed here")
    except (ImportError, OSError):
        pass
    model = tiny_classifier(tmp_path / "tiny.onnx")
    with pytest.raises(MissingDependency, match="pip install tensorrt"):
        bench(model, "tensorrt", [1], 0.02)


def test_bench_reports_the_precision_of_the_model_it_timed(tmp_path):
    """An INT8 Q/DQ model is timed and labelled int8; asking ONNX Runtime for another precision
    than the model's own is refused (it would time the model as it is under a false label)."""
    from calib.quantize import quantize_model, required_tensors

    fp32 = tiny_classifier(tmp_path / "tiny.onnx")
    proto = onnx.load(str(fp32))
    qdq, _ = quantize_model(proto, {t: 4.0 for t in required_tensors(proto, "ort")}, "ort")
    onnx.save(qdq, str(tmp_path / "int8.onnx"))
    rows = bench(tmp_path / "int8.onnx", "ort", [2], seconds=0.02)
    assert rows[0]["precision"] == "int8"
    assert bench(fp32, "ort", [2], seconds=0.02)[0]["precision"] == "fp32"
    with pytest.raises(CalibError, match="does not apply to ONNX Runtime"):
        bench(fp32, "ort", [2], seconds=0.02, precision="int8")


def test_bench_refuses_a_batch_the_machine_cannot_hold_before_allocating(tmp_path, monkeypatch):
    """Issue 22: --batch-sizes 100000 ended in numpy's out-of-memory traceback. The memory a batch
    needs is estimated from the model and checked against what the machine has, before any work."""
    import importlib

    from calib.models import memory

    model = tiny_classifier(tmp_path / "tiny.onnx")
    monkeypatch.setattr(memory, "available_memory", lambda: 50_000_000)  # a 50 MB machine
    timed = []
    monkeypatch.setattr(importlib.import_module("calib.commands.bench"), "time_runner",
                        lambda *a, **k: timed.append(a))
    with pytest.raises(CalibError) as e:
        bench(model, "ort", [1, 100_000], seconds=0.02)
    message = str(e.value)
    assert "\n" not in message and "timing at batch 100000 needs about" in message
    assert "50 MB is available" in message and "use a batch of at most" in message
    assert not timed


def test_a_dynamic_size_model_is_timed_at_the_presets_size(tmp_path, monkeypatch):
    """`calib bench --help` says --input-size defaults to the preprocessing preset's size: a model
    with dynamic H/W was refused without it; it is timed at that size, as `calib run` takes it."""
    import calib.commands.bench as module
    from calib.session import RunConfig

    model = tiny_classifier(tmp_path / "dynamic.onnx", size="side")
    shapes = []
    real = module.time_runner

    def timed(runner, shape, batch, seconds):
        shapes.append(tuple(shape))
        return real(runner, shape, batch, seconds)

    monkeypatch.setattr(module, "time_runner", timed)
    rows = module.bench(RunConfig(model=str(model)), [1], 0.05)
    assert rows[0]["batch_size"] == 1 and shapes == [(3, 224, 224)]   # torchvision's preset
    module.bench(RunConfig(model=str(model), input_size="32"), [1], 0.05)
    assert shapes[-1] == (3, 32, 32)
