"""Verdicts in words and the ship/no-ship recommendation, from synthetic per-image correctness."""

import json
import math

import numpy as np
import pytest

from calib.stats.paired import mcnemar_exact, paired, tango_interval, z_value
from calib.stats.verdict import (DEFAULT_TOLERANCE, EVALUATE_MORE, SHIP_FP32, SHIP_INT8, SHIP_INT8_FLOAT_LAYERS,
                                    accuracy_verdict, images_needed, recommend)

Z = z_value()
SPEED_FAST = {"fp32": {"latency_ms_b1": 6.8, "throughput_b32": 300.0},
              "int8": {"latency_ms_b1": 3.2, "throughput_b32": 700.0}}
SPEED_SLOW = {"fp32": {"latency_ms_b1": 6.8}, "int8": {"latency_ms_b1": 7.5}}
SIZE = {"fp32": 18.5, "int8": 5.1}


def _run(n: int, broke: int, fixed: int, seed: int = 0, top1: float = 0.75) -> tuple[np.ndarray, np.ndarray]:
    """FP32 and INT8 correctness on n images: INT8 breaks `broke` of FP32's right images and fixes
    `fixed` of its wrong ones; images shuffled."""
    rng = np.random.default_rng(seed)
    fp32 = np.zeros(n, bool)
    fp32[:int(top1 * n)] = True
    int8 = fp32.copy()
    right, wrong = np.flatnonzero(fp32), np.flatnonzero(~fp32)
    int8[rng.choice(right, broke, replace=False)] = False
    int8[rng.choice(wrong, fixed, replace=False)] = True
    order = rng.permutation(n)
    return fp32[order], int8[order]


def test_100_and_400_images_of_the_same_model_differ_honestly_in_confidence():
    # One synthetic model, evaluated on 400 images; the first 100 are a 100-image evaluation of it.
    # INT8 changed correctness on one image (a fix), outside the first 100.
    fp32, int8 = _run(400, 0, 1, seed=1)
    changed = np.flatnonzero(fp32 != int8)
    order = np.concatenate([np.setdiff1d(np.arange(400), changed), changed])  # the change is image #400
    fp32, int8 = fp32[order], int8[order]
    small, large = paired(fp32[:100], int8[:100]), paired(fp32, int8)
    v100, v400 = accuracy_verdict(small), accuracy_verdict(large)
    # 100 images: the interval reaches past the tolerance, so no claim; the text says how far.
    assert v100.kind == "inconclusive"
    assert small.drop_ci95[1] > DEFAULT_TOLERANCE
    assert "not enough images to tell a loss below" in v100.text
    assert v100.images_needed is not None and v100.images_needed > 100
    # 400 images: a loss of a point or more is ruled out.
    assert v400.kind == "no_loss"
    assert large.drop_ci95[1] < DEFAULT_TOLERANCE
    assert v400.text.startswith("no measurable loss")
    assert np.diff(large.drop_ci95)[0] < np.diff(small.drop_ci95)[0] / 2
    # and the recommendations follow
    assert recommend(small, speed=SPEED_FAST).action == EVALUATE_MORE
    assert recommend(large, speed=SPEED_FAST).action == SHIP_INT8


def test_same_discordance_rate_100_vs_400_images_narrower_but_same_kind_of_claim():
    # INT8 breaks 2% and fixes 1% of the images at both sizes: a real 1-point loss.
    small, large = paired(*_run(100, 2, 1)), paired(*_run(400, 8, 4))
    assert small.drop == large.drop
    w_small, w_large = np.diff(small.drop_ci95)[0], np.diff(large.drop_ci95)[0]
    assert w_large < w_small * 0.6
    vs, vl = accuracy_verdict(small), accuracy_verdict(large)
    assert vs.kind == vl.kind == "inconclusive"
    # the bound quoted in words is the interval's upper end, and it shrinks with more images
    assert f"{100 * small.drop_ci95[1]:.1f}" in vs.text and f"{100 * large.drop_ci95[1]:.1f}" in vl.text
    assert vl.images_needed > 400


