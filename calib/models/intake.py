"""Model intake: a zoo name or an ONNX file -> a `Model` calib can calibrate, or one line
saying what was found and what calib expects.

calib calibrates single-input image models: one float32 input (N, 3, H, W), NCHW as torch.onnx
exports it. A classifier (task classify) has one float output of class scores (N, K) or
(N, K, 1, 1); a detector, a segmenter or any other model (tasks detect, segment, generic) may
have any outputs, which calib keeps as they are. Batch,
height and width may be dynamic, as NVIDIA's TensorRT walkthroughs export ResNet-50
(`dynamic_axes={"input": {0: "batch_size", 2: "height", 3: "width"}}`,
https://docs.nvidia.com/deeplearning/tensorrt/latest/getting-started/quick-start-guide.html):
H and W then come from `input_size`, or from the preprocessing preset's size. Only the
structure is read here (no weights, no ONNX Runtime); `prepare.prepared_model` makes the graph
calib works on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from calib.data.transforms import Preprocess, efficientnet_lite, get_preset
from calib.errors import CalibError
from calib.models.files import all_tensors, check_external_data, model_sha256
from calib.models.zoo import ZOO, export_zoo_model

DEFAULT_PRESET = "torchvision"  # user models: torchvision's ImageNet preprocessing unless told
_FLOAT, _FLOAT16, _BFLOAT16 = 1, 10, 16
_TYPE_NAMES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 9: "bool", 10: "float16",
               11: "float64", 16: "bfloat16"}
# Ops only a quantized graph holds: Q/DQ pairs (calib's own int8.onnx, either flavor) and the integer
# operators of ONNX and of ONNX Runtime's com.microsoft domain (its QOperator format,
# https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html#onnx-quantization-representation-format).
# Kept here rather than imported from calib.quantize, which sits above calib.models (docs/design.md).
QUANTIZED_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
    "MatMulInteger", "QGemm", "QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearConcat",
    "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearSoftmax", "QLinearReduceMean", "QLinearWhere",
    "QAttention", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "DynamicQuantizeLSTM", "QOrderedMatMul",
    "MatMulNBits",
})


@dataclass(frozen=True)
class Model:
    name: str               # zoo name or the file's stem
    path: Path              # FP32 ONNX file as given (external data beside it)
    preprocess: Preprocess
    input_name: str
    input_shape: tuple      # (batch, 3, H, W) as calib runs it: batch symbolic (a string), H and W resolved
    sha256: str             # the .onnx file and its external data files (files.model_sha256)
    task: str = "classify"  # what the outputs are (TASKS): a classifier's scores, or any outputs

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) the model is calibrated and evaluated at."""
        return int(self.input_shape[2]), int(self.input_shape[3])


TASKS = ("classify", "detect", "segment", "generic")


def resolve_task(task: str | None, path: Path, proto) -> str:
    """`--task`: auto (None or "auto") is classify for a model with one float output of class scores,
    (N, K) or (N, K, 1, 1), and generic for any other; a task named is checked against the model
    (classify needs those class scores)."""
    if task not in (None, "auto") and task not in TASKS:
        raise CalibError(f"unknown task '{task}' (choose from: auto, {', '.join(TASKS)})")
    if task in (None, "auto"):
        try:
            _check_output(path, proto)
        except CalibError:
            return "generic"
        return "classify"
    if task == "classify":
        _check_output(path, proto)
    return task


def resolve_model(spec: str, preprocess: str | None = None,
                  input_size: int | tuple[int, int] | None = None, task: str | None = "auto") -> Model:
    """A zoo name (efficientnet_lite0/1/2) or a path to an ONNX model with one image input: an
    image classifier (task classify), or a detector, a segmenter or any model (any outputs).

    `input_size` (a side, or (H, W)) sets the height and width of a model whose H and W are
    dynamic; a model with fixed H and W accepts only its own size. Without it, dynamic H and W
    take the preprocessing preset's size (224 for torchvision)."""
    size = _parse_size(input_size)
    if spec in ZOO:
        if task not in (None, "auto", "classify"):
            raise CalibError(f"{spec} is an image classifier: --task {task} does not fit it")
        return _zoo_model(spec, preprocess, size)
    path = Path(spec).expanduser()
    if path.suffix.lower() != ".onnx" and not path.exists():
        raise CalibError(f"unknown model '{spec}': use one of {', '.join(ZOO)} or a path to an .onnx file")
    if not path.is_file():
        raise CalibError(f"model file not found: {path}")
    proto = _load_structure(path)
    check_external_data(path, proto)
    _refuse_quantized(path, proto)
    name, dims = _image_input(path, proto)
    task = resolve_task(task, path, proto)
    h, w = _resolve_hw(path, dims, size, preprocess)
    pre = get_preset(preprocess or DEFAULT_PRESET, h)
    _check_preset(pre, (h, w), path.name)
    batch = dims[0] if isinstance(dims[0], str) and dims[0] != "?" else "batch"  # fixed batches become dynamic
    return Model(path.stem, path, pre, name, (batch, 3, h, w), model_sha256(path, proto), task)


