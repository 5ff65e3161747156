"""detect: mAP against a hand computation on a two-image COCO file, FP32 as the reference, the
numpy matches behind the bootstrap against the evaluator, and bad inputs as one line."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from calib.errors import CalibError, MissingDependency
from calib.metrics import get_metric
from calib.metrics.coco import MatchTable, coco_evaluator, evaluate_map
from calib.metrics.decode import Detections

try:
    coco_evaluator()
    HAVE_EVALUATOR = True
except MissingDependency:
    HAVE_EVALUATOR = False
needs_evaluator = pytest.mark.skipif(not HAVE_EVALUATOR, reason="needs faster-coco-eval or pycocotools (calib[detect])")

KEYS = ["/data/a.jpg", "/data/b.jpg"]


def coco_labels() -> dict:
    """a.jpg: a cat [0, 0, 10, 10] and a dog [20, 20, 10, 10]; b.jpg: a cat [0, 0, 10, 10]."""
    ann = [(1, 1, [0, 0, 10, 10]), (1, 2, [20, 20, 10, 10]), (2, 1, [0, 0, 10, 10])]
    return {"images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 64},
                       {"id": 2, "file_name": "b.jpg", "width": 64, "height": 64}],
            "annotations": [{"id": i + 1, "image_id": im, "category_id": c, "bbox": b, "area": 100.0, "iscrowd": 0}
                            for i, (im, c, b) in enumerate(ann)],
            "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}


def outputs(rows) -> dict[str, np.ndarray]:
    """boxes (2, 2, 4) xyxy and scores (2, 2, 2) from per image [(box, class, score), (...)]."""
    boxes = np.zeros((2, 2, 4), np.float32)
    scores = np.zeros((2, 2, 2), np.float32)
    for i, image in enumerate(rows):
        for j, (box, cls, score) in enumerate(image):
            boxes[i, j], scores[i, j, cls] = box, score
    return {"boxes": boxes, "scores": scores}


PERFECT = outputs([[([0, 0, 10, 10], 0, 0.9), ([20, 20, 30, 30], 1, 0.8)],
                   [([0, 0, 10, 10], 0, 0.9), ([40, 40, 41, 41], 0, 0.0)]])
# a.jpg: the cat exactly (IoU 1, 0.9); the dog at IoU 0.62 (0.8).
# b.jpg: a false cat far away scored highest (0.95); the cat at IoU 0.72 (0.7).
FLAWED = outputs([[([0, 0, 10, 10], 0, 0.9), ([20, 20, 30, 26.2], 1, 0.8)],
                  [([50, 50, 60, 60], 0, 0.95), ([0, 0, 10, 7.2], 0, 0.7)]])


def hand_map() -> tuple[float, float]:
    """COCO AP by hand (101 recall points, precision envelope).
    cat (2 ground truths), detections by score: FP, TP, then the IoU-0.72 one.
      IoU thresholds 0.50..0.70 (5): TP -> recall 0, .5, 1 at precision 0, 1/2, 2/3; envelope 2/3
        everywhere: AP = 2/3.
      0.75..0.95 (5): FP -> recall 0, .5, .5; envelope 1/2 up to recall .5 (51 of 101 points), 0
        after: AP = 0.5 * 51/101.
    dog (1 ground truth), one detection at IoU 0.62: AP 1 at 0.50, 0.55, 0.60; 0 at the 7 others.
    """
    cat50, cat_hi = 2 / 3, 0.5 * 51 / 101
    cat = (5 * cat50 + 5 * cat_hi) / 10
    dog = 3 / 10
    return (cat50 + 1.0) / 2, (cat + dog) / 2


def run(metric, fp32, int8):
    metric.update("fp32", KEYS, fp32)
    metric.update("int8", KEYS, int8)
    return metric.result()


@needs_evaluator
def test_map_against_labels_matches_the_hand_computation(tmp_path):
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(coco_labels()))
    m = get_metric("detect", labels=str(path), decoder="boxes-scores", resamples=200)
    r = run(m, PERFECT, FLAWED)
    map50, map5095 = hand_map()
    assert r.reference == "labels" and r.name == "mAP@0.5:0.95" and r.n == 2
    assert r.fp32 == pytest.approx(1.0)
    assert r.per_model["int8"]["mAP@0.5"] == pytest.approx(map50, abs=1e-6)
    assert r.int8 == pytest.approx(map5095, abs=1e-6)
    assert r.drop == pytest.approx(1.0 - map5095, abs=1e-6)
    lo, hi = r.drop_ci95
    assert lo <= r.drop + 1e-9 and hi >= r.drop - 1e-9
    j = r.to_json()
    assert {"name", "fp32", "int8", "drop", "drop_ci95", "reference"} <= set(j)
    json.dumps(j)


@needs_evaluator
def test_without_labels_fp32_is_the_reference():
    r = run(get_metric("detect", decoder="boxes-scores", resamples=50), PERFECT, FLAWED)
    assert r.reference == "fp32"
    assert r.fp32 == pytest.approx(1.0)
    assert 0.0 < r.int8 < 1.0
    same = run(get_metric("detect", decoder="boxes-scores", resamples=50), PERFECT, PERFECT)
    assert same.drop == pytest.approx(0.0) and same.drop_ci95 == [0.0, 0.0]


@needs_evaluator
def test_fp32_scores_one_against_itself_with_more_confident_detections_than_coco_counts():
    """150 separate confident cats per image: COCO scores 100 detections per image and category,
    so the pseudo-labels keep FP32's 100 most confident (not 34/101 of the mAP)."""
    n = 150
    boxes = np.zeros((2, n, 4), np.float32)
    scores = np.zeros((2, n, 2), np.float32)
    for j in range(n):
        x, y = 12 * (j % 15), 12 * (j // 15)
        boxes[:, j] = [x, y, x + 10, y + 10]
        scores[:, j, 0] = 0.5 + 0.4 * j / n
    many = {"boxes": boxes, "scores": scores}
    r = run(get_metric("detect", decoder="boxes-scores", resamples=20), many, many)
    assert r.fp32 == pytest.approx(1.0) and r.int8 == pytest.approx(1.0)


@needs_evaluator
def test_the_interval_is_seeded():
    a = run(get_metric("detect", decoder="boxes-scores", resamples=100, seed=3), PERFECT, FLAWED)
    b = run(get_metric("detect", decoder="boxes-scores", resamples=100, seed=3), PERFECT, FLAWED)
    assert a.drop_ci95 == b.drop_ci95


def random_case(seed: int, images: int = 6, cats: int = 3):
    rng = np.random.default_rng(seed)
    coco = {"images": [{"id": i + 1, "file_name": f"{i}.jpg"} for i in range(images)], "annotations": [],
            "categories": [{"id": c + 1} for c in range(cats)]}
    dets = {}
    for i in range(images):
        boxes, scores, classes = [], [], []
        for _ in range(rng.integers(0, 5)):
            x, y, w, h = rng.uniform(0, 80), rng.uniform(0, 80), rng.uniform(4, 30), rng.uniform(4, 30)
            c = int(rng.integers(0, cats))
            crowd = int(rng.random() < 0.15)
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": i + 1, "category_id": c + 1,
                                        "bbox": [x, y, w, h], "area": w * h, "iscrowd": crowd})
            if rng.random() < 0.8:
                j = rng.normal(0, 3, 4)  # jittered, still a box (postprocess drops boxes with no area)
                boxes.append([x + j[0], y + j[1], max(x + w + j[2], x + j[0] + 1), max(y + h + j[3], y + j[1] + 1)])
                scores.append(rng.random())
                classes.append(c if rng.random() < 0.9 else int(rng.integers(0, cats)))
        for _ in range(rng.integers(0, 4)):  # false positives
            x, y = rng.uniform(0, 80, 2)
            boxes.append([x, y, x + rng.uniform(4, 30), y + rng.uniform(4, 30)])
            scores.append(rng.random())
            classes.append(int(rng.integers(0, cats)))
        dets[i + 1] = Detections(np.array(boxes, np.float64).reshape(-1, 4), np.array(scores),
                                 np.array(classes, np.int64))
    return coco, dets


