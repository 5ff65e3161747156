"""How much an evaluation set overlaps a calibration set, computed from the samples themselves.

A report that says "evaluated on images disjoint from the calibration images" must have checked
it: `--eval-data-dir` may name the calibration folder again, a copy of it, a symlink to it, or
the demo may calibrate on crops of its evaluation photos. An evaluation sample overlaps the
calibration set when
- it has the same origin as a calibration sample (`ImageSource.origin`: the resolved file path,
  so symlinks and `a/../a` count, or `<source id>#<row>` for in-memory sources such as hf:):
  `same_sample`, or, when one of the two is a transformed copy (`ImageSource.derived`, the
  demo's flipped/cropped variants), `derived`;
- or its file has the same bytes as a calibration sample's file (a copy elsewhere):
  `same_content`. Sizes are compared first and only files whose size matches a file on the
  other side are hashed (sha256), so two disjoint ImageNet folders cost a stat per file.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field

from calib.data.dataset import Dataset
from calib.fsutil import file_sha256


@dataclass
class Overlap:
    calibration: int                 # samples in the calibration set
    evaluation: int                  # samples in the evaluation set
    same_sample: int = 0             # evaluation samples that are calibration samples (same file / id)
    derived: int = 0                 # ... that a calibration sample was derived from, or derived from one
    same_content: int = 0            # ... whose file has the bytes of a calibration sample's file
    hashed: int = 0                  # files hashed to decide (the rest differed in size)
    examples: list[str] = field(default_factory=list)  # a few overlapping evaluation samples

    @property
    def count(self) -> int:
        """Evaluation samples that overlap the calibration set in any way (each counted once)."""
        return self.same_sample + self.derived + self.same_content

    @property
    def disjoint(self) -> bool:
        return self.count == 0

    def to_dict(self) -> dict:
        return {"disjoint": self.disjoint, "overlapping": self.count, "evaluation": self.evaluation,
                "calibration": self.calibration, "same_sample": self.same_sample, "derived": self.derived,
                "same_content": self.same_content, "examples": list(self.examples)}

    def describe(self) -> str:
        """One line for reports."""
        if self.disjoint:
            return (f"the {self.evaluation} evaluation images are disjoint from the {self.calibration} "
                    f"calibration images (checked by resolved path and content)")
        kinds = [f"{n} {what}" for n, what in ((self.same_sample, "the same file or sample"),
                                               (self.derived, "derived from the same image"),
                                               (self.same_content, "identical bytes")) if n]
        return (f"{self.count} of the {self.evaluation} evaluation images overlap the {self.calibration} "
                f"calibration images ({', '.join(kinds)})")


def _size(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def overlap(a: Dataset, b: Dataset, max_examples: int = 5) -> Overlap:
    """How many samples of `b` (evaluation) overlap `a` (calibration); see the module docstring."""
    result = Overlap(len(a.samples), len(b.samples))
    src_a, src_b = a.source, b.source
    origins: dict[str, bool] = {}  # origin -> some calibration sample of it is derived
    for s in a.samples:
        o = src_a.origin(s)
        origins[o] = origins.get(o, False) or src_a.derived(s)

    rest = []
    for s in b.samples:
        o = src_b.origin(s)
        if o in origins:
            if origins[o] or src_b.derived(s):
                result.derived += 1
            else:
                result.same_sample += 1
            _example(result, s.key, max_examples)
        else:
            rest.append(s)

    # Same bytes under another name: hash only files whose size occurs on both sides.
    by_size: dict[int, list[str]] = defaultdict(list)
    for s in a.samples:
        path = src_a.content_path(s)
        size = _size(path) if path else None
        if size is not None:
            by_size[size].append(path)
    if not by_size:
        return result
    hashes: dict[str, str | None] = {}

    def digest(path: str) -> str | None:
        if path not in hashes:
            try:
                hashes[path] = file_sha256(path)
            except OSError:
                hashes[path] = None
            result.hashed += 1
        return hashes[path]

    for s in rest:
        path = src_b.content_path(s)
        size = _size(path) if path else None
        if size is None or size not in by_size:
            continue
        mine = digest(path)
        if mine is not None and any(digest(other) == mine for other in by_size[size]):
            result.same_content += 1
            _example(result, s.key, max_examples)
    return result


def _example(result: Overlap, key: str, limit: int) -> None:
    if len(result.examples) < limit:
        result.examples.append(key)
