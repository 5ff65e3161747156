"""Latency and throughput of a model on one backend, per batch size (the `calib bench` command).

ONNX Runtime runs the ONNX file as it is (FP32, or a Q/DQ model, which it runs with integer
kernels). TensorRT runs an engine: an `.engine` file is loaded as is, an ONNX file is first built
into an engine (in a temporary folder unless `engine=` names where to keep it), with a batch
profile that covers the batch sizes asked for. Inputs are random (see `time_runner`), so the
numbers measure speed, not accuracy; each row is one batch size. A model that is not an image
model (several inputs, or inputs that are not images) is timed on its named inputs, sized by
`--input-shape` where the file leaves them dynamic (calib.models.intake).

`bench` is the `calib bench` command as one call (a zoo name or a file, from a RunConfig);
`bench_model` times a model file.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from calib.backends import get_backend, time_runner
from calib.backends.base import ENGINE_SUFFIXES
from calib.errors import CalibError

if TYPE_CHECKING:
    from calib.session.config import RunConfig


def model_precision(proto) -> str:
    """What the ONNX model computes in, read from the graph itself: "int8" when it holds Q/DQ
    nodes, "fp16" when its input or weights are float16, else "fp32"."""
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in proto.graph.node):
        return "int8"
    fp16 = 10  # onnx.TensorProto.FLOAT16
    if (any(i.type.tensor_type.elem_type == fp16 for i in proto.graph.input)
            or any(t.data_type == fp16 for t in proto.graph.initializer)):
        return "fp16"
    return "fp32"


def _onnx_input(model_path: Path, input_size: tuple[int, int] | None = None,
                default_side: int | None = None) -> tuple[int | str, tuple[int, int, int], str]:
    """(batch dim, (C, H, W), precision) of the ONNX model's single image input; a dynamic H/W
    takes `input_size`, else `default_side` (the preprocessing preset's size, as `calib run` takes
    it: one fixed side makes square images of that side)."""
    from calib.onnx_io import load_model

    proto = load_model(model_path, external_data=False)
    inits = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise CalibError(f"{model_path}: expected one image input, found {len(inputs)}")
    dims = [d.dim_param or d.dim_value for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) == 4 and input_size is not None:
        for axis, want in zip((2, 3), input_size):
            if isinstance(dims[axis], int) and dims[axis] > 0 and dims[axis] != want:
                raise CalibError(f"{model_path} takes {dims[2]}x{dims[3]} images, not --input-size "
                                 f"{input_size[0]}x{input_size[1]}")
        dims = [dims[0], dims[1], *input_size]
    elif len(dims) == 4 and default_side is not None:
        fixed = [d for d in dims[2:] if isinstance(d, int) and d > 0]
        dims = [dims[0], dims[1], *([fixed[0]] * 2 if len(fixed) == 1 else dims[2:] if fixed else [default_side] * 2)]
    if len(dims) != 4 or not (isinstance(dims[1], int) and dims[1] > 0):
        raise CalibError(f"{model_path}: input must be (N, C, H, W) with a fixed C, found {dims}")
    if not all(isinstance(d, int) and d > 0 for d in dims[2:]):
        raise CalibError(f"{model_path} has a dynamic height and width ({dims[2]}, {dims[3]}): give the size to time "
                         f"with --input-size, e.g. --input-size 224")
    batch = dims[0] if isinstance(dims[0], int) and dims[0] > 0 else "dynamic"
    return batch, (dims[1], dims[2], dims[3]), model_precision(proto)


def bench_model(model_path: Path, backend: str, batch_sizes: list[int], seconds: float,
                precision: str | None = None, *, engine: Path | None = None,
                input_size: tuple[int, int] | None = None, default_side: int | None = None, device: str = "cpu",
                feed=None, **build_options) -> list[dict]:
    """Time `model_path` on `backend` (ort, tensorrt, tensorrt-rtx) at each batch size for `seconds` each.

    Returns one dict per batch size: backend, model, precision, batch_size, iterations,
    latency_ms_p50/p90/p99 and throughput (images/s). Each row's precision is what was timed:
    ONNX Runtime runs the ONNX file as it is, so its precision is the model's own (a Q/DQ model is
    int8) and a different `precision` is refused; `precision` and `build_options` (e.g.
    workspace_mib, timing_cache) apply when TensorRT builds an engine from ONNX (default: the
    model's own precision). `feed` (calib.data.arrays.ArrayFeed): the named inputs of a model that
    is not an image model, timed instead of an image input.
    """
    model_path = Path(model_path)
    if not model_path.is_file():
        raise CalibError(f"model file not found: {model_path}")
    if not batch_sizes or any(int(b) < 1 for b in batch_sizes):
        raise CalibError(f"batch sizes must be positive integers, got {batch_sizes}")
    if not 0 < seconds < float("inf"):   # inf would time forever, nan compares false with every bound
        raise CalibError(f"seconds must be positive and finite, got {seconds}")
    batch_sizes = [int(b) for b in batch_sizes]
    impl = get_backend(backend)
    builds_engines = impl.artifact_suffix() != ".onnx"
    is_engine = model_path.suffix.lower() in ENGINE_SUFFIXES
    if is_engine and not builds_engines:
        raise CalibError(f"{model_path} is a TensorRT engine: bench it with --backend tensorrt or tensorrt-rtx")
    runnable, why = impl.can_run()
    if not runnable:
        raise CalibError(f"cannot time on {backend} here: {why}")
    from calib.placement import Launch, check_placement, resolve_placement

    # The same device rules as every other command (auto, cuda:N, checks before any work).
    if resolve_placement(device, backend, Launch.from_env()).several:
        raise CalibError(f"calib bench times one device, not {device}: name one GPU (e.g. cuda:0)")
    device = check_placement(device, backend, passes=False).first

    with tempfile.TemporaryDirectory(prefix="calib-bench-") as tmp:
        shape = None
        if is_engine:
            artifact = model_path
            precision = precision or "engine"
        else:
            if feed is not None:
                shape, own = feed, _precision(model_path)
                batch = next((i.batch for i in feed.inputs if isinstance(i.batch, int)), "dynamic")
            else:
                batch, shape, own = _onnx_input(model_path, input_size, default_side)
            if backend == "ort" and precision not in (None, own):
                raise CalibError(f"--precision {precision} does not apply to ONNX Runtime, which runs {model_path.name} "
                                 f"as it is ({own}); bench the {precision} model itself (calib build writes the "
                                 f"INT8 Q/DQ model)")
            precision = precision or own
            if batch != "dynamic" and set(batch_sizes) != {batch}:
                raise CalibError(f"{model_path} has a fixed batch size of {batch}: bench it with "
                                 f"--batch-sizes {batch}, or export it with a dynamic batch axis")
            _check_bench_memory(_onnx_need(model_path, shape), batch_sizes, device)
            if builds_engines:
                options = {"min_batch": min(batch_sizes), "max_batch": max(batch_sizes),
                           "opt_batch": max(batch_sizes)} if batch == "dynamic" else {}
                if feed is not None:
                    options["input_shapes"] = {i.name: i.shape for i in feed.inputs}
                options.update(build_options)
                artifact = impl.build(model_path, Path(engine) if engine else Path(tmp) / "model.engine",
                                      precision, **options)
            else:
                if build_options:
                    raise CalibError(f"build options apply to TensorRT only: {', '.join(sorted(build_options))}")
                artifact = model_path
        runner = impl.load_for_timing(artifact, device)
        try:
            if shape is None:
                shape = tuple(runner.input_shape)
                from calib.models.memory import MemoryNeed

                _check_bench_memory(MemoryNeed(0, 4 * shape[0] * shape[1] * shape[2], 0), batch_sizes, device)
            rows = []
            for b in batch_sizes:
                timing = time_runner(runner, shape, b, seconds)
                rows.append({"backend": backend, "model": str(model_path), "precision": precision,
                             "device": device, **timing.as_dict()})
            return rows
        finally:
            runner.close()


def _precision(model_path: Path) -> str:
    from calib.onnx_io import load_model

    return model_precision(load_model(model_path, external_data=False))


def _onnx_need(model_path: Path, chw):
    """The memory estimate (calib.models.memory) of an ONNX file run on (C, H, W) images (or on
    its named inputs, an ArrayFeed), read from its structure alone (no weights loaded)."""
    from calib.models.memory import memory_need, memory_need_arrays
    from calib.onnx_io import load_model

    proto = load_model(model_path, external_data=False)
    return memory_need_arrays(proto, chw.inputs) if hasattr(chw, "inputs") else memory_need(proto, chw)


def _check_bench_memory(need, batch_sizes: list[int], device: str) -> None:
    """The largest batch asked for must fit in the machine's memory (checked before any build or
    allocation: numpy's out-of-memory error is a traceback, the kernel's OOM killer says nothing).
    On a GPU the activations are the GPU's: the host holds the images."""
    from calib.models.memory import check_memory

    b = max(batch_sizes)
    check_memory(need, b, f"timing at batch {b}", activations=device == "cpu")


