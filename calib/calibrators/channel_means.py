"""Per-channel means of activations (axis 1), streamed and mergeable.

Used for bias correction: the mean output shift a layer's weight quantization error causes,
(W_q - W) . E[x], is known once E[x] per input channel is; subtracting it from the bias removes
the systematic part of the error (Nagel et al. 2019, "Data-Free Quantization Through Weight
Equalization and Bias Correction", section 4.2, with E[x] measured on the calibration images).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from calib.tensor import channel_sums


class ChannelMeans:
    """Per-channel sums and counts of the tensors `tensors` (None: every tensor seen), from host
    arrays or device tensors alike (`calib.tensor.channel_sums`). With `log`, each batch's sums
    are also recorded as (batch, name, sums, count), so that shards of a pass can be added in the
    one-device order (`replay`): float sums then come out bit for bit the same."""

    def __init__(self, tensors: list[str] | None = None, log: bool = False):
        self.tensors = None if tensors is None else set(tensors)
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, int] = {}
        self.log: list[tuple] | None = [] if log else None
        self.batch = 0   # the index the log records (set by the pass)

    def observe(self, name: str, x: Any) -> None:
        if self.tensors is not None and name not in self.tensors:
            return
        found = channel_sums(x)
        if found is None:
            return
        s, count = found
        if not np.all(np.isfinite(s)):
            return  # a batch with NaN/Inf says nothing about the mean
        if self.log is not None:
            self.log.append((self.batch, name, s.copy(), count))
        self.add(name, s, count)

    def add(self, name: str, sums: np.ndarray, count: int) -> None:
        """Add one batch's (or one shard's) sums and count for `name`."""
        self.sums[name] = self.sums[name] + sums if name in self.sums else sums.copy()
        self.counts[name] = self.counts.get(name, 0) + count

    def merge(self, other: "ChannelMeans") -> None:
        for name, s in other.sums.items():
            self.add(name, s, other.counts[name])

    def replay(self, logs: list[list[tuple]], batch_order: list[list[int]]) -> None:
        """Add shards' per-batch records in global batch order: `logs[rank]` holds (local batch,
        name, sums, count); `batch_order[rank][local]` is that batch's global index."""
        records = []
        for rank, log in enumerate(logs):
            for seq, (local, name, s, count) in enumerate(log):
                records.append((batch_order[rank][local], seq, name, s, count))
        records.sort(key=lambda r: (r[0], r[1]))
        for _, _, name, s, count in records:
            self.add(name, s, count)

    def means(self) -> dict[str, list[float]]:
        return {name: (s / self.counts[name]).tolist() for name, s in self.sums.items() if self.counts[name]}


class Observers:
    """Several observers fed from one pass."""

    def __init__(self, *observers):
        self.observers = observers

    def observe(self, name: str, x: Any) -> None:
        for o in self.observers:
            o.observe(name, x)
