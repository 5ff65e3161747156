"""Model files on disk: where calib keeps its own, what a model's hash covers, how a model is
written when it is too large for one protobuf.

A protobuf message cannot exceed 2 GB, so ONNX keeps larger models' tensors in side files
("external data", https://onnx.ai/onnx/repo-docs/ExternalData.html); the dynamo exporter
(torch.onnx, the default since torch 2.9) writes them for every model (`model.onnx.data`). A
model's identity is therefore the .onnx file plus every data file it references.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterator

from calib.errors import CalibError
from calib.fsutil import file_sha256

# Protobuf's hard limit is 2 GiB; stay well under it (the graph itself is not counted below).
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
# Tensors smaller than this stay inside the .onnx even when the rest goes to the side file.
EXTERNAL_TENSOR_MIN_BYTES = 1024


def user_cache_dir() -> Path:
    base = os.environ.get("CALIB_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "calib")
    return Path(base)


def _cache_home_name() -> str:
    if os.environ.get("CALIB_HOME"):
        return "CALIB_HOME"
    return "XDG_CACHE_HOME" if os.environ.get("XDG_CACHE_HOME") else "HOME"


def user_cache_subdir(name: str) -> Path:
    """`user_cache_dir() / name`, created, checked writable before calib writes an exported or
    prepared model there. A read-only HOME, or a CALIB_HOME that is read-only or a file, made the
    first model export end in a PermissionError/NotADirectoryError traceback; it is now one line
    naming the folder and the variable to change. (Reading a model already in a read-only cache
    never calls this: see zoo.export_zoo_model and prepare.prepared_path.)"""
    from calib import fsutil

    folder = user_cache_dir() / name
    hint = f"set CALIB_HOME to a writable folder (it is {_cache_home_name()} that points here now)"
    try:
        fsutil.make_dir(folder)
    except CalibError as e:
        raise CalibError(f"calib's model cache: {e}; {hint}") from None
    if not fsutil.can_write_in(folder):
        raise CalibError(f"calib's model cache: cannot write {folder}: no permission to create files there; {hint}")
    return folder


def all_tensors(model) -> Iterator:
    """Every TensorProto of the model: initializers and tensor attributes (Constant values),
    subgraphs (If/Loop bodies) included."""
    def graph_tensors(graph):
        yield from graph.initializer
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                if attr.HasField("g"):
                    yield from graph_tensors(attr.g)
                for g in attr.graphs:
                    yield from graph_tensors(g)
    yield from graph_tensors(model.graph)


def external_data_files(model) -> list[str]:
    """The external data locations the model references (relative to its folder), sorted."""
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    return sorted({ExternalDataInfo(t).location for t in all_tensors(model) if uses_external_data(t)})


def check_external_data(path: Path, model) -> list[Path]:
    """The external data files beside `path`, all present; a missing one is a one-line error."""
    files = [path.parent / name for name in external_data_files(model)]
    for f in files:
        if not f.is_file():
            raise CalibError(f"{path}: its external data file {f.name} is missing (expected at {f}; "
                             f"copy it beside the .onnx file)")
    return files


def model_sha256(path: str | os.PathLike, model=None) -> str:
    """sha256 of the .onnx file, or, for a model with external data, of the .onnx file's hash
    followed by each data file's name and hash in sorted name order. A model without external
    data keeps its plain file hash, so caches made before external data was supported still match."""
    import onnx

    path = Path(path)
    if model is None:
        model = onnx.load(str(path), load_external_data=False)
    files = check_external_data(path, model)
    if not files:
        return file_sha256(path)
    h = hashlib.sha256(file_sha256(path).encode())
    for f in files:
        h.update(f"\n{f.name}\t{file_sha256(f)}".encode())
    return h.hexdigest()


def tensor_bytes(model) -> int:
    """Bytes of tensor data the model holds in memory (what decides external data)."""
    import numpy as np
    from onnx import helper
    from onnx.external_data_helper import uses_external_data

    total = 0
    for t in all_tensors(model):
        if uses_external_data(t):
            continue
        if t.raw_data:
            total += len(t.raw_data)
        else:
            count = int(np.prod(t.dims)) if len(t.dims) else 1
            try:
                itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
            except Exception:
                itemsize = 8
            total += count * itemsize
    return total


def needs_external_data(model) -> bool:
    return tensor_bytes(model) > EXTERNAL_DATA_THRESHOLD


def save_model(model, path: str | os.PathLike) -> list[Path]:
    """Write `model` to `path`; when its tensors exceed EXTERNAL_DATA_THRESHOLD (protobuf's 2 GB
    limit), tensors go to one side file `<name>.data` beside it. Any stale side file of that name
    is replaced. `model` is left as it was (its tensors still in memory). Returns the files
    written (the .onnx first)."""
    import onnx

    path = Path(path)
    data = path.with_name(path.name + ".data")
    if data.exists():
        data.unlink()  # onnx appends to an existing side file
    if not needs_external_data(model):
        onnx.save(model, str(path))
        return [path]
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=EXTERNAL_TENSOR_MIN_BYTES)
    # onnx moved the tensors' bytes out of `model`; read them back so the caller's model is whole.
    onnx.load_external_data_for_model(model, str(path.parent))
    for t in all_tensors(model):
        if t.data_location == onnx.TensorProto.DEFAULT:
            t.ClearField("data_location")  # as it was: the field unset, not set to its default
    return [path, data] if data.exists() else [path]  # no tensor over the minimum: no side file
