"""ONNX -> serialized engine, following a BuildPlan: parse, configure, build, write engine + sidecar.

Calls follow TensorRT's Python API (Builder, OnnxParser, IBuilderConfig, optimization profiles),
which TensorRT-RTX kept:
https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/Builder.html
Timing cache (create_timing_cache / set_timing_cache / get_timing_cache().serialize()) and the
calibration profile as Polygraphy's backend/trt/config.py uses them; ahead-of-time targets as
https://docs.nvidia.com/deeplearning/tensorrt-rtx/latest/inference-library/cpu-engines.html
(`num_compute_capabilities = 1; set_compute_capability(ComputeCapability.SM89, 0)`).

Nothing here branches on the product or its version: plan.py decided, this module follows.

Profiles: axis 0 of every input is the batch axis; a dynamic one gets one optimization profile
covering min..max batch for all inputs at once (TensorRT's rule: one profile sets every dynamic
input, https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/work-dynamic-shapes.html).
Every other dimension must be fixed in the ONNX file (calib's prepared graphs fix them from
`--input-size` / `--input-shape`), or given by `input_shapes` (input name -> the dimensions after
the batch axis), which then holds at min, opt and max alike.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

from calib.errors import CalibError
from calib.fsutil import atomic_write_bytes, file_sha256

from .calibrators import cache_calibrator, raise_calibrator_problem
from .logger import get_logger
from .plan import plan_build
from .probe import NAMES, Features
from .provenance import write_engine
from .qdq import inspect_qdq, ort_flavor_in_parser_error, ort_flavor_message

DEFAULT_MAX_BATCH = 32


def build_engine(trt: ModuleType, features: Features, onnx_path: Path, out: Path, precision: str = "fp32", *,
                 fp16: bool = False, min_batch: int | None = None, opt_batch: int | None = None,
                 max_batch: int | None = None, workspace_mib: int | None = None,
                 timing_cache: Path | None = None, calibrator: Any = None,
                 calibration_cache: Path | None = None, compute_capability: int | None = None,
                 input_shapes: dict[str, tuple[int, ...]] | None = None) -> Path:
    """Build `onnx_path` into an engine at `out` (and `<out>.calib.json`); see TensorRTBackend.build."""
    onnx_path, out = Path(onnx_path), Path(out)
    label = NAMES.get(features.product, features.product)
    if not onnx_path.is_file():
        raise CalibError(f"ONNX model not found: {onnx_path}")
    facts = inspect_qdq(onnx_path)
    if facts.ort_flavor:  # refuse before the parser prints its dump
        raise CalibError(ort_flavor_message(onnx_path, facts.ort_flavor, label))
    wants_calibration = calibrator is not None or calibration_cache is not None
    plan = plan_build(features, precision, facts.qdq, fp16, wants_calibration, compute_capability)
    if plan.implicit_int8 and calibrator is None:
        calibrator = cache_calibrator(calibration_cache)
    if timing_cache is not None and not plan.timing_cache:
        warnings.warn(f"{label} does not use timing caches (its kernels are compiled on the GPU at run "
                      f"time, not timed at build time): {timing_cache} left as it is", stacklevel=3)

    started = time.perf_counter()
    logger = get_logger(trt, label)
    builder = trt.Builder(logger)
    network = builder.create_network(_flag_bits(trt.NetworkDefinitionCreationFlag, plan.network_flags))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise CalibError(_parse_error(parser, logger, onnx_path, label))
    strongly_typed = _strongly_typed(trt, network, plan.strongly_typed)

    config = builder.create_builder_config()
    for flag in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if plan.compute_capability is not None:
        config.num_compute_capabilities = 1
        config.set_compute_capability(getattr(trt.ComputeCapability, f"SM{plan.compute_capability}"), 0)
    if workspace_mib is not None:
        if int(workspace_mib) < 1:
            raise CalibError(f"workspace_mib must be positive, got {workspace_mib}")
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    batch = _add_profile(builder, network, config, min_batch, opt_batch, max_batch, input_shapes)
    if plan.implicit_int8:
        _attach_calibrator(builder, network, config, calibrator, batch, features.calibration_profile)
    if plan.timing_cache:
        _load_timing_cache(config, timing_cache)

    serialized = builder.build_serialized_network(network, config)
    raise_calibrator_problem(calibrator)
    if serialized is None:
        raise CalibError(f"{label} could not build an engine from {onnx_path}: "
                         f"{logger.first_error or 'see its log above'}")
    data = bytes(serialized)
    seconds = time.perf_counter() - started
    if plan.timing_cache and timing_cache is not None:
        atomic_write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    write_engine(out, data, {
        "product": features.product, "tensorrt_version": features.version, "precision": precision,
        "fp16": bool(fp16 or precision == "fp16"), "plan": plan.description,
        "strongly_typed": strongly_typed, "compute_capability": plan.compute_capability,
        "batch": {"min": batch[0], "opt": batch[1], "max": batch[2]},
        "build_seconds": round(seconds, 3), "onnx": str(onnx_path), "onnx_sha256": file_sha256(onnx_path)})
    return out


def _flag_bits(enum, names: tuple[str, ...]) -> int:
    bits = 0
    for name in names:
        bits |= 1 << int(getattr(enum, name))
    return bits


def _strongly_typed(trt, network, planned: bool) -> bool:
    """What the network says it is (INetworkDefinition.get_flag), where it can say; else the plan."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    get_flag = getattr(network, "get_flag", None)
    if flag is None or not callable(get_flag):
        return planned
    return bool(get_flag(flag))