def bench(config: RunConfig, batch_sizes: list[int], seconds: float, precision: str | None = None,
          timing_cache: str | Path | None = None) -> list[dict]:
    """`calib bench`: time `config.model` (a zoo model's FP32 ONNX file, or a path to an ONNX or
    engine file) on `config.backend` at `config.device`; a dynamic H/W takes `config.input_size`,
    else the preprocessing preset's size, as `calib run` does (`calib.models.resolve_model`).
    `timing_cache` is TensorRT's (refused by ONNX Runtime, as any build option)."""
    from calib.data.transforms import get_preset
    from calib.models import ZOO, parse_input_shapes, parse_input_size, resolve_model
    from calib.models.intake import DEFAULT_PRESET, bench_inputs

    path = resolve_model(config.model).path if config.model in ZOO else Path(config.model)
    extra = {"timing_cache": Path(timing_cache)} if timing_cache else {}
    size = parse_input_size(config.input_size)
    feed = None
    if path.suffix.lower() not in ENGINE_SUFFIXES and path.is_file():
        # A model that is not an image model is timed on its named inputs; --input-shape of an
        # image model is its --input-size.
        feed, size = bench_inputs(path, parse_input_shapes(config.input_shape), size)
    elif config.input_shape:
        raise CalibError(f"--input-shape sizes an ONNX model's inputs; {path} is an engine, whose shapes are built in")
    return bench_model(path, config.backend, batch_sizes, seconds, precision, input_size=size,
                       default_side=get_preset(config.preprocess or DEFAULT_PRESET).size, device=config.device,
                       feed=feed, **extra)
