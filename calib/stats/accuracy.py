"""What an evaluation measured: each model's top-5 per image, and per-image logits powers against
FP32, from which accuracy, agreement and the logits SQNR follow (the pass that fills it:
`calib.passes.evaluate`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from calib.stats.sqnr import sqnr_db


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


def above_chance(correct: int, n: int, classes: int, alpha: float = 0.05) -> bool:
    """Whether `correct` right answers of `n` beat guessing among `classes` classes: the one-sided
    exact binomial test of "top-1 = 1/classes" rejects at `alpha`. A classifier that does not is
    almost always fed the wrong preprocessing or labels (issue 22: FP32 at 0% went unremarked);
    0 right is never above chance, 1 right of 5 among 1000 classes is (p = 0.005)."""
    from scipy.stats import binom

    if n < 1 or classes < 2 or correct < 1:
        return classes < 2 and correct > 0
    return float(binom.sf(correct - 1, n, 1.0 / classes)) < alpha
