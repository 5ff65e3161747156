"""Make a user's ONNX export quantizable: fixed H and W, opset >= 13, initializers as constants.

Exports come as NVIDIA's TensorRT walkthroughs write them (`dynamic_axes={"input": {0:
"batch_size", 2: "height", 3: "width"}}`), from torch's dynamo exporter (weights in a
`model.onnx.data` side file, loaded by `calib.onnx_io.load_model`), or from the old ONNX model zoo
(IR 3, opset 7-9, every initializer also listed as a graph input). Before ONNX Runtime's basic
optimization (calib.models.simplify) folds BatchNorm, Pad and constant subgraphs into the weights,
which calibration and per-channel weight scales need, they get:
- `fix_input_shape`: the image input gets the calibration H and W (the batch axis is left as it
  is, dynamic in every model calib writes); ONNX shape inference then propagates the sizes (what
  is left of the Shape/Gather/Concat arithmetic is integer and never observed: calib.quantize.graph);
- `initializers_as_constants`: initializers are removed from the graph inputs (IR >= 4), else ONNX
  Runtime treats them as overridable inputs and folds nothing that reads them;
- `upgrade_opset`: per-channel QuantizeLinear/DequantizeLinear need opset 13 (ONNX's version
  converter, which rewrites ops whose signature changed).
`prepare_model` applies all three.
"""

from __future__ import annotations

import onnx

from calib.errors import CalibError
from calib.quantize.graph import inference_skeleton

MIN_OPSET = 13


def _image_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise CalibError(f"expected one image input, found {len(inputs)}: {', '.join(i.name for i in inputs)}")
    return inputs[0]


def _opset(model: onnx.ModelProto) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def fix_input_shape(model: onnx.ModelProto, height: int, width: int) -> onnx.ModelProto:
    """A copy of `model` whose image input (N, C, H, W) has H = `height` and W = `width`, with the
    shapes that follow inferred again (stale value_info of the exporter dropped)."""
    if height < 1 or width < 1:
        raise CalibError(f"input size must be positive, got {height}x{width}")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    image = _image_input(out)
    dims = image.type.tensor_type.shape.dim
    if len(dims) != 4:
        raise CalibError(f"input {image.name} must be (N, C, H, W), found rank {len(dims)}")
    for axis, size in ((2, height), (3, width)):
        if dims[axis].HasField("dim_value") and dims[axis].dim_value not in (0, size):
            raise CalibError(f"input {image.name} has a fixed size {dims[axis].dim_value} on axis {axis}, "
                             f"not {size}: export it with a dynamic {('height', 'width')[axis - 2]} or use that size")
        dims[axis].Clear()
        dims[axis].dim_value = size
    del out.graph.value_info[:]
    return infer_value_info(out)


def infer_value_info(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with the value_info ONNX shape inference finds (on a copy without large initializer
    data, so models with external data or over 2 GB infer too); unchanged where inference fails."""
    try:
        inferred = onnx.shape_inference.infer_shapes(inference_skeleton(model), strict_mode=False)
    except Exception:
        return model
    inits = {i.name for i in model.graph.initializer}
    known = {v.name for v in model.graph.input} | {v.name for v in model.graph.output}
    del model.graph.value_info[:]
    model.graph.value_info.extend(v for v in inferred.graph.value_info if v.name not in inits and v.name not in known)
    return model


def initializers_as_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` (edited in place) without graph inputs that are also initializers (IR < 4 lists
    every weight as an input, with a default value)."""
    inits = {i.name for i in model.graph.initializer}
    if any(i.name in inits for i in model.graph.input):
        kept = [i for i in model.graph.input if i.name not in inits]
        del model.graph.input[:]
        model.graph.input.extend(kept)
    if model.ir_version < 4:
        model.ir_version = 4
    return model


def upgrade_opset(model: onnx.ModelProto, minimum: int = MIN_OPSET) -> onnx.ModelProto:
    """`model` converted to opset `minimum` when it is older (unchanged otherwise)."""
    if _opset(model) >= minimum:
        return model
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(model, minimum)
    except Exception as e:
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise CalibError(f"cannot convert the model from opset {_opset(model)} to {minimum} "
                         f"(per-channel Q/DQ needs it): {first}") from None
    if converted.ir_version < 7:
        converted.ir_version = 7  # opset 13 needs IR 7
    return converted


def prepare_model(model: onnx.ModelProto, height: int | None = None, width: int | None = None,
                  min_opset: int = MIN_OPSET) -> onnx.ModelProto:
    """A copy of `model` ready for ONNX Runtime's basic optimization and calibration: initializers
    as constants, opset >= `min_opset`, and (when given) the input fixed to `height` x `width`."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out = upgrade_opset(initializers_as_constants(out), min_opset)
    if height is not None and width is not None:
        out = fix_input_shape(out, height, width)
    return out
