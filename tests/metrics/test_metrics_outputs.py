"""Per-output fidelity: SQNR over images as calib.stats defines it, its bootstrap interval over
images, cosine, shape, and one-line errors for outputs that do not pair."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from calib.errors import CalibError
from calib.metrics.outputs import OutputsAccumulator, outputs_json
from calib.stats.paired import sqnr_ci
from calib.stats.sqnr import sqnr


def batches(seed=0, n=12, batch=5):
    rng = np.random.default_rng(seed)
    ref = {"logits": rng.normal(size=(n, 10)).astype(np.float32), "map": rng.normal(size=(n, 3, 4, 4)).astype(np.float32)}
    test = {k: v + rng.normal(scale=0.1, size=v.shape).astype(np.float32) for k, v in ref.items()}
    for s in range(0, n, batch):
        yield {k: v[s:s + batch] for k, v in ref.items()}, {k: v[s:s + batch] for k, v in test.items()}


def test_figures_over_batches_are_those_over_all_images():
    acc = OutputsAccumulator(resamples=300, seed=1)
    refs, tests = [], []
    for r, t in batches():
        acc.update(r, t)
        refs.append(r), tests.append(t)
    out = {o.name: o for o in acc.result()}
    assert list(out) == ["logits", "map"]
    for name in out:
        ref = np.concatenate([r[name] for r in refs])
        test = np.concatenate([t[name] for t in tests])
        assert out[name].sqnr_db == pytest.approx(round(sqnr(ref, test), 3))
        flat_r, flat_t = ref.reshape(len(ref), -1).astype(np.float64), test.reshape(len(test), -1).astype(np.float64)
        s, e = (flat_r ** 2).sum(1), ((flat_r - flat_t) ** 2).sum(1)
        assert out[name].sqnr_db_ci95 == [round(v, 3) for v in sqnr_ci(s, e, 300, 1).ci95]
        cos = (flat_r * flat_t).sum(1) / np.sqrt((flat_r ** 2).sum(1) * (flat_t ** 2).sum(1))
        assert out[name].cosine == pytest.approx(cos.mean(), abs=1e-6)
    assert out["map"].shape == [12, 3, 4, 4]
    rows = outputs_json(acc.result())
    assert set(rows[0]) == {"name", "shape", "sqnr_db", "sqnr_db_ci95", "cosine"}
    json.dumps(rows)


def test_identical_outputs_have_no_finite_sqnr():
    acc = OutputsAccumulator()
    x = {"y": np.arange(6, dtype=np.float32).reshape(3, 2)}
    acc.update(x, x)
    (o,) = acc.result()
    assert o.sqnr_db is None and o.cosine == 1.0


def test_one_image_has_no_interval_and_padding_is_cut():
    acc = OutputsAccumulator()
    acc.update({"y": np.ones((4, 3))}, {"y": np.full((4, 3), 1.1)}, n=1)
    (o,) = acc.result()
    assert o.shape == [1, 3] and o.sqnr_db_ci95 is None
    assert o.sqnr_db == pytest.approx(20.0)


def test_outputs_that_do_not_pair_are_one_line():
    acc = OutputsAccumulator()
    with pytest.raises(CalibError, match=r"'y' has shape \[2, 3\] in the reference model and \[2, 4\]"):
        acc.update({"y": np.zeros((2, 3))}, {"y": np.zeros((2, 4))})
    with pytest.raises(CalibError, match="missing from the test model"):
        acc.update({"y": np.zeros((2, 3))}, {"z": np.zeros((2, 3))})
    acc.update({"y": np.zeros((2, 3))}, {"y": np.zeros((2, 3))})
    with pytest.raises(CalibError, match="changed shape between batches"):
        acc.update({"y": np.zeros((2, 5))}, {"y": np.zeros((2, 5))})
    assert not math.isnan(acc.result()[0].cosine)
