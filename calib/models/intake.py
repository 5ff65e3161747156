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
structure is read here (no weights, no ONNX Runtime), once: what calib needs of it travels on the
`Model` (its inputs, task, hash, and what one sample costs in memory, `calib.models.memory`, which
the batch sizes are fitted to); `prepare.prepared_model` makes the graph calib works on.

A model fed named arrays (`--dataset npz` or a dataset reader: `arrays=True`; `arrays=None`, for
the commands that read no data, when the model is not an image model) is taken as it is: any
number of inputs of any numeric type, each fed from the data (`calib.data.arrays.ArrayFeed`).
Axis 0 of every input is the batch axis (dynamic, or fixed by the file: a batch-1 export runs at
batch 1); every other dimension must be known: fixed in the file, or given with
`--input-shape NAME=DxD` (the dimensions after the batch axis, as trtexec's `--shapes` names
inputs, https://docs.nvidia.com/deeplearning/tensorrt/latest/reference/command-line-programs.html),
a size given for one input filling the same named dimension of the others (`sequence` in
`input_ids` and `attention_mask`). For an image model, `--input-shape NAME=3xHxW` is another way to
write `--input-size HxW`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from calib.data.arrays import ArrayFeed, ArrayInput
from calib.data.transforms import Preprocess, efficientnet_lite, get_preset
from calib.errors import CalibError, InternalError
from calib.models.files import all_tensors, check_external_data, model_sha256
from calib.models.memory import MemoryNeed, memory_need, memory_need_arrays
from calib.models.zoo import ZOO, export_zoo_model

DEFAULT_PRESET = "torchvision"  # user models: torchvision's ImageNet preprocessing unless told
_FLOAT, _FLOAT16, _BFLOAT16 = 1, 10, 16
_TYPE_NAMES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 9: "bool", 10: "float16",
               11: "float64", 16: "bfloat16"}
