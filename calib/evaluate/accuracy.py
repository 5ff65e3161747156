"""Accuracy of the FP32 and INT8 models on the same evaluation images, decoded once."""

from __future__ import annotations

import contextlib

import time
from dataclasses import dataclass, field

import numpy as np

from calib.backends.base import Runner
from calib.data import Dataset, SkipLog, iter_batches
from calib.evaluate.sqnr import sqnr_db


@dataclass
class Predictions:
    labels: np.ndarray  # (N,)
    top5: np.ndarray    # (N, 5) class indices, best first

    @property
    def top1_accuracy(self) -> float:
        return float(np.mean(self.top5[:, 0] == self.labels)) if len(self.labels) else 0.0

    @property
    def top5_accuracy(self) -> float:
        return float(np.mean(np.any(self.top5 == self.labels[:, None], axis=1))) if len(self.labels) else 0.0


@dataclass
class Evaluation:
    keys: list[str]
    skipped: list[str]
    predictions: dict[str, Predictions]  # per model name, e.g. "fp32", "int8"
    # Per-image logits powers against the "fp32" model, when it was run: sum of x^2 of the FP32
    # logits, and sum of (x - y)^2 per other model (their ratio summed over images is the logits
    # SQNR; per image, it can be bootstrapped).
    signal: np.ndarray | None = None
    noise: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: float = 0.0

    def logits_sqnr_db(self, name: str = "int8") -> float:
        """SQNR (dB) of `name`'s logits against FP32 over every evaluation image."""
        return sqnr_db(float(np.sum(self.signal)), float(np.sum(self.noise[name])))

    def agreement(self, a: str = "fp32", b: str = "int8") -> float:
        pa, pb = self.predictions[a].top5[:, 0], self.predictions[b].top5[:, 0]
        return float(np.mean(pa == pb)) if len(pa) else 0.0

    def summary(self, name: str) -> dict:
        p = self.predictions[name]
        return {"top1": p.top1_accuracy, "top5": p.top5_accuracy}


def top5(logits: np.ndarray) -> np.ndarray:
    """The five best classes per row, best first (all of them, best first, for 5 classes or fewer)."""
    k = min(5, logits.shape[1])
    if k < 5 or logits.shape[1] == 5:
        return np.argsort(-logits, axis=1, kind="stable")[:, :k]
    part = np.argpartition(-logits, 5, axis=1)[:, :5]
    order = np.argsort(-np.take_along_axis(logits, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def evaluate(runners: dict[str, Runner], dataset: Dataset, batch_size: int = 32,
             workers: int | None = None, progress: str | None = "evaluating") -> Evaluation:
    """Run every runner on each decoded batch (one decode for all models)."""
    start = time.perf_counter()
    skips = SkipLog()
    keys: list[str] = []
    labels: list[np.ndarray] = []
    tops: dict[str, list[np.ndarray]] = {name: [] for name in runners}
    signal: list[np.ndarray] = []
    noise: dict[str, list[np.ndarray]] = {name: [] for name in runners if name != "fp32"}
    # closing(): the decoding workers end as soon as this loop does, even on an exception
    with contextlib.closing(iter_batches(dataset, batch_size, workers=workers, progress=progress,
                                         skips=skips)) as batches:
        for batch in batches:
            keys += batch.keys
            labels.append(batch.labels)
            logits = {name: np.asarray(runner.run(batch.images), np.float32).reshape(len(batch.keys), -1)
                      for name, runner in runners.items()}
            for name, x in logits.items():
                tops[name].append(top5(x))
            if "fp32" in logits:
                ref = logits["fp32"].astype(np.float64)
                signal.append(np.sum(ref * ref, axis=1))
                for name in noise:
                    err = ref - logits[name]
                    noise[name].append(np.sum(err * err, axis=1))
    all_labels = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    preds = {name: Predictions(all_labels, np.concatenate(t) if t else np.zeros((0, 5), np.int64))
             for name, t in tops.items()}
    powers = {name: np.concatenate(v) for name, v in noise.items() if v}
    return Evaluation(keys, skips.skipped, preds, np.concatenate(signal) if signal else None, powers,
                      time.perf_counter() - start)
