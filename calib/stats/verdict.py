"""The verdict in words: what a paired FP32-vs-INT8 result lets a deployment engineer conclude, and
the recommendation at the top of a run report.

Accuracy verdict (from `calib.stats.paired.PairedResult`, A = FP32, B = INT8, drop = A - B):

* "loss of X to Y points"  the difference is significant (exact McNemar rejects and the 95% CI
                           of the drop excludes 0) and FP32 is ahead; X..Y is the CI.
* "gain of X to Y points"  the same with INT8 ahead (it happens: on the evaluated images more of
                           INT8's changed predictions happened to be fixes).
* "no measurable loss"     no significant difference and the CI's upper end is below the
                           tolerance: a loss of `tolerance` or more is ruled out at 95%.
* "not enough images to tell a loss below Z points; evaluate on N images"
                           no significant difference, but the CI reaches Z >= tolerance.

The ship/no-ship rule is a non-inferiority test (the CONSORT extension for non-inferiority
trials, Piaggio et al., JAMA 308:2594-2604, 2012): INT8 is acceptable when the upper end of the
two-sided 95% CI of the drop is below the tolerance. It is rejected when the loss is significant
and its point estimate exceeds the tolerance; anything between asks for more images.

Images needed (`images_needed`): keep the observed drop d and discordance rate q = (b + c)/n and
find the smallest N at which the Tango interval of the projected counts (b N/n, c N/n) is
decisive (its upper end below the tolerance, or a significant loss). To leading order the
interval is d +- z sqrt(q/N), so

    N ~= z^2 q / max(tol - d+, d+)^2,     d+ = max(d, 0),  z = 1.96,

which is z^2 q / tol^2 (the n at which the half-width falls below the tolerance) when INT8 shows
no loss, and at most 4 z^2 q / tol^2. The approximation is good when q is several times the
tolerance (q = 4 tol: within 6%; q = 10 tol: within 1%); with fewer discordant images the score
variance at the bound (which includes the bound itself) makes N larger, e.g. 616 instead of 384
for q = tol = 1%. With q = 0 the interval is exactly +-z^2/(N + z^2), so
N = floor(z^2 (1/tol - 1)) + 1 (381 images for a 1-point tolerance). calib reports the N of the
search, which uses the interval itself and so holds at small counts too.

Tolerance: DEFAULT_TOLERANCE = 0.01 (1 point of top-1). Why: it is the usual goal for 8-bit
post-training quantization of ImageNet CNNs (Wu et al., "Integer Quantization for Deep Learning
Inference: Principles and Empirical Evaluation", NVIDIA, arXiv:2004.09602, 2020: "within 1% of
the floating-point baseline"), and it is a resolution a few hundred to a thousand evaluation
images can reach (0 of 400 discordant images already bounds the drop at 0.95 points); a 0.1-point
tolerance would need tens of thousands of images for any verdict. A deployment with a stricter
or looser budget passes its own (`--max-drop` is the natural source).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from calib.stats.paired import ALPHA, PairedResult, mcnemar_exact, tango_interval

DEFAULT_TOLERANCE = 0.01
MAX_IMAGES = 10_000_000  # beyond this "images needed" is reported as None (more than any eval set)
NO_SCORE = 0.01          # an FP32 score against labels below this: the labels are not the model's


def budget_tolerance(max_drop: float | None) -> float:
    """The tolerance of a run's verdict: its budget (`--max-drop`) when one is set, kept inside
    (0, 1) (a 0-point budget asks for a 0.1-point resolution, a 100-point one for 99.9), else
    DEFAULT_TOLERANCE."""
    return DEFAULT_TOLERANCE if max_drop is None else min(max(max_drop, 0.001), 0.999)


def _pts(x: float) -> str:
    """A fraction as points of top-1, one decimal, with a real minus sign; -0.0 prints as 0.0."""
    v = round(100.0 * x, 1)
    return f"{v:.1f}".replace("-0.0", "0.0").replace("-", "−")


def _images(k: int) -> str:
    return f"{k} image" + ("" if k == 1 else "s")


def _decisive(b: float, c: float, n: float, tolerance: float) -> bool:
    """The verdict would be "no_loss" or "loss": the same tests as `paired` (exact McNemar on the
    rounded projected counts)."""
    lo, hi = tango_interval(b, c, n)
    return hi < tolerance or (lo > 0.0 and mcnemar_exact(round(b), round(c)) < ALPHA)


def images_needed(b: int, c: int, n: int, tolerance: float = DEFAULT_TOLERANCE) -> int | None:
    """Smallest number of images at which the observed discordance would give a decisive interval
    (see the module docstring); None when it exceeds MAX_IMAGES. Returns n when already decisive."""
    if not 0.0 < tolerance < 1.0:
        raise ValueError(f"tolerance must be in (0, 1), got {tolerance}")

    def ok(m: int) -> bool:
        return _decisive(b * m / n, c * m / n, m, tolerance)

    if ok(n):
        return n
    lo, hi = n, max(2 * n, 2)
    while not ok(hi):
        lo, hi = hi, 2 * hi
        if lo > MAX_IMAGES:
            return None
    while hi - lo > 1:  # invariant: not ok(lo), ok(hi)
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi if hi <= MAX_IMAGES else None


@dataclass(frozen=True)
class AccuracyVerdict:
    """kind: "loss" | "gain" | "no_loss" | "inconclusive". `text`: the sentence for the report.
    `images_needed`: for "inconclusive", the evaluation size that would decide (None otherwise,
    or when more than MAX_IMAGES)."""

    kind: str
    text: str
    tolerance: float
    n: int
    drop: float
    drop_ci95: list[float]
    images_needed: int | None = None

    def to_json(self) -> dict:
        return {"kind": self.kind, "text": self.text, "tolerance": self.tolerance, "n": self.n,
                "drop": round(self.drop, 6), "drop_ci95": [round(x, 6) for x in self.drop_ci95],
                "images_needed": self.images_needed}


def accuracy_verdict(result: PairedResult, tolerance: float = DEFAULT_TOLERANCE) -> AccuracyVerdict:
    """The verdict in words for A = FP32, B = INT8 (drop = FP32 top-1 - INT8 top-1)."""
    if not 0.0 < tolerance < 1.0:
        raise ValueError(f"tolerance must be in (0, 1), got {tolerance}")
    lo, hi = result.drop_ci95
    broke, fixed = result.discordant["a_only"], result.discordant["b_only"]
    ci = f"95% CI of the top-1 drop {_pts(lo)} to {_pts(hi)} points on {_images(result.n)}"
    changes = (f"INT8 broke {_images(broke)} FP32 got right and fixed {fixed}" if broke or fixed
               else "INT8 changed no image from right to wrong or back")
    common = dict(tolerance=tolerance, n=result.n, drop=result.drop, drop_ci95=[lo, hi])
    if result.significant and lo > 0.0:
        return AccuracyVerdict("loss", f"loss of {_pts(lo)} to {_pts(hi)} points of top-1 "
                                       f"(95% CI on {_images(result.n)}; {changes})", **common)
    if result.significant and hi < 0.0:
        return AccuracyVerdict("gain", f"INT8 scored higher: gain of {_pts(-hi)} to {_pts(-lo)} points of top-1 "
                                       f"(95% CI on {_images(result.n)}; {changes})", **common)
    if hi < tolerance:
        why = f"{ci}, below the {_pts(tolerance)}-point tolerance; {changes}"
        if broke != fixed:
            why += ": a difference of this size is within chance"
        return AccuracyVerdict("no_loss", f"no measurable loss ({why})", **common)
    need = images_needed(broke, fixed, result.n, tolerance)
    advice = f"evaluate on {need} images" if need is not None else "no practical number of images would tell"
    return AccuracyVerdict("inconclusive", f"not enough images to tell a loss below {_pts(hi)} points; {advice} "
                                           f"({ci}; {changes})", images_needed=need, **common)


# ----------------------------------------------------------------------------- recommendation
SHIP_INT8 = "ship_int8"
SHIP_INT8_FLOAT_LAYERS = "ship_int8_with_float_layers"
SHIP_FP32 = "ship_fp32"
EVALUATE_MORE = "evaluate_more"

_HEADLINES = {SHIP_INT8: "Ship INT8", SHIP_INT8_FLOAT_LAYERS: "Ship INT8 with these layers in float",
              SHIP_FP32: "Ship FP32", EVALUATE_MORE: "Not decided yet"}


@dataclass(frozen=True)
class Recommendation:
    """The top of a run report. `action`: one of ship_int8, ship_int8_with_float_layers, ship_fp32,
    evaluate_more. `figures`: the two or three numbers that justify it, each {"name", "text", ...}.
    `sentence`: one sentence rendering of all of it."""

    action: str
    headline: str
    sentence: str
    reason: str
    accuracy: AccuracyVerdict
    figures: list[dict]
    float_layers: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"action": self.action, "headline": self.headline, "sentence": self.sentence, "reason": self.reason,
                "accuracy": self.accuracy.to_json(), "figures": self.figures, "float_layers": list(self.float_layers)}


def times(x: float, what: str = "faster", opposite: str = "slower") -> str:
    """A speed ratio x = INT8 speed / FP32 speed said the right way round: "1.48× slower", not
    "0.67× slower" (issue 22); "as fast as FP32" when it rounds to 1.00×."""
    if x <= 0 or not x == x:
        return f"{what} by an unknown factor"
    ratio, word = (x, what) if x >= 1 else (1.0 / x, opposite)
    text = f"{ratio:.2f}"
    return "as fast as FP32" if text == "1.00" else f"{text}× {word}"


def distinct(a: float, b: float, decimals: int = 1, most: int = 6) -> tuple[str, str] | None:
    """`a` and `b` with the fewest decimals (at least `decimals`, at most `most`) that tell them
    apart, so "0.1 MB instead of 0.1 MB" cannot be printed; None when they are equal at `most`."""
    for d in range(decimals, most + 1):
        x, y = f"{a:.{d}f}", f"{b:.{d}f}"
        if x != y:
            return x, y
    return None


def _speed_figure(speed: dict | None, min_speedup: float) -> tuple[dict | None, bool | None]:
    """(figure, int8_is_faster) from {"fp32": {"latency_ms_b1", "throughput_b32"}, "int8": {...}};
    latency at batch 1 decides when both are there, else throughput at batch 32. `speedup` is
    INT8's speed over FP32's (below 1: INT8 is slower); the text says it the right way round."""
    if not speed or "fp32" not in speed or "int8" not in speed:
        return None, None
    f, q = speed["fp32"] or {}, speed["int8"] or {}
    if f.get("latency_ms_b1") and q.get("latency_ms_b1"):
        x = f["latency_ms_b1"] / q["latency_ms_b1"]
        ms = distinct(q["latency_ms_b1"], f["latency_ms_b1"], 2) or (f"{q['latency_ms_b1']:.2f}",) * 2
        text = f"INT8 {times(x)} at batch 1 ({ms[0]} ms vs {ms[1]} ms)"
        return {"name": "latency_b1", "speedup": round(x, 3), "fp32_ms": f["latency_ms_b1"],
                "int8_ms": q["latency_ms_b1"], "text": text}, x > 1.0 and x >= min_speedup
    if f.get("throughput_b32") and q.get("throughput_b32"):
        x = q["throughput_b32"] / f["throughput_b32"]
        text = (f"INT8 {times(x)} at batch 32 "
                f"({q['throughput_b32']:.0f} vs {f['throughput_b32']:.0f} images/s)")
        return {"name": "throughput_b32", "speedup": round(x, 3), "fp32": f["throughput_b32"],
                "int8": q["throughput_b32"], "text": text}, x > 1.0 and x >= min_speedup
    return None, None


def _size_figure(size_mb: dict | None) -> dict | None:
    if not size_mb or not size_mb.get("fp32") or not size_mb.get("int8"):
        return None
    f, q = size_mb["fp32"], size_mb["int8"]
    pair = distinct(q, f)
    text = (f"INT8 model {pair[0]} MB instead of {pair[1]} MB" if pair
            else f"INT8 model the same size as FP32 ({f:.1f} MB)")
    return {"name": "size", "fp32_mb": f, "int8_mb": q, "ratio": round(q / f, 3), "text": text}


def _recommendation(action: str, reason: str, verdict: AccuracyVerdict, figures: list[dict],
                    layers: list[str]) -> Recommendation:
    """The headline of `action` (naming the float layers, if any) and the one-sentence rendering."""
    headline = _HEADLINES[action]
    if action == SHIP_INT8_FLOAT_LAYERS:
        shown = ", ".join(layers[:5]) + (f" and {len(layers) - 5} more" if len(layers) > 5 else "")
        headline = f"Ship INT8 with {len(layers)} layer{'s' if len(layers) != 1 else ''} in float ({shown})"
    sentence = f"{headline}: {reason}; " + "; ".join(f["text"] for f in figures) + "."
    return Recommendation(action, headline, sentence, reason, verdict, figures, layers)


def recommend(result: PairedResult, tolerance: float = DEFAULT_TOLERANCE, speed: dict | None = None,
              size_mb: dict | None = None, float_layers: Sequence[str] = (), min_speedup: float = 1.0,
              backend: str | None = None) -> Recommendation:
    """The recommendation for a run: `result` is FP32 (A) vs INT8 (B) on the evaluation images.

    `speed`/`size_mb`: the report.json shapes {"fp32": {...}, "int8": {...}} (optional).
    `float_layers`: layers a fallback left in float (non-empty: "ship INT8 with these layers in
    float"). `min_speedup`: INT8 must be at least this much faster (and faster at all) or FP32 is
    recommended. Rules, first match wins:
      1. INT8 not faster than FP32 (when speed is known)             -> ship FP32
      2. significant loss with point estimate above the tolerance    -> ship FP32
      3. upper end of the drop's 95% CI below the tolerance          -> ship INT8 (with float layers)
      4. otherwise                                                   -> evaluate on more images
    """
    verdict = accuracy_verdict(result, tolerance)
    speed_fig, faster = _speed_figure(speed, min_speedup)
    size_fig = _size_figure(size_mb)
    lo, hi = result.drop_ci95
    acc_fig = {"name": "top1_drop", "drop": round(result.drop, 6), "ci95": [round(lo, 6), round(hi, 6)],
               "n": result.n, "tolerance": tolerance,
               "text": f"top-1 drop {_pts(result.drop)} points (95% CI {_pts(lo)} to {_pts(hi)}, {_images(result.n)})"}
    layers = list(float_layers)
    on = f" on {backend}" if backend else ""
    if faster is False:
        action, reason = SHIP_FP32, f"INT8 is not faster than FP32{on}"
        figures = [speed_fig, acc_fig, size_fig]
    elif result.significant and result.drop > tolerance:
        action, reason = SHIP_FP32, f"INT8 loses more than the {_pts(tolerance)}-point tolerance"
        figures = [acc_fig, speed_fig, size_fig]
    elif hi < tolerance:
        action = SHIP_INT8_FLOAT_LAYERS if layers else SHIP_INT8
        reason = f"a top-1 loss of {_pts(tolerance)} points or more is ruled out at 95% confidence"
        figures = [acc_fig, speed_fig, size_fig]
    else:
        action = EVALUATE_MORE
        need = f"evaluate on {verdict.images_needed} images" if verdict.images_needed else "evaluate on more images"
        reason = f"a top-1 loss up to {_pts(hi)} points cannot be ruled out on {_images(result.n)}; {need}"
        figures = [acc_fig, speed_fig, size_fig]
    figures = [f for f in figures if f is not None][:3]
    return _recommendation(action, reason, verdict, figures, layers)


def metric_verdict(name: str, drop: float, drop_ci95: Sequence[float] | None, n: int,
                   tolerance: float = DEFAULT_TOLERANCE) -> AccuracyVerdict:
    """The verdict for a task metric (`calib.metrics.MetricResult`: mAP, mIoU, argmax agreement),
    drop = FP32 - INT8 as a fraction, with its paired bootstrap interval over images. The same
    non-inferiority rule as top-1 (`recommend`), read off the interval alone (there is no exact
    test of a mAP): a loss when the whole interval is above 0 and the drop above the tolerance, a
    gain when it is below 0, no measurable loss when its upper end is below the tolerance, else
    inconclusive. An interval of no width (no image changed) reaches up to the exact bound of 0
    changed images in n. Images needed: the interval's half-width shrinks as 1/sqrt(n) (the bootstrap's
    own scaling), so n (half-width / room)^2 images bring its upper end under the tolerance, room
    being the distance from the drop to the tolerance; None when the drop itself reaches it."""
    if not 0.0 < tolerance < 1.0:
        raise ValueError(f"tolerance must be in (0, 1), got {tolerance}")
    common = dict(tolerance=tolerance, n=n, drop=drop)
    if drop_ci95 is None:
        return AccuracyVerdict("inconclusive", f"no interval for the {name} drop on {_images(n)}: evaluate on "
                                               f"more images", drop_ci95=[drop, drop], **common)
    lo, hi = drop_ci95
    if lo == hi and n > 0:
        # No image moved the metric: resamples of identical pairs never spread, so the bootstrap
        # interval is a point. A change on fewer than 1 in n images is not ruled out by n images:
        # the upper end is at least the exact 95% bound of 0 changed images in n (Clopper-Pearson),
        # as Tango's interval of a classifier's top-1 drop is with no discordant image.
        hi = max(hi, 1.0 - 0.025 ** (1.0 / n))
    ci = f"95% CI of the {name} drop {_pts(lo)} to {_pts(hi)} points on {_images(n)}"
    common["drop_ci95"] = [lo, hi]
    if lo > 0.0 and drop > tolerance:
        return AccuracyVerdict("loss", f"loss of {_pts(lo)} to {_pts(hi)} points of {name} ({ci})", **common)
    if hi < 0.0:
        return AccuracyVerdict("gain", f"INT8 scored higher: gain of {_pts(-hi)} to {_pts(-lo)} points of {name} "
                                       f"({ci})", **common)
    if hi < tolerance:
        return AccuracyVerdict("no_loss", f"no measurable loss ({ci}, below the {_pts(tolerance)}-point "
                                          f"tolerance)", **common)
    room = tolerance - max(drop, 0.0)
    need = None
    if room > 0.0:
        need = math.ceil(n * ((hi - drop) / room) ** 2)
        need = need if need <= MAX_IMAGES else None
    advice = f"evaluate on about {need} images" if need is not None else "no practical number of images would tell"
    return AccuracyVerdict("inconclusive", f"not enough images to tell a loss below {_pts(hi)} points of {name}; "
                                           f"{advice} ({ci})", images_needed=need, **common)


def recommend_metric(name: str, drop: float, drop_ci95: Sequence[float] | None, n: int,
                     tolerance: float = DEFAULT_TOLERANCE, size_mb: dict | None = None,
                     float_layers: Sequence[str] = (), fp32_against_labels: float | None = None) -> Recommendation:
    """The recommendation of a run judged by a task metric (`metric_verdict`), by `recommend`'s
    rules without the speed rule (a task report times nothing): a loss above the tolerance ships
    FP32, an upper end below it ships INT8 (with `float_layers` in float), anything else asks
    for more images. Before any of them: when FP32 itself scores less than NO_SCORE against the
    labels (`fp32_against_labels`; None when the figures are against FP32) there is nothing to
    lose and so no decision to make; the labels and the preprocessing are to be checked first."""
    verdict = metric_verdict(name, drop, drop_ci95, n, tolerance)
    lo, hi = verdict.drop_ci95
    acc_fig = {"name": f"{name}_drop", "drop": round(drop, 6), "ci95": [round(lo, 6), round(hi, 6)],
               "n": n, "tolerance": tolerance,
               "text": f"{name} drop {_pts(drop)} points (95% CI {_pts(lo)} to {_pts(hi)}, {_images(n)})"}
    figures = [f for f in (acc_fig, _size_figure(size_mb)) if f is not None]
    layers = list(float_layers)
    if fp32_against_labels is not None and fp32_against_labels < NO_SCORE:
        reason = (f"FP32 itself scores {fp32_against_labels:.4f} {name} against the labels; check the labels and "
                  f"the preprocessing first")
        headline = _HEADLINES[EVALUATE_MORE]   # the figures are no reason: the sentence leaves them out
        return Recommendation(EVALUATE_MORE, headline, f"{headline}: {reason}.", reason, verdict, figures, layers)
    if verdict.kind == "loss":
        action, reason = SHIP_FP32, f"INT8 loses more than the {_pts(tolerance)}-point tolerance of {name}"
    elif verdict.kind in ("no_loss", "gain"):
        action = SHIP_INT8_FLOAT_LAYERS if layers else SHIP_INT8
        reason = f"a loss of {_pts(tolerance)} points of {name} or more is ruled out at 95% confidence"
    else:
        action = EVALUATE_MORE
        need = (f"evaluate on about {verdict.images_needed} images" if verdict.images_needed
                else "evaluate on more images")
        reason = f"a loss of up to {_pts(hi)} points of {name} cannot be ruled out on {_images(n)}; {need}"
    return _recommendation(action, reason, verdict, figures, layers)


__all__ = ["distinct", "times", "DEFAULT_TOLERANCE", "EVALUATE_MORE", "NO_SCORE", "SHIP_FP32", "SHIP_INT8",
           "SHIP_INT8_FLOAT_LAYERS", "AccuracyVerdict", "Recommendation", "accuracy_verdict", "budget_tolerance",
           "images_needed", "metric_verdict", "recommend", "recommend_metric"]
