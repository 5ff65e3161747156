"""The power-of-two histogram of |x|: exponent choice, exact range doubling, trimming, resampling.

A histogram has `bins` equal-width bins over [0, R) with R = 2**exp, the smallest power of two
strictly greater than every |x| seen. Because R only ever doubles and `bins` is a power of two,
the edges of the old histogram are edges of the new one: doubling is summing adjacent pairs,
which is exact. Bin j holds floor(|x| * bins / R) == j; the multiply is by a power of two, so
it is exact in floating point and every path (numpy, torch, merge) bins a value identically.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

from calib.errors import CalibError

MIN_BINS = 256
MAX_BINS = 1 << 20


def check_bins(bins: int) -> int:
    """`bins` must be a power of two so that scaling by bins / R stays exact."""
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)):
        raise CalibError(f"histogram bins must be an integer, got {bins!r}")
    bins = int(bins)
    if bins < MIN_BINS or bins > MAX_BINS or bins & (bins - 1):
        raise CalibError(f"histogram bins must be a power of two in [{MIN_BINS}, {MAX_BINS}], got {bins}")
    return bins


def exponent_for(peak: float) -> int:
    """Smallest exp with peak < 2**exp (peak > 0)."""
    # frexp: peak = m * 2**e with 0.5 <= m < 1, hence 2**(e-1) <= peak < 2**e.
    return math.frexp(peak)[1]


def scale_factors(bins: int, exp: int) -> tuple[float, ...]:
    """Powers of two whose product is bins / 2**exp, the map from |x| to its fractional bin.

    One factor normally; two when the product itself would overflow a float64 (ranges of
    subnormal values), so each multiplication stays exact.
    """
    shift = bins.bit_length() - 1 - exp
    if shift <= 1000:
        return (math.ldexp(1.0, shift),)
    half = shift // 2
    return (math.ldexp(1.0, half), math.ldexp(1.0, shift - half))


def needs_float64(factors: tuple[float, ...]) -> bool:
    """Whether float32 data must be widened so that scaling by `factors` stays exact."""
    return len(factors) > 1 or not (2.0**-126 <= factors[0] < 2.0**127)


def bin_width(bins: int, exp: int) -> float:
    return math.ldexp(1.0, exp - (bins.bit_length() - 1))


def fold(counts: np.ndarray, times: int) -> None:
    """Double the range `times` times in place: bin pairs (2m, 2m+1) become bin m."""
    bins = counts.size
    for _ in range(min(times, bins.bit_length())):  # after log2(bins) folds all is in bin 0
        half = counts.reshape(-1, 2).sum(axis=1)
        counts[: bins // 2] = half
        counts[bins // 2 :] = 0


def trim(counts: np.ndarray, exp: int, peak: float) -> tuple[np.ndarray, np.ndarray]:
    """(counts, edges) covering exactly [0, peak]; the last bin is closed and ends at peak.

    The bin holding `peak` may extend past it; its upper edge is pulled down to `peak`, where
    all of its values lie. When `peak` sits exactly on a bin's lower edge (1.0, 2.0, ...) that
    bin holds only values equal to `peak` and is merged into the bin below, so no bin has zero
    width. With peak in [R/2, R) the result has between bins/2 and bins bins.
    """
    bins = counts.size
    width = bin_width(bins, exp)
    top = int(peak / width)  # exact: width is a power of two
    n = top if top * width == peak else top + 1
    n = max(n, 1)
    out = counts[:n].astype(np.int64, copy=True)
    if n == top and top < bins:
        out[-1] += counts[top]
    edges = np.arange(n + 1, dtype=np.float64) * width
    edges[-1] = peak
    return out, edges


def resample(counts: np.ndarray, edges: np.ndarray, num_bins: int) -> np.ndarray:
    """Counts of `num_bins` equal bins over [0, edges[-1]], assuming uniform density inside each bin.

    Linear interpolation of the cumulative count: exact totals, bins that were empty stay empty
    except where a new bin straddles a non-empty one. Returns float64 counts.
    """
    cdf = np.empty(counts.size + 1, dtype=np.float64)
    cdf[0] = 0.0
    np.cumsum(counts, dtype=np.float64, out=cdf[1:])
    # Work in units of the range: slopes stay finite even for ranges of subnormal numbers.
    targets = np.linspace(0.0, 1.0, num_bins + 1)
    new_cdf = np.interp(targets, np.asarray(edges, dtype=np.float64) / float(edges[-1]), cdf)
    new_cdf[-1] = cdf[-1]
    out = np.diff(new_cdf)
    np.maximum(out, 0.0, out=out)  # interpolation round-off must not produce negative mass
    return out


class Entry:
    """One tensor's running statistics (shared by the numpy and the torch reductions)."""

    __slots__ = ("min", "max", "count", "nonfinite", "exp", "counts")

    def __init__(self, bins: int | None):
        self.min = math.inf
        self.max = -math.inf
        self.count = 0
        self.nonfinite = 0
        # exp is None while every finite value seen is 0: R is undefined and the zeros wait in
        # counts[0], which is their bin for any later R.
        self.exp: int | None = None
        self.counts = np.zeros(bins, dtype=np.int64) if bins else None


class Sink(Protocol):
    """What a reduction writes into (`TensorStatistics`): its bin count and range update."""

    bins: int

    def _update_range(self, entry: Entry, lo: float, hi: float, n: int) -> None: ...
