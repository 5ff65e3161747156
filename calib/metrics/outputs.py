"""Per-output fidelity of a test model (INT8) against a reference model (FP32), for every graph
output whatever the task: SQNR with a 95% interval over images, cosine similarity, shape.

Accumulated batch by batch from host arrays, keeping only per-image scalars (signal power
sum x^2, noise power sum (x - y)^2, the dot product and the test model's power), so memory does
not grow with the output size. The SQNR over all images is 10 log10(sum signal / sum noise), as
`calib.stats.sqnr` defines it; its interval is the paired bootstrap over images of
`calib.stats.paired.sqnr_ci` (images resampled, both sums recomputed from the same resample).
Cosine similarity is the mean over images of each image's cosine between the flattened outputs
(one number per image, so a large image does not outweigh the others); an all-zero output on both
sides counts as 1 (identical), on one side only as 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from calib.errors import CalibError
from calib.stats.paired import sqnr_ci
from calib.stats.sqnr import finite_or_none, sqnr_db


@dataclass(frozen=True)
class OutputFidelity:
    """One graph output: `shape` is [images seen, *per-image shape]; `sqnr_db` None when infinite
    (identical outputs); `sqnr_db_ci95` None on one image (see calib.stats.paired.ONE_IMAGE_INTERVAL)
    or an end None where infinite."""

    name: str
    shape: list[int]
    sqnr_db: float | None
    sqnr_db_ci95: list[float | None] | None
    cosine: float | None

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "sqnr_db": self.sqnr_db,
                "sqnr_db_ci95": self.sqnr_db_ci95, "cosine": self.cosine}


@dataclass
class _Powers:
    shape: tuple[int, ...]
    signal: list[np.ndarray] = field(default_factory=list)
    noise: list[np.ndarray] = field(default_factory=list)
    dot: list[np.ndarray] = field(default_factory=list)
    test: list[np.ndarray] = field(default_factory=list)


class OutputsAccumulator:
    """Per-image powers of every output, batch by batch. `update(reference, test)` takes one
    batch's outputs of both models (host arrays, batch axis first, the same names and shapes);
    `n` limits it to the batch's first n rows (a padded last batch)."""

    def __init__(self, resamples: int = 2000, seed: int = 0):
        self.resamples, self.seed = resamples, seed
        self._outputs: dict[str, _Powers] = {}

    def update(self, reference: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray],
               n: int | None = None) -> None:
        for name, ref in reference.items():
            if name not in test:
                raise CalibError(f"output '{name}' of the reference model is missing from the test model's outputs "
                                 f"(it has: {', '.join(test) or 'none'})")
            r = np.asarray(ref)
            t = np.asarray(test[name])
            if r.shape != t.shape:
                raise CalibError(f"output '{name}' has shape {list(r.shape)} in the reference model "
                                 f"and {list(t.shape)} in the test model")
            if r.ndim == 0:
                r, t = r.reshape(1, 1), t.reshape(1, 1)
            rows = len(r) if n is None else min(n, len(r))
            r64 = r[:rows].reshape(rows, -1).astype(np.float64)
            t64 = t[:rows].reshape(rows, -1).astype(np.float64)
            acc = self._outputs.setdefault(name, _Powers(tuple(r.shape[1:])))
            if acc.shape != tuple(r.shape[1:]):
                raise CalibError(f"output '{name}' changed shape between batches: per image {list(acc.shape)} "
                                 f"then {list(r.shape[1:])}")
            err = r64 - t64
            acc.signal.append(np.einsum("ij,ij->i", r64, r64))
            acc.noise.append(np.einsum("ij,ij->i", err, err))
            acc.dot.append(np.einsum("ij,ij->i", r64, t64))
            acc.test.append(np.einsum("ij,ij->i", t64, t64))

    def result(self) -> list[OutputFidelity]:
        """One `OutputFidelity` per output, in the order the outputs were first seen."""
        return [self._one(name, acc) for name, acc in self._outputs.items()]

    def _one(self, name: str, acc: _Powers) -> OutputFidelity:
        s, e, d, q = (np.concatenate(v) for v in (acc.signal, acc.noise, acc.dot, acc.test))
        n = len(s)
        if n == 0:
            raise CalibError(f"output '{name}': no images were compared")
        boot = sqnr_ci(s, e, self.resamples, self.seed)
        ci = None if boot.ci95 is None else [finite_or_none(v) for v in boot.ci95]
        return OutputFidelity(name, [n, *acc.shape], finite_or_none(sqnr_db(float(s.sum()), float(e.sum()))),
                              ci, round(float(np.mean(cosine_rows(s, q, d))), 6))


def cosine_rows(signal: np.ndarray, test: np.ndarray, dot: np.ndarray) -> np.ndarray:
    """Per-image cosine from the powers x.x, y.y and x.y: 1 where both are all zeros, 0 where one is."""
    norm = np.sqrt(signal * test)
    both_zero = (signal == 0) & (test == 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.where(norm > 0, dot / np.where(norm > 0, norm, 1.0), 0.0)
    return np.clip(np.where(both_zero, 1.0, cos), -1.0, 1.0)


def outputs_json(results: Sequence[OutputFidelity]) -> list[dict]:
    """The report.json `outputs` list."""
    return [r.to_json() for r in results]


__all__ = ["OutputFidelity", "OutputsAccumulator", "cosine_rows", "outputs_json"]
