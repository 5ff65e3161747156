import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from calib.errors import CalibError
from calib.fsutil import file_sha256
from calib.models import files
from calib.models.files import external_data_files, model_sha256, save_model


def _model(n: int = 4096, seed: int = 0) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.random.default_rng(seed).standard_normal((n, 3)).astype(np.float32), "w")
    small = numpy_helper.from_array(np.arange(3, dtype=np.float32), "b")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Add", ["y", "b"], ["z"])],
                          "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n])],
                          [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 3])], [w, small])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _with_external(tmp_path, name="m.onnx", data="m.onnx.data"):
    path = tmp_path / name
    onnx.save_model(_model(), str(path), save_as_external_data=True, location=data, size_threshold=0)
    return path


def test_hash_of_a_plain_file_is_its_file_hash(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_model(), str(path))
    assert model_sha256(path) == file_sha256(path)


def test_hash_covers_the_external_data(tmp_path):
    path = _with_external(tmp_path)
    assert external_data_files(onnx.load(str(path), load_external_data=False)) == ["m.onnx.data"]
    before = model_sha256(path)
    assert before != file_sha256(path)
    data = tmp_path / "m.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[0] ^= 1  # one bit of one weight
    data.write_bytes(bytes(raw))
    assert model_sha256(path) != before
    raw[0] ^= 1
    data.write_bytes(bytes(raw))
    assert model_sha256(path) == before  # same bytes, same hash


def test_missing_external_data_names_the_file(tmp_path):
    path = _with_external(tmp_path)
    (tmp_path / "m.onnx.data").unlink()
    with pytest.raises(CalibError, match=r"external data file m\.onnx\.data is missing") as e:
        model_sha256(path)
    assert "\n" not in str(e.value)


def test_save_model_writes_one_file_below_the_limit(tmp_path):
    model = _model()
    assert save_model(model, tmp_path / "a.onnx") == [tmp_path / "a.onnx"]
    assert not (tmp_path / "a.onnx.data").exists()
    assert onnx.load(str(tmp_path / "a.onnx")) == model


def test_save_model_uses_external_data_past_the_limit_and_keeps_the_model_whole(tmp_path, monkeypatch):
    model = _model()
    expected = onnx.ModelProto()
    expected.CopyFrom(model)
    monkeypatch.setattr(files, "EXTERNAL_DATA_THRESHOLD", 1000)  # the 2 GB rule, at test scale
    (tmp_path / "a.onnx.data").write_bytes(b"stale bytes of an older file")
    written = save_model(model, tmp_path / "a.onnx")
    assert written == [tmp_path / "a.onnx", tmp_path / "a.onnx.data"]
    assert model == expected  # the caller's model still holds its weights
    assert external_data_files(onnx.load(str(tmp_path / "a.onnx"), load_external_data=False)) == ["a.onnx.data"]
    loaded = onnx.load(str(tmp_path / "a.onnx"))
    np.testing.assert_array_equal(numpy_helper.to_array(loaded.graph.initializer[0]),
                                  numpy_helper.to_array(expected.graph.initializer[0]))
    # The small tensor stays inside the .onnx file.
    inline = {t.name for t in onnx.load(str(tmp_path / "a.onnx"), load_external_data=False).graph.initializer
              if t.data_location != TensorProto.EXTERNAL}
    assert inline == {"b"}


def test_user_cache_dir_follows_calib_home(monkeypatch, tmp_path):
    monkeypatch.setenv("CALIB_HOME", str(tmp_path / "h"))
    assert files.user_cache_dir() == tmp_path / "h"


def test_user_cache_subdir_is_one_line_naming_the_variable(tmp_path, monkeypatch):
    """Issue 22, row 2: a CALIB_HOME that is a file, or read-only, was a NotADirectoryError or
    PermissionError traceback at the first model export."""
    from calib import fsutil

    monkeypatch.setenv("CALIB_HOME", str(tmp_path / "home"))
    assert files.user_cache_subdir("models") == tmp_path / "home" / "models"
    assert (tmp_path / "home" / "models").is_dir()
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("CALIB_HOME", str(tmp_path / "file"))
    with pytest.raises(CalibError, match="is a file, not a folder.*CALIB_HOME"):
        files.user_cache_subdir("prepared")
    monkeypatch.setenv("CALIB_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(fsutil, "can_write_in", lambda folder: False)  # root writes anywhere
    with pytest.raises(CalibError, match="no permission.*CALIB_HOME") as e:
        files.user_cache_subdir("models")
    assert "\n" not in str(e.value)