def _zoo_model(spec: str, preprocess: str | None, size: tuple[int, int] | None) -> Model:
    entry = ZOO[spec]
    if size is not None and size != (entry.size, entry.size):
        raise CalibError(f"{spec} takes {entry.size}x{entry.size} images (fixed height and width), "
                         f"not the input size {size[0]}x{size[1]}")
    pre = get_preset(preprocess, entry.size) if preprocess else efficientnet_lite(entry.size)
    _check_preset(pre, (entry.size, entry.size), spec)
    path = export_zoo_model(spec)
    proto = _load_structure(path)
    name, dims = _image_input(path, proto)
    return Model(spec, path, pre, name, dims, model_sha256(path, proto))


def parse_input_size(text: str | None) -> tuple[int, int] | None:
    """`--input-size` as typed: "224" (square) or "224x224" / "224,224" (height x width)."""
    if text is None or not str(text).strip():
        return None
    parts = str(text).lower().replace(",", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values, default=0) <= 0:
        raise CalibError(f"--input-size must be a side (224) or height x width (224x224), not '{text}'")
    return (values[0], values[-1])


def _parse_size(input_size) -> tuple[int, int] | None:
    if input_size is None:
        return None
    hw = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if len(hw) != 2 or not all(isinstance(v, int) and v > 0 for v in hw):
        raise CalibError(f"input size must be a positive side or (height, width), not {input_size!r}")
    return hw  # type: ignore[return-value]


def _load_structure(path: Path):
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception:
        raise CalibError(f"{path} is not a readable ONNX model") from None


def _dims(value_info) -> tuple | None:
    """Shape as a tuple: ints for fixed dims, strings for symbolic ones ('?' for unnamed)."""
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim)


def _fmt(dims: tuple | None) -> str:
    return "unknown shape" if dims is None else "(" + ", ".join(str(d) for d in dims) + ")"


def _type_name(elem: int) -> str:
    return _TYPE_NAMES.get(elem, f"type {elem}")


def _is_fp16(proto, inputs) -> bool:
    half = (_FLOAT16, _BFLOAT16)
    return (any(i.type.tensor_type.elem_type in half for i in inputs)
            or any(o.type.tensor_type.elem_type in half for o in proto.graph.output)
            or any(t.data_type in half for t in all_tensors(proto)))


def quantized_ops(proto) -> list[str]:
    """The quantized operators a model holds (QUANTIZED_OPS found in its graph, subgraphs and
    functions), sorted: calib quantizes an FP32 model, and a model that already holds Q/DQ or
    integer ops would be quantized a second time (or fail in ONNX Runtime halfway through)."""
    found: set[str] = set()

    def walk(nodes) -> None:
        for node in nodes:
            if node.op_type in QUANTIZED_OPS:
                found.add(node.op_type)
            for a in node.attribute:
                if a.HasField("g"):
                    walk(a.g.node)
                for g in a.graphs:
                    walk(g.node)

    walk(proto.graph.node)
    for f in proto.functions:
        walk(f.node)
    return sorted(found)


def _refuse_quantized(path: Path, proto) -> None:
    """A quantized model is no FP32 reference: refused in one line naming what was found (calib
    bench times such a model as it is)."""
    ops = quantized_ops(proto)
    if ops:
        shown = ", ".join(ops[:4]) + (f" and {len(ops) - 4} more" if len(ops) > 4 else "")
        raise CalibError(f"{path} is already quantized (it holds {shown}): calib needs the FP32 model as the "
                         f"reference to calibrate and quantize; pass the FP32 export (calib bench times a "
                         f"quantized model as it is)")


