"""The FP32 graph calibration and Q/DQ insertion work on, made once per model and input size.

What users bring differs from what calib writes in ways that matter to a quantizer:
- IR < 4 files (the ONNX model zoo's) list every weight as a graph input too; ONNX Runtime then
  treats them as inputs one may feed. Only the image is an input here.
- Dynamic height and width (NVIDIA's walkthrough export) become the model's resolved size, so
  ONNX Runtime folds the shape arithmetic; the batch axis stays dynamic (a fixed batch becomes
  dynamic, and the graph is checked to give the same scores batched as one by one), except in a
  graph declared dynamic that runs only at batch 1 (an exporter defect): its batch is fixed at 1.
- Per-channel QuantizeLinear/DequantizeLinear (the `axis` attribute) needs opset >= 13
  (https://onnx.ai/onnx/operators/onnx__QuantizeLinear.html): older graphs are converted with
  onnx.version_converter.
- BatchNormalization, Pad and constants are folded with ONNX Runtime's basic level (standard
  ONNX ops only; https://onnxruntime.ai/docs/performance/model-optimizations/graph-optimizations.html),
  so per-channel weight scales see the weights that really run.
- A (N, K, 1, 1) classifier output (SqueezeNet, the model zoo's DenseNet) is flattened to
  (N, K) by a Flatten node: every model calib writes from it has (N, K) scores.
- External data is read in; the result is written as one file unless it needs external data
  (files.save_model). ONNX shape inference fills value_info.

The zoo's exports are already in this form and are used as they are (byte for byte).

A model fed named arrays (`Model.arrays`: several inputs, or inputs that are not images) keeps
every input, with its resolved dimensions (calib.models.intake) and its batch axis as declared: a
dynamic one stays dynamic (checked to give the same outputs batched as one by one, or fixed at 1
where ONNX Runtime cannot run it at 2, as above), a fixed one (a batch-1 export) stays fixed and is
run at that batch. Its outputs are kept as the model gives them. The opset and ONNX Runtime's
basic level as above (`_prepare_arrays`).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from calib.errors import CalibError
from calib.models import files
from calib.models.files import needs_external_data, save_model, user_cache_dir
from calib.models.structure import drop_foreign_opsets
from calib.models.intake import Model, output_classes
from calib.models.zoo import ZOO

if TYPE_CHECKING:
    import onnx

PREPARE_RECIPE = "prepare v1: image input only, batch dynamic, H/W fixed, opset>=13, ORT basic, (N,K) output"
OUTPUTS_RECIPE = "outputs as the model gives them (detect, segment, generic)"
ARRAYS_RECIPE = "prepare-arrays v1: every input kept, dims resolved, batch as declared, opset>=13, ORT basic, outputs as given"
MIN_OPSET = 13  # per-channel Q/DQ


def is_zoo(model: Model) -> bool:
    return model.name in ZOO and model.path.parent.resolve() == (user_cache_dir() / "models").resolve()


def prepared_path(model: Model) -> Path:
    """The prepared FP32 model file (made on first use, then cached under the user cache folder,
    keyed by the model's hash, its input size and batch name, and this module's recipe). This is
    the FP32 model to evaluate and build engines from: its output is (N, K) like the INT8 models'."""
    if is_zoo(model):
        return model.path
    if model.arrays:
        shapes = "\n".join(f"{i.name}:{i.dtype}:{i.batch}:{'x'.join(map(str, i.shape))}" for i in model.inputs)
        key = hashlib.sha256(f"{model.sha256}\n{shapes}\n{ARRAYS_RECIPE}".encode()).hexdigest()
    else:
        h, w = model.size
        recipe = PREPARE_RECIPE if model.task == "classify" else f"{PREPARE_RECIPE}; {OUTPUTS_RECIPE}"
        key = hashlib.sha256(f"{model.sha256}\n{h}x{w}\n{model.input_shape[0]}\n{recipe}".encode()).hexdigest()
    out = user_cache_dir() / "prepared" / f"{key[:24]}.onnx"
    if not out.is_file():
        files.user_cache_subdir("prepared")  # one line if CALIB_HOME cannot be written
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=".prepare-") as tmp:
            (_prepare_arrays if model.arrays else _prepare)(model, Path(tmp), out)
    return out