def test_significant_loss_is_a_loss_of_x_to_y_points():
    r = paired(*_run(400, 14, 2))
    v = accuracy_verdict(r)
    assert r.significant
    assert v.kind == "loss"
    lo, hi = r.drop_ci95
    assert v.text.startswith(f"loss of {100 * lo:.1f} to {100 * hi:.1f} points")
    assert "broke 14 images" in v.text and "fixed 2" in v.text


def test_significant_gain_is_reported_as_a_gain():
    r = paired(*_run(400, 1, 12))
    v = accuracy_verdict(r)
    assert r.significant and r.drop < 0
    assert v.kind == "gain" and "INT8 scored higher" in v.text


def test_negative_drop_of_two_images_is_explained_not_claimed():
    # the case: 250 images, INT8 "better" by 0.8 points = 2 images
    r = paired(*_run(250, 1, 3))
    assert r.drop == pytest.approx(-0.008)
    v = accuracy_verdict(r)
    assert v.kind in ("inconclusive", "no_loss")
    assert "broke 1 image FP32 got right and fixed 3" in v.text
    # a tolerance of 2 points: no measurable loss, and the 2-image difference is called chance
    v2 = accuracy_verdict(r, tolerance=0.02)
    assert v2.kind == "no_loss" and "within chance" in v2.text


def test_no_measurable_loss_requires_the_upper_end_below_the_tolerance():
    r = paired(*_run(400, 0, 0))
    assert accuracy_verdict(r, 0.01).kind == "no_loss"      # +-0.95 points
    assert accuracy_verdict(r, 0.009).kind == "inconclusive"


def test_images_needed_is_the_smallest_decisive_size():
    def decisive(b, c, n, tol):  # the verdict's rule: upper end below tol, or a significant loss
        lo, hi = tango_interval(b, c, n)
        return hi < tol or (lo > 0 and mcnemar_exact(round(b), round(c)) < 0.05)

    for b, c, n, tol in [(1, 1, 100, 0.01), (8, 4, 400, 0.01), (3, 0, 100, 0.01), (2, 2, 400, 0.005),
                         (5, 0, 400, 0.01), (30, 20, 1000, 0.02)]:
        assert not decisive(b, c, n, tol)
        need = images_needed(b, c, n, tol)
        assert need > n
        assert decisive(b * need / n, c * need / n, need, tol)
        assert not decisive(b * (need - 1) / n, c * (need - 1) / n, need - 1, tol)


def test_images_needed_is_n_when_already_decisive():
    assert images_needed(0, 0, 400) == 400
    assert images_needed(14, 2, 400) == 400


def test_images_needed_with_no_discordance_is_the_closed_form():
    for tol in (0.01, 0.02, 0.005):
        expected = math.floor(Z ** 2 * (1 / tol - 1)) + 1  # z^2/(N + z^2) < tol
        assert images_needed(0, 0, 50, tol) == expected
    assert images_needed(0, 0, 100) == 381


@pytest.mark.parametrize("q,rel", [(0.04, 0.06), (0.1, 0.01), (0.2, 0.005)])
def test_images_needed_follows_the_normal_approximation_for_many_discordant_images(q, rel):
    n, tol = 1000, 0.01
    b = c = int(q * n / 2)
    approx = Z ** 2 * q / tol ** 2   # N ~ z^2 q / tol^2 when the observed drop is 0
    assert images_needed(b, c, n, tol) == pytest.approx(approx, rel=rel)


def test_images_needed_for_an_observed_loss_uses_the_larger_margin():
    # d = 0.8 points with tol = 1: deciding needs the half-width below max(0.2, 0.8) = 0.8 points
    # (a significant loss), not below 0.2 (which would need 16x more images).
    n, tol, b, c = 1000, 0.01, 54, 46   # q = 10%, d = 0.8%
    approx = Z ** 2 * 0.1 / 0.008 ** 2
    assert images_needed(b, c, n, tol) == pytest.approx(approx, rel=0.06)


