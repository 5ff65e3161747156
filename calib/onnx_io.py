"""Loading ONNX files and making ONNX Runtime sessions: the one place for both.

Every command reads user models through `load_model` (external data resolved, a clean one-line
error for a file that is not ONNX) and runs them through `ort_session` on the CPU or
`cuda_session` on a GPU, so session options (threads, optimization level, arenas, log level,
the CUDA provider's) are decided here and nowhere else.

CUDA needs the `onnxruntime-gpu` package (`pip install 'calib[gpu]'`), which must not share an
environment with the CPU `onnxruntime` package: both install the same `onnxruntime` module and
whichever was installed last wins, so a CPU-only build can shadow the GPU one
(https://onnxruntime.ai/docs/install/). ORT's CUDA provider loads CUDA, cuDNN and cuBLAS from the
`nvidia-*` wheels that torch already brings when `onnxruntime.preload_dlls()` runs first
(ORT >= 1.21; https://onnxruntime.ai/docs/execution-providers/CUDA-ExecutionProvider.html).
cuDNN's convolution algorithm is chosen by its heuristics (`cudnn_conv_algo_search=HEURISTIC`),
not by timing each one (EXHAUSTIVE, ORT's default): the choice then depends only on the shapes,
so two runs (or two GPUs) compute the same activations bit for bit. Not "DEFAULT": ORT >= 1.20
maps it to cuDNN's fallback engines (its log says "running in Fallback mode"), an order of
magnitude slower (benchmarks/RESULTS.md, "GPU"). TF32 is off unless asked for: FP32 means FP32
(calibration statistics, FP32 baselines), though TF32 would run FP32 faster.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from calib.errors import CalibError, MissingDependency

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


GPU_INSTALL = ("pip install 'calib[gpu]' && pip uninstall -y onnxruntime && pip install --force-reinstall "
               "--no-deps onnxruntime-gpu (the CPU onnxruntime package and onnxruntime-gpu must never share an "
               "environment: they write the same files)")


def _both_onnxruntimes() -> bool:
    """True when the CPU onnxruntime and onnxruntime-gpu distributions are both installed."""
    from importlib.metadata import PackageNotFoundError, version

    found = 0
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            version(dist)
            found += 1
        except PackageNotFoundError:
            pass
    return found == 2


_preloaded = False


def cuda_provider_available() -> bool:
    """Whether the installed onnxruntime has a CUDA provider (it may still fail to load)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


def _no_gpu_here() -> str:
    """What a missing CUDA provider's message adds on a machine with no GPU at all, where
    installing onnxruntime-gpu would not help: "" where torch sees one (or is not installed)."""
    try:
        import torch
    except ImportError:
        return ""
    return "" if torch.cuda.is_available() else f"; and torch {torch.__version__} sees no CUDA GPU on this machine"


def require_cuda_provider():
    """onnxruntime with its CUDA libraries loaded, or a one-line error saying what to install."""
    global _preloaded
    try:
        import onnxruntime as ort
    except ImportError:
        raise MissingDependency("onnxruntime-gpu", "running on a GPU", GPU_INSTALL + _no_gpu_here()) from None
    if _both_onnxruntimes():
        raise CalibError("onnxruntime and onnxruntime-gpu are both installed here and overwrite each other's "
                         "files: pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise MissingDependency("onnxruntime-gpu", f"running on a GPU (onnxruntime {ort.__version__} here has "
                                f"no CUDA provider)", GPU_INSTALL + _no_gpu_here())
    if not _preloaded:
        try:
            import torch  # noqa: F401  (its CUDA libraries first: ORT finds them loaded)
        except ImportError:
            pass
        preload = getattr(ort, "preload_dlls", None)
        if preload is not None:
            try:
                preload()
            except Exception:  # pragma: no cover - best effort; the session says what is missing
                pass
        _preloaded = True
    return ort


def cuda_session(model, device_id: int = 0, level: str = "all", tf32: bool = False,
                 algo_search: str = "HEURISTIC", stream: int | None = None):
    """An ONNX Runtime session on CUDA device `device_id`; a clear error if CUDA cannot load.
    `stream`: the CUDA stream (handle) it runs on, instead of one ONNX Runtime creates."""
    ort = require_cuda_provider()
    options = {"device_id": str(device_id), "cudnn_conv_algo_search": algo_search,
               "use_tf32": "1" if tf32 else "0"}
    if stream is not None:
        options["user_compute_stream"] = str(stream)
    try:
        # One CPU thread, not spinning: every node runs on the GPU, and a pool of spinning CPU
        # threads per session only takes cores from the decoders (and from the other GPUs' processes).
        session = ort_session(model, level, threads=1, providers=(("CUDAExecutionProvider", options),
                                                                  "CPUExecutionProvider"),
                              config={"session.intra_op.allow_spinning": "0"})
    except Exception as e:
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise CalibError(f"ONNX Runtime's CUDA provider failed to start on cuda:{device_id}: {first} "
                         f"({GPU_INSTALL})") from None
    if "CUDAExecutionProvider" not in session.get_providers():
        # ORT falls back to the CPU silently when the CUDA libraries do not load.
        raise CalibError(f"ONNX Runtime's CUDA provider could not load (CUDA/cuDNN libraries not found; "
                         f"onnxruntime {ort.__version__}); {GPU_INSTALL}")
    return session


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