def table(coco, dets, ids):
    gt = {}
    for a in coco["annotations"]:
        gt.setdefault(a["image_id"], []).append(a)
    t = MatchTable(len(ids))
    for i, iid in enumerate(ids):
        t.add(i, gt.get(iid, []), dets[iid], [1, 2, 3])
    return t


def repeated(coco, dets, ids, weights):
    """The set with image ids[i] present weights[i] times (each copy under a new id)."""
    out, out_dets = {"images": [], "annotations": [], "categories": coco["categories"]}, {}
    for iid, times in zip(ids, weights):
        for _ in range(int(times)):
            new = len(out["images"]) + 1
            out["images"].append({"id": new, "file_name": f"{new}.jpg"})
            out["annotations"] += [dict(a, image_id=new) for a in coco["annotations"] if a["image_id"] == iid]
            out_dets[new] = dets[iid]
    for k, a in enumerate(out["annotations"]):
        a["id"] = k + 1
    return out, out_dets


@needs_evaluator
@pytest.mark.parametrize("seed", range(8))
def test_the_bootstrap_matches_follow_the_evaluator(seed):
    """With every image once, the numpy matches give the evaluator's mAP; with a bootstrap
    resample's multiplicities, the evaluator's mAP on the set with each image repeated that often."""
    coco, dets = random_case(seed, images=4 + seed)
    ids = sorted(dets)
    t = table(coco, dets, ids)
    want = evaluate_map(coco, dets, [1, 2, 3])
    got = t.average_precision(np.ones(len(ids)))[0]
    assert got == pytest.approx([want["mAP@0.5"], want["mAP@0.5:0.95"]], abs=1e-9)
    for weights in np.random.default_rng(seed).multinomial(len(ids), np.ones(len(ids)) / len(ids), size=3):
        want = evaluate_map(*repeated(coco, dets, ids, weights), [1, 2, 3])
        got = t.average_precision(weights[None])[0]
        assert got == pytest.approx([want["mAP@0.5"], want["mAP@0.5:0.95"]], abs=1e-9)


