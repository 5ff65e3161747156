"""The four built-in calibrators on distributions whose answer is known."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from calib.calibrators import Calibrator, TensorRange, TensorStatistics, get_calibrator
from calib.calibrators import _histogram as H
from calib.calibrators.entropy import kl_divergences
from calib.calibrators.mse import error_matrix
from calib.errors import CalibError

from calibrators_helpers import fake_quant_mse, feed, gaussian_with_outliers, kl_reference, mse_reference

ALL = ("entropy", "minmax", "percentile", "mse")


def compute_all(stats: TensorStatistics) -> dict[str, dict[str, TensorRange]]:
    return {n: get_calibrator(n, stats).compute() for n in ALL}


@pytest.fixture(scope="module")
def known():
    """One shared pass: uniform on [-2, 2] and a Gaussian (sigma 1) with 4 outliers at +-40."""
    rng = np.random.default_rng(7)
    stats = TensorStatistics()
    uniform = rng.uniform(-2.0, 2.0, 1_000_000).astype(np.float32)
    gauss = gaussian_with_outliers(rng, 1_000_000, outlier=40.0)
    stats.observe("uniform", uniform)
    stats.observe("gauss", gauss)
    return stats, uniform, gauss, compute_all(stats)


def test_uniform(known):
    stats, uniform, _, res = known
    a = float(np.abs(uniform).max())
    assert res["minmax"]["uniform"].amax == a
    assert abs(a - 2.0) < 1e-4
    q = float(np.quantile(np.abs(uniform), 0.9999))
    assert res["percentile"]["uniform"].amax == pytest.approx(q, rel=2e-4)
    assert res["percentile"]["uniform"].amax == pytest.approx(0.9999 * 2.0, rel=5e-4)
    for name in ("entropy", "mse"):
        assert 0.97 * a <= res[name]["uniform"].amax <= a, name
    r = res["entropy"]["uniform"]
    assert (r.min, r.max, r.nonfinite) == (float(uniform.min()), float(uniform.max()), 0)


def test_gaussian_with_outliers(known):
    _, _, gauss, res = known
    assert res["minmax"]["gauss"].amax == 40.0
    assert 2.0 < res["entropy"]["gauss"].amax < 6.0
    assert res["percentile"]["gauss"].amax == pytest.approx(float(np.quantile(np.abs(gauss), 0.9999)), rel=2e-3)
    assert 3.5 < res["percentile"]["gauss"].amax < 4.3
    # With 4 outliers in 1e6 values the squared clipping error of the outliers is large, so the
    # MSE optimum sits between the bulk and the outliers: check it IS the optimum, by brute force.
    amax = res["mse"]["gauss"].amax
    assert 4.0 < amax < 0.5 * 40.0
    grid = np.concatenate([np.linspace(2.0, 40.0, 20), np.linspace(0.8 * amax, 1.25 * amax, 40)])
    best = min(fake_quant_mse(gauss, t) for t in grid)
    assert fake_quant_mse(gauss, amax) <= best * 1.001


def gaussian_histogram_state(n: float, outlier: float, n_outliers: int) -> TensorStatistics:
    """Exact expected histogram of |N(0,1)| with n values plus outliers, as a statistics state."""
    bins = 4096
    exp = H.exponent_for(outlier)
    edges = np.arange(bins + 1) * H.bin_width(bins, exp)
    cdf = np.frompyfunc(lambda v: math.erf(v / math.sqrt(2.0)), 1, 1)(edges).astype(np.float64)
    counts = np.round(n * np.diff(cdf)).astype(np.int64)
    counts[int(outlier / H.bin_width(bins, exp))] += n_outliers
    state = {"format": "calib.TensorStatistics", "version": 1, "histogram": True, "bins": bins,
             "tensors": {"g": {"min": -outlier, "max": outlier, "count": int(counts.sum()), "nonfinite": 0,
                               "exp": exp, "counts": counts}}}
    return TensorStatistics.from_state_dict(state)


def test_gaussian_with_rare_outliers_all_in_2_to_6_sigma():
    """A billion values and 4 outliers at 40 sigma (as in a long calibration run)."""
    res = compute_all(gaussian_histogram_state(1e9, 40.0, 4))
    assert res["minmax"]["g"].amax == 40.0
    for name in ("entropy", "percentile", "mse"):
        assert 2.0 < res[name]["g"].amax < 6.0, (name, res[name]["g"].amax)
    assert res["percentile"]["g"].amax == pytest.approx(3.8906, rel=3e-3)  # 99.99% of |N(0,1)|
    # ACIQ (Banner et al. 2019): MSE-optimal clip of a Gaussian at 8 bits is ~3.9 sigma.
    assert res["mse"]["g"].amax == pytest.approx(3.9, rel=0.08)


def test_all_zeros_constant_negative_only(rng):
    s = TensorStatistics()
    s.observe("zeros", np.zeros((2, 3, 4), np.float32))
    s.observe("const", np.full((1000,), 2.5, np.float32))
    s.observe("neg_const", np.full((1000,), -2.5, np.float32))
    neg = -np.abs(rng.standard_normal(50_000).astype(np.float32)) - 0.25
    s.observe("neg", neg)
    s.observe("pos", -neg)
    s.observe("empty", np.zeros(0, np.float32))
    for name, res in compute_all(s).items():
        assert res["zeros"] == TensorRange(0.0, 0.0, 0.0, 0), name
        assert res["empty"] == TensorRange(0.0, 0.0, 0.0, 0), name
        assert res["const"].amax == pytest.approx(2.5, rel=1e-3), name
        assert res["neg_const"].amax == res["const"].amax, name
        assert res["neg"].amax == res["pos"].amax > 0, name
        assert res["neg"].max == pytest.approx(float(neg.max())) and res["neg"].max < 0
        assert res["neg"].min == float(neg.min())


def test_nonfinite_ignored_and_counted(rng):
    x = gaussian_with_outliers(rng, 100_000, outlier=20.0)
    dirty = x.copy()
    dirty[:5] = [np.nan, np.inf, -np.inf, np.nan, np.inf]
    a, b = TensorStatistics(), TensorStatistics()
    a.observe("x", dirty)
    b.observe("x", x[5:])
    ra, rb = compute_all(a), compute_all(b)
    for name in ALL:
        assert ra[name]["x"].nonfinite == 5
        assert ra[name]["x"].amax == rb[name]["x"].amax
        assert math.isfinite(ra[name]["x"].min) and math.isfinite(ra[name]["x"].max)
    s = TensorStatistics()
    s.observe("bad", np.full(10, np.nan, np.float32))
    for res in compute_all(s).values():
        assert res["bad"] == TensorRange(0.0, 0.0, 0.0, 10)


def test_merge_gives_exactly_the_same_ranges(rng):
    x = gaussian_with_outliers(rng, 40_000, outlier=30.0)
    y = rng.standard_normal(40_000).astype(np.float32) * 500.0  # very different range
    for name in ALL:
        whole = get_calibrator(name)
        whole.observe("t", x)
        whole.observe("t", y)
        left, right = get_calibrator(name), get_calibrator(name)
        left.observe("t", x)
        right.observe("t", y)
        right.merge(left)  # the larger range absorbs the smaller
        assert right.compute() == whole.compute(), name
        left.merge(get_calibrator(name))  # merging an empty one changes nothing
        with pytest.raises(CalibError):
            left.merge(get_calibrator("minmax", left.stats))  # shared stats would count twice


def test_batch_size_independence(rng):
    images = gaussian_with_outliers(rng, 128 * 3 * 16 * 16, outlier=25.0).reshape(128, 3, 16, 16)
    images[5, 1] *= 3.0  # one image with a wider range, so the range grows mid-stream
    small, large = TensorStatistics(), TensorStatistics()
    feed(small, "act", images, 8)
    feed(large, "act", images, 64)
    rs, rl = compute_all(small), compute_all(large)
    for name in ALL:
        a, b = rs[name]["act"].amax, rl[name]["act"].amax
        assert abs(a - b) <= 0.01 * b, name
        assert a == b, name  # in fact exact: the histogram does not depend on batching


def test_compute_is_pure(known):
    stats, *_ = known
    before = stats.state_dict()
    for name in ALL:
        cal = get_calibrator(name, stats)
        assert cal.compute() == cal.compute()
    after = stats.state_dict()
    for t in before["tensors"]:
        assert before["tensors"][t]["exp"] == after["tensors"][t]["exp"]
        assert np.array_equal(before["tensors"][t]["counts"], after["tensors"][t]["counts"])


def test_shared_statistics_serve_every_calibrator(rng):
    x = gaussian_with_outliers(rng, 50_000, outlier=20.0)
    shared = TensorStatistics()
    cals = [get_calibrator(n, shared) for n in ALL]
    shared.observe("x", x)
    for cal in cals:
        alone = get_calibrator(cal.name)
        alone.observe("x", x)
        assert cal.compute() == alone.compute()
    assert get_calibrator("minmax").stats.has_histogram is False  # cheaper observe
    with pytest.raises(CalibError):
        get_calibrator("entropy", TensorStatistics(histogram=False))


def test_entropy_vectorised_equals_literal_definition(rng):
    for trial in range(3):
        size = 300
        hist = rng.poisson(np.exp(-np.linspace(0, 5 + trial, size)) * 5000).astype(np.float64)
        hist[rng.random(size) < 0.25] = 0
        hist[-1] = 3  # outliers
        ref = kl_reference(hist, start_bin=128, nq=64)
        got = kl_divergences(hist / hist.sum(), 128, 64)
        finite = np.isfinite(ref)
        assert np.array_equal(finite, np.isfinite(got))
        assert np.allclose(got[finite], ref[finite], rtol=1e-9, atol=1e-12)
        last_min = lambda d: d.size - 1 - int(np.argmin(d[::-1]))  # noqa: E731
        assert last_min(got) == last_min(ref)


def test_entropy_amax_from_literal_definition(rng):
    """compute_amax == resample, flatten bin 0, literal KL search, upper edge of the best bin."""
    x = gaussian_with_outliers(rng, 200_000, outlier=12.0)
    s = TensorStatistics()
    s.observe("x", x)
    params = {"num_bins": 512, "start_bin": 128, "num_quant_bins": 64}  # small: the oracle is slow
    counts, edges = s.histogram("x")
    hist = H.resample(counts, edges, 512)
    hist[0] = hist[1]
    kl = kl_reference(hist, 128, 64)
    best = kl.size - 1 - int(np.argmin(kl[::-1]))
    expected = edges[-1] * (128 + best) / 512
    assert get_calibrator("entropy", s, **params).compute()["x"].amax == pytest.approx(expected, rel=1e-12)


def test_mse_model_matches_fake_quantization(rng):
    x = rng.laplace(size=400_000).astype(np.float32)
    s = TensorStatistics()
    s.observe("x", x)
    counts, edges = s.histogram("x")
    p = H.resample(counts, edges, 2048)
    width = edges[-1] / 2048
    model = error_matrix(2048, 1) @ p / p.sum() * width**2
    for i in (200, 400, 800, 2048):
        assert model[i - 1] == pytest.approx(fake_quant_mse(x, i * width), rel=0.02), i
    amax = get_calibrator("mse", s).compute()["x"].amax
    grid = np.linspace(2.0, float(edges[-1]), 300)
    assert fake_quant_mse(x, amax) <= 1.002 * min(fake_quant_mse(x, t) for t in grid)


def test_mse_minimises_the_error_of_127_levels():
    """The MSE threshold is the one with the least error of symmetric INT8, 127 steps each side
    (scale amax/127), on the histogram's density. The data make the choice hinge on the step: a
    bulk uniform on [0, 512) and 5 values in 512,000 at 2048, whose clipping error weighs against
    the bulk's rounding error, so the optimum sits mid-range and moves by ~10 bins if the step is
    amax/128. 2048 unit bins: the calibrator's 2048-bin resampling keeps them as they are."""
    counts = np.zeros(4096, np.int64)
    counts[:512] = 1000
    counts[2048] = 5  # value 2048 = max|x|: merged into the last bin, [2047, 2048]
    state = {"format": "calib.TensorStatistics", "version": 1, "histogram": True, "bins": 4096,
             "tensors": {"x": {"min": -2048.0, "max": 2048.0, "count": int(counts.sum()), "nonfinite": 0,
                               "exp": 12, "counts": counts}}}
    stats = TensorStatistics.from_state_dict(state)
    hist, edges = stats.histogram("x")
    assert hist.size == 2048 and np.array_equal(edges, np.arange(2049.0))
    p = hist / hist.sum()
    candidates = np.arange(1, 2049, dtype=np.float64)   # every bin edge, as the calibrator tries
    err127 = mse_reference(p, candidates, 127)
    best = candidates[int(np.argmin(err127))]
    # the data tell 127 from 128 levels: 128's optimum is several bins away, and worse for 127
    window = candidates[int(best) - 60:int(best) + 60]
    best128 = window[int(np.argmin(mse_reference(p, window, 128)))]
    assert abs(best128 - best) >= 5 and window[0] < best128 < window[-1]
    amax = get_calibrator("mse", stats).compute()["x"].amax
    assert amax in candidates and abs(amax - best) <= 1
    assert mse_reference(p, [amax])[0] <= err127.min() * (1 + 1e-9)


