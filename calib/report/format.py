"""Number and name formatting shared by the markdown, HTML and console renderings of reports.

Every wording rule lives here once (issue 22): counts with their plural, points without a negative
zero, changes in per cent said as "lower"/"higher" rather than signed, and names made printable
(a file name that is not UTF-8 arrives as Python's surrogate escapes, which no UTF-8 file or
terminal accepts: it is shown with its bytes escaped, `bad_\\xff\\xfe.JPEG`)."""

from __future__ import annotations

from typing import Any


def pct(x: float | None) -> str:
    """A fraction as a percentage with two decimals; "–" when missing."""
    return "–" if x is None else f"{100 * x:.2f}%"


def db(x: float | None) -> str:
    """Decibels with one decimal; None stands for +inf (no error at all)."""
    return "∞" if x is None else f"{x:.1f}"


def images(n: int) -> str:
    """"1 image", "2 images": a count of images with its plural."""
    return f"{n} image" if n == 1 else f"{n} images"


def number(x: float, decimals: int = 2) -> str:
    """`x` with `decimals` decimals, never "-0.00": a value that rounds to zero is zero."""
    text = f"{x:.{decimals}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def points(x: float, decimals: int = 2) -> str:
    """A fraction (0.01 = 1 point of top-1) in points, without a negative zero."""
    return number(100 * x, decimals)


def change(fraction: float, decimals: int = 0, up: str = "higher", down: str = "lower") -> str:
    """A relative change as words: "3% lower", "5% higher", or "unchanged" when it rounds to 0
    (a signed "-0%", or "--5%" for a gain, read as nonsense)."""
    text = number(100 * abs(fraction), decimals)
    if float(text) == 0:
        return "unchanged"
    return f"{text}% {down if fraction > 0 else up}"


def printable(x: Any) -> Any:
    """`x` (a string, or a JSON-shaped dict or list of them) with every string writable as UTF-8:
    the surrogate escapes of a non-UTF-8 file name (os.fsdecode) become backslash escapes of its
    bytes; other strings are returned unchanged."""
    if isinstance(x, str):
        try:
            x.encode("utf-8")
            return x
        except UnicodeEncodeError:
            try:
                raw = x.encode("utf-8", "surrogateescape")   # the file name's own bytes
            except UnicodeEncodeError:
                return x.encode("utf-8", "backslashreplace").decode("utf-8")
            return raw.decode("utf-8", "backslashreplace")
    if isinstance(x, dict):
        return {printable(k): printable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [printable(v) for v in x]
    return x
