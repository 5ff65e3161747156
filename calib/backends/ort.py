"""ONNX Runtime (CPU) backend: the embedded default. It runs Q/DQ models with integer kernels."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np

from calib.backends.base import Backend, Runner


class OrtRunner(Runner):
    def __init__(self, path: Path | bytes, threads: int = 0):
        from calib.onnx_io import ort_session

        self.session = ort_session(path, "all", threads)
        self.input_name = self.session.get_inputs()[0].name

    def run(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: images})[0]


class OrtBackend(Backend):
    name = "ort"
    qdq_flavor = "ort"   # uint8 activations, int32 bias: what its integer CPU kernels run fastest

    def build(self, onnx_path: Path, out: Path, precision: str = "fp32", **options) -> Path:
        # ONNX Runtime builds at load time; the artifact is the ONNX file itself.
        if Path(onnx_path).resolve() != Path(out).resolve():
            shutil.copyfile(onnx_path, out)
        return Path(out)

    def load(self, artifact: Path, threads: int = 0) -> OrtRunner:
        return OrtRunner(Path(artifact), threads)


def optimized_op_counts(model_path: Path) -> Counter:
    """Op types in the graph ONNX Runtime actually runs (after its fusions), to check that
    convolutions run as integer kernels (QLinearConv) rather than float Conv."""
    import tempfile

    import onnx

    from calib.onnx_io import ort_session

    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        ort_session(model_path, "all", optimized_path=optimized)
        graph = onnx.load(str(optimized), load_external_data=False).graph
        return Counter(n.op_type for n in graph.node)
