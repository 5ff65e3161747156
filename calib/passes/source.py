"""Where a pass's batches come from: a dataset decoded on the CPU (Pillow in worker processes) or
on a GPU (nvJPEG, or Pillow workers normalised on the GPU), or a decoded set held in memory.

One function chooses by the device: the CPU path yields host batches, a GPU path device batches
with the same fields (`keys`, `labels`, `images`), so the walk never asks where it runs. A dataset
of named arrays (calib.data.arrays) is read in this process, on either side: nothing to decode.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from calib import tensor
from calib.data import Batch, Dataset, SkipLog, iter_batches
from calib.data.arrays import ArraySource, iter_arrays
from calib.data.decoders import DECODERS
from calib.errors import CalibError


def batches(dataset: Dataset, batch_size: int, device: str = "cpu", decoder: str = "nvjpeg",
            workers: int | None = None, progress: str | None = None, skips: SkipLog | None = None) -> Iterator:
    """Batches of `dataset` in order, decoded for `device` ("cpu" or "cuda:N"): host arrays from
    the CPU decode workers, or device tensors from the GPU decoder `decoder` ("nvjpeg"; "pil":
    the CPU path's preprocessing in worker processes, normalised on the GPU). Closing the
    iterator ends the decoders."""
    skips = skips if skips is not None else SkipLog()
    if isinstance(dataset.source, ArraySource):
        return iter_arrays(dataset, batch_size, device, progress)
    if device == "cpu":
        return iter_batches(dataset, batch_size, workers=workers, progress=progress, skips=skips)
    from calib.data.gpu_stream import gpu_batches

    if decoder not in DECODERS:
        raise CalibError(f"unknown decoder '{decoder}' (choose from: {', '.join(DECODERS)})")
    return gpu_batches(dataset, batch_size, device, skips=skips, progress=progress, decoder=decoder,
                       workers=workers)


@dataclass
class Images:
    """A decoded set held in memory (host arrays or device tensors), for work that runs many
    models on the same few images (sensitivity ranking, the fallback search, per-tensor SQNR):
    decode once, run many."""
    images: Any          # (N, C, H, W) float32, numpy or a torch tensor on a GPU
    labels: np.ndarray   # (N,)
    keys: list[str]
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keys)

    def batches(self, batch_size: int) -> Iterator[Batch]:
        for i in range(0, len(self.keys), batch_size):
            yield Batch(self.images[i:i + batch_size], self.labels[i:i + batch_size], self.keys[i:i + batch_size])

    def head(self, n: int) -> "Images":
        """The first `n` images."""
        return Images(self.images[:n], self.labels[:n], self.keys[:n])


def load_images(dataset: Dataset, batch_size: int = 32, workers: int | None = None, progress: str | None = None,
                device: str = "cpu", decoder: str = "nvjpeg") -> Images:
    """Decode `dataset` once into memory (on `device`)."""
    skips = SkipLog()
    images, labels, keys = [], [], []
    source = batches(dataset, batch_size, device, decoder, workers, progress, skips)
    try:
        for batch in source:
            images.append(tensor.owned(batch.images) if device != "cpu" else batch.images)
            labels.append(np.asarray(batch.labels))
            keys += batch.keys
    finally:
        source.close()
    if not keys:
        raise CalibError(f"no evaluation image could be decoded from {dataset.source.description}")
    return Images(tensor.concat(images), np.concatenate(labels), keys, skips.skipped)