def _image_input(path: Path, proto) -> tuple[str, tuple]:
    """The one image input's name and dims, or a one-line error."""
    inits = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]  # IR < 4 lists weights as inputs
    if _is_fp16(proto, inputs):
        raise CalibError(f"{path}: FP16 model: calib calibrates FP32 models; export in FP32")
    expected = "expected one float32 NCHW image input (N, 3, H, W)"
    if len(inputs) != 1:
        found = ", ".join(f"{i.name} {_fmt(_dims(i))} {_type_name(i.type.tensor_type.elem_type)}" for i in inputs)
        raise CalibError(f"{path} is not an ONNX image classifier: {expected}, "
                         f"found {len(inputs)} inputs{': ' + found if found else ''}")
    image = inputs[0]
    elem, dims = image.type.tensor_type.elem_type, _dims(image)
    if elem != _FLOAT or dims is None or len(dims) != 4 or dims[1] != 3:
        hint = ""
        if elem != _FLOAT and elem in _TYPE_NAMES:  # the data type first: channels are no fix for it
            layout = ", and channels last" if dims is not None and len(dims) == 4 and dims[3] == 3 != dims[1] else ""
            hint = (f" ({_type_name(elem)} input{layout}: calib feeds float32 images normalized by the preprocessing "
                    f"preset; export the model with a float32 NCHW input, its own preprocessing left out)")
        elif dims is not None and len(dims) == 4 and dims[3] == 3 and dims[1] != 3:
            hint = " (channels last: export the NCHW model)"
        elif dims is not None and len(dims) == 4 and isinstance(dims[1], int):
            hint = f" ({dims[1]} channels: calib feeds RGB images, C must be 3)"
        raise CalibError(f"{path}: {expected}, found {image.name} {_fmt(dims)} {_type_name(elem)}{hint}")
    return image.name, dims


def _check_output(path: Path, proto) -> None:
    outputs = proto.graph.output
    if len(outputs) != 1:
        raise CalibError(f"{path} is not an ONNX image classifier: expected one output of class scores, "
                         f"found {len(outputs)} outputs ({', '.join(o.name for o in outputs)})")
    out = outputs[0]
    elem = out.type.tensor_type.elem_type
    if elem not in (0, _FLOAT):
        raise CalibError(f"{path}: its output {out.name} must be float32 class scores, found {_type_name(elem)}")
    dims = _dims(out)
    if dims is None:
        return  # rank unknown until shape inference: prepared_model checks it
    if not (len(dims) == 2 or (len(dims) == 4 and dims[2:] == (1, 1))):
        raise CalibError(f"{path} is not an ONNX image classifier: its output {out.name} must be class scores "
                         f"(N, K) or (N, K, 1, 1), found {_fmt(dims)}")


def _resolve_hw(path: Path, dims: tuple, size: tuple[int, int] | None, preprocess: str | None) -> tuple[int, int]:
    fixed = [d if isinstance(d, int) and d > 0 else None for d in dims[2:]]
    if size is not None:
        for given, have, axis in zip(size, fixed, ("height", "width")):
            if have is not None and given != have:
                raise CalibError(f"{path} has a fixed {axis} of {have}, so input size {size[0]}x{size[1]} "
                                 f"does not fit it (its input is {_fmt(dims)})")
        h, w = size
    elif all(v is not None for v in fixed):
        h, w = fixed
    elif any(v is not None for v in fixed):
        h = w = next(v for v in fixed if v is not None)  # one side fixed: square images of that side
    else:
        h = w = get_preset(preprocess or DEFAULT_PRESET).size
    if h != w:
        raise CalibError(f"{path} takes {h}x{w} images, but calib's preprocessing presets make square images "
                         f"(choose a square input size if the model allows one)")
    return h, w


def _check_preset(pre: Preprocess, hw: tuple[int, int], what: str) -> None:
    if (pre.size, pre.size) != hw:
        raise CalibError(f"preprocessing preset '{pre.name}' makes {pre.size}x{pre.size} images but {what} "
                         f"takes {hw[0]}x{hw[1]}")


def output_classes(prepared) -> int:
    """K of a prepared model's (N, K) output (prepared_model fixes it)."""
    dims = _dims(prepared.graph.output[0])
    if dims is None or len(dims) != 2 or not isinstance(dims[1], int) or dims[1] <= 0:
        raise CalibError(f"cannot tell the class count of the model's output {_fmt(dims)}")
    return dims[1]
