"""TensorRT backend (GPU, optional): ONNX -> serialized engine, and an engine runner.

Written against TensorRT's documented Python API for TensorRT 10 and 11; `tensorrt` is imported
only when the backend is constructed. Pages followed:

- Python API, Builder / NetworkDefinitionCreationFlag / IExecutionContext:
  https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/Builder.html
  https://docs.nvidia.com/deeplearning/tensorrt/11.0.0/_static/python-api/infer/Core/Builder.html
  https://docs.nvidia.com/deeplearning/tensorrt/11.4.0/_static/python-api/infer/Core/ExecutionContext.html
- NVIDIA/TensorRT samples/python/common_runtime.py (name-based I/O, execute_async_v3) and
  Polygraphy's backend/trt/config.py (timing cache: create_timing_cache / set_timing_cache /
  get_timing_cache().serialize(); calibration profile), read for the calling conventions.
- Explicit quantization ("use explicit quantization with strong typing; precision-control
  build flags are not required and should not be specified"):
  https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/quantized-types-explicit-quantization.html
- Migrating 10.x -> 11.x (strong typing always on, STRONGLY_TYPED ignored; BuilderFlag.FP16,
  BuilderFlag.INT8, IBuilderConfig.int8_calibrator and set_calibration_profile removed):
  https://docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/tensorrt-10x-to-11x-python-api-reference.html
  https://docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/tensorrt-10x-to-11x-python-api-patterns.html
- Name-based I/O tensors and execute_async_v3 (8.x -> 10.x migration):
  https://docs.nvidia.com/deeplearning/tensorrt/11.0.0/api/migration/tensorrt-8x-to-10x-python-api.html
- Engines are executable code; never deserialize one from an untrusted source:
  https://docs.nvidia.com/deeplearning/tensorrt/11.4.0/api/migration/tensorrt-10x-to-11x-python-api.html
- Calibrators deprecated since 10.1 (implicit quantization):
  https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/c-api/deprecated.html

Build paths, chosen from `trt.__version__` by `plan_build` (the one place versions branch):

| precision / model          | TensorRT 10                              | TensorRT 11                     |
| fp32                       | weakly typed, no precision flag          | strongly typed (always)         |
| fp16 (or fp16=True)        | weakly typed + BuilderFlag.FP16          | CalibError: convert the ONNX    |
| int8, Q/DQ model           | STRONGLY_TYPED network, no flags         | strongly typed (always)         |
| int8, Q/DQ model, fp16     | weakly typed + INT8 + FP16 flags         | CalibError (as fp16)            |
| int8, float model + calib. | implicit: BuilderFlag.INT8 + calibrator  | CalibError: use the Q/DQ model  |

Nothing in this module has run against a real TensorRT (none can be installed where calib is
developed and tested): see docs/tensorrt.md for what has and has not run.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from calib import __version__
from calib.backends.base import Backend, Runner
from calib.errors import CalibError, MissingDependency
from calib.fsutil import atomic_write_bytes, atomic_write_text

PRECISIONS = ("fp32", "fp16", "int8")
SIDECAR_SUFFIX = ".calib.json"
DEFAULT_MAX_BATCH = 32
INSTALL_HINT = ("pip install tensorrt (TensorRT runs only on an NVIDIA GPU with a CUDA driver; "
                "use --backend ort on CPU)")
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}


def import_tensorrt():
    """The `tensorrt` module, or a one-line MissingDependency."""
    try:
        import tensorrt as trt
    except (ImportError, OSError):  # OSError: the bindings are there but libnvinfer is not
        raise MissingDependency("tensorrt", "the TensorRT backend", INSTALL_HINT) from None
    return trt


def trt_major(version: str) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        raise CalibError(f"cannot read the TensorRT version '{version}'") from None


# -- build planning: every version-dependent decision, testable without TensorRT ------------------

@dataclass(frozen=True)
class BuildPlan:
    strongly_typed: bool            # pass NetworkDefinitionCreationFlag.STRONGLY_TYPED (TRT 10)
    flags: tuple[str, ...]          # BuilderFlag names to set
    implicit_int8: bool             # attach a calibrator (TensorRT <= 10 only)
    description: str


def plan_build(trt_version: str, precision: str, qdq: bool, fp16: bool = False,
               calibrator: bool = False, strongly_typed_flag: bool = True) -> BuildPlan:
    """Decide network flags and builder flags for one build.

    `qdq`: the ONNX model has QuantizeLinear/DequantizeLinear nodes. `calibrator`: a calibrator
    (or calibration cache) was given. `strongly_typed_flag`: this TensorRT has
    NetworkDefinitionCreationFlag.STRONGLY_TYPED (TensorRT 9 and later).
    """
    if precision not in PRECISIONS:
        raise CalibError(f"unknown precision '{precision}' (choose from: {', '.join(PRECISIONS)})")
    major = trt_major(trt_version)
    fp16 = fp16 or precision == "fp16"
    if precision != "int8" and qdq:
        raise CalibError(f"the model has Q/DQ nodes: build it with precision int8, not {precision}")
    if precision != "int8" and calibrator:
        raise CalibError("a calibrator or calibration cache applies only to precision int8")

    if major >= 11:
        # TensorRT 11 removed weak typing: every network is strongly typed, precision comes from
        # the model's own types and Q/DQ nodes, and the calibrator APIs are gone.
        if fp16:
            raise CalibError(f"TensorRT {trt_version} has no FP16 builder flag (networks are strongly typed): "
                             f"convert the ONNX model to FP16 first (python -m modelopt.onnx.autocast "
                             f"--onnx_path model.onnx) and build that file")
        if precision == "int8" and (calibrator or not qdq):
            raise CalibError(f"TensorRT {trt_version} has no implicit INT8 calibration (calibrators and "
                             f"BuilderFlag.INT8 were removed in TensorRT 11): build from the Q/DQ model "
                             f"(`calib build --flavor tensorrt`), which carries calib's scales")
        return BuildPlan(True, (), False, f"TensorRT {major}: strongly typed, "
                         + ("explicit INT8 from Q/DQ" if qdq else "FP32"))

    if precision == "int8" and qdq:
        if calibrator:
            raise CalibError("the model already has Q/DQ nodes (explicit quantization): "
                             "a calibrator is only for float models")
        if fp16:  # strongly typed networks forbid precision flags: FP16 needs weak typing on 10.x
            return BuildPlan(False, ("INT8", "FP16"), False,
                             "weakly typed, explicit INT8 from Q/DQ, FP16 elsewhere")
        if strongly_typed_flag:
            return BuildPlan(True, (), False, "strongly typed, explicit INT8 from Q/DQ")
        return BuildPlan(False, ("INT8",), False, "weakly typed, explicit INT8 from Q/DQ")
    if precision == "int8":
        if not calibrator:
            raise CalibError("the model has no Q/DQ nodes: pass the TensorRT Q/DQ model (explicit INT8) "
                             "or a calibration cache (implicit INT8, TensorRT <= 10)")
        return BuildPlan(False, ("INT8", "FP16") if fp16 else ("INT8",), True,
                         "implicit INT8 with a calibrator" + (", FP16 elsewhere" if fp16 else ""))
    if fp16:
        return BuildPlan(False, ("FP16",), False, "weakly typed, FP16")
    return BuildPlan(False, (), False, "FP32")


def onnx_has_qdq(onnx_path: Path) -> bool:
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception:
        raise CalibError(f"{onnx_path} is not a readable ONNX model") from None
    nodes = list(model.graph.node)
    for fn in model.functions:
        nodes.extend(fn.node)
    return any(n.op_type in QDQ_OPS for n in nodes)


# -- engine provenance: "engines are code" --------------------------------------------------------

def sidecar_path(engine: Path) -> Path:
    engine = Path(engine)
    return engine.with_name(engine.name + SIDECAR_SUFFIX)


def write_sidecar(engine: Path, data: bytes, info: dict[str, Any]) -> dict[str, Any]:
    record = {"written_by": "calib", "calib_version": __version__,
              "engine_sha256": hashlib.sha256(data).hexdigest(), **info,
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write_text(sidecar_path(engine), json.dumps(record, indent=1) + "\n")
    return record


def read_sidecar(engine: Path) -> dict[str, Any] | None:
    side = sidecar_path(engine)
    if not side.is_file():
        return None
    try:
        record = json.loads(side.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
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


# -- the backend -----------------------------------------------------------------------------------

def _logger(trt):
    """A TensorRT logger that prints warnings and errors and keeps the last error for messages."""

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)  # pybind11 trampolines need the base initialised explicitly
            self.last_error = ""

        def log(self, severity, msg) -> None:
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.last_error = str(msg).splitlines()[0] if msg else ""
            if severity in (trt.ILogger.Severity.WARNING, trt.ILogger.Severity.ERROR,
                            trt.ILogger.Severity.INTERNAL_ERROR):
                print(f"[TensorRT] {msg}", file=sys.stderr)

    return Logger()


class TensorRTBackend(Backend):
    """ONNX -> TensorRT engine (`.engine`), and a runner for engines.

    build() options (all keyword):
      fp16: bool = False          FP16 kernels where precision allows (TensorRT 10 only)
      min_batch, opt_batch, max_batch: int   optimization profile of a dynamic batch axis
                                  (defaults 1, max_batch, 32; ignored for a fixed batch)
      workspace_mib: int | None   IBuilderConfig workspace pool limit (None: TensorRT's default)
      timing_cache: Path | None   loaded if the file exists, saved after the build
      calibrator                  an IInt8 calibrator from calib.backends.trt_calibrators
                                  (implicit INT8 of a float model, TensorRT <= 10)
      calibration_cache: Path | None  shortcut: a cache-only calibrator over this calib/TensorRT cache
    """

    name = "tensorrt"

    def __init__(self) -> None:
        self.trt = import_tensorrt()
        self.version = str(self.trt.__version__)
        self.major = trt_major(self.version)

    def artifact_suffix(self) -> str:
        return ".engine"

    # -- build ---------------------------------------------------------------------------------

    def build(self, onnx_path: Path, out: Path, precision: str = "fp32", *, fp16: bool = False,
              min_batch: int | None = None, opt_batch: int | None = None, max_batch: int | None = None,
              workspace_mib: int | None = None, timing_cache: Path | None = None,
              calibrator: Any = None, calibration_cache: Path | None = None, **options) -> Path:
        if options:
            raise CalibError(f"unknown TensorRT build option(s): {', '.join(sorted(options))}")
        trt = self.trt
        onnx_path, out = Path(onnx_path), Path(out)
        if calibration_cache is not None and calibrator is None and self.major <= 10:
            from calib.backends.trt_calibrators import cache_calibrator

            calibrator = cache_calibrator(calibration_cache)
        plan = plan_build(self.version, precision, onnx_has_qdq(onnx_path), fp16,
                          calibrator is not None or calibration_cache is not None,
                          hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"))
        logger = _logger(trt)
        builder = trt.Builder(logger)
        network = builder.create_network(self._network_flags(plan))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            first = errors[0].splitlines()[0] if errors else logger.last_error
            raise CalibError(f"TensorRT could not parse {onnx_path}: {first}")
        if network.num_inputs != 1:
            raise CalibError(f"{onnx_path}: expected one image input, found {network.num_inputs}")

        config = builder.create_builder_config()
        for flag in plan.flags:
            config.set_flag(getattr(trt.BuilderFlag, flag))
        if workspace_mib is not None:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
        batch = self._add_profile(builder, network, config, min_batch, opt_batch, max_batch)
        if plan.implicit_int8:
            self._attach_calibrator(builder, network, config, calibrator, batch)
        self._load_timing_cache(config, timing_cache)

        serialized = builder.build_serialized_network(network, config)
        _raise_calibrator_problem(calibrator)
        if serialized is None:
            raise CalibError(f"TensorRT could not build an engine from {onnx_path}: "
                             f"{logger.last_error or 'see the TensorRT log above'}")
        data = bytes(serialized)
        if timing_cache is not None:
            atomic_write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
        atomic_write_bytes(out, data)
        write_sidecar(out, data, {"tensorrt_version": self.version, "precision": precision,
                                  "fp16": bool(fp16 or precision == "fp16"), "plan": plan.description,
                                  "strongly_typed": plan.strongly_typed or self.major >= 11,
                                  "batch": {"min": batch[0], "opt": batch[1], "max": batch[2]},
                                  "onnx": str(onnx_path), "onnx_sha256": _sha256_file(onnx_path)})
        return out

    def _network_flags(self, plan: BuildPlan) -> int:
        trt = self.trt
        flags = 0
        if self.major < 10:  # explicit batch became the only mode (and its flag deprecated) in 10
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        if plan.strongly_typed and self.major <= 10:
            # On 11 strong typing is always on and the flag is deprecated and ignored: not passed.
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        return flags

    def _add_profile(self, builder, network, config, min_batch, opt_batch, max_batch) -> tuple[int, int, int]:
        """An optimization profile for a dynamic batch axis; returns (min, opt, max) batch."""
        tensor = network.get_input(0)
        dims = tuple(int(d) for d in tensor.shape)
        if len(dims) != 4 or any(d < 0 for d in dims[1:]):
            raise CalibError(f"input '{tensor.name}' must be (N, C, H, W) with fixed C, H, W; found {dims}")
        if dims[0] >= 0:
            asked = {b for b in (min_batch, opt_batch, max_batch) if b is not None}
            if asked - {dims[0]}:
                warnings.warn(f"the model's batch size is fixed at {dims[0]}: batch options ignored", stacklevel=3)
            return dims[0], dims[0], dims[0]
        hi = max_batch or DEFAULT_MAX_BATCH
        lo = min_batch or 1
        opt = opt_batch or hi
        if not 1 <= lo <= opt <= hi:
            raise CalibError(f"batch profile must satisfy 1 <= min <= opt <= max, got {lo}, {opt}, {hi}")
        chw = dims[1:]
        profile = builder.create_optimization_profile()
        profile.set_shape(tensor.name, (lo, *chw), (opt, *chw), (hi, *chw))
        config.add_optimization_profile(profile)
        return lo, opt, hi

    def _attach_calibrator(self, builder, network, config, calibrator, batch) -> None:
        # Implicit quantization, TensorRT <= 10 only (plan_build refuses it on 11).
        config.int8_calibrator = calibrator
        tensor = network.get_input(0)
        if int(tensor.shape[0]) < 0:
            # A dynamic batch needs a calibration profile: fixed at the calibrator's batch size.
            n = int(calibrator.get_batch_size())
            if not batch[0] <= n <= batch[2]:
                raise CalibError(f"calibration batch {n} is outside the batch profile {batch[0]}..{batch[2]}")
            chw = tuple(int(d) for d in tensor.shape)[1:]
            profile = builder.create_optimization_profile()
            profile.set_shape(tensor.name, (n, *chw), (n, *chw), (n, *chw))
            config.set_calibration_profile(profile)

    def _load_timing_cache(self, config, path: Path | None) -> None:
        data = b""
        if path is not None and Path(path).is_file():
            data = Path(path).read_bytes()
        try:
            cache = config.create_timing_cache(data)
        except Exception:  # a corrupt file: start from an empty cache rather than fail the build
            warnings.warn(f"{path}: unreadable TensorRT timing cache, starting an empty one", stacklevel=3)
            cache = config.create_timing_cache(b"")
        if not config.set_timing_cache(cache, ignore_mismatch=False):
            warnings.warn(f"{path}: timing cache from another GPU or TensorRT version, not used", stacklevel=3)
            config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)

    # -- load ----------------------------------------------------------------------------------

    def load(self, artifact: Path, device: str = "cuda") -> "TrtRunner":
        artifact = Path(artifact)
        if not artifact.is_file():
            raise CalibError(f"engine not found: {artifact}")
        data = artifact.read_bytes()
        warn_if_foreign(artifact, data)
        record = read_sidecar(artifact)
        built_with = (record or {}).get("tensorrt_version")
        if built_with and built_with != self.version:
            raise CalibError(f"{artifact} was built with TensorRT {built_with}, this is TensorRT "
                             f"{self.version}: engines are not portable across versions, rebuild it")
        return TrtRunner(self.trt, data, str(artifact), device)


def _raise_calibrator_problem(calibrator) -> None:
    """Errors inside calibrator callbacks are kept there (see trt_calibrators): raise them now."""
    if calibrator is None:
        return
    error = getattr(calibrator, "error", None)
    if isinstance(error, CalibError):
        raise error
    if error is not None:
        raise CalibError(f"INT8 calibration failed: {type(error).__name__}: {error}") from error
    if getattr(calibrator, "asked_for_data", False):
        raise CalibError("TensorRT did not accept the calibration cache (made for another model or "
                         "TensorRT version, or tensors missing) and had no data to calibrate with")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# -- the runner --------------------------------------------------------------------------------------

class TrtRunner(Runner):
    """Runs a serialized engine: one image input, logits from the first output.

    I/O buffers are torch CUDA tensors bound by tensor name (set_input_shape, set_tensor_address,
    execute_async_v3 on a torch stream); outputs are read back once per batch.
    """

    def __init__(self, trt, data: bytes, source: str = "engine", device: str = "cuda") -> None:
        from calib.data.gpu_stream import require_torch_cuda

        self.torch, self.device = require_torch_cuda(device)
        torch = self.torch
        torch.cuda.set_device(self.device)  # TensorRT uses the current device's primary context
        self.trt = trt
        self.logger = _logger(trt)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise CalibError(f"TensorRT could not load {source}: {self.logger.last_error or 'see its log above'}")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or not outputs:
            raise CalibError(f"{source}: expected one input and at least one output, found "
                             f"{len(inputs)} and {len(outputs)}")
        self.input_name, self.output_names = inputs[0], outputs
        self.dtypes = {n: _torch_dtype(torch, trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        shape = tuple(int(d) for d in self.engine.get_tensor_shape(self.input_name))
        self.input_shape = shape[1:]          # (C, H, W) for time_runner
        if shape[0] >= 0:
            self.batch_range = (shape[0], shape[0])
        else:
            lo, _, hi = self.engine.get_tensor_profile_shape(self.input_name, 0)
            self.batch_range = (int(lo[0]), int(hi[0]))
        self.stream = torch.cuda.Stream(device=self.device)
        self._outputs: dict[str, Any] = {}

    def run(self, images) -> np.ndarray:
        torch = self.torch
        x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(images))
        x = x.to(device=self.device, dtype=self.dtypes[self.input_name], non_blocking=False).contiguous()
        n = int(x.shape[0])
        lo, hi = self.batch_range
        if not lo <= n <= hi:
            raise CalibError(f"batch of {n} is outside this engine's batch range {lo}..{hi} (rebuild with "
                             f"--min-batch/--max-batch)")
        if not self.context.set_input_shape(self.input_name, tuple(x.shape)):
            raise CalibError(f"TensorRT rejected input shape {tuple(x.shape)}: {self.logger.last_error}")
        self.context.set_tensor_address(self.input_name, int(x.data_ptr()))
        for name in self.output_names:
            shape = tuple(int(d) for d in self.context.get_tensor_shape(name))
            out = self._outputs.get(name)
            if out is None or tuple(out.shape) != shape:
                out = self._outputs[name] = torch.empty(shape, dtype=self.dtypes[name], device=self.device)
            self.context.set_tensor_address(name, int(out.data_ptr()))
        # The input was written on the current stream; TensorRT runs on ours.
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise CalibError(f"TensorRT inference failed: {self.logger.last_error or 'see its log above'}")
        self.stream.synchronize()  # `x` may be freed once we return; the outputs are complete
        logits = self._outputs[self.output_names[0]]
        return logits.float().cpu().numpy()

    def close(self) -> None:
        if getattr(self, "stream", None) is not None:
            self.stream.synchronize()
        self._outputs = {}
        self.context = None
        self.engine = None
        self.runtime = None


def _torch_dtype(torch, np_type):
    table = {np.float32: torch.float32, np.float16: torch.float16, np.int32: torch.int32,
             np.int64: torch.int64, np.int8: torch.int8, np.uint8: torch.uint8, np.bool_: torch.bool}
    dtype = table.get(np.dtype(np_type).type)
    if dtype is None:
        raise CalibError(f"TensorRT I/O type {np_type} is not supported by calib's runner")
    return dtype
