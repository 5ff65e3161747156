"""Number formatting shared by the markdown, HTML and console renderings of reports."""

from __future__ import annotations


def pct(x: float | None) -> str:
    """A fraction as a percentage with two decimals; "–" when missing."""
    return "–" if x is None else f"{100 * x:.2f}%"


def db(x: float | None) -> str:
    """Decibels with one decimal; None stands for +inf (no error at all)."""
    return "∞" if x is None else f"{x:.1f}"


def images(n: int) -> str:
    return f"{n} image" if n == 1 else f"{n} images"
