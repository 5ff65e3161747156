"""Activation calibrators: streamed activations -> per-tensor symmetric amax (scale = amax/127).

    stats = TensorStatistics()                      # one pass over the data ...
    cals = [get_calibrator(n, stats) for n in ("entropy", "percentile", "mse")]
    for batch in batches:
        for name, x in activations(batch):
            stats.observe(name, x)                  # numpy, or torch on any device
    ranges = {c.name: c.compute() for c in cals}    # ... serves every calibrator

Importing this package does not import torch.
"""

from .base import Calibrator, TensorRange
from .registry import (
    ENTRY_POINT_GROUP,
    available_calibrators,
    calibrator_class,
    get_calibrator,
    register,
    reload_plugins,
)
from .statistics import TensorStatistics, TensorSummary

# Built-ins register themselves on import.
from .entropy import EntropyCalibrator  # noqa: E402
from .minmax import MinMaxCalibrator  # noqa: E402
from .mse import MseCalibrator  # noqa: E402
from .percentile import PercentileCalibrator  # noqa: E402

__all__ = [
    "TensorStatistics",
    "TensorSummary",
    "TensorRange",
    "Calibrator",
    "register",
    "get_calibrator",
    "available_calibrators",
    "calibrator_class",
    "reload_plugins",
    "ENTRY_POINT_GROUP",
    "EntropyCalibrator",
    "MinMaxCalibrator",
    "PercentileCalibrator",
    "MseCalibrator",
]