# ONNX element types a model fed named arrays may take, as numpy dtypes (onnx.TensorProto's numbering).
_NUMPY_TYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 9: "bool",
                11: "float64", 12: "uint32", 13: "uint64"}
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
    preprocess: Preprocess | ArrayFeed   # an image model's preset; the inputs of a model fed named arrays
    input_name: str         # the (first) input
    input_shape: tuple      # (batch, 3, H, W) as calib runs it: batch symbolic (a string), H and W resolved
    sha256: str             # the .onnx file and its external data files (files.model_sha256)
    need: MemoryNeed        # what one sample costs in memory at the resolved input shape (calib.models.memory)
    task: str = "classify"  # what the outputs are (TASKS): a classifier's scores, or any outputs

    @property
    def arrays(self) -> bool:
        """Fed named arrays (--dataset npz, a dataset reader), not decoded images."""
        return isinstance(self.preprocess, ArrayFeed)

    @property
    def inputs(self) -> tuple[ArrayInput, ...]:
        """Every input as calib runs it (an image model's one image input, too)."""
        if isinstance(self.preprocess, ArrayFeed):
            return self.preprocess.inputs
        return (ArrayInput(self.input_name, "float32", tuple(int(d) for d in self.input_shape[1:]),
                           self.input_shape[0]),)

    def inputs_json(self) -> list[dict]:
        """The inputs as a cache's metadata records them (`model_inputs`)."""
        if not self.arrays:
            return [{"name": self.input_name, "shape": [d if isinstance(d, int) else str(d) for d in self.input_shape]}]
        return [{"name": i.name, "shape": [d if isinstance(d, int) else str(d) for d in i.dims()]}
                for i in self.inputs]

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) the model is calibrated and evaluated at."""
        if self.arrays:
            raise InternalError(f"{self.name} is fed named arrays: it has no image size")
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
                  input_size: int | tuple[int, int] | None = None, task: str | None = "auto",
                  input_shapes: Mapping[str, tuple[int, ...]] | None = None, arrays: bool | None = False) -> Model:
    """A zoo name (efficientnet_lite0/1/2) or a path to an ONNX model with one image input: an
    image classifier (task classify), or a detector, a segmenter or any model (any outputs).

    `input_size` (a side, or (H, W)) sets the height and width of a model whose H and W are
    dynamic; a model with fixed H and W accepts only its own size. Without it, dynamic H and W
    take the preprocessing preset's size (224 for torchvision). `input_shapes` (`--input-shape`,
    `parse_input_shapes`): input name -> the dimensions after its batch axis.

    `arrays`: the model is fed named arrays (any inputs, see the module docstring); None: when it
    is not a model with one image input (the commands that read no data: build, cache)."""
    size = _parse_size(input_size)
    shapes = dict(input_shapes or {})
    if spec in ZOO:
        if task not in (None, "auto", "classify"):
            raise CalibError(f"{spec} is an image classifier: --task {task} does not fit it")
        if not arrays:
            return _zoo_model(spec, preprocess, size, shapes)
    path = Path(spec).expanduser() if spec not in ZOO else export_zoo_model(spec)
    if path.suffix.lower() != ".onnx" and not path.exists():
        raise CalibError(f"unknown model '{spec}': use one of {', '.join(ZOO)} or a path to an .onnx file")
    if not path.is_file():
        raise CalibError(f"model file not found: {path}")
    proto = _load_structure(path)
    check_external_data(path, proto)
    _refuse_quantized(path, proto)
    if arrays is None:
        arrays = not _is_image_model(proto)
    if arrays:
        feed = _array_feed(path, proto, shapes, size)
        first = feed.inputs[0]
        return Model(spec if spec in ZOO else path.stem, path, feed, first.name, first.dims(),
                     model_sha256(path, proto), memory_need_arrays(proto, feed.inputs), resolve_task(task, path, proto))
    name, dims = _image_input(path, proto)
    task = resolve_task(task, path, proto)
    size = _size_from_shapes(path, name, dims, shapes, size)
    h, w = _resolve_hw(path, dims, size, preprocess)
    pre = get_preset(preprocess or DEFAULT_PRESET, h)
    _check_preset(pre, (h, w), path.name)
    batch = dims[0] if isinstance(dims[0], str) and dims[0] != "?" else "batch"  # fixed batches become dynamic
    return Model(path.stem, path, pre, name, (batch, 3, h, w), model_sha256(path, proto), memory_need(proto, (3, h, w)),
                 task)


def _zoo_model(spec: str, preprocess: str | None, size: tuple[int, int] | None,
               shapes: dict[str, tuple[int, ...]] | None = None) -> Model:
    entry = ZOO[spec]
    if shapes:
        size = _size_from_shapes(Path(spec), "input", ("batch", 3, entry.size, entry.size), shapes, size)
    if size is not None and size != (entry.size, entry.size):
        raise CalibError(f"{spec} takes {entry.size}x{entry.size} images (fixed height and width), "
                         f"not the input size {size[0]}x{size[1]}")
    pre = get_preset(preprocess, entry.size) if preprocess else efficientnet_lite(entry.size)
    _check_preset(pre, (entry.size, entry.size), spec)
    path = export_zoo_model(spec)
    proto = _load_structure(path)
    name, dims = _image_input(path, proto)
    return Model(spec, path, pre, name, dims, model_sha256(path, proto), memory_need(proto, (3, entry.size, entry.size)))


def parse_input_shapes(specs: Sequence[str] | None) -> dict[str, tuple[int, ...]]:
    """`--input-shape NAME=DxD` as typed (repeatable): input name -> the dimensions after its batch
    axis ("input_ids=128", "images=3x640x640"; "," also separates; "mask=" for an input (N,))."""
    shapes: dict[str, tuple[int, ...]] = {}
    for spec in specs or ():
        name, sep, text = str(spec).rpartition("=")
        name = name.strip()
        parts = [p.strip() for p in text.lower().replace(",", "x").split("x")] if text.strip() else []
        try:
            dims = tuple(int(p) for p in parts)
        except ValueError:
            dims = (0,)
        if not sep or not name or any(d <= 0 for d in dims):
            raise CalibError(f"--input-shape must be NAME=DxD, the input's dimensions after the batch axis (e.g. "
                             f"input_ids=128 or images=3x640x640), not '{spec}'")
        if name in shapes:
            raise CalibError(f"--input-shape names the input {name} twice")
        shapes[name] = dims
    return shapes


def bench_inputs(path: Path, shapes: dict[str, tuple[int, ...]],
                 size: tuple[int, int] | None) -> tuple[ArrayFeed | None, tuple[int, int] | None]:
    """What `calib bench` times an ONNX file on (quantized models included: bench times them as they
    are): (None, the image size) for an image model, whose `--input-shape NAME=3xHxW` is its
    --input-size; (its named inputs, None) for any other model."""
    proto = _load_structure(path)
    inits = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    dims = _dims(inputs[0]) if len(inputs) == 1 else None
    if dims is not None and len(dims) == 4 and inputs[0].type.tensor_type.elem_type in (_FLOAT, _FLOAT16, _BFLOAT16):
        return None, _size_from_shapes(path, inputs[0].name, dims, shapes, size)   # timed as (N, C, H, W) images
    return _array_feed(path, proto, shapes, size, timing=True), None


def _is_image_model(proto) -> bool:
    """One float32 input (N, 3, H, W): what the image datasets feed."""
    inits = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    if len(inputs) != 1 or inputs[0].type.tensor_type.elem_type != _FLOAT:
        return False
    dims = _dims(inputs[0])
    return dims is not None and len(dims) == 4 and dims[1] == 3


def _shape_text(dims: tuple) -> str:
    """The dimensions after the batch axis as --input-shape takes them, unknown ones <named>."""
    return "x".join(str(d) if isinstance(d, int) and d > 0 else f"<{d}>" for d in dims[1:])


def _size_from_shapes(path: Path, name: str, dims: tuple, shapes: dict[str, tuple[int, ...]],
                      size: tuple[int, int] | None) -> tuple[int, int] | None:
    """An image model's `--input-shape NAME=3xHxW`, as the (H, W) of `--input-size`."""
    if not shapes:
        return size
    unknown = [n for n in shapes if n != name]
    if unknown:
        raise CalibError(f"--input-shape names {unknown[0]}, which is not an input of {path.name} (its input: "
                         f"{name} {_fmt(dims)})")
    given = shapes[name]
    channels = dims[1] if isinstance(dims[1], int) and dims[1] > 0 else 3
    if len(given) != 3 or given[0] != channels:
        raise CalibError(f"--input-shape {name}={'x'.join(map(str, given))}: {name} is an image input {_fmt(dims)}, "
                         f"so give {channels}xHxW (or --input-size HxW)")
    if size is not None and size != given[1:]:
        raise CalibError(f"--input-shape {name}={'x'.join(map(str, given))} and --input-size {size[0]}x{size[1]} "
                         f"disagree")
    return given[1], given[2]


