"""Signal-to-quantization-noise ratio (dB) between FP32 and INT8 outputs.

SQNR = 10·log10(Σ x² / Σ (x − y)²) over every element seen (sums accumulate across batches, so
the figure is the same whatever the batch size). Identical tensors give +inf; an all-zero
reference with any error gives -inf.
"""

from __future__ import annotations

import math

import numpy as np


def sqnr_db(signal_power: float, noise_power: float) -> float:
    if noise_power <= 0.0:
        return math.inf
    if signal_power <= 0.0:
        return -math.inf
    return 10.0 * math.log10(signal_power / noise_power)


def sqnr(reference: np.ndarray, test: np.ndarray) -> float:
    """SQNR (dB) of `test` against `reference` over all their elements."""
    ref = np.asarray(reference, np.float64)
    err = ref - np.asarray(test, np.float64)
    return sqnr_db(float(np.sum(ref * ref)), float(np.sum(err * err)))


def sqnr_rows(reference: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Per-row SQNR (dB), e.g. per image of a (N, classes) logits batch."""
    ref = np.asarray(reference, np.float64).reshape(len(reference), -1)
    err = ref - np.asarray(test, np.float64).reshape(len(reference), -1)
    return np.array([sqnr_db(float(s), float(n)) for s, n in zip((ref * ref).sum(1), (err * err).sum(1))])


class SqnrAccumulator:
    """Signal and noise power per tensor, summed over batches."""

    def __init__(self) -> None:
        self.signal: dict[str, float] = {}
        self.noise: dict[str, float] = {}

    def add(self, name: str, reference: np.ndarray, test: np.ndarray) -> None:
        ref = np.asarray(reference, np.float32)
        err = ref - np.asarray(test, np.float32)
        # float32 products summed in float64: exact enough, and no float64 copy of the tensor.
        self.signal[name] = self.signal.get(name, 0.0) + float(np.dot(ref.ravel(), ref.ravel()))
        self.noise[name] = self.noise.get(name, 0.0) + float(np.dot(err.ravel(), err.ravel()))

    def result(self) -> dict[str, float]:
        return {name: sqnr_db(self.signal[name], self.noise[name]) for name in self.signal}


def finite_or_none(x: float) -> float | None:
    """JSON has no infinities: +inf (no error at all) and -inf become None."""
    return round(x, 3) if math.isfinite(x) else None