def test_percentile_parameter(known):
    stats, uniform, *_ = known
    absu = np.abs(uniform)
    for p in (50.0, 99.0, 99.9):
        got = get_calibrator("percentile", stats, percentile=p).compute()["uniform"].amax
        assert got == pytest.approx(float(np.quantile(absu, p / 100)), rel=1e-3)
    top = get_calibrator("percentile", stats, percentile=100).compute()["uniform"]
    assert top.amax == top.max or top.amax == -top.min
    assert get_calibrator("percentile", stats, percentile=99).params == {"percentile": 99.0}


@pytest.mark.parametrize("name, params", [
    ("percentile", {"percentile": 0}),
    ("percentile", {"percentile": 100.5}),
    ("percentile", {"percentile": -1}),
    ("percentile", {"percentile": "99"}),
    ("entropy", {"start_bin": 64}),
    ("entropy", {"num_bins": 2.5}),
    ("entropy", {"num_quant_bins": 0}),
    ("mse", {"start_bin": 0}),
    ("mse", {"num_bins": 100_000}),
    ("minmax", {"percentile": 99}),
    ("entropy", {"bogus": 1}),
])
def test_parameter_validation(name, params):
    with pytest.raises(CalibError) as err:
        get_calibrator(name, **params)
    assert "\n" not in str(err.value)


def test_metadata():
    assert get_calibrator("entropy").trt_algorithm == "EntropyCalibration2"
    assert get_calibrator("minmax").trt_algorithm == "MinMaxCalibration"
    assert get_calibrator("percentile").trt_algorithm == "EntropyCalibration2"
    assert get_calibrator("mse").trt_algorithm == "EntropyCalibration2"
    assert get_calibrator("entropy").params == {"num_bins": 2048, "start_bin": 128, "num_quant_bins": 128,
                                                "flatten_zero_bin": True}
    assert get_calibrator("minmax").params == {}
    assert isinstance(get_calibrator("mse"), Calibrator)


def test_hundred_tensors_compute_fast(rng):
    s = TensorStatistics()
    for i in range(100):
        s.observe(f"t{i}", rng.standard_normal(4096).astype(np.float32) * (i + 1))
    for name in ("entropy", "mse"):
        cal = get_calibrator(name, s)
        cal.compute()  # warm the data-independent caches
        start = time.perf_counter()
        cal.compute()
        elapsed = time.perf_counter() - start
        assert elapsed < 3.0, f"{name}: {elapsed:.2f} s for 100 tensors"
