"""Top-1, top-5 and agreement against answers worked out by hand, and the per-image logits powers
behind the logits SQNR."""

import numpy as np
import pytest

from calib.stats.accuracy import Evaluation, Predictions
from calib.tensor import top5


def test_top5_is_best_first_and_handles_few_classes():
    logits = np.array([[0.1, 0.9, 0.3, 0.7, 0.2, 0.8, 0.0],
                       [5.0, 4.0, 3.0, 2.0, 1.0, 0.0, -1.0]], np.float32)
    assert top5(logits).tolist() == [[1, 5, 3, 2, 4], [0, 1, 2, 3, 4]]
    # 3 classes: every class, best first (this crashed with a traceback before)
    assert top5(np.array([[0.2, 0.5, 0.3]], np.float32)).tolist() == [[1, 2, 0]]
    assert top5(np.array([[1, 4, 2, 3, 0]], np.float32)).tolist() == [[1, 3, 2, 0, 4]]


def test_top1_top5_and_agreement_known_answers():
    labels = np.array([0, 1, 2, 3])
    a = Predictions(labels, np.array([[0, 9, 8, 7, 6], [5, 1, 8, 7, 6], [9, 8, 7, 6, 5], [3, 1, 2, 0, 4]]))
    b = Predictions(labels, np.array([[0, 1, 2, 3, 4], [1, 0, 2, 3, 4], [9, 8, 7, 6, 2], [2, 3, 1, 0, 4]]))
    assert a.top1_accuracy == 0.5          # images 0 and 3
    assert a.top5_accuracy == 0.75         # image 2 misses
    assert b.top1_accuracy == 0.5          # images 0 and 1
    assert b.top5_accuracy == 1.0
    ev = Evaluation(["a", "b", "c", "d"], [], {"fp32": a, "int8": b})
    assert ev.agreement() == 0.5            # top-1 equal on images 0 and 2
    assert ev.summary("int8") == {"top1": 0.5, "top5": 1.0}


def test_evaluate_keeps_per_image_logits_powers():
    """Noise per image is sum((fp32 - int8)^2) and signal sum(fp32^2), so the logits SQNR over
    the run is the ratio of their sums (batches handed to the pass, no decoding)."""
    from calib.passes import Images, evaluate

    class Fixed:
        output_names = ["logits"]

        def __init__(self, fn):
            self.fn = fn

        def infer(self, x, outputs=None):
            return [self.fn(x)]

    images = np.arange(4 * 3, dtype=np.float32).reshape(4, 3, 1, 1)
    data = Images(images, np.array([0, 1, 2, 0]), ["a", "b", "c", "d"])
    fp32 = Fixed(lambda x: x.reshape(len(x), 3))
    int8 = Fixed(lambda x: x.reshape(len(x), 3) + 1.0)
    ev, _ = evaluate({"fp32": fp32, "int8": int8}, data, batch_size=2, progress=None)
    ref = images.reshape(4, 3).astype(np.float64)
    assert np.allclose(ev.signal, (ref * ref).sum(1)) and np.allclose(ev.noise["int8"], 3.0)
    assert ev.logits_sqnr_db() == pytest.approx(10 * np.log10((ref * ref).sum() / 12.0))
    assert ev.keys == ["a", "b", "c", "d"] and ev.predictions["int8"].labels.tolist() == [0, 1, 2, 0]


def test_above_chance_is_an_exact_one_sided_test_against_one_in_k():
    from calib.stats.accuracy import above_chance

    assert not above_chance(0, 5, 1000)            # 0%: never above chance (issue 22)
    assert above_chance(1, 5, 1000)                # p = 0.005
    assert not above_chance(3, 2000, 1000)         # 2 expected by guessing
    assert not above_chance(12, 20, 2) and above_chance(17, 20, 2)
