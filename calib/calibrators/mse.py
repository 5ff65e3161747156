"""mse: the threshold with the least expected squared quantization error."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from . import _histogram as H
from .base import Calibrator, int_param
from .registry import register

LEVELS = 127  # symmetric INT8: 127 steps each side of zero


@register
class MseCalibrator(Calibrator):
    """Chooses amax minimising the expected mean squared error of symmetric INT8 fake
    quantization (scale amax/127): rounding error for |x| <= amax plus clipping error
    (|x| - amax)^2 beyond it. Source: the "mse" method of NVIDIA pytorch-quantization /
    TensorRT-Model-Optimizer (`_compute_amax_mse`), which evaluates it on bin centres; here the
    histogram of |x| over [0, max|x|] is brought to `num_bins` (2048) equal bins and the error
    is integrated exactly under a uniform density inside each bin, for every bin edge from
    `start_bin` up (ties: the largest threshold). The per-bin errors do not depend on the data,
    so they form a cached (candidates x bins) matrix and each tensor costs one matrix-vector
    product. TensorRT has no MSE algorithm: the cache header says "EntropyCalibration2", the
    only word TensorRT accepts for an externally chosen range.
    """

    name = "mse"
    trt_algorithm = "EntropyCalibration2"
    needs_histogram = True
    defaults = {"num_bins": 2048, "start_bin": 1}

    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        # 4096 bins already means a 128 MiB error matrix; more is not worth it.
        num_bins = int_param("mse", "num_bins", params["num_bins"], 16, 4096)
        start = int_param("mse", "start_bin", params["start_bin"], 1, num_bins)
        return {"num_bins": num_bins, "start_bin": start}

    def compute_amax(self, counts: np.ndarray | None, edges: np.ndarray | None, lo: float, hi: float) -> float:
        return self.compute_amaxes([(counts, edges, lo, hi)])[0]

    def compute_amaxes(self, items: list[tuple[Any, Any, float, float]]) -> list[float]:
        # All tensors in one matrix product: the error matrix is read once, not once per tensor.
        if not items:
            return []
        num_bins, start = self._params["num_bins"], self._params["start_bin"]
        p = np.stack([H.resample(counts, edges, num_bins) for counts, edges, _, _ in items])
        p /= p.sum(axis=1, keepdims=True)
        errors = p @ error_matrix(num_bins, start).T  # (tensors, candidates)
        best = errors.shape[1] - 1 - np.argmin(errors[:, ::-1], axis=1)  # ties: largest threshold
        return [float(edges[-1]) * ((start + int(b)) / num_bins) for (_, edges, _, _), b in zip(items, best)]


@lru_cache(maxsize=2)
def error_matrix(num_bins: int, start_bin: int) -> np.ndarray:
    """E[r, j]: mean squared error (in bin widths^2) of a value uniform in bin j when
    amax = the upper edge of bin start_bin + r - 1, i.e. t = start_bin + r bin widths.

    Rounding error inside [0, t]: with step s = t/127 the error is a sawtooth whose square has
    the antiderivative F(v) = k s^3/12 + (v - k s)^3 / 3, k = round(v/s); bin j gets
    F(j+1) - F(j). Beyond t: mean of (v - t)^2 over the bin, ((j+1-t)^3 - (j-t)^3) / 3.
    Built in row blocks to keep temporaries small; read-only.
    """
    thresholds = np.arange(start_bin, num_bins + 1, dtype=np.float64)
    edges = np.arange(num_bins + 1, dtype=np.float64)
    out = np.empty((thresholds.size, num_bins), dtype=np.float64)
    for r0 in range(0, thresholds.size, 256):
        t = thresholds[r0 : r0 + 256, None]
        step = t / LEVELS
        k = np.floor(edges / step + 0.5)
        rest = edges - k * step
        antider = k * step**3 / 12.0 + rest**3 / 3.0
        inside = np.diff(antider, axis=1)
        d = edges - t
        clipped = np.diff(d**3, axis=1) / 3.0
        out[r0 : r0 + 256] = np.where(edges[None, :-1] < t, inside, clipped)
    out.setflags(write=False)
    return out
