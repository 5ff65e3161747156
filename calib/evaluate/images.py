"""A decoded evaluation subset held in memory, for work that runs many models on the same few
images (sensitivity ranking, the fallback search, per-tensor SQNR): decode once, run many."""

from __future__ import annotations

import contextlib

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from calib.data import Dataset, SkipLog, iter_batches
from calib.errors import CalibError


@dataclass
class Images:
    images: np.ndarray   # (N, C, H, W) float32
    labels: np.ndarray   # (N,)
    keys: list[str]
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keys)

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        for i in range(0, len(self.keys), batch_size):
            yield self.images[i:i + batch_size]

    def head(self, n: int) -> "Images":
        """The first `n` images."""
        return Images(self.images[:n], self.labels[:n], self.keys[:n])


def load_images(dataset: Dataset, batch_size: int = 32, workers: int | None = None,
                progress: str | None = None) -> Images:
    skips = SkipLog()
    images, labels, keys = [], [], []
    # closing(): the decoding workers end as soon as this loop does, even on an exception
    with contextlib.closing(iter_batches(dataset, batch_size, workers=workers, progress=progress,
                                         skips=skips)) as batches:
        for batch in batches:
            images.append(batch.images)
            labels.append(batch.labels)
            keys += batch.keys
    if not keys:
        raise CalibError(f"no evaluation image could be decoded from {dataset.source.description}")
    return Images(np.concatenate(images), np.concatenate(labels), keys, skips.skipped)


def run_logits(sess, images: Images, batch_size: int = 32) -> np.ndarray:
    """Logits of an ONNX Runtime session over `images`, in order."""
    name = sess.get_inputs()[0].name
    out = [np.asarray(sess.run(None, {name: b})[0], np.float32) for b in images.batches(batch_size)]
    return np.concatenate(out)
