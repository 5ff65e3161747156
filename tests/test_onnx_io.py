"""calib.onnx_io: model size on disk."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

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
