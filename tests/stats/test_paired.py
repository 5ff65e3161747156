"""Paired statistics: every interval and p-value against a reference computed independently (exact
rational or high-precision decimal arithmetic, a directly maximized likelihood, closed forms
derived by hand), plus the edge cases: 0 and all discordant pairs, n = 1, n = 0."""

import json
import math
from decimal import Decimal, getcontext
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from calib.errors import CalibError
from calib.stats.accuracy import Evaluation, Predictions
from calib.stats.paired import (agreement_interval, bootstrap_sums, clopper_pearson, compare_calibrators,
                                   mcnemar_exact, mean_difference_ci, paired, paired_from_evaluation, paired_top1,
                                   pairwise_calibrators, rank_calibrators, sqnr_ci, sqnr_difference_ci, tango_interval,
                                   tango_score, z_value)
from calib.stats.sqnr import sqnr_db

Z = z_value()


# ----------------------------------------------------------------------------- references
def _binom_cdf(k: int, n: int, p: Decimal) -> Decimal:
    """P(X <= k), X ~ Binomial(n, p), summed term by term in 60-digit decimal arithmetic."""
    q = 1 - p
    return sum((Decimal(math.comb(n, i)) * p ** i * q ** (n - i) for i in range(k + 1)), Decimal(0))


