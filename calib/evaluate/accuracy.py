"""Accuracy of the FP32 and INT8 models on the same evaluation images, decoded once."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from calib.backends.base import Runner
from calib.data import Dataset, SkipLog, iter_batches


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

    def agreement(self, a: str = "fp32", b: str = "int8") -> float:
        pa, pb = self.predictions[a].top5[:, 0], self.predictions[b].top5[:, 0]
        return float(np.mean(pa == pb)) if len(pa) else 0.0

    def summary(self, name: str) -> dict:
        p = self.predictions[name]
        return {"top1": p.top1_accuracy, "top5": p.top5_accuracy}


def top5(logits: np.ndarray) -> np.ndarray:
    part = np.argpartition(-logits, 5, axis=1)[:, :5]
    order = np.argsort(-np.take_along_axis(logits, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def evaluate(runners: dict[str, Runner], dataset: Dataset, batch_size: int = 32,
             workers: int | None = None, progress: str | None = "evaluating") -> Evaluation:
    """Run every runner on each decoded batch (one decode for all models)."""
    skips = SkipLog()
    keys: list[str] = []
    labels: list[np.ndarray] = []
    tops: dict[str, list[np.ndarray]] = {name: [] for name in runners}
    for batch in iter_batches(dataset, batch_size, workers=workers, progress=progress, skips=skips):
        keys += batch.keys
        labels.append(batch.labels)
        for name, runner in runners.items():
            tops[name].append(top5(np.asarray(runner.run(batch.images), np.float32)))
    all_labels = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    preds = {name: Predictions(all_labels, np.concatenate(t) if t else np.zeros((0, 5), np.int64))
             for name, t in tops.items()}
    return Evaluation(keys, skips.skipped, preds)
