"""Paired statistics for two models scored on the SAME images (FP32 vs INT8, or calibrator X vs Y).

Why paired: both models see every image, so the images on which they agree carry no information
about the difference. Everything here is built from the 2x2 table of per-image outcomes:

                 B right   B wrong
    A right         a      b = "a_only"
    A wrong     c = "b_only"    d

and the difference of accuracies  acc_A - acc_B = (b - c) / n  (the "drop" when A is FP32).

Methods, and why these:

* **Drop, 95% CI: Tango's asymptotic score interval** (T. Tango, "Equivalence test and confidence
  interval for the difference in proportions for the paired-sample design", Stat Med 17:891-908,
  1998). It inverts the score test of  p_b - p_c = delta  with the cell probabilities re-estimated
  under each delta (restricted maximum likelihood, a closed-form quadratic), so it needs no
  continuity fudge, never leaves [-1, 1], and is the interval Fagerland, Lydersen & Laake
  ("Recommended tests and confidence intervals for paired binomial proportions", Stat Med
  33:2850-2875, 2014) recommend for the paired difference. What decided it for calib:
  - 0 discordant pairs: the interval is  +-z^2/(n+z^2)  whatever the concordant split (400
    images: +-0.95 points), a rule-of-three style bound. Newcombe's hybrid score interval (1998,
    method 10) is narrower than that when both concordant cells are non-empty (its correlation
    term phi -> 1 shrinks it towards zero width), and the conditional exact interval on
    b/(b+c), scaled by (b+c)/n, is the single point 0 when b+c = 0: both claim certainty from
    images that say nothing about the difference.
  - small n: it is a score interval (no Wald collapse at 0 or n), computed by bisection on the
    score statistic, so n = 1 gives a wide, valid interval.
  - its test at delta = 0 is McNemar's asymptotic test, so the interval and the test agree on the
    sign of the difference (see `significant`).

* **"Is there a difference": exact (conditional) McNemar test**: two-sided binomial test of b
  successes in b + c trials with p = 1/2 (p = 1 when b + c = 0). It is conservative (Fagerland,
  Lydersen & Laake, BMC Med Res Methodol 13:91, 2013); calib reports a difference as
  `significant` only when this exact test rejects at 5% AND the Tango interval excludes 0, so
  "significant" never contradicts the interval printed next to it. With very few discordant
  images (e.g. 5 broken, 0 fixed) the interval can exclude 0 while the exact test does not
  reject (p = 0.0625): calib then claims no difference.

* **Agreement, 95% CI: exact Clopper-Pearson interval** (C. J. Clopper & E. S. Pearson, Biometrika
  26:404-413, 1934) of k agreeing images out of n: quantiles of Beta(k, n-k+1) and
  Beta(k+1, n-k), from scipy.special.betaincinv. It is exact (never under-covers), which is the
  safe side when agreement sits near 100%: 400 of 400 agreeing gives [0.99082, 1]
  (1 - 0.025^(1/400)).

* **Two calibrators**: the difference in agreement with FP32 is paired too (the same images): it
  is the same 2x2 analysis on the per-image bits "X agrees with FP32" and "Y agrees with FP32".

* **Paired bootstrap** for continuous per-image metrics (logits SQNR, where no closed-form paired
  interval exists): images are resampled with replacement, the SAME resample for both
  calibrators, and the statistic is recomputed from the resampled sums; percentile interval
  (B. Efron & R. Tibshirani, "An Introduction to the Bootstrap", 1993, ch. 13). Seeded and
  vectorized. It is NOT used for top-1/agreement: with few discordant images the bootstrap
  distribution of a binary difference is degenerate (0 discordant pairs: a zero-width interval).

All intervals are two-sided 95%: the report.json field names say "ci95".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Callable, Sequence

import numpy as np

from calib.errors import CalibError

LEVEL = 0.95
ALPHA = 1.0 - LEVEL


def z_value(level: float = LEVEL) -> float:
    """Two-sided normal quantile: 1.959964 for 95%."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")
    return NormalDist().inv_cdf(0.5 + level / 2.0)


def _check_counts(k: int, n: int) -> None:
    if n <= 0:
        raise CalibError("no evaluation images: nothing to compare (every image was skipped or none were given)")
    if not 0 <= k <= n:
        raise ValueError(f"count {k} is outside 0..{n}")


