"""Accuracy restoration, the budget: what "good enough" means (a largest drop and/or a smallest
agreement with FP32), checked when it is made and compared exactly on image counts.

A `Budget` is a value that is valid by construction (parsed once, then handed on: the fallback
search takes one and never checks it again). Its drop is in the figure `what` names: top-1 for a
classifier, a task metric's headline otherwise (mAP@0.5:0.95, `calib.restore.score`), where the
scorer that makes it leaves agreement, a classifier's figure, out."""

from __future__ import annotations

import math
from dataclasses import dataclass

from calib.errors import CalibError


@dataclass(frozen=True)
class Budget:
    """`max_drop`: the largest drop (FP32 − INT8) as a fraction of `what`; `min_agreement`: the
    smallest top-1 agreement with FP32. At least one of them; each a fraction in [0, 1]."""

    max_drop: float | None = None
    min_agreement: float | None = None
    what: str = "top-1"

    def __post_init__(self) -> None:
        if self.max_drop is None and self.min_agreement is None:
            raise CalibError("a fallback budget needs --max-drop and/or --min-agreement")
        if self.max_drop is not None and not (math.isfinite(self.max_drop) and 0.0 <= self.max_drop <= 1.0):
            # A negative budget asks INT8 to beat FP32: leaving layers in float moves the model
            # towards FP32 (drop 0), never past it, so only chance on the search images could meet it.
            raise CalibError(f"--max-drop is a fraction of {self.what} in [0, 1] (0.002 = 0.2 points), "
                             f"got {self.max_drop}")
        if self.min_agreement is not None and not (math.isfinite(self.min_agreement)
                                                   and 0.0 <= self.min_agreement <= 1.0):
            raise CalibError(f"--min-agreement is a fraction in [0, 1] (0.995 = 99.5%), got {self.min_agreement}")

    def meets(self, drop: float, agreement: float = 1.0) -> bool:
        eps = 1e-12  # fractions of counts: 0.995 must accept 199/200
        return ((self.max_drop is None or drop <= self.max_drop + eps)
                and (self.min_agreement is None or agreement >= self.min_agreement - eps))

    def text(self) -> str:
        """In words, as the reports say it: "top-1 drop ≤ 0.20 points and agreement ≥ 99.50%"."""
        parts = []
        if self.max_drop is not None:
            parts.append(f"{self.what} drop ≤ {100 * self.max_drop:.2f} points")
        if self.min_agreement is not None:
            parts.append(f"agreement ≥ {100 * self.min_agreement:.2f}%")
        return " and ".join(parts)

    def as_dict(self) -> dict:
        """The report's JSON form (docs/report.md: `fallback.budget`)."""
        return {"max_drop": self.max_drop, "min_agreement": self.min_agreement}