def test_verdict_json_and_bad_tolerance():
    v = accuracy_verdict(paired(*_run(100, 1, 1)))
    js = json.loads(json.dumps(v.to_json()))
    assert js["kind"] == "inconclusive" and js["images_needed"] == v.images_needed
    with pytest.raises(ValueError):
        accuracy_verdict(paired(*_run(100, 1, 1)), tolerance=0)
    with pytest.raises(ValueError):
        images_needed(1, 1, 100, tolerance=1.5)


# ----------------------------------------------------------------------------- recommendation
def test_ship_int8_with_the_figures_that_justify_it():
    rec = recommend(paired(*_run(800, 1, 1)), speed=SPEED_FAST, size_mb=SIZE, backend="ort-cpu")
    assert rec.action == SHIP_INT8 and rec.headline == "Ship INT8"
    assert [f["name"] for f in rec.figures] == ["top1_drop", "latency_b1", "size"]
    assert rec.figures[1]["speedup"] == pytest.approx(6.8 / 3.2, rel=1e-3)
    assert rec.sentence.startswith("Ship INT8:") and rec.sentence.endswith(".")
    assert "5.1 MB instead of 18.5 MB" in rec.sentence
    json.dumps(rec.to_json())


def test_ship_int8_with_float_layers_when_a_fallback_was_used():
    layers = ["conv_stem", "blocks.6.0.conv_pwl", "head.fc"]
    rec = recommend(paired(*_run(800, 0, 0)), speed=SPEED_FAST, float_layers=layers)
    assert rec.action == SHIP_INT8_FLOAT_LAYERS
    assert rec.float_layers == layers
    assert all(name in rec.headline for name in layers) and "3 layers in float" in rec.headline


def test_ship_fp32_when_int8_is_slower_even_if_accurate():
    rec = recommend(paired(*_run(800, 0, 0)), speed=SPEED_SLOW, backend="ort-cpu")
    assert rec.action == SHIP_FP32
    assert "not faster" in rec.reason and "ort-cpu" in rec.reason
    assert rec.figures[0]["name"] == "latency_b1" and rec.figures[0]["speedup"] < 1


def test_min_speedup_is_a_threshold():
    r = paired(*_run(800, 0, 0))
    assert recommend(r, speed=SPEED_FAST, min_speedup=2.0).action == SHIP_INT8
    assert recommend(r, speed=SPEED_FAST, min_speedup=3.0).action == SHIP_FP32


def test_throughput_decides_when_latency_is_missing():
    speed = {"fp32": {"throughput_b32": 300.0}, "int8": {"throughput_b32": 250.0}}
    rec = recommend(paired(*_run(800, 0, 0)), speed=speed)
    assert rec.action == SHIP_FP32 and rec.figures[0]["name"] == "throughput_b32"


def test_ship_fp32_when_the_loss_is_significant_and_beyond_the_tolerance():
    r = paired(*_run(400, 14, 2))
    rec = recommend(r, speed=SPEED_FAST, size_mb=SIZE)
    assert r.significant and r.drop > DEFAULT_TOLERANCE
    assert rec.action == SHIP_FP32 and "tolerance" in rec.reason
    assert rec.accuracy.kind == "loss"
    # the same loss with a looser tolerance is acceptable only once the interval is below it
    assert recommend(r, tolerance=0.06).action == SHIP_INT8


def test_ship_fp32_is_decided_by_the_point_estimate_not_the_interval():
    """A significant loss whose point estimate exceeds the tolerance ships FP32 even though the
    interval's lower end is below the tolerance (10 broken, 1 fixed of 400: drop 2.25 points, CI
    0.8 to 4.3): the rule is on the estimate (a loss of 2 points is likely, not just possible)."""
    r = paired(*_run(400, 10, 1))
    lo, hi = r.drop_ci95
    assert r.significant and r.drop == pytest.approx(0.0225)
    assert 0.0 < lo < DEFAULT_TOLERANCE < r.drop < hi
    rec = recommend(r, speed=SPEED_FAST, size_mb=SIZE)
    assert rec.action == SHIP_FP32 and "tolerance" in rec.reason
    assert rec.accuracy.kind == "loss"
    # a tolerance above the estimate (but below the interval's upper end) asks for more images
    assert recommend(r, tolerance=0.03, speed=SPEED_FAST).action == EVALUATE_MORE


