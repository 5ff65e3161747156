"""The calibration pass (calib.passes.calibration, calib.passes.expose, the walk's consumer thread):
only float tensors are exposed, with their real types; errors of the consumer thread always reach
the caller; a failure mid-calibration ends everything."""

import threading
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from calib.passes import expose, observe_pass
from calib.passes.walk import Step, _Background
from tests.conftest import make_classifier
from tests.data.test_loader import image_dataset, live_children, run_watching_children, still_running


def _shape_arithmetic_model() -> onnx.ModelProto:
    """What a ViT export looks like to a quantizer: integer Shape/Gather/Concat tensors that
    reshape float activations, a bool mask, an int Cast of a float tensor."""
    inits = [numpy_helper.from_array(np.array(0, np.int64), "zero"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus_one"),
             numpy_helper.from_array(np.array(0.0, np.float32), "fzero"),
             numpy_helper.from_array(np.full((1, 3 * 16 * 16), 0.5, np.float32), "scale")]
    nodes = [
        helper.make_node("Relu", ["input"], ["act"]),
        helper.make_node("Shape", ["act"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
        helper.make_node("Unsqueeze", ["batch", "zero"], ["batch1"]),
        helper.make_node("Concat", ["batch1", "minus_one"], ["flat_shape"], axis=0),
        helper.make_node("Reshape", ["act", "flat_shape"], ["flat"]),
        helper.make_node("Mul", ["flat", "scale"], ["scaled"]),
        helper.make_node("Greater", ["scaled", "fzero"], ["mask"]),
        helper.make_node("Cast", ["scaled"], ["as_int"], to=TensorProto.INT32),
        helper.make_node("Cast", ["as_int"], ["back"], to=TensorProto.FLOAT),
        helper.make_node("Where", ["mask", "scaled", "back"], ["mixed"]),
        helper.make_node("ReduceMean", ["mixed", "minus_one"], ["output"], keepdims=1),
    ]
    g = helper.make_graph(nodes, "shapes",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
                          [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 1])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def test_only_float_tensors_are_exposed_with_their_types():
    model = _shape_arithmetic_model()
    exposed, names = expose(model)
    assert set(names) == {"input", "act", "flat", "scaled", "back", "mixed", "output"}
    session = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    declared = {o.name: o.type for o in session.get_outputs()}
    assert all(declared[n] == "tensor(float)" for n in names if n != "input")
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    values = session.run([n for n in names if n != "input"], {"input": x})
    assert all(v.dtype == np.float32 for v in values)


def test_tensors_inference_cannot_type_are_kept_only_if_onnx_runtime_computes_floats(tmp_path, monkeypatch):
    monkeypatch.setattr("calib.models.structure.element_types", lambda model: {})  # inference knows nothing
    seen: dict[str, np.dtype] = {}

    class Record:
        def observe(self, name, x):
            seen[name] = x.dtype

    result = observe_pass(_shape_arithmetic_model(), image_dataset(tmp_path / "img", 8), Record(), batch_size=4,
                          workers=0, progress=None)
    assert result.images == 8
    assert set(seen) == {"input", "act", "flat", "scaled", "back", "mixed", "output"}
    assert set(seen.values()) == {np.dtype(np.float32)}


class FailingObserver:
    def __init__(self, fail_at: int):
        self.calls, self.fail_at = 0, fail_at

    def observe(self, name, x):
        self.calls += 1
        if self.calls == self.fail_at:
            raise ValueError(f"observer failed at call {self.calls}")


def _observe_threads():
    return [t for t in threading.enumerate() if t.name == "calib-consume"]


@pytest.mark.parametrize("where", ["first batch", "last batch"])
def test_an_observer_error_is_never_swallowed(tmp_path, where):
    model = onnx.load(str(make_classifier(tmp_path / "m.onnx")))
    names = expose(model)[1]
    batches = 3  # 12 images, 4 per batch
    fail_at = 1 if where == "first batch" else (batches - 1) * len(names) + len(names)
    with pytest.raises(ValueError, match=f"observer failed at call {fail_at}"):
        observe_pass(model, image_dataset(tmp_path / "img", 12), FailingObserver(fail_at), batch_size=4, workers=2,
                     progress=None)
    assert not _observe_threads()
    assert not live_children()


def test_a_model_error_ends_the_observer_and_the_workers(tmp_path):
    model = _fails_on_a_short_batch()

    class Slow:
        def observe(self, name, x):
            time.sleep(0.05)

    with pytest.raises(Exception, match="Reshape"):
        observe_pass(model, image_dataset(tmp_path / "img", 15), Slow(), batch_size=4, workers=2, progress=None)
    assert not _observe_threads()
    assert not live_children()


def _fails_on_a_short_batch() -> onnx.ModelProto:
    """Runs on batches of 4 and fails on any other: 15 images in batches of 4 fail at the 4th."""
    shape = numpy_helper.from_array(np.array([4, 3 * 16 * 16], np.int64), "shape")
    nodes = [helper.make_node("Relu", ["input"], ["act"]), helper.make_node("Reshape", ["act", "shape"], ["flat"]),
             helper.make_node("ReduceMean", ["flat"], ["output"], axes=[1], keepdims=1)]
    g = helper.make_graph(nodes, "short", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
                          [helper.make_tensor_value_info("output", TensorProto.FLOAT, [4, 1])], [shape])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_a_model_failing_mid_calibration_exits_with_nothing_left(tmp_path):
    """A fresh interpreter, the error uncaught (a traceback, as `calib` gave before): it must exit,
    and every decoding worker with it."""
    onnx.save(_fails_on_a_short_batch(), str(tmp_path / "short.onnx"))
    script = f"""
        import sys, onnx
        from pathlib import Path
        from tests.data.test_loader import image_dataset
        from calib.passes import observe_pass

        class Slow:
            def observe(self, name, x):
                import time; time.sleep(0.05)

        observe_pass(onnx.load({str(tmp_path / 'short.onnx')!r}), image_dataset(Path({str(tmp_path / 'img')!r}), 15),
                     Slow(), batch_size=4, workers=2, progress=None)
        """
    code, err, children = run_watching_children(script, tmp_path)
    assert code == 1 and "Reshape" in err
    assert len(children) == 2 and not still_running(children)


def test_the_consumer_thread_drops_queued_work_when_the_caller_fails():
    calls = []
    started = threading.Event()

    class Blocking:
        def consume(self, step):
            calls.append(step.index)
            started.set()
            time.sleep(0.2)

    background = _Background([Blocking()])
    background.put(Step(None, 0, {}))
    started.wait(5)
    background.put(Step(None, 1, {}))  # queued behind the one in progress
    background.close(cancel=True)
    assert calls == [0] and not background.thread.is_alive()
