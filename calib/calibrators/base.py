"""The calibrator contract: statistics in, one symmetric amax per tensor out."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import numpy as np

from calib.errors import CalibError

from .statistics import TensorStatistics


@dataclass(frozen=True)
class TensorRange:
    """Calibration result for one tensor; the INT8 scale is amax / 127 with zero point 0."""

    amax: float  # symmetric threshold chosen by the calibrator (>= 0; 0.0 for an all-zero tensor)
    min: float  # observed finite min (0.0 when no finite value was seen)
    max: float  # observed finite max (0.0 when no finite value was seen)
    nonfinite: int  # NaN/Inf values seen (ignored, counted)


class Calibrator(ABC):
    """Turns streamed activations into a per-tensor symmetric range.

    Subclasses set `name`, `trt_algorithm`, `needs_histogram`, `defaults` (every accepted
    parameter with its default) and implement `compute_amax`; `check_params` may validate.
    Several calibrators may share one TensorStatistics so one pass over the data serves all.
    """

    name: ClassVar[str]
    trt_algorithm: ClassVar[str] = "EntropyCalibration2"
    needs_histogram: ClassVar[bool] = True
    defaults: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, stats: TensorStatistics | None = None, **params: Any):
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            accepted = ", ".join(sorted(self.defaults)) or "none"
            raise CalibError(
                f"calibrator '{self.name}' got unknown parameter(s) {', '.join(unknown)} (accepted: {accepted})"
            )
        self._params = dict(self.check_params({**self.defaults, **params}))
        if stats is None:
            stats = TensorStatistics(histogram=self.needs_histogram)
        elif not isinstance(stats, TensorStatistics):
            raise CalibError(f"stats must be a TensorStatistics, got {type(stats).__name__}")
        elif self.needs_histogram and not stats.has_histogram:
            raise CalibError(f"calibrator '{self.name}' needs statistics collected with histogram=True")
        self.stats = stats

    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """Validate and normalise parameters; raise CalibError with a one-line message."""
        return params

    @property
    def params(self) -> dict[str, Any]:
        """Parameters that influence the result (recorded in cache metadata)."""
        return dict(self._params)

    def observe(self, name: str, x: Any) -> None:
        self.stats.observe(name, x)

    def merge(self, other: "Calibrator") -> None:
        """Merge what `other` observed. Calibrators sharing this one's stats see it too."""
        if not isinstance(other, Calibrator):
            raise CalibError(f"cannot merge a calibrator with {type(other).__name__}")
        if other.stats is self.stats:
            raise CalibError("cannot merge calibrators that share one TensorStatistics (it would count twice)")
        self.stats.merge(other.stats)

    def compute(self) -> dict[str, TensorRange]:
        """amax for every observed tensor, in first-observed order. Pure: reads, never mutates."""
        summaries = {name: self.stats.summary(name) for name in self.stats.names()}
        todo = [name for name, s in summaries.items() if s.peak > 0.0]  # all-zero/empty: amax 0
        items = []
        for name in todo:
            s = summaries[name]
            counts, edges = self.stats.histogram(name) if self.needs_histogram else (None, None)
            items.append((counts, edges, s.min, s.max))
        amaxes = dict(zip(todo, (float(a) for a in self.compute_amaxes(items))))
        out: dict[str, TensorRange] = {}
        for name, s in summaries.items():
            amax = amaxes.get(name, 0.0)
            if not math.isfinite(amax) or amax < 0.0:
                raise CalibError(f"calibrator '{self.name}' produced amax {amax} for tensor '{name}'")
            lo, hi = (s.min, s.max) if s.count else (0.0, 0.0)
            out[name] = TensorRange(amax=amax, min=lo, max=hi, nonfinite=s.nonfinite)
        return out

    def compute_amaxes(self, items: list[tuple[Any, Any, float, float]]) -> list[float]:
        """compute_amax for many tensors (counts, edges, lo, hi); override to vectorise across them."""
        return [self.compute_amax(*item) for item in items]

    @abstractmethod
    def compute_amax(self, counts: np.ndarray | None, edges: np.ndarray | None, lo: float, hi: float) -> float:
        """The algorithm for one tensor: histogram of |x| (trimmed to [0, max|x|]) and finite min/max.

        Called only when max|x| > 0. counts/edges are None for calibrators without a histogram.
        """

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._params.items())
        return f"{type(self).__name__}({args})"


# ---------------------------------------------------------------- parameter helpers
def int_param(calibrator: str, key: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise CalibError(f"{calibrator}: {key} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise CalibError(f"{calibrator}: {key} must be in [{lo}, {hi}], got {value}")
    return int(value)


def bool_param(calibrator: str, key: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise CalibError(f"{calibrator}: {key} must be true or false, got {value!r}")
    return bool(value)