def _array_feed(path: Path, proto, shapes: dict[str, tuple[int, ...]], size: tuple[int, int] | None,
                timing: bool = False) -> ArrayFeed:
    """Every input of a model fed named arrays, resolved (see the module docstring), or one line
    saying which input and dimension are unknown and how to give them. `timing`: for calib bench,
    which times FP16 models too."""
    inits = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]   # IR < 4 lists weights as inputs
    types = {**_NUMPY_TYPES, _FLOAT16: "float16"} if timing else _NUMPY_TYPES
    if not timing and _is_fp16(proto, inputs):
        raise CalibError(f"{path}: FP16 model: calib calibrates FP32 models; export in FP32")
    if not inputs:
        raise CalibError(f"{path} has no inputs to feed")
    declared = {i.name: _dims(i) for i in inputs}
    listed = ", ".join(f"{i.name} {_fmt(declared[i.name])} {_type_name(i.type.tensor_type.elem_type)}" for i in inputs)
    unknown = [n for n in shapes if n not in declared]
    if unknown:
        raise CalibError(f"--input-shape names {unknown[0]}, which is not an input of {path.name} (its inputs: {listed})")
    symbols: dict[str, int] = {}
    for name, given in shapes.items():   # sizes given for named dimensions fill them in every input
        dims = declared[name]
        if dims is None:
            continue
        text = f"--input-shape {name}={'x'.join(map(str, given))}"
        if len(dims) - 1 != len(given):
            raise CalibError(f"{text}: {name} is {_fmt(dims)}, so give its {len(dims) - 1} dimension(s) after the "
                             f"batch axis ({name}={_shape_text(dims)})")
        for axis, (d, v) in enumerate(zip(dims[1:], given), 1):
            if isinstance(d, int) and d > 0 and d != v:
                raise CalibError(f"{text}: {name} fixes dimension {axis} at {d} ({_fmt(dims)})")
            if isinstance(d, str) and d != "?":
                if symbols.setdefault(d, v) != v:
                    raise CalibError(f"--input-shape gives the dimension '{d}' two sizes, {symbols[d]} and {v}")
    resolved, fixed_batches = [], {}
    for vi in inputs:
        name, elem, dims = vi.name, vi.type.tensor_type.elem_type, declared[vi.name]
        if elem not in types:
            raise CalibError(f"{path}: input {name} is {_type_name(elem)}: calib feeds inputs of numeric types "
                             f"({', '.join(sorted(set(types.values())))})")
        if dims is None:
            if name not in shapes:
                raise CalibError(f"{path}: input {name} declares no shape: give the dimensions after its batch axis "
                                 f"with --input-shape {name}=DxD")
            dims = ("batch", *shapes[name])
        if len(dims) == 0:
            raise CalibError(f"{path}: input {name} is a scalar: calib feeds batches, along axis 0 of every input")
        per = []
        for axis, d in enumerate(dims[1:], 1):
            if name in shapes:
                v = shapes[name][axis - 1]
            elif isinstance(d, int) and d > 0:
                v = d
            elif isinstance(d, str) and d in symbols:
                v = symbols[d]
            elif size is not None and elem == _FLOAT and len(dims) == 4 and dims[1] == 3 and axis >= 2:
                v = size[axis - 2]   # --input-size: the H and W of an image-shaped input
            else:
                raise CalibError(f"{path}: input {name} {_fmt(dims)} has a dynamic dimension {d!r} (axis {axis}): give "
                                 f"its size with --input-shape {name}={_shape_text(dims)}")
            per.append(int(v))
        batch = dims[0]
        if isinstance(batch, int) and batch > 0:
            fixed_batches[name] = batch
        else:
            batch = batch if isinstance(batch, str) and batch != "?" else "batch"
        resolved.append(ArrayInput(name, types[elem], tuple(per), batch))
    if len(set(fixed_batches.values())) > 1:
        found = ", ".join(f"{n} {b}" for n, b in fixed_batches.items())
        raise CalibError(f"{path}: its inputs fix different batch sizes ({found}): calib feeds one batch to all of them")
    return ArrayFeed(tuple(resolved))


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
                         f"found {len(inputs)} inputs{': ' + found if found else ''}{ARRAYS_HINT if inputs else ''}")
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
        raise CalibError(f"{path}: {expected}, found {image.name} {_fmt(dims)} {_type_name(elem)}{hint}"
                         f"{ARRAYS_HINT if elem != _FLOAT or dims is None or len(dims) != 4 else ''}")
    return image.name, dims


# What the image intake says of a model it refuses that named arrays can feed.
ARRAYS_HINT = " (to feed its inputs from arrays instead of images: --dataset npz, see docs/tasks.md)"


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