def test_evaluate_more_when_the_interval_straddles_the_tolerance():
    r = paired(*_run(100, 1, 1))
    rec = recommend(r, speed=SPEED_FAST, size_mb=SIZE)
    assert rec.action == EVALUATE_MORE
    assert f"evaluate on {rec.accuracy.images_needed} images" in rec.sentence
    assert len(rec.figures) == 3


def test_recommendation_without_speed_or_size():
    rec = recommend(paired(*_run(800, 0, 0)))
    assert rec.action == SHIP_INT8 and [f["name"] for f in rec.figures] == ["top1_drop"]


# ----------------------------------------------------------------------------- wording (issue 22)
def test_speed_ratios_are_said_the_right_way_round():
    from calib.stats.verdict import times

    assert times(2.125) == "2.12× faster" or times(2.125) == "2.13× faster"
    assert times(1 / 1.48) == "1.48× slower"          # not "0.67× slower"
    assert times(0.999) == "as fast as FP32"
    slow = recommend(paired(*_run(800, 1, 1)), speed={"fp32": {"latency_ms_b1": 2.0},
                                                      "int8": {"latency_ms_b1": 2.96}})
    assert slow.figures[0]["text"].startswith("INT8 1.48× slower at batch 1 (2.96 ms vs 2.00 ms)")
    assert slow.figures[0]["speedup"] == pytest.approx(2.0 / 2.96, abs=1e-3)   # the key keeps its meaning
    tput = recommend(paired(*_run(800, 1, 1)), speed={"fp32": {"throughput_b32": 300.0},
                                                      "int8": {"throughput_b32": 200.0}})
    assert "INT8 1.50× slower at batch 32 (200 vs 300 images/s)" in tput.sentence


def test_sizes_get_the_digits_that_tell_them_apart_or_are_said_equal():
    from calib.stats.verdict import distinct

    assert distinct(0.1234, 0.1456) == ("0.12", "0.15")
    assert distinct(5.1, 18.5) == ("5.1", "18.5")
    assert distinct(0.1, 0.1) is None
    near = recommend(paired(*_run(800, 1, 1)), size_mb={"fp32": 0.1411, "int8": 0.1049})
    assert "INT8 model 0.10 MB instead of 0.14 MB" in near.sentence
    same = recommend(paired(*_run(800, 1, 1)), size_mb={"fp32": 0.1, "int8": 0.1})
    assert "INT8 model the same size as FP32 (0.1 MB)" in same.sentence


# ----------------------------------------------------------------------------- task metrics
def test_a_metric_drop_whose_interval_is_under_the_tolerance_ships_int8():
    from calib.stats.verdict import SHIP_INT8, metric_verdict, recommend_metric

    v = metric_verdict("mAP@0.5:0.95", 0.002, [-0.004, 0.006], 200, tolerance=0.01)
    assert v.kind == "no_loss" and "0.6" in v.text and "200 images" in v.text
    r = recommend_metric("mAP@0.5:0.95", 0.002, [-0.004, 0.006], 200, tolerance=0.01)
    assert r.action == SHIP_INT8 and r.figures[0]["name"] == "mAP@0.5:0.95_drop"