def prepared_model(model: Model) -> "onnx.ModelProto":
    """The FP32 graph that calibration and Q/DQ insertion work on (see the module docstring)."""
    from calib.onnx_io import load_model

    return load_model(prepared_path(model))


def _prepare(model: Model, tmp: Path, out: Path) -> None:
    from calib.models.structure import infer_shapes
    from calib.onnx_io import load_model

    proto = load_model(model.path)
    fixed_batch = _set_image_input(proto, model)
    _forget_shapes(proto)
    if fixed_batch is not None:
        _free_batch_in_reshapes(proto, fixed_batch)
    proto = _upgrade_opset(proto, model.path)
    large = needs_external_data(proto)
    src = tmp / "input.onnx"
    save_model(proto, src)
    del proto
    optimized = tmp / "optimized.onnx"
    _ort_basic(src, optimized, large, model.path)
    classes, spatial, batch_one = _probe(optimized, model, fixed_batch)
    proto = load_model(optimized)
    drop_foreign_opsets(proto)
    if spatial and model.task == "classify":
        _flatten_output(proto)
    batch: str | int = model.input_shape[0]
    if batch_one:  # said in the graph itself, so every model and engine made from it takes batches of 1
        _forget_shapes(proto)
        dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_value = batch = 1
    infer_shapes(proto)
    if model.task == "classify":
        _set_output_shape(proto, batch, classes)
    written = save_model(proto, tmp / out.name)
    for f in reversed(written):  # the side file first: a reader that sees the .onnx sees its data
        os.replace(f, out.parent / f.name)


def _prepare_arrays(model: Model, tmp: Path, out: Path) -> None:
    """The prepared graph of a model fed named arrays (see the module docstring)."""
    from calib.models.structure import infer_shapes
    from calib.onnx_io import load_model

    proto = load_model(model.path)
    _set_inputs(proto, model)
    _forget_shapes(proto)
    proto = _upgrade_opset(proto, model.path)
    large = needs_external_data(proto)
    src = tmp / "input.onnx"
    save_model(proto, src)
    del proto
    optimized = tmp / "optimized.onnx"
    _ort_basic(src, optimized, large, model.path)
    batch_one = _probe_arrays(optimized, model)
    proto = load_model(optimized)
    drop_foreign_opsets(proto)
    _rename_ort_initializers(proto)
    if batch_one:   # said in the graph itself, as for an image model
        _forget_shapes(proto)
        for vi in proto.graph.input:
            dim = vi.type.tensor_type.shape.dim[0]
            dim.Clear()
            dim.dim_value = 1
    infer_shapes(proto)
    written = save_model(proto, tmp / out.name)
    for f in reversed(written):  # the side file first: a reader that sees the .onnx sees its data
        os.replace(f, out.parent / f.name)


ORT_FUSION_NAMES = ("gemm_input_shape", "gemm_output_shape")


def _rename_ort_initializers(proto) -> None:
    """ONNX Runtime's basic level fuses a 3-D MatMul + Add with static shapes (a transformer whose
    dimensions are all known, as a batch-1 export's are) into Reshape, Gemm, Reshape with
    initializers named `gemm_input_shape`, `gemm_output_shape` (onnxruntime PR 22494). Loaded
    again, the graph meets the same fusion, which adds those names anew and fails ("Attempt to
    replace the existing tensor", ORT 1.2x); under names of calib's own it loads."""
    renamed = {t.name: f"calib_{t.name}" for t in proto.graph.initializer if t.name.startswith(ORT_FUSION_NAMES)}
    if not renamed:
        return
    for t in proto.graph.initializer:
        t.name = renamed.get(t.name, t.name)
    for node in proto.graph.node:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]


def _set_inputs(proto, model: Model) -> None:
    """Every input kept (the weights IR < 4 lists as inputs dropped), with its resolved dimensions."""
    import onnx

    g = proto.graph
    inits = {t.name for t in g.initializer}
    specs = {i.name: i for i in model.inputs}
    keep = []
    for vi in g.input:
        if vi.name in inits:
            continue
        copy = onnx.ValueInfoProto()
        copy.CopyFrom(vi)
        spec = specs[vi.name]
        t = copy.type.tensor_type
        t.ClearField("shape")
        for d in spec.dims():
            dim = t.shape.dim.add()
            if isinstance(d, int):
                dim.dim_value = d
            else:
                dim.dim_param = str(d)
        keep.append(copy)
    del g.input[:]
    g.input.extend(keep)
    proto.ir_version = max(proto.ir_version, 4)


