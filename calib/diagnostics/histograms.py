"""Histograms of |x| of a few FP32 tensors, and which tensors are worth a histogram in a report
(the ends of the network, where calibrators disagree most, where SQNR is lowest)."""

from __future__ import annotations

import math

import onnx

from calib.calibrators import TensorStatistics
from calib.data import Dataset


def tensor_histograms(prepared: onnx.ModelProto, dataset: Dataset, tensors: list[str], batch_size: int = 16,
                      workers: int | None = None, limit: int | None = None,
                      progress: str | None = None, device: str = "cpu",
                      decoder: str = "nvjpeg") -> tuple[TensorStatistics, int]:
    """Histograms of |x| of a few FP32 tensors over (the first `limit` images of) `dataset`,
    for plots when the calibration statistics are not at hand (caches were reused)."""
    from calib.passes import observe_pass

    stats = TensorStatistics(histogram=True)
    subset = dataset if limit is None else dataset.subset(dataset.samples[:limit])
    result = observe_pass(prepared, subset, stats, batch_size, device, tensors, workers, progress, decoder)
    return stats, result.images


def pick_tensors(amaxes: dict[str, dict[str, float]], order: list[str], peaks: dict[str, float] | None = None,
                 count: int = 6, sqnr: dict[str, dict[str, float | None]] | None = None) -> list[str]:
    """The tensors worth a histogram, returned in graph order: the first and the last quantized
    tensor; then, with several calibrators, the two whose SQNR differs most between them (when
    `sqnr` is given) and those whose thresholds differ most (largest max/min amax ratio); with a
    single calibrator, its two lowest-SQNR tensors and those it clips hardest (smallest amax /
    max|x|)."""
    tensors = [t for t in order if all(t in a for a in amaxes.values())]
    if not tensors:
        return []
    picked = [tensors[0], tensors[-1]]

    def add(ranked: list[str], n: int) -> None:
        for t in ranked:
            if n <= 0 or len(picked) >= count:
                return
            if t not in picked:
                picked.append(t)
                n -= 1

    if sqnr:
        def score(t: str) -> float:
            values = [s[t] for s in sqnr.values() if s.get(t) is not None]
            if not values:
                return -math.inf
            return max(values) - min(values) if len(sqnr) > 1 else -min(values)
        add(sorted((t for t in tensors if score(t) > -math.inf), key=score, reverse=True), 2)

    def spread(t: str) -> float:
        values = [a[t] for a in amaxes.values()]
        if len(values) > 1:
            lo, hi = min(values), max(values)
            return math.inf if lo <= 0 < hi else (hi / lo if lo > 0 else 1.0)
        peak = (peaks or {}).get(t, 0.0)
        return peak / values[0] if values[0] > 0 and peak > 0 else 1.0

    add(sorted(tensors, key=spread, reverse=True), count)
    return [t for t in tensors if t in picked]