def test_a_metric_loss_beyond_the_tolerance_ships_fp32_and_a_small_significant_one_does_not():
    from calib.stats.verdict import EVALUATE_MORE, SHIP_FP32, recommend_metric

    assert recommend_metric("mIoU", 0.05, [0.03, 0.07], 100, tolerance=0.01).action == SHIP_FP32
    # Significant (the interval excludes 0) but not beyond the tolerance: more images decide.
    r = recommend_metric("mIoU", 0.004, [0.001, 0.012], 100, tolerance=0.01)
    assert r.action == EVALUATE_MORE and r.accuracy.kind == "inconclusive"
    # The metric's name is a noun of any first letter: "a argmax agreement loss" read badly.
    assert r.reason.startswith("a loss of up to 1.2 points of mIoU cannot be ruled out")
    shipped = recommend_metric("argmax agreement", 0.0, [-0.001, 0.001], 500, tolerance=0.01)
    assert shipped.reason == "a loss of 1.0 points of argmax agreement or more is ruled out at 95% confidence"


def test_images_needed_scales_the_half_width_as_one_over_root_n():
    from calib.stats.verdict import metric_verdict

    # Half-width 0.02 above a drop of 0, tolerance 0.01: the half-width must halve, so 4x the images.
    v = metric_verdict("mAP", 0.0, [-0.02, 0.02], 50, tolerance=0.01)
    assert v.kind == "inconclusive" and v.images_needed == 200
    # A drop at the tolerance itself can never be ruled out.
    assert metric_verdict("mAP", 0.02, [-0.01, 0.05], 50, tolerance=0.01).images_needed is None


def test_a_metric_without_an_interval_asks_for_more_images_and_a_gain_is_a_gain():
    from calib.stats.verdict import metric_verdict

    assert metric_verdict("mAP", 0.0, None, 1).kind == "inconclusive"
    assert metric_verdict("mAP", -0.03, [-0.05, -0.01], 300).kind == "gain"


def test_an_interval_of_no_width_does_not_claim_more_than_its_images_can_tell():
    """Identical outputs give a bootstrap interval [0, 0] on any number of images: 3 images cannot
    rule out a 1-point loss, 1000 can (the exact bound of 0 changed images in n, 3.7 in 1000)."""
    from calib.stats.verdict import metric_verdict

    few = metric_verdict("mAP", 0.0, [0.0, 0.0], 3, tolerance=0.01)
    assert few.kind == "inconclusive" and few.drop_ci95[1] > 0.5
    many = metric_verdict("mAP", 0.0, [0.0, 0.0], 1000, tolerance=0.01)
    assert many.kind == "no_loss" and 0.003 < many.drop_ci95[1] < 0.004


def test_an_fp32_that_scores_nothing_against_the_labels_decides_nothing():
    """FP32 under NO_SCORE against the labels: whatever the drop says, the labels are to be checked
    first, and the sentence carries no figure; the figures themselves stay in the recommendation."""
    from calib.stats.verdict import NO_SCORE, recommend_metric

    args = ("mIoU", 0.0, [0.0, 0.0], 1000)
    decided = recommend_metric(*args, tolerance=0.01, fp32_against_labels=NO_SCORE)
    assert decided.action == SHIP_INT8
    r = recommend_metric(*args, tolerance=0.01, size_mb=SIZE, float_layers=["conv1"], fp32_against_labels=0.002)
    assert r.action == EVALUATE_MORE and r.headline == "Not decided yet"
    assert r.reason == "FP32 itself scores 0.0020 mIoU against the labels; check the labels and the preprocessing first"
    assert r.sentence == f"Not decided yet: {r.reason}."
    assert [f["name"] for f in r.figures] == ["mIoU_drop", "size"] and r.float_layers == ["conv1"]
    assert r.accuracy.kind == "no_loss"
    assert recommend_metric(*args, tolerance=0.01, fp32_against_labels=None).action == SHIP_INT8


def test_the_budget_is_the_tolerance_kept_inside_zero_and_one():
    from calib.stats.verdict import budget_tolerance

    assert budget_tolerance(None) == DEFAULT_TOLERANCE
    assert budget_tolerance(0.02) == 0.02
    assert budget_tolerance(0.0) == 0.001 and budget_tolerance(1.0) == 0.999