def _feed(model: Model, n: int, seed: int) -> dict[str, np.ndarray]:
    """`n` samples for every input: standard normal floats (seeded), zeros elsewhere (a token id,
    an index or a mask of 0 is valid wherever one is)."""
    rng = np.random.default_rng(seed)
    return {i.name: (rng.standard_normal((n, *i.shape)).astype(i.dtype) if np.dtype(i.dtype).kind == "f"
                     else np.zeros((n, *i.shape), i.dtype)) for i in model.inputs}


def _probe_arrays(path: Path, model: Model) -> bool:
    """Run the optimized model on two samples, one by one and as a batch (at its own batch when the
    model fixes it): whether a batch axis declared dynamic runs at batch 1 only (then fixed at 1,
    as `_probe` does for images), and that a batch gives the outputs of its samples one by one."""
    import onnxruntime as ort

    from calib.onnx_io import ort_session

    session = ort_session(path, "disabled")
    quiet = ort.RunOptions()
    quiet.log_severity_level = 4  # a failure here is said in calib's one line, not also in ORT's log
    shapes = ", ".join(i.describe() for i in model.inputs)
    fixed = next((i.batch for i in model.inputs if isinstance(i.batch, int)), None)
    first = _feed(model, fixed or 1, 0)
    try:
        one = session.run(None, first, quiet)
    except Exception as e:
        raise CalibError(f"{model.path}: ONNX Runtime cannot run it on inputs {shapes} ({_first_line(e)}); are "
                         f"those the sizes it takes (--input-shape)?") from None
    if fixed is not None:
        return False
    second = _feed(model, 1, 1)
    two = session.run(None, second, quiet)
    pair_feed = {name: np.concatenate([first[name], second[name]]) for name in first}
    try:
        pair = session.run(None, pair_feed, quiet)
    except Exception:
        return True   # declared dynamic, runs at batch 1 only
    name = model.inputs[0].name
    for a, b, p in zip(one, two, pair):
        a, b, p = np.asarray(a), np.asarray(b), np.asarray(p)
        if a.ndim == 0 or a.shape[0] != 1 or p.shape[:1] != (2,) or not np.issubdtype(p.dtype, np.floating):
            continue   # not an output with a batch axis: nothing to compare
        single = np.concatenate([a, b])
        scale = float(np.nanmax(np.abs(single))) if single.size else 0.0
        if p.shape != single.shape or not np.allclose(p, single, rtol=1e-3, atol=1e-4 * (1 + scale), equal_nan=True):
            raise CalibError(f"{model.path}: its outputs for a batch of 2 differ from those of the samples one by one "
                             f"(output {tuple(p.shape)}); calib writes models with a dynamic batch: export it with a "
                             f"dynamic batch axis (dynamic_axes={{'{name}': {{0: 'batch'}}, ...}})")
    return False


def _set_image_input(proto, model: Model) -> int | None:
    """Keep only the image as a graph input; batch symbolic, H and W fixed. Returns the batch
    size the file fixed, if it did."""
    import onnx

    g = proto.graph
    inits = {t.name for t in g.initializer}
    keep = []
    for vi in g.input:
        if vi.name not in inits:
            copy = onnx.ValueInfoProto()
            copy.CopyFrom(vi)
            keep.append(copy)
    del g.input[:]
    g.input.extend(keep)
    proto.ir_version = max(proto.ir_version, 4)  # IR 4: initializers need not be inputs
    dims = g.input[0].type.tensor_type.shape.dim
    fixed = dims[0].dim_value if dims[0].HasField("dim_value") else None
    dims[0].Clear()
    dims[0].dim_param = str(model.input_shape[0])
    for d, v in zip((dims[2], dims[3]), model.size):
        d.Clear()
        d.dim_value = v
    return fixed


def _forget_shapes(proto) -> None:
    """Shapes recorded at other sizes (a fixed batch, symbolic H/W) would contradict the new input."""
    del proto.graph.value_info[:]
    for o in proto.graph.output:
        o.type.tensor_type.ClearField("shape")


