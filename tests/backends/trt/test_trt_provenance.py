"""calib.backends.tensorrt.provenance: engine sidecars ("engines are code"), written with the engine."""

from __future__ import annotations

import hashlib
import json
import os
import warnings

import pytest

from calib.backends.tensorrt import provenance
from calib.backends.tensorrt.provenance import (provenance_problem, read_sidecar, sidecar_path, warn_if_foreign,
                                                write_engine, write_sidecar)
from calib.errors import CalibError


def test_sidecar_marks_calib_engines(tmp_path):
    engine = tmp_path / "m.engine"
    data = b"\x00engine bytes"
    engine.write_bytes(data)
    assert "no calib sidecar m.engine.calib.json" in provenance_problem(engine, data)
    record = write_sidecar(engine, data, {"tensorrt_version": "10.3.0"})
    assert sidecar_path(engine) == tmp_path / "m.engine.calib.json"
    on_disk = json.loads(sidecar_path(engine).read_text())
    assert on_disk == record == read_sidecar(engine)
    assert on_disk["engine_sha256"] == hashlib.sha256(data).hexdigest()
    assert on_disk["written_by"] == "calib" and on_disk["tensorrt_version"] == "10.3.0"
    assert provenance_problem(engine, data) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_if_foreign(engine, data) is False


def test_foreign_or_changed_engine_warns_one_line(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"abc")
    with pytest.warns(UserWarning, match="executable code") as record:
        assert warn_if_foreign(engine, b"abc")
    assert "\n" not in str(record[0].message)
    write_sidecar(engine, b"abc", {})
    assert "sha256 does not match" in provenance_problem(engine, b"abd")
    sidecar_path(engine).write_text("{not json")
    assert "no calib sidecar" in provenance_problem(engine, b"abc")
    sidecar_path(engine).write_text("[1, 2]")
    assert read_sidecar(engine) is None


def test_write_engine_writes_both_or_neither(tmp_path, monkeypatch):
    engine = tmp_path / "out" / "m.engine"
    record = write_engine(engine, b"new engine", {"precision": "int8"})
    assert engine.read_bytes() == b"new engine"
    assert read_sidecar(engine) == record and provenance_problem(engine, b"new engine") is None

    # A failure while writing the sidecar leaves the old engine and sidecar as they were.
    real_json = provenance.json.dumps

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(provenance.json, "dumps", broken)
    with pytest.raises(CalibError, match="cannot write the engine .*No space left on device") as info:
        write_engine(engine, b"newer engine", {"precision": "int8"})
    assert "\n" not in str(info.value)
    monkeypatch.setattr(provenance.json, "dumps", real_json)
    assert engine.read_bytes() == b"new engine" and provenance_problem(engine, b"new engine") is None
    assert sorted(os.listdir(engine.parent)) == ["m.engine", "m.engine.calib.json"]   # no temp files left


def test_unwritable_destination_is_one_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(CalibError, match="cannot write .*a_file") as info:
        write_engine(blocker / "m.engine", b"data", {})
    assert "\n" not in str(info.value)