def _parse_error(parser, logger, onnx_path: Path, label: str) -> str:
    """One line: the ort flavor named as such, else the parser's first error's first line."""
    errors = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        desc = err.desc() if callable(getattr(err, "desc", None)) else str(err)
        errors.append(str(desc))
    text = "\n".join(errors + logger.errors)
    evidence = ort_flavor_in_parser_error(text)
    if evidence:
        return ort_flavor_message(onnx_path, evidence, label)
    first = next((line for e in errors for line in e.splitlines() if line.strip()), logger.first_error)
    return f"{label} could not parse {onnx_path}: {first or 'no error given'}"


def _input_dims(network, input_shapes: dict[str, tuple[int, ...]] | None = None) -> list[tuple[str, tuple[int, ...]]]:
    """(name, dims) of every network input: the dimensions after the batch axis fixed (from the file
    or `input_shapes`), the batch -1 where dynamic; a one-line error for one left dynamic."""
    shapes = input_shapes or {}
    out = []
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        dims = tuple(int(d) for d in tensor.shape)
        if tensor.name in shapes:
            given = tuple(int(d) for d in shapes[tensor.name])
            if len(given) != len(dims) - 1 or any(d >= 0 and d != g for d, g in zip(dims[1:], given)):
                raise CalibError(f"input '{tensor.name}' is {dims}: the shape {given} given for it does not fit")
            dims = (dims[0], *given)
        if not dims or any(d < 0 for d in dims[1:]):
            what = "(N, C, H, W) with fixed C, H, W" if len(dims) == 4 else "fixed dimensions after the batch axis"
            raise CalibError(f"input '{tensor.name}' must be {what}; found {dims}")
        out.append((tensor.name, dims))
    return out


def _add_profile(builder, network, config, min_batch, opt_batch, max_batch,
                 input_shapes: dict[str, tuple[int, ...]] | None = None) -> tuple[int, int, int]:
    """An optimization profile for a dynamic batch axis (every input's axis 0); returns (min, opt,
    max) batch."""
    inputs = _input_dims(network, input_shapes)
    fixed = {dims[0] for _, dims in inputs if dims[0] >= 0}
    if len(fixed) > 1:
        raise CalibError(f"the model's inputs fix different batch sizes: {dict(inputs)}")
    if fixed and all(dims[0] >= 0 for _, dims in inputs) and not input_shapes:
        b = fixed.pop()
        asked = {x for x in (min_batch, opt_batch, max_batch) if x is not None}
        if asked - {b}:
            warnings.warn(f"the model's batch size is fixed at {b}: batch options ignored", stacklevel=3)
        return b, b, b
    if fixed:   # a fixed batch with dimensions given for other axes: one shape, min = opt = max
        lo = opt = hi = fixed.pop()
    else:
        hi = max_batch or DEFAULT_MAX_BATCH
        lo = min_batch or 1
        opt = opt_batch or hi
    if not 1 <= lo <= opt <= hi:
        raise CalibError(f"batch profile must satisfy 1 <= min <= opt <= max, got {lo}, {opt}, {hi}")
    profile = builder.create_optimization_profile()
    for name, dims in inputs:
        rest = dims[1:]
        if dims[0] >= 0:
            profile.set_shape(name, dims, dims, dims)
        else:
            profile.set_shape(name, (lo, *rest), (opt, *rest), (hi, *rest))
    config.add_optimization_profile(profile)
    return lo, opt, hi


def _attach_calibrator(builder, network, config, calibrator, batch, calibration_profile: bool) -> None:
    """Implicit quantization (plan_build allows it only where int8_calibrator exists)."""
    config.int8_calibrator = calibrator
    tensor = network.get_input(0)
    if int(tensor.shape[0]) < 0 and calibration_profile:
        # A dynamic batch needs a calibration profile: fixed at the calibrator's batch size.
        n = int(calibrator.get_batch_size())
        if not batch[0] <= n <= batch[2]:
            raise CalibError(f"calibration batch {n} is outside the batch profile {batch[0]}..{batch[2]}")
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            t = network.get_input(i)
            rest = tuple(int(d) for d in t.shape)[1:]
            profile.set_shape(t.name, (n, *rest), (n, *rest), (n, *rest))
        config.set_calibration_profile(profile)


def _load_timing_cache(config, path: Path | None) -> None:
    data = b""
    if path is not None and Path(path).is_file():
        data = Path(path).read_bytes()
    try:
        cache = config.create_timing_cache(data)
    except Exception:  # a corrupt file: start from an empty cache rather than fail the build
        warnings.warn(f"{path}: unreadable TensorRT timing cache, starting an empty one", stacklevel=4)
        cache = config.create_timing_cache(b"")
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        warnings.warn(f"{path}: timing cache from another GPU or TensorRT version, not used", stacklevel=4)
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)

