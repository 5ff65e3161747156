"""`calib run --labels` (issue 21): the task metric against ground truth, through the command line,
on models whose outputs the test controls (tests/commands/labelled_models.py), so the figures can
be computed by hand. The metric-level hand computations are in tests/metrics; these check that the
command wires the labels in: images matched by file name, boxes mapped back through the letterbox,
masks put where the model saw the image."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.commands.labelled_models import (box_detector, calibration_images, coco_boxes, colour_segmenter,
                                            half_and_half_images, image_masks, solid_images, write_json)
from tests.test_cli import calib

pytest.importorskip("faster_coco_eval", reason="detection mAP needs faster-coco-eval (calib[detect])")


def run_args(model, data, evaluation, work, *extra):
    return ["run", "--model", model, "--dataset", "images", "--data-dir", data, "--eval-data-dir", evaluation,
            "--preprocess", "letterbox", "--cache-dir", work / "caches", "--speed-seconds", 0, "--workers", 0,
            "--no-html", *extra]


def hand_map() -> tuple[float, float]:
    """COCO AP of the detector on a.png and b.png (tests/commands/labelled_models.py), by hand.

    Detections (image, anchor, score) by score: a0 0.902 (TP, IoU 1), b1 0.8 (TP, IoU 1), a1 0.6
    (FP), b2 0.502 (FP), a2 0.302 (IoU 0.641: TP at IoU thresholds 0.50, 0.55, 0.60, FP above),
    b0 0.2 (FP); 4 ground-truth boxes (b.png's second one is never found).
    - Thresholds 0.50..0.60 (3): recall .25, .5, .5, .5, .75, .75 at precision 1, 1, 2/3, 1/2, 3/5,
      1/2; the envelope is 1 up to recall .5 (51 of the 101 recall points 0, .01, ..., 1), 3/5 up
      to .75 (25 points), 0 after: AP = (51 + 25 * 3/5) / 101 = 66/101.
    - Thresholds 0.65..0.95 (7): recall .5 at precision 1, then no more: AP = 51/101.
    mAP@0.5 = 66/101; mAP@0.5:0.95 = (3 * 66 + 7 * 51) / (10 * 101).
    """
    return 66 / 101, (3 * 66 + 7 * 51) / 1010


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    work = tmp_path_factory.mktemp("labelled")
    return {"work": work, "calibration": calibration_images(work / "calibration"),
            "solid": solid_images(work / "solid"), "halves": half_and_half_images(work / "halves"),
            "detector": box_detector(work / "detector.onnx"), "segmenter": colour_segmenter(work / "segmenter.onnx"),
            "coco": write_json(coco_boxes(), work / "instances.json")}


def test_detection_map_against_coco_labels_is_the_hand_computation(folders, tmp_path):
    f = folders
    calib(*run_args(f["detector"], f["calibration"], f["solid"], tmp_path, "--task", "detect", "--labels", f["coco"],
                    "--out", tmp_path / "labelled"))
    report = json.loads((tmp_path / "labelled" / "report.json").read_text())
    m = report["metric"]
    map50, map5095 = hand_map()
    assert m["reference"] == "labels" and m["name"] == "mAP@0.5:0.95" and m["n"] == 2
    assert report["labels"] == str(f["coco"].resolve())
    for model in ("fp32", "int8"):   # the scores' order survives INT8 (they are 0.1 apart): the same figures
        assert m["per_model"][model]["mAP@0.5"] == pytest.approx(map50, abs=1e-6), model
        assert m["per_model"][model]["mAP@0.5:0.95"] == pytest.approx(map5095, abs=1e-6), model
    assert m["fp32"] == pytest.approx(map5095, abs=1e-6) and m["drop"] == pytest.approx(0.0, abs=1e-6)
    assert "against the labels" in (tmp_path / "labelled" / "report.md").read_text()
    # Without --labels the same run is judged against FP32's own detections.
    calib(*run_args(f["detector"], f["calibration"], f["solid"], tmp_path, "--task", "detect",
                    "--out", tmp_path / "fp32"))
    report = json.loads((tmp_path / "fp32" / "report.json").read_text())
    assert report["metric"]["reference"] == "fp32" and report["labels"] is None and report["metric"]["fp32"] == 1.0


def test_masks_of_the_images_size_are_letterboxed_like_the_image(folders, tmp_path):
    """The images are red on the left half and blue on the right; the masks (128x96, the images'
    size) say class 0 on the left, class 1 on the top right quarter and class 2 on the bottom right.
    Letterboxed to 64x64 (image rows 8..55, padding void), over both images: class 0 I = U = 32x48
    (IoU 1), class 1 never predicted (IoU 0), class 2 predicted on 32x48 pixels of which 32x24 are
    class 2 (IoU 1/2): mIoU = 1/2."""
    f = folders
    masks = image_masks(tmp_path / "masks")
    calib(*run_args(f["segmenter"], f["calibration"], f["halves"], tmp_path, "--task", "segment", "--labels", masks,
                    "--out", tmp_path / "out"))
    m = json.loads((tmp_path / "out" / "report.json").read_text())["metric"]
    assert m["reference"] == "labels" and m["name"] == "mIoU"
    assert m["fp32"] == pytest.approx(0.5, abs=1e-9) and m["int8"] == pytest.approx(0.5, abs=1e-9)


def test_masks_of_the_outputs_size_are_taken_as_they_are(folders, tmp_path):
    """The same split drawn on 64x64 .npy masks, read as already in the output's geometry: the
    letterbox padding (rows 0..7 and 56..63, gray, class 0 for the model) now counts. Class 0:
    I = 32x64, U = 32x64 + 32x16 (IoU 0.8); class 1: IoU 0; class 2: truth rows 32..63, predicted
    rows 8..55 of the right half: I = 32x24, U = 32x32 + 32x48 - 32x24 (IoU 3/7). mIoU = (0.8 + 3/7) / 3."""
    f = folders
    masks = image_masks(tmp_path / "masks", ".npy", (64, 64))
    calib(*run_args(f["segmenter"], f["calibration"], f["halves"], tmp_path, "--task", "segment", "--labels", masks,
                    "--out", tmp_path / "out"))
    m = json.loads((tmp_path / "out" / "report.json").read_text())["metric"]
    assert m["reference"] == "labels"
    assert m["fp32"] == pytest.approx((0.8 + 3 / 7) / 3, abs=1e-6)   # report.json keeps 6 decimals


def test_the_geometry_maps_a_box_where_the_preset_puts_its_pixels():
    """A white rectangle on a black image lands, after each preset, where `Preprocess.geometry`
    says, and `fit_mask` puts the rectangle's mask on the same pixels (nearest neighbour)."""
    from dataclasses import replace

    from PIL import Image

    from calib.data.transforms import get_preset

    w, h, box = 300, 200, (100, 50, 180, 120)
    pixels = np.zeros((h, w, 3), np.uint8)
    pixels[box[1]:box[3], box[0]:box[2]] = 255
    mask = (pixels[..., 0] > 0).astype(np.int64)
    for pre in (get_preset("letterbox", 64), replace(get_preset("torchvision", 64), resize_to=73),
                get_preset("efficientnet-lite", 64)):
        sx, sy, ox, oy = pre.geometry(w, h)
        x1, y1, x2, y2 = box[0] * sx + ox, box[1] * sy + oy, box[2] * sx + ox, box[3] * sy + oy
        seen = pre.pixels(Image.fromarray(pixels))[..., 0] > 127
        ys, xs = np.nonzero(seen)
        assert abs(xs.min() - x1) <= 1 and abs(xs.max() + 1 - x2) <= 1, (pre.name, xs.min(), xs.max(), x1, x2)
        assert abs(ys.min() - y1) <= 1 and abs(ys.max() + 1 - y2) <= 1, (pre.name, ys.min(), ys.max(), y1, y2)
        fitted = pre.fit_mask(mask)
        assert fitted.shape == (64, 64)
        assert np.mean((fitted == 1) == seen) > 0.97, pre.name
        if pre.crop == "letterbox":   # the padding is void
            assert (fitted[: int(oy)] == 255).all() and (fitted[64 - int(oy):] == 255).all()
