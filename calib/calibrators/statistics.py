"""Per-tensor streaming statistics that every calibrator reads: range, counts, histogram of |x|."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from calib.errors import CalibError

from . import _histogram as H

# Elements per numpy work chunk: a float32 chunk plus its int64 bin indices (768 KiB) stay in
# L2, so the abs/scale/cast/bincount passes after the first read run from cache.
CHUNK = 1 << 16

# Bytes charged per tensor for the scalar fields (min, max, count, nonfinite, exp).
_ENTRY_OVERHEAD = 64

_STATE_FORMAT = "calib.TensorStatistics"
_STATE_VERSION = 1


@dataclass(frozen=True)
class TensorSummary:
    """Scalar statistics of one tensor (min/max are +inf/-inf while no finite value was seen)."""

    min: float
    max: float
    count: int  # finite values seen
    nonfinite: int  # NaN/Inf values seen and ignored

    @property
    def peak(self) -> float:
        """max |x| over the finite values (0.0 when there are none)."""
        return max(-self.min, self.max, 0.0) if self.count else 0.0


class TensorStatistics:
    """Per-tensor streaming statistics: finite min, max, count of nonfinite, count of values,
    and (if histogram=True) a histogram of |x|. Constant memory, mergeable.

    The histogram has `bins` equal bins over [0, 2**exp), exp the smallest with every |x| below
    2**exp; a larger batch doubles the range by summing bin pairs, so the final histogram is
    the same whatever the batch size, batch order or number of merged workers.
    """

    def __init__(self, histogram: bool = True, bins: int = 4096):
        self.has_histogram = bool(histogram)
        self.bins = H.check_bins(bins)
        self._entries: dict[str, H.Entry] = {}
        self._scratch: dict[str, np.ndarray] = {}

    # ----------------------------------------------------------------- observing
    def observe(self, name: str, x: Any) -> None:
        """Add the values of `x` (numpy array, or torch tensor on any device) to tensor `name`."""
        if not isinstance(name, str):
            raise CalibError(f"tensor name must be a string, got {type(name).__name__}")
        entry = self._entries.get(name)
        if entry is None:
            entry = self._entries[name] = H.Entry(self.bins if self.has_histogram else None)
        if type(x).__module__.startswith("torch"):
            # torch is imported only here, when a torch tensor actually arrives.
            from ._torch_reduce import as_host_numpy

            host = as_host_numpy(x)
            if host is None:
                self._observe_torch(entry, x)
                return
            x = host
        self._observe_numpy(entry, x)


    def observe_on_device(self, name: str, x: Any) -> None:
        """Force the torch (device) reduction for `x` even when it lives on the CPU (for tests
        and benchmarks of the device code path)."""
        from ._torch_reduce import reduce_tensor

        entry = self._entries.get(name)
        if entry is None:
            entry = self._entries[name] = H.Entry(self.bins if self.has_histogram else None)
        reduce_tensor(self, entry, x)
    def _observe_numpy(self, entry: H.Entry, x: Any) -> None:
        a = np.asarray(x)
        kind = a.dtype.kind
        if kind not in "fiub":
            raise CalibError(f"cannot calibrate a tensor of dtype {a.dtype}")
        if a.dtype == np.float32 or a.dtype == np.float64:
            cast_to = None
        else:
            # float16 (and ints) are widened chunk by chunk: numpy's float16 math is slow.
            cast_to = np.dtype(np.float32) if a.dtype == np.float16 else np.dtype(np.float64)
        flat = a.reshape(-1)
        for start in range(0, flat.size, CHUNK):
            chunk = flat[start : start + CHUNK]
            if cast_to is not None:
                buf = self._buffer("cast", cast_to)[: chunk.size]
                buf[...] = chunk
                chunk = buf
            lo = chunk.min()
            hi = chunk.max()
            if not (math.isfinite(lo) and math.isfinite(hi)):
                # Slow path only for chunks that hold NaN/Inf: drop them and count them.
                finite = np.isfinite(chunk)
                kept = int(np.count_nonzero(finite))
                entry.nonfinite += chunk.size - kept
                if kept == 0:
                    continue
                chunk = chunk[finite]
                lo = chunk.min()
                hi = chunk.max()
            self._update_range(entry, float(lo), float(hi), chunk.size)
            if entry.counts is not None:
                self._bin_numpy(entry, chunk, lo, hi)

    def _observe_torch(self, entry: H.Entry, x: Any) -> None:
        """Reduce a torch tensor on its own device; only scalars and bin counts come to the host."""
        from ._torch_reduce import reduce_tensor

        reduce_tensor(self, entry, x)

    def _update_range(self, entry: H.Entry, lo: float, hi: float, n: int) -> None:
        """Record a finite chunk's min/max/count and grow the histogram range if needed."""
        entry.count += n
        if lo < entry.min:
            entry.min = lo
        if hi > entry.max:
            entry.max = hi
        if entry.counts is None:
            return
        peak = max(-lo, hi)
        if peak > 0.0:
            exp = H.exponent_for(peak)
            if entry.exp is None:
                entry.exp = exp  # bin 0 holds the zeros seen so far, right for any range
            elif exp > entry.exp:
                H.fold(entry.counts, exp - entry.exp)
                entry.exp = exp

    def _bin_numpy(self, entry: H.Entry, chunk: np.ndarray, lo: Any, hi: Any) -> None:
        counts = entry.counts
        n = chunk.size
        if entry.exp is None:
            counts[0] += n  # all zeros
            return
        factors = H.scale_factors(self.bins, entry.exp)
        if chunk.dtype == np.float32 and H.needs_float64(factors):
            chunk = chunk.astype(np.float64)  # extreme ranges: float32 scaling would not be exact
            lo = np.float64(lo)
        dtype = chunk.dtype
        if lo == hi:
            # Constant chunk (zero padding, saturated ReLU6 ...): one bin, no bincount.
            v = abs(lo)
            for f in factors:
                v = v * dtype.type(f)
            counts[int(v)] += n
            return
        work = self._buffer("work", dtype)[:n]
        index = self._buffer("index", np.dtype(np.intp))[:n]
        np.multiply(chunk, dtype.type(factors[0]), out=work)
        for f in factors[1:]:
            np.multiply(work, dtype.type(f), out=work)
        np.abs(work, out=work)
        index[...] = work  # truncation == floor for non-negative values
        binned = np.bincount(index, minlength=self.bins)
        if binned.size > self.bins:  # cannot happen with exact scaling; kept as a guard
            binned[self.bins - 1] += binned[self.bins :].sum()
            binned = binned[: self.bins]
        counts += binned

    def _buffer(self, role: str, dtype: np.dtype) -> np.ndarray:
        key = f"{role}:{dtype.str}"
        buf = self._scratch.get(key)
        if buf is None:
            buf = self._scratch[key] = np.empty(CHUNK, dtype=dtype)
        return buf

    # ----------------------------------------------------------------- merging
    def merge(self, other: "TensorStatistics") -> None:
        """Add everything `other` has seen; exact (integer counts, aligned power-of-two bins)."""
        if not isinstance(other, TensorStatistics):
            raise CalibError(f"cannot merge TensorStatistics with {type(other).__name__}")
        if other is self:
            raise CalibError("cannot merge TensorStatistics with itself")
        if self.has_histogram and not other.has_histogram:
            raise CalibError("cannot merge statistics without a histogram into ones with a histogram")
        if self.has_histogram and other.bins != self.bins:
            raise CalibError(f"cannot merge histograms of {other.bins} bins into {self.bins} bins")
        for name, theirs in other._entries.items():
            mine = self._entries.get(name)
            if mine is None:
                mine = self._entries[name] = H.Entry(self.bins if self.has_histogram else None)
            mine.min = min(mine.min, theirs.min)
            mine.max = max(mine.max, theirs.max)
            mine.count += theirs.count
            mine.nonfinite += theirs.nonfinite
            if mine.counts is None:
                continue
            if theirs.exp is None:
                mine.counts[0] += theirs.counts[0]
            elif mine.exp is None:
                zeros = mine.counts[0]
                mine.counts[:] = theirs.counts
                mine.counts[0] += zeros
                mine.exp = theirs.exp
            else:
                exp = max(mine.exp, theirs.exp)
                H.fold(mine.counts, exp - mine.exp)
                add = theirs.counts.copy()
                H.fold(add, exp - theirs.exp)
                mine.counts += add
                mine.exp = exp

    # ----------------------------------------------------------------- reading
    def names(self) -> list[str]:
        """Tensor names in first-observed order."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def _entry(self, name: str) -> H.Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise CalibError(f"no statistics for tensor '{name}'") from None

    def summary(self, name: str) -> TensorSummary:
        e = self._entry(name)
        return TensorSummary(e.min, e.max, e.count, e.nonfinite)

    def histogram(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(counts, bin_edges) of |x| trimmed to [0, observed max|x|].

        Bins are equal-width (R / bins) except the last, which is closed and ends exactly at
        max|x|. No finite data: ([], [0.0]); all zeros: ([count], [0.0, 0.0]).
        """
        if not self.has_histogram:
            raise CalibError("these statistics were collected without a histogram (histogram=False)")
        e = self._entry(name)
        if e.count == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(1, dtype=np.float64)
        if e.exp is None:
            return np.array([e.counts[0]], dtype=np.int64), np.zeros(2, dtype=np.float64)
        return H.trim(e.counts, e.exp, max(-e.min, e.max))

    def nbytes(self) -> int:
        """Size of the state: fixed per tensor, independent of how much data was observed."""
        per_entry = _ENTRY_OVERHEAD + (self.bins * 8 if self.has_histogram else 0)
        return sum(per_entry + len(name.encode()) for name in self._entries)

    # ----------------------------------------------------------------- persistence
    def state_dict(self) -> dict:
        """Plain python/numpy state (picklable); from_state_dict() restores it exactly."""
        tensors = {}
        for name, e in self._entries.items():
            tensors[name] = {
                "min": e.min,
                "max": e.max,
                "count": e.count,
                "nonfinite": e.nonfinite,
                "exp": e.exp,
                "counts": None if e.counts is None else e.counts.copy(),
            }
        return {
            "format": _STATE_FORMAT,
            "version": _STATE_VERSION,
            "histogram": self.has_histogram,
            "bins": self.bins,
            "tensors": tensors,
        }

    @classmethod
    def from_state_dict(cls, d: dict) -> "TensorStatistics":
        if not isinstance(d, dict) or d.get("format") != _STATE_FORMAT:
            raise CalibError("not a TensorStatistics state (missing format marker)")
        if d.get("version") != _STATE_VERSION:
            raise CalibError(f"unsupported TensorStatistics state version {d.get('version')!r}")
        stats = cls(histogram=bool(d["histogram"]), bins=d["bins"])
        for name, t in d["tensors"].items():
            e = H.Entry(stats.bins if stats.has_histogram else None)
            e.min, e.max = float(t["min"]), float(t["max"])
            e.count, e.nonfinite = int(t["count"]), int(t["nonfinite"])
            if e.counts is not None:
                counts = np.asarray(t["counts"], dtype=np.int64)
                if counts.shape != (stats.bins,):
                    raise CalibError(f"histogram of tensor '{name}' has shape {counts.shape}, expected ({stats.bins},)")
                e.counts[:] = counts
                e.exp = None if t["exp"] is None else int(t["exp"])
            stats._entries[name] = e
        return stats

    def __getstate__(self) -> dict:
        return self.state_dict()  # scratch buffers are not state

    def __setstate__(self, d: dict) -> None:
        restored = type(self).from_state_dict(d)
        self.__dict__.update(restored.__dict__)

    def copy(self) -> "TensorStatistics":
        return type(self).from_state_dict(self.state_dict())

    def __repr__(self) -> str:
        hist = f"histogram of {self.bins} bins" if self.has_histogram else "no histogram"
        return f"TensorStatistics({len(self._entries)} tensors, {hist})"
