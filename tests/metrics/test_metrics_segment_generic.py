"""segment (mIoU, pixel agreement) against a hand computation, with masks per batch or from a
folder; generic (argmax agreement, cosine); bad inputs as one line."""

from __future__ import annotations

import numpy as np
import pytest

from calib.errors import CalibError
from calib.metrics import get_metric

TRUTH = np.array([[[0, 0, 1], [1, 2, 2]],
                  [[2, 2, 2], [255, 0, 0]]])          # 255: void, not counted
FP32 = np.array([[[0, 0, 1], [1, 2, 2]],
                 [[2, 2, 2], [1, 0, 0]]])
INT8 = np.array([[[0, 1, 1], [1, 2, 0]],
                 [[2, 2, 2], [1, 0, 0]]])
KEYS = ["/img/a.jpg", "/img/b.jpg"]


def scores(classes: np.ndarray, c: int = 3) -> np.ndarray:
    """(N, C, H, W) one-hot scores whose argmax is `classes`."""
    return np.moveaxis(np.eye(c, dtype=np.float32)[classes], -1, 1)


def hand_miou() -> float:
    """Summed over both images (b.jpg's void pixel left out):
    class 0: I = 1 + 2, U = 3 + 2 -> 0.6; class 1: I = 2, U = 3 -> 2/3; class 2: I = 1 + 3, U = 2 + 3 -> 0.8."""
    return (0.6 + 2 / 3 + 0.8) / 3


def test_miou_against_label_masks():
    m = get_metric("segment", resamples=200)
    m.update("fp32", KEYS, {"out": scores(FP32)}, labels=TRUTH)
    m.update("int8", KEYS, {"out": scores(INT8)}, labels=TRUTH)
    r = m.result()
    assert r.reference == "labels" and r.name == "mIoU" and r.n == 2
    assert r.fp32 == pytest.approx(1.0)
    assert r.int8 == pytest.approx(hand_miou())
    assert r.extra["pixel_agreement"] == pytest.approx(9 / 11)  # 11 counted pixels, 2 differ
    assert r.drop_ci95[0] <= r.drop <= r.drop_ci95[1]


def test_masks_from_a_folder(tmp_path):
    from PIL import Image

    Image.fromarray(TRUTH[0].astype(np.uint8)).save(tmp_path / "a.png")
    np.save(tmp_path / "b.npy", TRUTH[1])
    m = get_metric("segment", labels=tmp_path)
    m.update("fp32", KEYS, {"out": scores(FP32)})
    m.update("int8", KEYS, {"out": scores(INT8)})
    assert m.result().int8 == pytest.approx(hand_miou())
    with pytest.raises(CalibError, match="labels do not match the images: no mask 'c.png'"):
        m.update("fp32", ["/img/c.jpg"], {"out": scores(FP32[:1])})


def test_without_labels_fp32_is_the_reference():
    m = get_metric("segment")
    m.update("fp32", KEYS, {"out": FP32.astype(np.int64)})  # integer class maps are accepted too
    m.update("int8", KEYS, {"out": INT8.astype(np.int64)})
    r = m.result()
    assert r.reference == "fp32" and r.fp32 == pytest.approx(1.0) and r.int8 < 1.0
    assert r.extra["pixel_agreement"] == pytest.approx(10 / 12)


def test_segment_bad_inputs():
    m = get_metric("segment")
    with pytest.raises(CalibError, match=r"mask of '/img/a.jpg' is \[3, 2\], the output's class map \[2, 3\]"):
        m.update("fp32", KEYS, {"out": scores(FP32)}, labels=np.zeros((2, 3, 2), int))
    with pytest.raises(CalibError, match=r"expected \(N, C, H, W\) class scores"):
        m.update("fp32", KEYS, {"out": np.zeros((2, 5))})
    m = get_metric("segment")
    m.update("fp32", KEYS, {"out": scores(FP32)})
    with pytest.raises(CalibError, match="seen by one model only"):
        m.result()


def test_generic_argmax_agreement_and_fidelity():
    m = get_metric("generic", resamples=200)
    m.update("fp32", KEYS, {"seg": scores(FP32), "emb": np.ones((2, 4), np.float32)})
    m.update("int8", KEYS, {"seg": scores(INT8), "emb": np.full((2, 4), 1.1, np.float32)})
    r = m.result()
    assert r.reference == "fp32" and r.name == "argmax_agreement:seg"
    assert r.int8 == pytest.approx(10 / 12) and r.drop == pytest.approx(2 / 12)
    assert r.extra["argmax_agreement"]["emb"]["agreement"] == 1.0  # (N, 4) is dense too: argmax over 4
    outs = {o["name"]: o for o in r.extra["outputs"]}
    assert outs["emb"]["sqnr_db"] == pytest.approx(20.0) and outs["emb"]["cosine"] == pytest.approx(1.0)


def test_generic_without_dense_outputs_uses_cosine():
    m = get_metric("generic")
    m.update("fp32", KEYS, {"v": np.array([[1.0], [2.0]])})
    m.update("int8", KEYS, {"v": np.array([[1.0], [-2.0]])})
    r = m.result()
    assert r.name == "cosine:v" and r.int8 == pytest.approx(0.0)