@needs_evaluator
def test_labels_that_do_not_match_the_images(tmp_path):
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(coco_labels()))
    m = get_metric("detect", labels=path, decoder="boxes-scores")
    m.update("fp32", ["/data/a.jpg", "/data/zebra.jpg"], PERFECT)
    m.update("int8", ["/data/a.jpg", "/data/zebra.jpg"], FLAWED)
    with pytest.raises(CalibError, match="labels do not match the images: 1 of 2 .*zebra.jpg") as err:
        m.result()
    assert "\n" not in str(err.value)


def test_labels_that_are_not_coco(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"images": []}))
    with pytest.raises(CalibError, match="not COCO detection labels"):
        get_metric("detect", labels=path)
    with pytest.raises(CalibError, match="cannot read labels"):
        get_metric("detect", labels=tmp_path / "missing.json")


def test_a_missing_evaluator_is_one_line(monkeypatch):
    for name in ("faster_coco_eval", "pycocotools", "pycocotools.coco", "pycocotools.cocoeval"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MissingDependency, match=r"calib\[detect\]"):
        coco_evaluator()


def test_models_that_saw_different_images():
    m = get_metric("detect", decoder="boxes-scores")
    m.update("fp32", KEYS, PERFECT)
    m.update("int8", ["/data/a.jpg", "/data/c.jpg"], FLAWED)
    with pytest.raises(CalibError, match="different images"):
        m.result()


@needs_evaluator
def test_letterboxed_boxes_are_mapped_back_to_the_image():
    from calib.metrics.decode import Letterbox

    def letterboxed(out):  # the images were scaled by 2 and padded by 8 pixels on top
        boxes = out["boxes"] * 2.0
        boxes[..., [1, 3]] += 8.0
        return {"boxes": boxes, "scores": out["scores"]}

    geometry = [Letterbox(scale=2.0, pad_y=8.0)] * 2
    m = get_metric("detect", labels=coco_labels(), decoder="boxes-scores", resamples=20)
    m.update("fp32", KEYS, letterboxed(PERFECT), geometry=geometry)
    m.update("int8", KEYS, letterboxed(FLAWED), geometry=geometry)
    assert m.result().int8 == pytest.approx(hand_map()[1], abs=1e-6)


def test_pycocotools_and_faster_coco_eval_agree(monkeypatch):
    pytest.importorskip("faster_coco_eval")
    pytest.importorskip("pycocotools")
    import calib.metrics.coco as coco_module
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    for seed in range(3):
        coco, dets = random_case(seed)
        fast = evaluate_map(coco, dets, [1, 2, 3])
        monkeypatch.setattr(coco_module, "coco_evaluator", lambda: (COCO, COCOeval, "pycocotools"))
        assert evaluate_map(coco, dets, [1, 2, 3]) == pytest.approx(fast, abs=1e-12)
        monkeypatch.undo()


def test_a_decoder_that_does_not_fit_is_one_line():
    m = get_metric("detect")  # auto: one (N, 4+C, A) output or boxes + scores
    with pytest.raises(CalibError, match=r"cannot tell the detection layout of outputs logits \(2, 1000\)") as err:
        m.update("fp32", KEYS, {"logits": np.zeros((2, 1000), np.float32)})
    assert "\n" not in str(err.value)
    m = get_metric("detect", decoder="ultralytics")
    with pytest.raises(CalibError, match=r"expects an output \(N, 4\+C, A\) with C >= 1 classes, found \(2, 4, 100\)"):
        m.update("fp32", KEYS, {"out": np.zeros((2, 4, 100), np.float32)})


@needs_evaluator
def test_classes_that_do_not_map_to_the_categories():
    labels = coco_labels()
    labels["categories"].append({"id": 3, "name": "bird"})
    m = get_metric("detect", labels=labels, decoder="boxes-scores")
    m.update("fp32", KEYS, PERFECT)
    m.update("int8", KEYS, FLAWED)
    with pytest.raises(CalibError, match="scores 2 classes and the labels have 3 categories: pass category_ids"):
        m.result()
    m = get_metric("detect", labels=labels, decoder="boxes-scores", category_ids=[1, 2], resamples=10)
    m.update("fp32", KEYS, PERFECT)
    m.update("int8", KEYS, FLAWED)
    assert m.result().int8 == pytest.approx(hand_map()[1], abs=1e-6)
