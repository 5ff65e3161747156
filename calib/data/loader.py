"""Batches of preprocessed images, decoded in worker processes with bounded prefetch.

Prefetch is a fixed window of batches in flight, so memory does not grow with the number of
images (multiprocessing's imap would run ahead and queue every decoded image).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import warnings
from collections import deque
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from calib.data.dataset import Dataset
from calib.data.sources import ImageSource, Sample
from calib.data.transforms import Preprocess


@dataclass
class Batch:
    images: np.ndarray          # (N, C, H, W) float32
    labels: np.ndarray          # (N,) int64
    keys: list[str]             # sample keys, in order
    skipped: list[str] = field(default_factory=list)  # keys that could not be decoded


class SkipLog:
    """Counts undecodable files across batches and warns once per file."""

    def __init__(self) -> None:
        self.skipped: list[str] = []

    def add(self, keys: list[str], quiet: bool = False) -> None:
        for key in keys:
            self.skipped.append(key)
            if not quiet:
                warnings.warn(f"skipped an image that cannot be decoded: {key}", stacklevel=3)


def _decode(source: ImageSource, preprocess: Preprocess, samples: list[Sample]):
    arrays, labels, keys, skipped = [], [], [], []
    for s in samples:
        try:
            arrays.append(preprocess(source.open(s)))
        except Exception:  # a corrupt or unsupported file is skipped, never fatal
            skipped.append(s.key)
            continue
        labels.append(s.label)
        keys.append(s.key)
    images = np.stack(arrays) if arrays else None
    return images, np.asarray(labels, np.int64), keys, skipped


# Worker state, set once per process so each task pickles only its sample list.
_WORKER: tuple[ImageSource, Preprocess] | None = None


def _init_worker(source: ImageSource, preprocess: Preprocess) -> None:
    global _WORKER
    _WORKER = (source, preprocess)
    # Ctrl-C is the parent's to handle (it tears the pool down); workers printing their own
    # KeyboardInterrupt tracebacks would bury the one-line message. SIGTERM is how the pool
    # ends its workers: restore its default, which a forked worker may have inherited as the
    # CLI's "terminated" handler (that would keep the worker alive and the pool waiting on it).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _decode_in_worker(samples: list[Sample]):
    assert _WORKER is not None
    return _decode(_WORKER[0], _WORKER[1], samples)


def default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 1)))


def iter_batches(dataset: Dataset, batch_size: int, workers: int | None = None,
                 progress: str | None = None, skips: SkipLog | None = None,
                 prefetch: int = 2) -> Iterator[Batch]:
    """Yield preprocessed batches in dataset order. Undecodable images are skipped, logged in `skips`.

    workers=0 decodes in this process (tests, tiny sets); otherwise a pool of `workers` processes
    keeps at most `workers * prefetch` batches in flight.
    """
    from tqdm import tqdm

    workers = default_workers() if workers is None else workers
    chunks = [dataset.samples[i:i + batch_size] for i in range(0, len(dataset.samples), batch_size)]
    bar = tqdm(total=len(dataset.samples), desc=progress, unit="img", disable=progress is None,
               file=sys.stderr, leave=False, dynamic_ncols=True,
               mininterval=0.1 if sys.stderr.isatty() else 5.0)  # logs get a line per 5 s, not per batch
    skips = skips if skips is not None else SkipLog()
    try:
        if workers == 0 or len(chunks) <= 1:
            results = (_decode(dataset.source, dataset.preprocess, c) for c in chunks)
            yield from _emit(results, bar, skips)
            return
        ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        with ctx.Pool(workers, initializer=_init_worker,
                      initargs=(dataset.source, dataset.preprocess)) as pool:
            pending: deque = deque()
            todo = iter(chunks)
            window = max(2, workers * prefetch)

            def results():
                for chunk in todo:
                    pending.append(pool.apply_async(_decode_in_worker, (chunk,)))
                    if len(pending) >= window:
                        yield pending.popleft().get()
                while pending:
                    yield pending.popleft().get()

            yield from _emit(results(), bar, skips)
    finally:
        bar.close()


def _emit(results, bar, skips: SkipLog) -> Iterator[Batch]:
    for images, labels, keys, skipped in results:
        skips.add(skipped, quiet=False)
        bar.update(len(keys) + len(skipped))
        if images is not None:
            yield Batch(images, labels, keys, skipped)
