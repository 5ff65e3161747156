"""Accuracy restoration, the budget: what "good enough" means (a largest top-1 drop and/or a
smallest agreement with FP32), checked before any work and compared exactly on image counts.
For a model that is not a classifier the drop is its task metric's (`what`: e.g. mAP@0.5:0.95,
`calib.restore.score`), and agreement, a classifier's figure, is not asked for."""

from __future__ import annotations

import math

from calib.errors import CalibError


def check_budget(max_drop: float | None, min_agreement: float | None, what: str = "top-1") -> None:
    if max_drop is None and min_agreement is None:
        raise CalibError("a fallback budget needs --max-drop and/or --min-agreement")
    if max_drop is not None and not (math.isfinite(max_drop) and 0.0 <= max_drop <= 1.0):
        # A negative budget asks INT8 to beat FP32: leaving layers in float moves the model
        # towards FP32 (drop 0), never past it, so only chance on the search images could meet it.
        raise CalibError(f"--max-drop is a fraction of {what} in [0, 1] (0.002 = 0.2 points), got {max_drop}")
    if min_agreement is not None and not (math.isfinite(min_agreement) and 0.0 <= min_agreement <= 1.0):
        raise CalibError(f"--min-agreement is a fraction in [0, 1] (0.995 = 99.5%), got {min_agreement}")


def budget_text(b: dict, what: str = "top-1") -> str:
    parts = []
    if b.get("max_drop") is not None:
        parts.append(f"{what} drop ≤ {100 * b['max_drop']:.2f} points")
    if b.get("min_agreement") is not None:
        parts.append(f"agreement ≥ {100 * b['min_agreement']:.2f}%")
    return " and ".join(parts)


def meets(budget: dict, drop: float, agreement: float) -> bool:
    eps = 1e-12  # fractions of counts: 0.995 must accept 199/200
    return ((budget.get("max_drop") is None or drop <= budget["max_drop"] + eps)
            and (budget.get("min_agreement") is None or agreement >= budget["min_agreement"] - eps))
