"""percentile: clip a fixed fraction of the largest magnitudes."""

from __future__ import annotations

from typing import Any

import numpy as np

from calib.errors import CalibError

from .base import Calibrator
from .registry import register


@register
class PercentileCalibrator(Calibrator):
    """amax = the `percentile`-th percentile (default 99.99) of |x|, read from the histogram and
    interpolated linearly inside the bin where the cumulative count crosses it (so 100 gives
    exactly max |x|). Source: the percentile calibration of NVIDIA pytorch-quantization /
    TensorRT-Model-Optimizer (`_compute_amax_percentile`) and ONNX Runtime's
    CalibrationMethod.Percentile (which, unlike pytorch-quantization, returns the bin edge
    without interpolating). TensorRT has no percentile algorithm: the cache header says
    "EntropyCalibration2", the only word TensorRT accepts for an externally chosen range.
    """

    name = "percentile"
    trt_algorithm = "EntropyCalibration2"
    needs_histogram = True
    defaults = {"percentile": 99.99}

    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        p = params["percentile"]
        if isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)) or not 0.0 < p <= 100.0:
            raise CalibError(f"percentile: percentile must be a number in (0, 100], got {p!r}")
        return {"percentile": float(p)}

    def compute_amax(self, counts: np.ndarray | None, edges: np.ndarray | None, lo: float, hi: float) -> float:
        cdf = np.concatenate(([0.0], np.cumsum(counts, dtype=np.float64)))
        target = cdf[-1] * (self._params["percentile"] / 100.0)
        # First edge whose cumulative count reaches the target; the crossing bin is j-1.
        j = int(np.searchsorted(cdf, target, side="left"))
        j = min(max(j, 1), counts.size)
        below, above = cdf[j - 1], cdf[j]
        frac = (target - below) / (above - below) if above > below else 1.0
        return float(edges[j - 1] + frac * (edges[j] - edges[j - 1]))
