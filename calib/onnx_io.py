"""Loading ONNX files and making ONNX Runtime sessions: the one place for both.

Every command reads user models through `load_model` (external data resolved, a clean one-line
error for a file that is not ONNX) and runs them through `ort_session`, so session options
(threads, optimization level, arenas, log level) are decided here and nowhere else.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from calib.errors import CalibError

LEVELS = ("disabled", "basic", "extended", "all")


def load_model(path: str | os.PathLike, external_data: bool = True) -> onnx.ModelProto:
    """The ONNX model at `path`; with `external_data` its external tensors (the dynamo exporter's
    `.onnx.data` side file, models over 2 GB) are read from beside it."""
    path = Path(path)
    if not path.is_file():
        raise CalibError(f"model file not found: {path}")
    try:
        return onnx.load(str(path), load_external_data=external_data)
    except FileNotFoundError as e:
        raise CalibError(f"{path}: its external data file is missing ({e.filename or e})") from None
    except Exception as e:
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise CalibError(f"{path} is not a readable ONNX model ({first})") from None


def ort_session(model: onnx.ModelProto | bytes | str | os.PathLike, level: str = "all", threads: int = 0,
                arena: bool = True, optimized_path: str | os.PathLike | None = None,
                providers: tuple[str, ...] = ("CPUExecutionProvider",), config: dict[str, str] | None = None):
    """An ONNX Runtime session.

    `level` "basic" keeps Q/DQ nodes as they are (simulated quantization: every DequantizeLinear
    output is exactly what an integer kernel would read); "all" lets ONNX Runtime fuse them into
    integer kernels (what production runs). `arena=False` returns memory after each run (for
    sessions that expose many large tensors). `optimized_path` saves the optimized graph there;
    `config` sets session config entries (e.g. where an optimized model past 2 GB writes its
    external data)."""
    import onnxruntime as ort

    if level not in LEVELS:
        raise ValueError(f"unknown optimization level {level!r}")
    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = arena
    options.graph_optimization_level = {
        "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # ORT's warnings about unused initializers are noise here
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    elif not isinstance(model, bytes):
        model = str(model)
    return ort.InferenceSession(model, options, providers=list(providers))


def model_size_mb(path: str | os.PathLike) -> float:
    """Size of an ONNX model on disk in MB (10^6 bytes): the .onnx file and every external data
    file it references (the dynamo exporter's `.onnx.data`)."""
    path = Path(path)
    total = path.stat().st_size
    proto = onnx.load(str(path), load_external_data=False)
    seen = set()
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value not in seen:
                seen.add(entry.value)
                data = path.parent / entry.value
                if data.is_file():
                    total += data.stat().st_size
    return round(total / 1e6, 3)
