"""A dataset is one source plus one preprocessing preset (or, for named arrays, the model's
`ArrayFeed`: calib.data.arrays); it feeds calibration and evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from calib.data.sources import ImageSource, Sample
from calib.data.transforms import Preprocess
from calib.errors import CalibError

if TYPE_CHECKING:  # pragma: no cover
    from calib.data.arrays import ArrayFeed


@dataclass
class Dataset:
    source: ImageSource
    preprocess: "Preprocess | ArrayFeed"
    samples: list[Sample]

    @classmethod
    def of(cls, source: ImageSource, preprocess: "Preprocess | ArrayFeed") -> "Dataset":
        return cls(source, preprocess, list(source.samples))

    def subset(self, samples: list[Sample]) -> "Dataset":
        return Dataset(self.source, self.preprocess, samples)

    def fingerprint(self) -> str:
        return self.source.fingerprint(self.samples)

    def labelled(self) -> bool:
        """Every sample has a class label (`--dataset images` and named arrays have none)."""
        return all(s.label >= 0 for s in self.samples)

    @property
    def unlabeled(self) -> list[str]:
        """Images the source found but left out for lack of a label (reports show the count)."""
        return getattr(self.source, "unlabeled", [])

    def __len__(self) -> int:
        return len(self.samples)


def split(dataset: Dataset, calibration: int, seed: int = 0,
          evaluation: int | None = None) -> tuple[Dataset, Dataset]:
    """Disjoint calibration and evaluation subsets of one dataset.

    Calibration takes a seeded random sample (kept in source order so runs are repeatable);
    evaluation takes the rest, limited to `evaluation` images (also a seeded sample).
    """
    n = len(dataset)
    noun = getattr(dataset.source, "noun", "images")
    if n == 0:
        raise CalibError(f"no {noun} in {dataset.source.description}")
    order = np.random.default_rng(seed).permutation(n)
    calib_idx = np.sort(order[:calibration])
    rest = order[calibration:]
    if len(rest) == 0:
        raise CalibError(f"nothing left to evaluate on: all {n} {noun} of {dataset.source.id} are used "
                         f"for calibration (lower --samples or pass --eval-data-dir)")
    eval_idx = np.sort(rest[:evaluation] if evaluation else rest)
    return (dataset.subset([dataset.samples[i] for i in calib_idx]),
            dataset.subset([dataset.samples[i] for i in eval_idx]))


def take(dataset: Dataset, count: int | None, seed: int = 0) -> Dataset:
    """A seeded sample of `count` images (all of them if count is None or too large)."""
    if count is None or count >= len(dataset):
        return dataset
    idx = np.sort(np.random.default_rng(seed).permutation(len(dataset))[:count])
    return dataset.subset([dataset.samples[i] for i in idx])
