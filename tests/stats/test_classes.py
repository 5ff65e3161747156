"""Per-class changes: only classes with enough images, the aggregate always, counts checked against a
plain per-image loop."""

import json

import numpy as np
import pytest

from calib.data.classes import class_name
from calib.errors import CalibError
from calib.stats.classes import DEFAULT_MIN_IMAGES, class_changes
from calib.stats.paired import paired


def _synthetic(seed: int = 0):
    """20 classes of 12 images and 30 classes of 1 image; class 0 loses 8 images, class 5 gains 2,
    and one single-image class flips."""
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.repeat(np.arange(20), 12), np.arange(100, 130)])
    fp32 = np.where(rng.random(len(labels)) < 0.75, labels, 999)
    fp32[:12] = labels[:12]                     # class 0 all right in FP32...
    int8 = fp32.copy()
    int8[:8] = 998                              # ...INT8 breaks 8 of them
    c5 = np.flatnonzero((labels == 5) & (fp32 != labels))[:2]
    int8[c5] = 5                                # INT8 fixes 2 in class 5
    int8[240] = 997 if fp32[240] == labels[240] else labels[240]   # flip a 1-image class
    return labels, fp32, int8


def test_aggregate_counts_match_a_per_image_loop():
    labels, fp32, int8 = _synthetic()
    r = class_changes(labels, fp32, int8)
    broken = sum(1 for y, f, q in zip(labels, fp32, int8) if f == y and q != y)
    fixed = sum(1 for y, f, q in zip(labels, fp32, int8) if f != y and q == y)
    assert (r.images_broken, r.images_fixed) == (broken, fixed)
    per = {}
    for y, f, q in zip(labels, fp32, int8):
        per[y] = per.get(y, 0) + int(q == y) - int(f == y)
    assert r.gained == sum(v > 0 for v in per.values())
    assert r.lost == sum(v < 0 for v in per.values())
    assert r.unchanged == sum(v == 0 for v in per.values())
    assert r.classes == len(per) == 50
    assert r.classes_with_min_images == 20


def test_only_classes_with_enough_images_are_listed():
    labels, fp32, int8 = _synthetic()
    r = class_changes(labels, fp32, int8)
    listed = {row["class"] for row in r.per_class}
    assert listed == {0, 5}                     # the flipped 1-image class is counted, not listed
    assert all(row["images"] >= DEFAULT_MIN_IMAGES for row in r.per_class)
    assert r.lost >= 1 and r.gained >= 1
    assert class_changes(labels, fp32, int8, min_images=1).per_class[0]["images"] == 1  # |change| = 100%


def test_rows_carry_the_paired_interval_and_significance():
    labels, fp32, int8 = _synthetic()
    rows = {row["class"]: row for row in class_changes(labels, fp32, int8, names=class_name).per_class}
    c0 = rows[0]
    mask = labels == 0
    ref = paired(fp32[mask] == 0, int8[mask] == 0)
    assert c0["change"] == pytest.approx(-8 / 12)
    assert c0["change_ci95"] == [pytest.approx(-ref.drop_ci95[1]), pytest.approx(-ref.drop_ci95[0])]
    assert c0["change_ci95"][0] <= c0["change"] <= c0["change_ci95"][1]
    assert c0["broken"] == 8 and c0["fixed"] == 0 and c0["significant"]
    assert not rows[5]["significant"]           # 2 fixes of 12 is within chance
    assert c0["name"] == class_name(0)
    assert list(rows) == [0, 5]                 # largest |change| first


def test_small_evaluation_gives_only_the_aggregate_and_says_why():
    # the shared sample's shape: one image per class
    labels = np.arange(500)
    fp32 = labels.copy()
    int8 = labels.copy()
    int8[:7] = 0
    r = class_changes(labels, fp32, int8)
    assert r.per_class == [] and r.classes_with_min_images == 0
    assert r.lost == 6 and r.images_broken == 6  # image 0 stays right (predicted 0)
    assert any("no class has 10 or more" in n for n in r.notes)
    assert r.superclasses is None and "WordNet" in r.superclasses_note
    json.dumps(r.to_json())


def test_names_fall_back_to_the_index():
    labels = np.repeat([3, 5000], 10)
    fp32 = labels.copy()
    int8 = labels.copy()
    int8[10:] = 0
    rows = class_changes(labels, fp32, int8, names=class_name).per_class
    assert [r["name"] for r in rows] == ["5000"]


def test_top_limits_rows_and_none_keeps_all():
    labels = np.repeat(np.arange(30), 10)
    fp32 = labels.copy()
    int8 = np.where(np.arange(300) % 10 == 0, -1, labels)  # one image broken per class
    assert len(class_changes(labels, fp32, int8, top=5).per_class) == 5
    assert len(class_changes(labels, fp32, int8, top=None).per_class) == 30


def test_no_images_and_bad_arguments():
    with pytest.raises(CalibError, match="no evaluation images"):
        class_changes([], [], [])
    with pytest.raises(ValueError):
        class_changes([1, 2], [1], [1, 2])
    with pytest.raises(ValueError):
        class_changes([1], [1], [1], min_images=0)
