"""classify: today's figures (calib.stats.paired) through the metric interface."""

from __future__ import annotations

import numpy as np
import pytest

from calib.errors import CalibError
from calib.metrics import get_metric
from calib.stats.paired import paired_top1


def logits_for(top1: np.ndarray, classes: int = 7) -> np.ndarray:
    x = np.zeros((len(top1), classes), np.float32)
    x[np.arange(len(top1)), top1] = 5.0
    x[np.arange(len(top1)), (top1 + 1) % classes] = 1.0  # second best
    return x


def test_against_labels_is_paired_top1_over_batches():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 7, 40)
    f = np.where(rng.random(40) < 0.8, y, (y + 3) % 7)
    q = np.where(rng.random(40) < 0.9, f, (f + 2) % 7)
    keys = [f"img{i}.jpg" for i in range(40)]
    m = get_metric("classify")
    for s in range(0, 40, 16):  # batches of 16, 16 and 8; int8's batches arrive after fp32's
        m.update("fp32", keys[s:s + 16], {"logits": logits_for(f[s:s + 16])}, labels=y[s:s + 16])
    for s in range(0, 40, 16):
        m.update("int8", keys[s:s + 16], {"logits": logits_for(q[s:s + 16])}, labels=y[s:s + 16])
    r = m.result()
    want = paired_top1(y, f, q)
    assert r.reference == "labels" and r.name == "top1" and r.n == 40
    assert (r.fp32, r.int8, r.drop) == (want.acc_a, want.acc_b, want.drop)
    assert r.drop_ci95 == list(want.drop_ci95)
    assert r.extra["agreement"] == want.agreement
    top5 = np.argsort(-logits_for(f), axis=1, kind="stable")[:, :5]
    assert r.per_model["fp32"]["top5"] == float(np.mean(np.any(top5 == y[:, None], axis=1)))
    assert set(r.to_json()) >= {"name", "fp32", "int8", "drop", "drop_ci95", "reference"}


def test_without_labels_fp32_is_the_reference():
    f = np.array([0, 1, 2, 3, 4])
    q = np.array([0, 1, 2, 3, 0])
    keys = list("abcde")
    m = get_metric("classify")
    m.update("fp32", keys, {"y": logits_for(f)})
    m.update("int8", keys, {"y": logits_for(q)}, labels=None)
    r = m.result()
    assert r.reference == "fp32" and r.fp32 == 1.0 and r.int8 == pytest.approx(0.8)
    assert r.drop_ci95[0] < 0.2 < r.drop_ci95[1]


def test_bad_outputs_are_one_line():
    m = get_metric("classify", output="logits")
    with pytest.raises(CalibError, match="no output 'logits'"):
        m.update("fp32", ["a"], {"y": np.zeros((1, 3))})
    with pytest.raises(CalibError, match=r"not \(N, classes\) logits"):
        get_metric("classify").update("fp32", ["a", "b"], {"y": np.zeros(2)})
