"""minmax: the largest magnitude seen."""

from __future__ import annotations

import numpy as np

from .base import Calibrator
from .registry import register


@register
class MinMaxCalibrator(Calibrator):
    """amax = max |x| over everything observed, so nothing is ever clipped. Follows TensorRT's
    MinMaxCalibrator (IInt8MinMaxCalibrator, cache header "MinMaxCalibration", TensorRT
    developer guide, "INT8 Calibration"); it keeps no histogram, which makes observe() cheaper,
    and it is the right choice when outliers matter (e.g. NLP/transformer activations).
    """

    name = "minmax"
    trt_algorithm = "MinMaxCalibration"
    needs_histogram = False

    def compute_amax(self, counts: np.ndarray | None, edges: np.ndarray | None, lo: float, hi: float) -> float:
        return max(-lo, hi, 0.0)
