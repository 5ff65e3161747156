"""Per-class accuracy changes from FP32 to INT8, shown only where a class has enough images to mean
something; otherwise aggregated.

Why a floor: with one image per class (a 500-image evaluation over 1000 ImageNet classes) every
per-class change is +-100 points and says nothing. DEFAULT_MIN_IMAGES = 10 because
- the exact McNemar test needs at least 6 discordant images in one direction to reject at 5%
  (2 * 0.5^6 = 0.031; 5 give 0.0625), so a class with fewer than 6 images can never show a
  significant change, and with 10 a change is significant only if most of the class flipped;
- at 10 images one flipped image already moves the class by 10 points: below that a single
  image reads as a large change;
- ImageNet's validation set has 50 images per class, so 10 per class is reached by a stratified
  evaluation of 10 000 images (or the full 50 000): the floor is meant for large evaluations.
Each shown class also carries its paired 95% interval and a `significant` flag (the same tests
as `calib.stats.paired`: Tango interval and exact McNemar), so a reader sees which changes
are real.

Every evaluation also gets the aggregate, which is meaningful at any size: how many classes
gained and lost top-1 accuracy, and how many images INT8 broke (FP32 right -> INT8 wrong) and
fixed (FP32 wrong -> INT8 right).

WordNet superclasses are not computed: calib/data/synsets.txt holds only wnids and names, no
hierarchy, and NLTK's WordNet is neither a dependency nor available offline; adding one for a
grouping was judged not worth it (`superclasses` is None and `superclasses_note` says so).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from calib.errors import CalibError
from calib.stats.paired import paired

DEFAULT_MIN_IMAGES = 10
SUPERCLASSES_NOTE = ("WordNet superclasses are not shown: calib ships no WordNet hierarchy "
                     "(synsets.txt has wnids and names only) and works offline")


@dataclass(frozen=True)
class ClassChanges:
    """`per_class`: classes with >= min_images images whose top-1 changed, largest |change| first
    (at most `top`); change = INT8 - FP32 accuracy of the class, change_ci95 its paired interval.
    The counts cover every class in the evaluation."""

    min_images: int
    classes: int
    classes_with_min_images: int
    per_class: list[dict]
    gained: int
    lost: int
    unchanged: int
    images_broken: int
    images_fixed: int
    superclasses: dict | None = None
    superclasses_note: str = SUPERCLASSES_NOTE
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"min_images": self.min_images, "classes": self.classes,
                "classes_with_min_images": self.classes_with_min_images, "per_class": self.per_class,
                "classes_gained": self.gained, "classes_lost": self.lost, "classes_unchanged": self.unchanged,
                "images_broken": self.images_broken, "images_fixed": self.images_fixed,
                "superclasses": self.superclasses, "superclasses_note": self.superclasses_note, "notes": self.notes}


def class_changes(labels, fp32_top1, int8_top1, min_images: int = DEFAULT_MIN_IMAGES,
                  names: Callable[[int], str] | None = None, top: int | None = 12) -> ClassChanges:
    """Per-class FP32 -> INT8 changes (only classes with >= `min_images` images) and the aggregate.

    `names`: class index -> readable name (e.g. `calib.data.classes.class_name`); a name lookup
    that fails falls back to the index. Raises CalibError when there are no images."""
    if min_images < 1:
        raise ValueError(f"min_images must be >= 1, got {min_images}")
    y, f, q = (np.asarray(v).ravel() for v in (labels, fp32_top1, int8_top1))
    if not len(y) == len(f) == len(q):
        raise ValueError(f"per-image arrays differ in length: {len(y)}, {len(f)}, {len(q)}")
    if len(y) == 0:
        raise CalibError("no evaluation images: no per-class changes to show")
    fr, qr = f == y, q == y
    classes, inverse = np.unique(y, return_inverse=True)
    fp32_right = np.bincount(inverse, weights=fr, minlength=len(classes)).astype(int)
    int8_right = np.bincount(inverse, weights=qr, minlength=len(classes)).astype(int)
    counts = np.bincount(inverse, minlength=len(classes))
    delta = int8_right - fp32_right
    rows = []
    for i in np.flatnonzero((counts >= min_images) & (delta != 0)):
        mask = inverse == i
        r = paired(fr[mask], qr[mask])  # A = FP32, B = INT8: drop = FP32 - INT8 = -change
        c = int(classes[i])
        try:
            name = names(c) if names else str(c)
        except (IndexError, KeyError, ValueError):
            name = str(c)
        rows.append({"class": c, "name": name, "images": int(counts[i]),
                     "fp32_correct": int(fp32_right[i]), "int8_correct": int(int8_right[i]),
                     "fp32_top1": float(fp32_right[i] / counts[i]), "int8_top1": float(int8_right[i] / counts[i]),
                     "change": -r.drop, "change_ci95": [-r.drop_ci95[1], -r.drop_ci95[0]],
                     "broken": r.discordant["a_only"], "fixed": r.discordant["b_only"],
                     "p_value": r.p_value, "significant": r.significant})
    rows.sort(key=lambda r: (-abs(r["change"]), -r["images"], r["class"]))
    eligible = int(np.sum(counts >= min_images))
    notes = []
    if eligible == 0:
        notes.append(f"no class has {min_images} or more evaluation images (largest: {int(counts.max())}): "
                     "per-class changes are not shown, only the totals")
    return ClassChanges(min_images=min_images, classes=len(classes), classes_with_min_images=eligible,
                        per_class=rows if top is None else rows[:top],
                        gained=int(np.sum(delta > 0)), lost=int(np.sum(delta < 0)), unchanged=int(np.sum(delta == 0)),
                        images_broken=int(np.sum(fr & ~qr)), images_fixed=int(np.sum(~fr & qr)), notes=notes)


__all__ = ["DEFAULT_MIN_IMAGES", "ClassChanges", "class_changes"]
