"""Accuracy restoration, subset selection: the evaluation images are split (seeded) into a search
subset, on which layers are ranked and candidates tried, and a held-out final subset that the
search never sees, on which the chosen model is reported (so the budget is not fitted to the
images it is reported on)."""

from __future__ import annotations

import numpy as np

from calib.data import Dataset
from calib.errors import CalibError


def split_search_final(evaluation: Dataset, seed: int = 0, search_fraction: float = 0.5,
                       max_search: int | None = 512) -> tuple[Dataset, Dataset]:
    """Disjoint search and final (held-out) subsets of the evaluation images (seeded, each kept
    in dataset order). The search subset is held decoded in memory, hence `max_search`."""
    n = len(evaluation)
    if n < 2:
        raise CalibError(f"a fallback budget needs at least 2 evaluation images (a search and a held-out "
                         f"subset), got {n}")
    k = min(max(1, int(round(n * search_fraction))), n - 1)
    if max_search is not None:
        k = min(k, max_search)
    order = np.random.default_rng(seed + 1).permutation(n)  # not the calibration split's permutation
    search, final = np.sort(order[:k]), np.sort(order[k:])
    return (evaluation.subset([evaluation.samples[i] for i in search]),
            evaluation.subset([evaluation.samples[i] for i in final]))