# ----------------------------------------------------------------------------- single proportion
def clopper_pearson(k: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Exact two-sided interval for a binomial proportion k/n (Clopper & Pearson 1934)."""
    _check_counts(k, n)
    from scipy.special import betaincinv  # scipy comes with scikit-image; imported only here

    a = 1.0 - level
    lo = 0.0 if k == 0 else float(betaincinv(k, n - k + 1, a / 2.0))
    hi = 1.0 if k == n else float(betaincinv(k + 1, n - k, 1.0 - a / 2.0))
    return lo, hi


# ----------------------------------------------------------------------------- paired difference
def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: 2 * P(X <= min(b, c)), X ~ Binomial(b + c, 1/2), capped at 1."""
    if b < 0 or c < 0:
        raise ValueError("discordant counts must be >= 0")
    m = b + c
    if m == 0:
        return 1.0
    from scipy.special import bdtr

    return min(1.0, 2.0 * float(bdtr(min(b, c), m, 0.5)))


def tango_score(delta: float, b: float, c: float, n: float) -> float:
    """Tango's score statistic for H0: (p_b - p_c) = delta; decreasing in delta.

    p_c is re-estimated under H0 (restricted MLE): the positive root of
    2n p^2 + W p - c delta (1 - delta) = 0,  W = -b - c + delta (2n - b + c);
    Z = (b - c - n delta) / sqrt(n (2 p_c + delta (1 - delta))).
    Counts may be real numbers (used to project to more images).

    Computed for delta >= 0 only, through the mirror identity Z(delta, b, c) = -Z(-delta, c, b)
    (swapping A and B): there c delta (1 - delta) >= 0, so neither the root's discriminant nor the
    variance subtracts nearly equal terms. For delta < 0 both did: with b = 0, c = 569, n = 577
    the discriminant lost 7 digits and the interval's bound 1e-12.
    """
    if delta < 0.0:
        return -tango_score(-delta, c, b, n)
    w = -b - c + delta * (2.0 * n - b + c)
    k = c * delta * (1.0 - delta)
    root = math.sqrt(max(w * w + 8.0 * n * k, 0.0))
    # The two algebraically equal forms of the root; the second avoids cancellation when w > 0.
    p_c = (root - w) / (4.0 * n) if w <= 0.0 else 2.0 * k / (root + w)
    p_c = max(p_c, 0.0, -delta)  # both cell probabilities >= 0
    num = b - c - n * delta
    var = n * (2.0 * p_c + delta * (1.0 - delta))
    if var <= 0.0:
        return 0.0 if num == 0.0 else math.copysign(math.inf, num)
    return num / math.sqrt(var)


def _bisect(f: Callable[[float], float], lo: float, hi: float) -> float:
    """Root of f on [lo, hi] given f(lo) > 0 >= f(hi); to float resolution."""
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if f(mid) > 0.0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def tango_interval(b: float, c: float, n: float, level: float = LEVEL) -> tuple[float, float]:
    """Tango (1998) score interval for (b - c)/n: b = A right & B wrong, c = A wrong & B right."""
    if n <= 0:
        raise CalibError("no evaluation images: nothing to compare (every image was skipped or none were given)")
    if b < 0 or c < 0 or b + c > n:
        raise ValueError(f"discordant counts b={b}, c={c} do not fit in n={n}")
    z = z_value(level)
    est = (b - c) / n
    lo = -1.0 if est <= -1.0 else _bisect(lambda d: tango_score(d, b, c, n) - z, -1.0, est)
    hi = 1.0 if est >= 1.0 else _bisect(lambda d: tango_score(d, b, c, n) + z, est, 1.0)
    return lo, hi


# ----------------------------------------------------------------------------- results
def _r(x: float) -> float:
    return round(float(x), 6)


@dataclass(frozen=True)
class PairedResult:
    """A vs B on the same n images. `drop` = acc_a - acc_b (fractions: 0.01 = 1 point of top-1).

    `discordant`: {"a_only": images only A got right, "b_only": images only B got right}; with A =
    FP32 and B = INT8, "a_only" are the images INT8 broke and "b_only" those it fixed.
    `agreement` (top-1 predictions equal) and its interval are None when no predictions were given.
    """

    n: int
    acc_a: float
    acc_b: float
    drop: float
    drop_ci95: list[float]
    discordant: dict[str, int]
    p_value: float
    significant: bool
    agreement: float | None = None
    agreement_ci95: list[float] | None = None

    def to_json(self) -> dict:
        out = {"n": self.n, "acc_a": _r(self.acc_a), "acc_b": _r(self.acc_b), "drop": _r(self.drop),
               "drop_ci95": [_r(x) for x in self.drop_ci95], "discordant": dict(self.discordant),
               "p_value": _r(self.p_value), "significant": self.significant}
        if self.agreement is not None:
            out["agreement"] = _r(self.agreement)
            out["agreement_ci95"] = [_r(x) for x in self.agreement_ci95]
        return out


def _bits(x, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be one value per image (1-D), got shape {a.shape}")
    return a.astype(bool)


def _same_length(*arrays: np.ndarray) -> int:
    lengths = {len(a) for a in arrays}
    if len(lengths) != 1:
        raise ValueError(f"per-image arrays differ in length: {sorted(lengths)}")
    n = lengths.pop()
    if n == 0:
        raise CalibError("no evaluation images: nothing to compare (every image was skipped or none were given)")
    return n


def agreement_interval(a_top1, b_top1) -> tuple[float, list[float]]:
    """Fraction of images whose top-1 predictions are equal, and its Clopper-Pearson 95% interval."""
    pa, pb = np.asarray(a_top1).ravel(), np.asarray(b_top1).ravel()
    n = _same_length(pa, pb)
    k = int(np.sum(pa == pb))
    return k / n, list(clopper_pearson(k, n))


def paired(a_correct, b_correct, a_top1=None, b_top1=None) -> PairedResult:
    """Paired comparison from per-image correctness bits of A and B (and, optionally, their top-1
    predictions, for the agreement). Raises CalibError when there are no images."""
    ca, cb = _bits(a_correct, "a_correct"), _bits(b_correct, "b_correct")
    n = _same_length(ca, cb)
    b = int(np.sum(ca & ~cb))
    c = int(np.sum(~ca & cb))
    lo, hi = tango_interval(b, c, n)
    p = mcnemar_exact(b, c)
    agreement = agreement_ci = None
    if a_top1 is not None and b_top1 is not None:
        _same_length(ca, np.asarray(a_top1).ravel(), np.asarray(b_top1).ravel())
        agreement, agreement_ci = agreement_interval(a_top1, b_top1)
    return PairedResult(n=n, acc_a=float(ca.mean()), acc_b=float(cb.mean()), drop=(b - c) / n,
                        drop_ci95=[lo, hi], discordant={"a_only": b, "b_only": c}, p_value=p,
                        significant=bool(p < ALPHA and (lo > 0.0 or hi < 0.0)),
                        agreement=agreement, agreement_ci95=agreement_ci)


def paired_top1(labels, a_top1, b_top1) -> PairedResult:
    """A vs B from labels and each model's top-1 predictions (e.g. FP32 and INT8)."""
    y, pa, pb = (np.asarray(v).ravel() for v in (labels, a_top1, b_top1))
    _same_length(y, pa, pb)
    return paired(pa == y, pb == y, pa, pb)


def paired_from_evaluation(evaluation, a: str = "fp32", b: str = "int8") -> PairedResult:
    """`paired_top1` on two models of a `calib.evaluate.Evaluation`."""
    pa, pb = evaluation.predictions[a], evaluation.predictions[b]
    return paired_top1(pa.labels, pa.top5[:, 0], pb.top5[:, 0])


@dataclass(frozen=True)
class CalibratorComparison:
    """Calibrator X vs Y on the same images. `top1`: X's top-1 minus Y's (drop = acc_X - acc_Y; its
    agreement is X vs Y predictions). `agreement`: X's agreement with FP32 minus Y's (drop =
    agreement_X - agreement_Y, acc_a/acc_b are the two agreements), paired on the per-image bits
    "agrees with FP32"."""

    x: str
    y: str
    top1: PairedResult
    agreement: PairedResult

    def to_json(self) -> dict:
        return {"x": self.x, "y": self.y, "top1": self.top1.to_json(), "agreement": self.agreement.to_json()}


def compare_calibrators(labels, fp32_top1, x_top1, y_top1, x: str = "x", y: str = "y") -> CalibratorComparison:
    labels, f, px, py = (np.asarray(v).ravel() for v in (labels, fp32_top1, x_top1, y_top1))
    _same_length(labels, f, px, py)
    return CalibratorComparison(x, y, paired(px == labels, py == labels, px, py), paired(px == f, py == f))


def pairwise_calibrators(labels, fp32_top1, tops: dict[str, np.ndarray]) -> list[CalibratorComparison]:
    """Every pair of calibrators (in the given order) compared on the same images."""
    names = list(tops)
    return [compare_calibrators(labels, fp32_top1, tops[x], tops[y], x, y)
            for i, x in enumerate(names) for y in names[i + 1:]]


def rank_calibrators(labels, fp32_top1, tops: dict[str, np.ndarray], signal=None,
                     noise: dict[str, np.ndarray] | None = None, resamples: int = 2000, seed: int = 0) -> list[dict]:
    """Calibrators ranked for `calib compare`, with intervals and which differences are significant.

    `tops`: top-1 predictions per calibrator on the evaluation images. `signal`, `noise`: optional
    per-image FP32 logits power and per-calibrator error power (sum of x^2 and (x - y)^2 per image);
    when given, the rank is by logits SQNR (a far steadier signal than top-1 on a few hundred
    images), else by agreement with FP32. Each row: name, agreement (+ ci95), top1_drop (+ ci95),
    logits_sqnr_db (+ ci95, bootstrap) and, per metric, the calibrators this one beats
    significantly: `agreement_better_than` (paired McNemar/Tango on the "agrees with FP32" bits)
    and `sqnr_better_than` (bootstrap CI of the SQNR difference excludes 0). Pairwise tests are
    not adjusted for multiplicity (6 pairs for 4 calibrators): read them as a guide.
    """
    names = list(tops)
    labels, f = np.asarray(labels).ravel(), np.asarray(fp32_top1).ravel()
    fp32_right = f == labels
    rows = {}
    for name in names:
        r = paired(fp32_right, np.asarray(tops[name]).ravel() == labels, f, tops[name])
        rows[name] = {"name": name, "agreement": r.agreement, "agreement_ci95": r.agreement_ci95,
                      "top1": r.acc_b, "top1_drop": r.drop, "top1_drop_ci95": r.drop_ci95,
                      "logits_sqnr_db": None, "logits_sqnr_db_ci95": None,
                      "agreement_better_than": [], "sqnr_better_than": []}
        if noise is not None and signal is not None:
            sq = sqnr_ci(signal, noise[name], resamples, seed).to_json()
            rows[name]["logits_sqnr_db"], rows[name]["logits_sqnr_db_ci95"] = sq["estimate"], sq["ci95"]
    for cmp in pairwise_calibrators(labels, f, tops):
        if cmp.agreement.significant:
            winner, loser = (cmp.x, cmp.y) if cmp.agreement.drop > 0 else (cmp.y, cmp.x)
            rows[winner]["agreement_better_than"].append(loser)
        if noise is not None and signal is not None:
            d = sqnr_difference_ci(noise[cmp.x], noise[cmp.y], resamples, seed)
            if d.ci95 is not None and (d.ci95[0] > 0 or d.ci95[1] < 0):
                winner, loser = (cmp.x, cmp.y) if d.estimate > 0 else (cmp.y, cmp.x)
                rows[winner]["sqnr_better_than"].append(loser)

    def key(name: str):
        row = rows[name]
        sq = row["logits_sqnr_db"]
        sq = math.inf if sq is None and noise is not None else (sq if sq is not None else 0.0)
        if noise is None:
            return (-row["agreement"], names.index(name))
        return (-sq, -row["agreement"], names.index(name))

    return [rows[n] for n in sorted(names, key=key)]


# ----------------------------------------------------------------------------- bootstrap
ONE_IMAGE_INTERVAL = ("no 95% interval from one image: every bootstrap resample of it is that image again, "
                      "a zero-width interval that would claim certainty")


@dataclass(frozen=True)
class BootstrapResult:
    """`ci95` is None when there are too few images for an interval (see `note`); an infinite
    end (zero noise) is None in the JSON form."""
    estimate: float
    ci95: list[float] | None
    n: int
    resamples: int
    seed: int

    @property
    def note(self) -> str | None:
        """Why there is no interval, in words for a report; None when there is one."""
        return None if self.ci95 is not None else ONE_IMAGE_INTERVAL

    def to_json(self) -> dict:
        finite = [None if not math.isfinite(v) else _r(v) for v in [self.estimate, *(self.ci95 or [])]]
        return {"estimate": finite[0], "ci95": finite[1:] if self.ci95 is not None else None, "n": self.n,
                "resamples": self.resamples, "seed": self.seed}


def bootstrap_sums(columns: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray], resamples: int = 2000,
                   seed: int = 0, level: float = LEVEL) -> BootstrapResult:
    """Paired bootstrap of a statistic of column sums.

    `columns`: (n, k) per-image values (one row per image: every column is resampled with the
    same rows, which is what makes it paired). `statistic`: maps (m, k) column sums to (m,)
    values (vectorized). Returns the statistic of the full sums and a percentile interval over
    `resamples` resamples of n row indices drawn with replacement, in chunks whose size depends
    only on n (bounded memory; the same seed gives the same result). One image has no interval
    (`ci95` None, no resamples): resampling it can only repeat it.
    """
    m = np.asarray(columns, np.float64)
    if m.ndim == 1:
        m = m[:, None]
    n = len(m)
    if n == 0:
        raise CalibError("no evaluation images: nothing to bootstrap")
    if resamples < 1:
        raise ValueError("resamples must be >= 1")
    estimate = float(np.asarray(statistic(m.sum(0, keepdims=True)), np.float64).reshape(1)[0])
    if n < 2:
        return BootstrapResult(estimate, None, n, 0, seed)
    rng = np.random.default_rng(seed)
    chunk = max(1, min(resamples, (1 << 21) // n))  # ~16 MB of indices per chunk
    stats = []
    done = 0
    while done < resamples:
        size = min(chunk, resamples - done)
        idx = rng.integers(0, n, size=(size, n))
        stats.append(np.asarray(statistic(m[idx].sum(axis=1)), np.float64).reshape(size))
        done += size
    values = np.concatenate(stats)
    a = (1.0 - level) / 2.0
    # inverted_cdf: no interpolation, so infinite SQNRs (zero noise) cannot produce NaN.
    lo, hi = np.quantile(values, [a, 1.0 - a], method="inverted_cdf")
    return BootstrapResult(estimate, [float(lo), float(hi)], n, resamples, seed)


def _db(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return 10.0 * np.log10(num / den)


def mean_difference_ci(x, y, resamples: int = 2000, seed: int = 0) -> BootstrapResult:
    """Paired bootstrap interval of mean(x) - mean(y) for per-image continuous metrics."""
    x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    n = _same_length(x, y)
    return bootstrap_sums(np.stack([x - y], 1), lambda s: s[:, 0] / n, resamples, seed)


def sqnr_ci(signal, noise, resamples: int = 2000, seed: int = 0) -> BootstrapResult:
    """Logits SQNR (dB) = 10 log10(sum signal / sum noise) over images, with a bootstrap interval.
    `signal`, `noise`: per-image sums of x^2 and (x - y)^2 (see calib.stats.sqnr)."""
    s, e = np.asarray(signal, np.float64).ravel(), np.asarray(noise, np.float64).ravel()
    _same_length(s, e)
    return bootstrap_sums(np.stack([s, e], 1), lambda t: _db(t[:, 0], t[:, 1]), resamples, seed)


def sqnr_difference_ci(noise_x, noise_y, resamples: int = 2000, seed: int = 0) -> BootstrapResult:
    """SQNR_X - SQNR_Y (dB) of two calibrators against the same FP32 logits, paired bootstrap.
    The FP32 signal power is common to both and cancels: 10 log10(sum noise_y / sum noise_x)."""
    ex, ey = np.asarray(noise_x, np.float64).ravel(), np.asarray(noise_y, np.float64).ravel()
    _same_length(ex, ey)
    return bootstrap_sums(np.stack([ey, ex], 1), lambda t: _db(t[:, 0], t[:, 1]), resamples, seed)


__all__: Sequence[str] = [
    "LEVEL", "BootstrapResult", "CalibratorComparison", "PairedResult", "agreement_interval", "bootstrap_sums",
    "clopper_pearson", "compare_calibrators", "mcnemar_exact", "mean_difference_ci", "paired",
    "paired_from_evaluation", "paired_top1", "pairwise_calibrators", "rank_calibrators", "sqnr_ci",
    "sqnr_difference_ci", "tango_interval", "tango_score", "z_value", "ONE_IMAGE_INTERVAL",
]
