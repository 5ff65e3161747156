"""Engine provenance: "engines are code".

A serialized engine holds compiled GPU code that TensorRT runs as is, so one must never be
deserialized from an untrusted source
(https://docs.nvidia.com/deeplearning/tensorrt/11.4.0/api/migration/tensorrt-10x-to-11x-python-api.html).
Every engine calib writes gets a sidecar `<engine>.calib.json` (product, versions, sha256 of the
engine, build plan, batch profile, compute-capability target, source ONNX and its sha256);
`load()` warns in one line before loading an engine without a matching sidecar. Engine and
sidecar are both written completely before either is renamed into place (calib.fsutil).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
import warnings
from pathlib import Path
from typing import Any

from calib import __version__
from calib.errors import CalibError
from calib.fsutil import atomic_path

SIDECAR_SUFFIX = ".calib.json"


def sidecar_path(engine: Path) -> Path:
    engine = Path(engine)
    return engine.with_name(engine.name + SIDECAR_SUFFIX)


def sidecar_record(data: bytes, info: dict[str, Any]) -> dict[str, Any]:
    return {"written_by": "calib", "calib_version": __version__,
            "engine_sha256": hashlib.sha256(data).hexdigest(), **info,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def write_engine(engine: Path, data: bytes, info: dict[str, Any]) -> dict[str, Any]:
    """Write the engine and its sidecar; neither replaces an old file until both are complete.
    Returns the sidecar record. An unwritable destination is a one-line CalibError."""
    engine = Path(engine)
    record = sidecar_record(data, info)
    try:
        with contextlib.ExitStack() as stack:
            tmp_engine = stack.enter_context(atomic_path(engine))
            tmp_side = stack.enter_context(atomic_path(sidecar_path(engine)))
            tmp_engine.write_bytes(data)
            tmp_side.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    except OSError as e:
        raise CalibError(f"cannot write the engine {engine}: {e.strerror or e}") from None
    return record


def write_sidecar(engine: Path, data: bytes, info: dict[str, Any]) -> dict[str, Any]:
    """The sidecar alone, for an engine already on disk (tests, engines built elsewhere)."""
    from calib.fsutil import atomic_write_text

    record = sidecar_record(data, info)
    atomic_write_text(sidecar_path(engine), json.dumps(record, indent=1) + "\n")
    return record


def read_sidecar(engine: Path) -> dict[str, Any] | None:
    side = sidecar_path(engine)
    if not side.is_file():
        return None
    try:
        record = json.loads(side.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, OSError):
        return None
    return record if isinstance(record, dict) else None


def provenance_problem(engine: Path, data: bytes) -> str | None:
    """None when calib wrote this engine (its sidecar's sha256 matches), else why not."""
    record = read_sidecar(engine)
    if record is None or record.get("written_by") != "calib":
        return f"no calib sidecar {sidecar_path(engine).name}, so calib did not write this engine"
    if record.get("engine_sha256") != hashlib.sha256(data).hexdigest():
        return "the engine's sha256 does not match its calib sidecar (changed since calib wrote it)"
    return None


def warn_if_foreign(engine: Path, data: bytes) -> bool:
    """Warn (one line) before loading an engine calib did not write; True if it warned."""
    problem = provenance_problem(engine, data)
    if problem:
        warnings.warn(f"{engine}: {problem}; a TensorRT engine is executable code: load only engines "
                      f"you built or trust", stacklevel=3)
        return True
    return False
