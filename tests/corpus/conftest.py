"""Fixtures of the conformance corpus: images, exports and pipeline results cached per session,
and TensorRT-RTX's ONNX parser and builder (ahead of time, no GPU needed: trt_rtx.py).

Images: real ImageNet photos from the shared sample, 64x64 (torchvision preprocessing, short side
73 then a centre crop): 16 set the BatchNorm statistics of the random-weight models, 16 others
calibrate and evaluate. Real photos give the spatially correlated, heavy-tailed activations
calibration exists for; seeded Gaussian noise would give every tensor the same tame statistics.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import corpus_archs
import corpus_pipeline
from trt_rtx import TrtRtx

IMAGES = 16


@dataclass
class CorpusData:
    bn_images: object          # torch tensor (16, 3, 64, 64): BatchNorm statistics
    calibration: object        # calib Dataset of 16 other images
    images: np.ndarray         # those 16 decoded: calibration and evaluation


@pytest.fixture(scope="session")
def corpus_data(imagenet_sample) -> CorpusData:
    import torch

    from calib.data import Dataset, imagenet_val, iter_batches
    from calib.data.transforms import torchvision_imagenet

    data = Dataset.of(imagenet_val(imagenet_sample), torchvision_imagenet(corpus_pipeline.SIZE, 73))
    order = np.random.default_rng(0).permutation(len(data))

    def subset(idx):
        return data.subset([data.samples[i] for i in sorted(idx)])

    def decode(d):
        return np.concatenate([b.images for b in iter_batches(d, IMAGES, workers=0)])

    bn, cal = subset(order[:IMAGES]), subset(order[IMAGES:2 * IMAGES])
    return CorpusData(torch.from_numpy(decode(bn)), cal, decode(cal))


@pytest.fixture(scope="session")
def tensorrt_rtx() -> TrtRtx:
    trt = pytest.importorskip(
        "tensorrt_rtx_bindings",
        reason="TensorRT-RTX is not installed (pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings)")
    return TrtRtx(trt)


class Corpus:
    """Exports and pipeline results, made on first request and kept for the session."""

    def __init__(self, folder: Path, data: CorpusData):
        self.folder = folder
        self.data = data
        self.models: dict = {}
        self.results: dict = {}

    def model(self, arch: str):
        if arch not in self.models:
            self.models[arch] = corpus_archs.build(arch, self.data.bn_images)
        return self.models[arch]

    def result(self, arch: str, exporter: str) -> corpus_pipeline.Result:
        key = arch, exporter
        if key not in self.results:
            path = self.folder / f"{arch}-{exporter}.onnx"
            model = self.model(arch)
            start = time.perf_counter()
            corpus_pipeline.export(model, path, exporter, arch in corpus_archs.FIXED_SIZE)
            seconds = time.perf_counter() - start
            self.results[key] = corpus_pipeline.run(arch, exporter, path, seconds, self.data.calibration,
                                                    self.data.images)
        return self.results[key]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory, corpus_data) -> Corpus:
    c = Corpus(tmp_path_factory.mktemp("corpus"), corpus_data)
    yield c
    # CALIB_CORPUS_REPORT=path.json writes the figures of this session (for the closing notes).
    out = os.environ.get("CALIB_CORPUS_REPORT")
    if out and c.results:
        rows = []
        for (arch, exporter), r in sorted(c.results.items()):
            rows.append({"arch": arch, "exporter": exporter, "export_s": round(r.export_seconds, 2),
                         "calibration_s": round(r.calibration_seconds, 2), "counts": r.counts,
                         "sqnr_db": {f"{k[0]}/{k[1]}": round(v, 1) for k, v in r.sqnr_db.items()},
                         "floor_db": {f"{k[0]}/{k[1]}": round(v, 1) for k, v in r.floor_db.items()},
                         "trt_build_s": {f: round(b.seconds, 2) for f, b in r.trt.items() if b.built}})
        Path(out).write_text(json.dumps(rows, indent=1) + "\n")
