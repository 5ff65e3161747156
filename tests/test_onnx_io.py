"""calib.onnx_io: model size on disk; CUDA sessions that cannot load are one-line errors, and run on
the stream they are given."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from calib.errors import CalibError
from calib.onnx_io import model_size_mb


def test_model_size_counts_the_external_data_file_beside_the_model(tmp_path, monkeypatch):
    """The weights of a model with external data (the dynamo exporter's `.onnx.data`) are in the
    file next to the model, wherever the command runs from: here the working directory is
    another folder, where no such file is."""
    weight = numpy_helper.from_array(np.ones((250, 1000), np.float32), "w")   # 1 MB of weights
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 250])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1000])], [weight])
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    path = model_dir / "m.onnx"
    onnx.save_model(helper.make_model(graph), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="m.onnx.data", size_threshold=0)
    data = model_dir / "m.onnx.data"
    assert data.stat().st_size == 1_000_000 and path.stat().st_size < 1000
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert model_size_mb(path) == round((path.stat().st_size + 1_000_000) / 1e6, 3)
    assert model_size_mb("../models/m.onnx") == model_size_mb(path)   # a relative path to the model too


def test_cuda_provider_that_silently_falls_back_is_an_error(tiny_classifier, monkeypatch):
    import onnxruntime as ort

    import calib.onnx_io as onnx_io

    class FakeSession:
        def get_providers(self):
            return ["CPUExecutionProvider"]

    monkeypatch.setattr(onnx_io, "require_cuda_provider", lambda: ort)
    monkeypatch.setattr(onnx_io, "ort_session", lambda *a, **k: FakeSession())
    with pytest.raises(CalibError, match="could not load") as info:
        onnx_io.cuda_session(tiny_classifier, 0)
    assert "calib[gpu]" in str(info.value) and "\n" not in str(info.value)


def test_a_cuda_session_runs_on_the_stream_it_is_given(tiny_classifier, monkeypatch):
    """The runner's own stream reaches ONNX Runtime (`user_compute_stream`): run_device then waits
    for that stream only, never for the whole device."""
    import onnxruntime as ort

    import calib.onnx_io as onnx_io

    seen = {}

    class FakeSession:
        def get_providers(self):
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    def fake_session(model, level, threads=0, providers=(), config=None):
        seen.update(providers[0][1])
        return FakeSession()

    monkeypatch.setattr(onnx_io, "require_cuda_provider", lambda: ort)
    monkeypatch.setattr(onnx_io, "ort_session", fake_session)
    onnx_io.cuda_session(tiny_classifier, 1, stream=0x1234)
    assert seen["user_compute_stream"] == str(0x1234) and seen["device_id"] == "1"
    seen.clear()
    onnx_io.cuda_session(tiny_classifier, 0)
    assert "user_compute_stream" not in seen