def _cp_reference(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson from its definition: the p at which each one-sided tail equals alpha/2,
    found by bisection on the exact binomial CDF (no beta function involved)."""
    getcontext().prec = 60
    half = Decimal(1 - level) / 2

    def solve(f):  # f decreasing in p; root of f(p) = 0 on [0, 1]
        lo, hi = Decimal(0), Decimal(1)
        for _ in range(80):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if f(mid) > 0 else (lo, mid)
        return float((lo + hi) / 2)

    upper = 1.0 if k == n else solve(lambda p: _binom_cdf(k, n, p) - half)         # P(X <= k) = a/2
    lower = 0.0 if k == 0 else solve(lambda p: half - (1 - _binom_cdf(k - 1, n, p)))  # P(X >= k) = a/2
    return lower, upper


def _mcnemar_reference(b: int, c: int) -> float:
    m = b + c
    if m == 0:
        return 1.0
    tail = Fraction(sum(math.comb(m, i) for i in range(min(b, c) + 1)), 2 ** m)
    return float(min(Fraction(1), 2 * tail))


def _restricted_p_c(delta: float, b: int, c: int, n: int) -> float:
    """MLE of P(A wrong, B right) given P(A right, B wrong) - P(A wrong, B right) = delta, found by
    golden-section search on the multinomial log-likelihood (not Tango's closed-form root)."""
    lo, hi = max(0.0, -delta), (1.0 - delta) / 2.0
    eps = 1e-15

    def loglik(p):
        pb, pc, rest = p + delta, p, 1.0 - 2.0 * p - delta
        return (b * math.log(max(pb, eps)) + c * math.log(max(pc, eps)) + (n - b - c) * math.log(max(rest, eps)))

    g = (math.sqrt(5) - 1) / 2
    for _ in range(200):
        x1, x2 = hi - g * (hi - lo), lo + g * (hi - lo)
        if loglik(x1) < loglik(x2):
            lo = x1
        else:
            hi = x2
    return (lo + hi) / 2


def _score_reference(delta: float, b: int, c: int, n: int) -> float:
    p_c = _restricted_p_c(delta, b, c, n)
    return (b - c - n * delta) / math.sqrt(n * (2 * p_c + delta * (1 - delta)))


def _outcomes(n: int, both: int, a_only: int, b_only: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-image correctness with the given 2x2 counts (the rest wrong for both), shuffled."""
    a = np.zeros(n, bool)
    b = np.zeros(n, bool)
    a[:both] = b[:both] = True
    a[both:both + a_only] = True
    b[both + a_only:both + a_only + b_only] = True
    order = np.random.default_rng(n + both + a_only).permutation(n)
    return a[order], b[order]


# ----------------------------------------------------------------------------- Clopper-Pearson
def test_clopper_pearson_0_of_400_is_the_rule_of_three_bound():
    lo, hi = clopper_pearson(0, 400)
    assert lo == 0.0
    assert hi == pytest.approx(1 - 0.025 ** (1 / 400), rel=1e-9)  # 0.00918
    assert hi == pytest.approx(0.00918, abs=5e-6)
    # the same from the other end: 400 of 400 agreeing
    lo, hi = clopper_pearson(400, 400)
    assert (lo, hi) == (pytest.approx(0.025 ** (1 / 400), rel=1e-12), 1.0)


@pytest.mark.parametrize("k,n", [(8, 400), (392, 400), (1, 400), (0, 1), (1, 1), (3, 10), (97, 100), (250, 500)])
def test_clopper_pearson_matches_the_exact_binomial_definition(k, n):
    ref = _cp_reference(k, n)
    got = clopper_pearson(k, n)
    assert got == (pytest.approx(ref[0], abs=1e-9), pytest.approx(ref[1], abs=1e-9))


def test_clopper_pearson_is_symmetric_in_successes_and_failures():
    for k, n in [(8, 400), (0, 37), (5, 9)]:
        lo, hi = clopper_pearson(k, n)
        lo2, hi2 = clopper_pearson(n - k, n)
        assert (lo, hi) == (pytest.approx(1 - hi2, abs=1e-12), pytest.approx(1 - lo2, abs=1e-12))


def test_clopper_pearson_rejects_no_images():
    with pytest.raises(CalibError, match="no evaluation images"):
        clopper_pearson(0, 0)


def test_agreement_8_of_400_disagreements():
    a = np.arange(400)
    b = a.copy()
    b[::50] += 1  # 8 disagreements
    agreement, ci = agreement_interval(a, b)
    assert agreement == 392 / 400
    ref = _cp_reference(392, 400)
    assert ci == [pytest.approx(ref[0], abs=1e-9), pytest.approx(ref[1], abs=1e-9)]
    assert ci[0] < agreement < ci[1]


# ----------------------------------------------------------------------------- McNemar
@pytest.mark.parametrize("b,c", [(0, 0), (1, 0), (5, 0), (6, 0), (7, 1), (11, 3), (20, 20), (3, 17), (60, 40)])
def test_mcnemar_exact_matches_exact_binomial_sum(b, c):
    assert mcnemar_exact(b, c) == pytest.approx(_mcnemar_reference(b, c), rel=1e-10)
    assert mcnemar_exact(b, c) == mcnemar_exact(c, b)


def test_mcnemar_with_no_discordant_pairs_is_one():
    assert mcnemar_exact(0, 0) == 1.0


# ----------------------------------------------------------------------------- Tango interval
@pytest.mark.parametrize("n", [1, 10, 100, 400, 5000])
def test_tango_with_no_discordant_pairs_is_z2_over_n_plus_z2(n):
    # b = c = 0: the restricted MLE of p_c is max(0, -delta), so Z(delta) = -sqrt(n delta / (1 - delta))
    # for delta > 0, and |Z| = z gives delta = z^2 / (n + z^2).
    lo, hi = tango_interval(0, 0, n)
    assert hi == pytest.approx(Z ** 2 / (n + Z ** 2), rel=1e-9)
    assert lo == pytest.approx(-hi, rel=1e-12)


def test_zero_discordant_pairs_do_not_depend_on_the_concordant_split():
    all_right = paired(*_outcomes(400, 400, 0, 0))
    split = paired(*_outcomes(400, 300, 0, 0))
    assert all_right.drop_ci95 == split.drop_ci95
    assert all_right.drop == 0.0 and not all_right.significant and all_right.p_value == 1.0
    assert all_right.drop_ci95[1] > 0.009  # not a zero-width interval: 400 images do not prove 0 loss


@pytest.mark.parametrize("b,c,n", [(1, 7, 21), (6, 16, 161), (8, 0, 400), (3, 5, 400), (40, 20, 160), (1, 0, 1),
                                   (12, 2, 400), (0, 3, 50)])
def test_tango_bounds_solve_the_score_equation_with_an_independently_fitted_mle(b, c, n):
    lo, hi = tango_interval(b, c, n)
    est = (b - c) / n
    assert -1.0 <= lo < est < hi <= 1.0 or (est in (lo, hi))
    if lo > -1.0:
        assert _score_reference(lo, b, c, n) == pytest.approx(Z, abs=1e-5)
    if hi < 1.0:
        assert _score_reference(hi, b, c, n) == pytest.approx(-Z, abs=1e-5)


def test_tango_closed_form_restricted_mle_agrees_with_the_fitted_one():
    for b, c, n in [(3, 5, 400), (40, 20, 160), (0, 4, 30)]:
        for delta in (-0.3, -0.02, 0.0, 0.01, 0.2):
            assert tango_score(delta, b, c, n) == pytest.approx(_score_reference(delta, b, c, n), abs=1e-6)


def test_tango_all_discordant():
    lo, hi = tango_interval(10, 0, 10)  # B wrong on every image A got right, and A right on all
    assert hi == 1.0 and 0.0 < lo < 1.0
    lo, hi = tango_interval(0, 10, 10)
    assert lo == -1.0 and -1.0 < hi < 0.0
    lo, hi = tango_interval(5, 5, 10)
    assert lo == pytest.approx(-hi) and hi > 0.3


@st.composite
def _paired_counts(draw) -> tuple[int, int, int]:
    """(b, c, n): discordant counts that fit in n images."""
    n = draw(st.integers(1, 2000))
    b = draw(st.integers(0, n))
    return b, draw(st.integers(0, n - b)), n


@settings(max_examples=60, deadline=None)
@given(_paired_counts())
@example((0, 569, 577))  # near-total discordance: the score once lost ~1e-12 to cancellation for delta < 0
def test_tango_interval_is_valid_and_mirror_symmetric(counts):
    b, c, n = counts
    lo, hi = tango_interval(b, c, n)
    est = (b - c) / n
    assert -1.0 <= lo <= est <= hi <= 1.0
    assert lo < hi
    lo2, hi2 = tango_interval(c, b, n)
    assert (lo2, hi2) == (pytest.approx(-hi, abs=1e-12), pytest.approx(-lo, abs=1e-12))


def test_tango_interval_narrows_with_more_images_at_the_same_rates():
    widths = [np.subtract(*tango_interval(3 * k, 2 * k, 400 * k)[::-1]) for k in (1, 4, 16)]
    assert widths[0] > widths[1] > widths[2]
    assert widths[1] / widths[2] == pytest.approx(2.0, rel=0.1)  # ~1/sqrt(n)


def test_tango_coverage_near_95_percent_on_simulated_evaluations():
    # 400 images, true rates: FP32-only right 1.5%, INT8-only right 0.5% (true drop 1 point).
    rng = np.random.default_rng(0)
    n, pb, pc = 400, 0.015, 0.005
    draws = rng.multinomial(n, [pb, pc, 1 - pb - pc], size=600)
    covered = [lo <= pb - pc <= hi for lo, hi in (tango_interval(int(b), int(c), n) for b, c, _ in draws)]
    assert 0.92 <= np.mean(covered) <= 0.995


# ----------------------------------------------------------------------------- paired()
def test_paired_counts_drop_agreement_and_json():
    a, b = _outcomes(400, 300, 12, 2)
    preds_a = np.where(a, 1, 2)
    preds_b = np.where(b, 1, 3)
    r = paired(a, b, preds_a, preds_b)
    assert r.n == 400
    assert r.discordant == {"a_only": 12, "b_only": 2}
    assert r.drop == pytest.approx(a.mean() - b.mean())
    assert r.drop_ci95 == list(tango_interval(12, 2, 400))
    assert r.p_value == pytest.approx(_mcnemar_reference(12, 2))
    assert r.significant == (r.p_value < 0.05 and r.drop_ci95[0] > 0)
    assert r.agreement == pytest.approx(np.mean(preds_a == preds_b))
    js = json.loads(json.dumps(r.to_json()))
    assert set(js) >= {"n", "drop", "drop_ci95", "agreement", "agreement_ci95", "discordant", "p_value", "significant"}


def test_paired_is_antisymmetric():
    a, b = _outcomes(250, 150, 1, 3)
    ab, ba = paired(a, b), paired(b, a)
    assert ab.drop == -ba.drop
    assert ab.drop_ci95 == [pytest.approx(-ba.drop_ci95[1]), pytest.approx(-ba.drop_ci95[0])]
    assert ab.p_value == ba.p_value and ab.significant == ba.significant


def test_significant_never_contradicts_the_interval():
    # 5 broken, 0 fixed of 400: the score interval excludes 0 but the exact test gives p = 0.0625.
    r = paired(*_outcomes(400, 300, 5, 0))
    assert r.drop_ci95[0] > 0 and r.p_value == pytest.approx(0.0625)
    assert not r.significant
    r = paired(*_outcomes(400, 300, 7, 0))
    assert r.significant and r.drop_ci95[0] > 0


def test_paired_one_image():
    for a, b in [([True], [False]), ([True], [True]), ([False], [True])]:
        r = paired(a, b, [1], [1 if b[0] == a[0] else 2])
        assert r.n == 1
        assert -1.0 <= r.drop_ci95[0] <= r.drop <= r.drop_ci95[1] <= 1.0
        assert not r.significant
        assert 0.0 <= r.agreement_ci95[0] <= r.agreement <= r.agreement_ci95[1] <= 1.0


def test_paired_no_images_is_a_clear_error():
    with pytest.raises(CalibError, match="no evaluation images"):
        paired([], [])
    with pytest.raises(CalibError):
        paired_top1(np.zeros(0, int), np.zeros(0, int), np.zeros(0, int))


def test_paired_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="differ in length"):
        paired([True, False], [True])
    with pytest.raises(ValueError, match="differ in length"):
        paired([True, False], [True, True], [1, 2], [1])


def test_paired_top1_and_from_evaluation_agree():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 10, 300)
    fp32 = np.where(rng.random(300) < 0.8, labels, (labels + 1) % 10)
    int8 = np.where(rng.random(300) < 0.05, (fp32 + 2) % 10, fp32)
    top5 = lambda t: np.stack([t] + [(t + k) % 10 for k in range(3, 7)], 1)  # noqa: E731
    ev = Evaluation([str(i) for i in range(300)], [], {"fp32": Predictions(labels, top5(fp32)),
                                                        "int8": Predictions(labels, top5(int8))})
    r = paired_from_evaluation(ev)
    assert r == paired_top1(labels, fp32, int8)
    assert r.acc_a == pytest.approx(ev.summary("fp32")["top1"])
    assert r.drop == pytest.approx(ev.summary("fp32")["top1"] - ev.summary("int8")["top1"])
    assert r.agreement == pytest.approx(ev.agreement())


# ----------------------------------------------------------------------------- calibrators
def test_compare_calibrators_pairs_the_agreement_bits():
    rng = np.random.default_rng(5)
    n = 400
    labels = rng.integers(0, 100, n)
    fp32 = np.where(rng.random(n) < 0.75, labels, (labels + 1) % 100)
    x = fp32.copy()
    x[:4] = (x[:4] + 7) % 100          # x disagrees with FP32 on 4 images
    y = fp32.copy()
    y[2:22] = (y[2:22] + 9) % 100      # y on 20, overlapping x on 2
    cmp = compare_calibrators(labels, fp32, x, y, "x", "y")
    ag = cmp.agreement
    assert ag.acc_a == pytest.approx(np.mean(x == fp32)) and ag.acc_b == pytest.approx(np.mean(y == fp32))
    assert ag.discordant == {"a_only": 18, "b_only": 2}   # only x agrees: 22-4, only y agrees: 2
    assert ag.drop == pytest.approx((18 - 2) / n)
    assert ag.significant
    assert cmp.top1.drop == pytest.approx(np.mean(x == labels) - np.mean(y == labels))
    assert cmp.top1.agreement == pytest.approx(np.mean(x == y))
    json.dumps(cmp.to_json())
    pairs = pairwise_calibrators(labels, fp32, {"x": x, "y": y, "fp": fp32.copy()})
    assert [(p.x, p.y) for p in pairs] == [("x", "y"), ("x", "fp"), ("y", "fp")]
    assert pairs[0] == cmp


# ----------------------------------------------------------------------------- bootstrap
def test_bootstrap_is_seeded_and_reproducible():
    rng = np.random.default_rng(1)
    x, y = rng.normal(0, 1, 500), rng.normal(0.1, 1, 500)
    r1 = mean_difference_ci(x, y, seed=7)
    assert r1 == mean_difference_ci(x, y, seed=7)
    assert r1 != mean_difference_ci(x, y, seed=8)
    assert r1.estimate == pytest.approx(np.mean(x - y))


def test_bootstrap_mean_difference_width_matches_the_standard_error():
    rng = np.random.default_rng(2)
    d = rng.normal(0.3, 2.0, 2000)
    r = mean_difference_ci(d, np.zeros_like(d), resamples=4000, seed=0)
    se = d.std(ddof=1) / math.sqrt(len(d))
    assert r.ci95[0] < r.estimate < r.ci95[1]
    assert (r.ci95[1] - r.ci95[0]) == pytest.approx(2 * Z * se, rel=0.1)


def test_bootstrap_of_a_constant_shift_has_zero_width():
    x = np.random.default_rng(4).normal(size=100)
    r = mean_difference_ci(x + 1.0, x)
    assert r.ci95 == [pytest.approx(1.0), pytest.approx(1.0)]


def test_sqnr_bootstrap_estimates_equal_the_aggregate_sqnr():
    rng = np.random.default_rng(6)
    signal = rng.uniform(50, 100, 200)
    nx, ny = signal * rng.uniform(0.001, 0.01, 200), signal * rng.uniform(0.01, 0.05, 200)
    one = sqnr_ci(signal, nx)
    assert one.estimate == pytest.approx(sqnr_db(signal.sum(), nx.sum()))
    assert one.ci95[0] < one.estimate < one.ci95[1]
    diff = sqnr_difference_ci(nx, ny)
    assert diff.estimate == pytest.approx(sqnr_db(signal.sum(), nx.sum()) - sqnr_db(signal.sum(), ny.sum()))
    assert diff.ci95[0] > 0  # x's noise is 5x lower on every image: a clear, significant difference


@pytest.mark.parametrize("noisy", [0, 9, 19])
def test_sqnr_interval_resamples_every_evaluation_image(noisy):
    """The bootstrap draws each of the n images with probability 1/n per draw, the last one
    included. With one noisy image among 20 (signal 1 each), a resample's SQNR is
    10 log10(20 / (k e)) for k ~ Binomial(20, 1/20) copies of it: P(k >= 4) = 1.6% and
    P(k >= 3) = 7.5%, so the lower 2.5% end is k = 3 wherever the noisy image sits, and the
    upper end is +inf (k = 0 in 36% of resamples). A resampler that never draws an image gives
    +inf for both ends when that image is the noisy one."""
    n, e = 20, 0.01
    noise = np.zeros(n)
    noise[noisy] = e
    r = sqnr_ci(np.ones(n), noise, resamples=4000, seed=0)
    assert r.estimate == pytest.approx(10 * math.log10(n / e))
    assert r.ci95[0] == pytest.approx(10 * math.log10(n / (3 * e)), rel=1e-12)
    assert r.ci95[1] == math.inf


def test_sqnr_bootstrap_with_zero_noise_stays_finite_or_none_in_json():
    r = sqnr_ci(np.ones(10), np.zeros(10))
    assert math.isinf(r.estimate)
    js = r.to_json()
    assert js["estimate"] is None and js["ci95"] == [None, None]
    json.dumps(js)


def test_one_image_has_no_bootstrap_interval_and_says_why():
    """Every resample of one image is that image: a zero-width interval would claim certainty.
    The estimate stays; the interval is None, with the reason; no pair is called significant."""
    r = sqnr_ci([4.0], [0.04])
    assert r.estimate == pytest.approx(20.0) and r.ci95 is None and r.n == 1 and r.resamples == 0
    assert "one image" in r.note
    js = json.loads(json.dumps(r.to_json()))
    assert js["estimate"] == pytest.approx(20.0) and js["ci95"] is None
    assert sqnr_difference_ci([0.1], [0.2]).ci95 is None and mean_difference_ci([1.0], [0.0]).ci95 is None
    assert sqnr_ci(np.ones(2), np.full(2, 0.01)).note is None
    rows = rank_calibrators([1], [1], {"x": np.array([1]), "y": np.array([2])}, signal=[4.0],
                            noise={"x": np.array([0.04]), "y": np.array([0.4])})
    assert [row["name"] for row in rows] == ["x", "y"]
    assert all(row["logits_sqnr_db_ci95"] is None and row["sqnr_better_than"] == [] for row in rows)


def test_bootstrap_chunks_large_inputs_and_rejects_empty():
    n = 50_000
    r = bootstrap_sums(np.ones((n, 1)), lambda s: s[:, 0] / n, resamples=300, seed=0)
    assert r.ci95 == [1.0, 1.0] and r.resamples == 300
    with pytest.raises(CalibError):
        bootstrap_sums(np.zeros((0, 1)), lambda s: s[:, 0])


# ----------------------------------------------------------------------------- ranking for compare
def _calibrators(n: int = 400, seed: int = 9):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 100, n)
    fp32 = np.where(rng.random(n) < 0.75, labels, (labels + 1) % 100)
    tops = {}
    for name, flips in [("entropy", 24), ("minmax", 6), ("mse", 4)]:
        t = fp32.copy()
        t[rng.choice(n, flips, replace=False)] += 50
        tops[name] = t % 100
    signal = rng.uniform(50, 100, n)
    noise = {"entropy": signal * rng.uniform(0.02, 0.05, n), "minmax": signal * rng.uniform(0.004, 0.006, n),
             "mse": signal * rng.uniform(0.004, 0.006, n)}
    return labels, fp32, tops, signal, noise


def test_rank_calibrators_by_agreement_with_significance():
    labels, fp32, tops, _, _ = _calibrators()
    rows = rank_calibrators(labels, fp32, tops)
    assert [r["name"] for r in rows] == ["mse", "minmax", "entropy"]
    by = {r["name"]: r for r in rows}
    for name, t in tops.items():
        assert by[name]["agreement"] == pytest.approx(np.mean(t == fp32))
        assert by[name]["agreement_ci95"][0] <= by[name]["agreement"] <= by[name]["agreement_ci95"][1]
    # 24 vs 6 and 24 vs 4 disagreements are real differences; 6 vs 4 are not
    assert set(by["mse"]["agreement_better_than"]) == {"entropy"}
    assert set(by["minmax"]["agreement_better_than"]) == {"entropy"}
    assert by["entropy"]["agreement_better_than"] == []
    assert by["mse"]["logits_sqnr_db"] is None


def test_rank_calibrators_by_logits_sqnr_with_bootstrap_intervals():
    labels, fp32, tops, signal, noise = _calibrators()
    rows = rank_calibrators(labels, fp32, tops, signal=signal, noise=noise, resamples=500)
    by = {r["name"]: r for r in rows}
    assert rows[-1]["name"] == "entropy"
    for name in tops:
        assert by[name]["logits_sqnr_db"] == pytest.approx(sqnr_db(signal.sum(), noise[name].sum()), abs=1e-3)
        lo, hi = by[name]["logits_sqnr_db_ci95"]
        assert lo < by[name]["logits_sqnr_db"] < hi
    assert set(by["minmax"]["sqnr_better_than"]) == {"entropy"} and set(by["mse"]["sqnr_better_than"]) == {"entropy"}
    json.dumps(rows)