def _static_tensors(graph) -> set[str]:
    static = {t.name for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" or (node.input and all(not i or i in static for i in node.input)):
            static.update(node.output)
    return static


def _constant_array(graph, name: str) -> np.ndarray | None:
    from onnx import numpy_helper

    for t in graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
    return None


def _free_batch_in_reshapes(proto, batch: int) -> None:
    """Files exported at a fixed batch write it into Reshape targets ((1, -1) before the
    classifier, (1, groups, C/groups, H, W) in a channel shuffle); 0 copies the batch instead
    (Reshape's allowzero=0 semantics, https://onnx.ai/onnx/operators/onnx__Reshape.html)."""
    from onnx import numpy_helper

    g = proto.graph
    static = _static_tensors(g)
    for node in g.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[0] in static:
            continue
        if any(a.name == "allowzero" and a.i for a in node.attribute):
            continue
        shape = _constant_array(g, node.input[1])
        if shape is None or shape.ndim != 1 or len(shape) < 2 or int(shape[0]) != batch:
            continue
        freed = shape.astype(np.int64).copy()
        freed[0] = 0
        name = f"{node.input[1]}_calib_dynamic_batch"
        if name not in {t.name for t in g.initializer}:
            g.initializer.append(numpy_helper.from_array(freed, name))
        node.input[1] = name


def _default_opset(proto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)


def _upgrade_opset(proto, path: Path):
    from onnx import helper

    from calib.models.structure import convert_opset

    version = _default_opset(proto)
    if version >= MIN_OPSET:
        return proto
    try:
        converted = convert_opset(proto, MIN_OPSET)
    except Exception as e:
        raise CalibError(f"{path}: cannot convert it from opset {version} to {MIN_OPSET}, which per-channel "
                         f"Q/DQ needs ({_first_line(e)})") from None
    converted.ir_version = max(converted.ir_version,
                               helper.find_min_ir_version_for(list(converted.opset_import), ignore_unknown=True))
    return converted


def _ort_basic(src: Path, dst: Path, large: bool, original: Path) -> None:
    from calib.onnx_io import ort_session

    try:
        if large:
            _ort_basic_external(src, dst)
        else:
            ort_session(src, "basic", optimized_path=dst)
    except CalibError:
        raise
    except Exception as e:
        raise CalibError(f"ONNX Runtime cannot load {original}: {_first_line(e)}") from None


def _ort_basic_external(src: Path, dst: Path) -> None:
    """ONNX Runtime saves an optimized model over 2 GB only with its initializers in a side file,
    named through session config entries."""
    from calib.onnx_io import ort_session

    ort_session(src, "basic", optimized_path=dst, config={
        "session.optimized_model_external_initializers_file_name": dst.name + ".data",
        "session.optimized_model_external_initializers_min_size_in_bytes": str(files.EXTERNAL_TENSOR_MIN_BYTES)})


def _probe(path: Path, model: Model, fixed_batch: int | None) -> tuple[int, bool, bool]:
    """Run the optimized model on two random images, one by one and as a batch: the class count,
    whether the output is (N, K, 1, 1), and whether it runs at batch 1 only. A batch axis declared
    dynamic that ONNX Runtime cannot run at 2 is a common exporter defect (the dynamo export of a
    ViT reshapes to a fixed (197, 192)): such a model is run at batch 1 (`fixed_batch`) rather than
    refused. A batch of 2 that runs must give the scores of the images one by one."""
    from calib.onnx_io import ort_session

    h, w = model.size
    session = ort_session(path, "disabled")
    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((2, 3, h, w)).astype(np.float32)
    import onnxruntime as ort

    quiet = ort.RunOptions()
    quiet.log_severity_level = 4  # a failure here is said in calib's one line, not also in ORT's log
    try:
        singles = [session.run(None, {name: x[i:i + 1]}, quiet)[0] for i in range(2)]
    except Exception as e:
        raise CalibError(f"{model.path}: ONNX Runtime cannot run it on {h}x{w} images "
                         f"({_first_line(e)}); is that the input size it takes?") from None
    shape = singles[0].shape
    classify = model.task == "classify"
    if classify and (not (len(shape) == 2 or (len(shape) == 4 and shape[2:] == (1, 1))) or shape[0] != 1):
        raise CalibError(f"{model.path} is not an ONNX image classifier: its output must be class scores (N, K) or "
                         f"(N, K, 1, 1), found {tuple(shape)} for one image")
    fix = (f"export it with a dynamic batch axis (dynamic_axes={{'{name}': {{0: 'batch'}}}})")
    try:
        pair = session.run(None, {name: x}, quiet)[0]
    except Exception:
        if fixed_batch is not None:
            raise CalibError(f"{model.path}: its graph fixes the batch size at {fixed_batch} and calib writes "
                             f"models with a dynamic batch: {fix}") from None
        return _classes(shape, classify), len(shape) == 4, True  # declared dynamic, runs at batch 1 only
    single = np.concatenate(singles)
    scale = float(np.nanmax(np.abs(single))) if single.size else 0.0
    if pair.shape != single.shape or not np.allclose(pair, single, rtol=1e-3, atol=1e-4 * (1 + scale), equal_nan=True):
        if fixed_batch is not None:
            raise CalibError(f"{model.path}: its graph fixes the batch size at {fixed_batch} (a batch of 2 gives "
                             f"output {tuple(pair.shape)}) and calib writes models with a dynamic batch: {fix}")
        raise CalibError(f"{model.path}: its scores for a batch of 2 differ from those of the images one by one "
                         f"(output {tuple(pair.shape)}); calib writes models with a dynamic batch: {fix}")
    return _classes(shape, classify), len(shape) == 4, False


def _classes(shape: tuple, classify: bool) -> int:
    """K of a classifier's (1, K[, 1, 1]) output for one image; 0 for other tasks' outputs."""
    return int(shape[1]) if classify else 0


def fixed_batch(prepared) -> int | None:
    """The batch size a prepared model runs at, when it runs at one only (its input's first axis
    is a number, set where `_probe` found that a batch axis declared dynamic runs at batch 1);
    None for the dynamic batch of every other model. Commands read it to run such a model at that
    batch instead of failing at their own batch sizes."""
    dims = prepared.graph.input[0].type.tensor_type.shape.dim
    return dims[0].dim_value if len(dims) and dims[0].HasField("dim_value") and dims[0].dim_value > 0 else None


def image_chw(prepared) -> tuple[int, int, int]:
    """(C, H, W) of a prepared image model's input: fixed there, only the batch is dynamic (what
    speed timing feeds it)."""
    inits = {i.name for i in prepared.graph.initializer}
    image = next(i for i in prepared.graph.input if i.name not in inits)
    c, h, w = (d.dim_value for d in image.type.tensor_type.shape.dim[1:4])
    return c, h, w


def _flatten_output(proto) -> None:
    from onnx import helper

    g = proto.graph
    out = g.output[0].name
    names = {n for node in g.node for n in list(node.input) + list(node.output)}
    inner = f"{out}_nk11"
    while inner in names:
        inner += "_"
    for node in g.node:
        for i, n in enumerate(node.output):
            if n == out:
                node.output[i] = inner
        for i, n in enumerate(node.input):
            if n == out:
                node.input[i] = inner
    g.node.append(helper.make_node("Flatten", [inner], [out], axis=1, name="calib_flatten_scores"))


def _set_output_shape(proto, batch: str | int, classes: int) -> None:
    t = proto.graph.output[0].type.tensor_type
    t.elem_type = 1
    t.ClearField("shape")
    d = t.shape.dim.add()
    if isinstance(batch, int):
        d.dim_value = batch
    else:
        d.dim_param = str(batch)
    t.shape.dim.add().dim_value = classes


def _first_line(e: BaseException) -> str:
    return ((str(e).strip().splitlines() or [type(e).__name__])[0])[:200]


def check_classes(model: Model, num_classes: int, dataset_desc: str, prepared=None) -> int:
    """The model's class count, which must equal the dataset's label count: top-1 compares the
    argmax with the label index, so a 10-class model scored on ImageNet's 1000 labels would
    report 0% and look like a success. `prepared` (the prepared model) saves a reload."""
    if prepared is None:
        prepared = prepared_model(model)
    classes = output_classes(prepared)
    if classes != num_classes:
        raise CalibError(f"{model.name} outputs {classes} classes but {dataset_desc} has {num_classes} labels: "
                         f"calib scores top-1 against the dataset's labels, so the two must match")
    return classes
