"""Decoders (ultralytics' (N, 4+C, A); boxes + scores), NMS, thresholds, and layouts that do not fit."""

from __future__ import annotations

import numpy as np
import pytest

from calib.errors import CalibError
from calib.metrics.decode import (Letterbox, batched_nms, box_iou, choose_decoder, get_decoder, nms,
                                  postprocess)


def ultralytics_output() -> np.ndarray:
    """One image, 2 classes, 4 anchors (cx, cy, w, h, score0, score1 per anchor, as rows)."""
    anchors = np.array([
        [50, 50, 20, 20, 0.9, 0.1],   # class 0, kept
        [51, 50, 20, 20, 0.8, 0.05],  # class 0, IoU ~0.9 with the first: suppressed
        [51, 50, 20, 20, 0.1, 0.7],   # class 1 at the same place: another class, kept
        [10, 10, 4, 4, 0.0005, 0.0],  # below the confidence threshold
    ] + [[0, 0, 0, 0, 0, 0]] * 6, np.float32)  # empty anchors: more anchors than rows, as in real exports
    return anchors.T[None]  # (1, 6, 10)


def test_ultralytics_layout():
    dets = get_decoder("ultralytics").decode({"output0": ultralytics_output()}, 1)
    (d,) = dets
    assert d.classes.tolist() == [0, 1]
    assert d.scores.tolist() == pytest.approx([0.9, 0.7])
    assert d.boxes[0].tolist() == [40, 40, 60, 60]
    assert choose_decoder({"output0": ultralytics_output()}).name == "ultralytics"
    (t,) = get_decoder("ultralytics", transposed=True).decode({"o": np.swapaxes(ultralytics_output(), 1, 2)}, 1)
    assert t.classes.tolist() == [0, 1]


def test_thresholds_and_max_detections():
    out = {"o": ultralytics_output()}
    (d,) = get_decoder("ultralytics", conf_threshold=0.75).decode(out, 1)
    assert d.classes.tolist() == [0]
    (d,) = get_decoder("ultralytics", max_detections=1).decode(out, 1)
    assert len(d) == 1
    (d,) = get_decoder("ultralytics", iou_threshold=0.95).decode(out, 1)
    assert len(d) == 3
    with pytest.raises(CalibError, match="out of range"):
        get_decoder("ultralytics", iou_threshold=0.0)


def test_nms_is_greedy_and_class_wise():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30]], float)
    assert nms(boxes, np.array([0.5, 0.9, 0.8]), 0.5).tolist() == [1, 2]
    assert batched_nms(boxes, np.array([0.5, 0.9, 0.8]), np.array([0, 1, 0]), 0.5).tolist() == [1, 2, 0]
    assert box_iou(boxes[:1], boxes[1:2])[0, 0] == pytest.approx(90 / 110)


def test_boxes_and_scores_layout():
    boxes = np.array([[[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.9, 0.9]]], np.float32)  # y1 x1 y2 x2, normalized
    logits = np.array([[[5.0, 0.0, 0.0], [0.0, 0.0, 5.0]]], np.float32)         # background first
    dec = get_decoder("boxes-scores", box_format="yxyx", normalized=True, input_size=(100, 200),
                      activation="softmax", background=0, conf_threshold=0.05)
    (d,) = dec.decode({"boxes": boxes, "scores": logits}, 1)
    assert d.classes.tolist() == [1]  # the first anchor is background
    assert d.boxes[0].tolist() == pytest.approx([100, 50, 180, 90])
    assert choose_decoder({"b": boxes, "s": logits}).name == "boxes-scores"


def test_postprocess_multi_label_and_degenerate_boxes():
    boxes = np.array([[0, 0, 10, 10], [5, 5, 5, 9]], float)  # the second has no width
    scores = np.array([[0.6, 0.5], [0.9, 0.0]])
    d = postprocess(boxes, scores, multi_label=True)
    assert sorted(d.classes.tolist()) == [0, 1] and len(d) == 2


def test_letterbox_back_to_the_image():
    lb = Letterbox(scale=0.5, pad_x=0, pad_y=80)
    assert lb.to_original(np.array([[10, 90, 20, 100]])).tolist() == [[20, 20, 40, 40]]


def test_layouts_that_do_not_fit_name_the_shapes():
    with pytest.raises(CalibError, match=r"expects an output \(N, 4\+C, A\).*found \(1, 3, 8400\)"):
        get_decoder("ultralytics").decode({"o": np.zeros((1, 3, 8400))}, 1)
    with pytest.raises(CalibError, match=r"found \(1, 8400, 84\): it looks transposed"):
        get_decoder("ultralytics").decode({"o": np.zeros((1, 8400, 84))}, 1)
    with pytest.raises(CalibError, match=r"expects one output.*found 2: a \(1, 84, 10\), b \(1, 2\)"):
        get_decoder("ultralytics").decode({"a": np.zeros((1, 84, 10)), "b": np.zeros((1, 2))}, 1)
    with pytest.raises(CalibError, match=r"boxes \(N, A, 4\) and scores \(N, A, C\) with the same N and A, "
                                         r"found b \(1, 10, 4\) and s \(1, 12, 3\)"):
        get_decoder("boxes-scores").decode({"b": np.zeros((1, 10, 4)), "s": np.zeros((1, 12, 3))}, 1)
    with pytest.raises(CalibError, match=r"cannot tell the detection layout of outputs a \(1, 5\)"):
        choose_decoder({"a": np.zeros((1, 5))})
    with pytest.raises(CalibError, match="unknown detection decoder 'yolox'"):
        choose_decoder({"a": np.zeros((1, 5))}, "yolox")
