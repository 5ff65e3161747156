"""COCO detection evaluation: ground truth from a COCO JSON file (or FP32's detections), the
point figures from a maintained COCO evaluator, and their paired bootstrap over images.

Evaluator: faster-coco-eval (`pip install calib[detect]`), else pycocotools: the same API and
the same protocol (COCO's `COCOeval`, iouType "bbox": 10 IoU thresholds 0.50:0.05:0.95,
101-point interpolated precision, area "all", at most 100 detections per image and category;
mAP@0.5:0.95 = stats[0], mAP@0.5 = stats[1]). faster-coco-eval is preferred: a maintained
(2026 releases) pycocotools-compatible reimplementation whose per-image evaluation and
accumulation are C++ (several times faster on large sets), with a Python 3.11 wheel that needs
only numpy. pycocotools is accepted when it is what is installed.

Interval: mAP is not a sum over images, so `calib.stats.paired.bootstrap_sums` cannot resample
it; images are resampled instead (seeded multiplicities, the SAME resample for FP32 and INT8)
and mAP recomputed from per-image matches, which do not depend on other images (COCO matches
detections to ground truth within an image and category). The matching and accumulation here
follow pycocotools' `evaluateImg` and `accumulate` line by line (crowd regions, ignored ground
truth sorted last, greedy matching by score, the precision envelope, `searchsorted` at 101
recall points); an image drawn k times counts k times, which is exactly COCO's mAP of the set
with that image repeated. With every image once it gives the evaluator's figures (tested).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from calib.errors import CalibError, MissingDependency
from calib.metrics.decode import Detections, box_iou

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
MAX_DETS = 100


# ----------------------------------------------------------------------------- ground truth
def load_coco_labels(path: str | os.PathLike) -> dict:
    """A COCO JSON ground truth file: images (id, file_name), annotations (image_id, category_id,
    bbox [x, y, w, h], iscrowd), categories. One-line CalibError when it is not one."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except OSError as e:
        raise CalibError(f"cannot read labels {p}: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise CalibError(f"labels {p} are not JSON: {e.msg} at line {e.lineno}") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations")):
        raise CalibError(f"labels {p} are not COCO detection labels (need 'images' and 'annotations' lists)")
    for i, a in enumerate(data["annotations"]):
        if not isinstance(a, dict) or not {"image_id", "category_id", "bbox"} <= set(a) or len(a["bbox"]) != 4:
            raise CalibError(f"labels {p}: annotation {i} needs image_id, category_id and bbox [x, y, w, h]")
    return data


def match_images(keys: Sequence[str], coco: Mapping[str, Any]) -> dict[str, int]:
    """Sample key -> COCO image id, by file name (the key's base name against `file_name`'s, then
    without extensions). A CalibError when an image has no entry, with a count and an example."""
    by_name: dict[str, int] = {}
    by_stem: dict[str, int] = {}
    for img in coco.get("images", []):
        name = os.path.basename(str(img.get("file_name", "")))
        by_name.setdefault(name, img["id"])
        by_stem.setdefault(os.path.splitext(name)[0], img["id"])
    out, missing = {}, []
    for k in keys:
        base = os.path.basename(str(k))
        found = by_name.get(base, by_stem.get(os.path.splitext(base)[0]))
        if found is None:
            missing.append(base)
        else:
            out[k] = found
    if missing:
        raise CalibError(f"labels do not match the images: {len(missing)} of {len(keys)} evaluation images have no "
                         f"entry in the labels' 'images' (matched by file name), e.g. '{missing[0]}'")
    return out


def detections_as_ground_truth(dets: Sequence[Detections], conf: float) -> dict:
    """FP32's detections as COCO ground truth (the `reference: "fp32"` mode): image i is id i + 1,
    category = class index, boxes with score >= `conf` (FP32's confident detections, the pseudo-labels;
    its low-confidence ones would be ground truth nobody would label), at most MAX_DETS per image and
    category, the most confident: COCO's protocol scores that many detections per image and
    category, so FP32 scores 1 against its own outputs however many it finds."""
    images, anns = [], []
    for i, d in enumerate(dets):
        images.append({"id": i + 1, "file_name": str(i + 1)})
        kept: dict[int, int] = {}
        for j in np.argsort(-np.asarray(d.scores, np.float64), kind="stable"):
            b, s, c = d.boxes[j], d.scores[j], int(d.classes[j])
            if s >= conf and kept.get(c, 0) < MAX_DETS:
                kept[c] = kept.get(c, 0) + 1
                w, h = float(b[2] - b[0]), float(b[3] - b[1])
                anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(c),
                             "bbox": [float(b[0]), float(b[1]), w, h], "area": w * h, "iscrowd": 0})
    cats = sorted({a["category_id"] for a in anns} | {int(c) for d in dets for c in d.classes})
    return {"images": images, "annotations": anns, "categories": [{"id": c, "name": str(c)} for c in cats]}


# ----------------------------------------------------------------------------- the evaluator
def coco_evaluator() -> tuple[Any, Any, str]:
    """(COCO, COCOeval, package name): faster-coco-eval, else pycocotools, else MissingDependency."""
    try:
        from faster_coco_eval import COCO, COCOeval_faster

        return COCO, COCOeval_faster, "faster-coco-eval"
    except ImportError:
        pass
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        return COCO, COCOeval, "pycocotools"
    except ImportError:
        raise MissingDependency("faster-coco-eval", "detection mAP (COCO evaluation)",
                                "pip install 'calib[detect]'") from None


def _gt_dataset(coco: Mapping[str, Any], image_ids: Sequence[int]) -> dict:
    ids = set(image_ids)
    anns = []
    for i, a in enumerate(coco["annotations"]):
        if a["image_id"] in ids:
            a = dict(a)
            a.setdefault("iscrowd", 0)
            a.setdefault("area", float(a["bbox"][2]) * float(a["bbox"][3]))
            a.setdefault("id", i + 1)
            anns.append(a)
    cats = coco.get("categories") or [{"id": c} for c in sorted({a["category_id"] for a in anns})]
    return {"images": [im for im in coco["images"] if im["id"] in ids], "annotations": anns,
            "categories": [dict(c) for c in cats]}


def _results(dets: Mapping[int, Detections], category_ids: Sequence[int] | None) -> list[dict]:
    out = []
    for image_id, d in dets.items():
        for b, s, c in zip(d.boxes, d.scores, d.classes):
            out.append({"image_id": int(image_id), "category_id": int(category_ids[c] if category_ids else c),
                        "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
                        "score": float(s)})
    return out


def evaluate_map(coco: Mapping[str, Any], dets: Mapping[int, Detections],
                 category_ids: Sequence[int] | None = None) -> dict[str, float]:
    """COCO bbox mAP of `dets` (image id -> detections, class indices mapped to category ids by
    `category_ids`, or used as ids when None) on the images of `dets`, by the maintained evaluator:
    {"mAP@0.5", "mAP@0.5:0.95"} (0 when there are no detections at all)."""
    COCO, COCOeval, _ = coco_evaluator()
    image_ids = sorted(dets)
    gt = COCO()
    gt.dataset = _gt_dataset(coco, image_ids)
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        results = _results(dets, category_ids)
        if not results or not gt.dataset["annotations"]:
            return {"mAP@0.5": 0.0, "mAP@0.5:0.95": 0.0}
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = image_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"mAP@0.5": max(float(ev.stats[1]), 0.0), "mAP@0.5:0.95": max(float(ev.stats[0]), 0.0)}


# ----------------------------------------------------------------------------- per-image matches
@dataclass
class _Category:
    scores: list[np.ndarray] = field(default_factory=list)
    image: list[np.ndarray] = field(default_factory=list)
    matched: list[np.ndarray] = field(default_factory=list)   # (D, T) bool
    ignored: list[np.ndarray] = field(default_factory=list)   # (D, T) bool
    gt_count: dict[int, int] = field(default_factory=dict)    # image index -> non-ignored ground truth


def _match(gt_boxes: np.ndarray, gt_ignore: np.ndarray, gt_crowd: np.ndarray, dt_boxes: np.ndarray,
           thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """pycocotools' evaluateImg for one image and category (area "all"): ground truth sorted with
    ignored last, detections already sorted by score and cut to MAX_DETS. -> (matched, ignored),
    each (D, T) bool."""
    order = np.argsort(gt_ignore, kind="stable")
    gb, gi, gc = gt_boxes[order], gt_ignore[order], gt_crowd[order]
    d, g = len(dt_boxes), len(gb)
    iou = box_iou(dt_boxes, gb) if d and g else np.zeros((d, g))
    if g and d and gc.any():  # a crowd region: intersection over the detection's own area
        lt = np.maximum(dt_boxes[:, None, :2], gb[None, :, :2])
        rb = np.minimum(dt_boxes[:, None, 2:], gb[None, :, 2:])
        inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
        area = np.prod(np.clip(dt_boxes[:, 2:] - dt_boxes[:, :2], 0, None), axis=1)[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            crowd_iou = np.where(area > 0, inter / np.where(area > 0, area, 1.0), 0.0)
        iou = np.where(gc[None, :], crowd_iou, iou)
    t_ = len(thresholds)
    matched = np.zeros((d, t_), bool)
    ignored = np.zeros((d, t_), bool)
    if not (d and g):
        return matched, ignored
    # pycocotools walks the ground truth in order for each detection: the non-ignored one of
    # highest IoU >= t not taken yet (the last of equal IoUs), else, only if there is none, the
    # ignored (crowd) one of highest IoU >= t, which any number of detections may match. The same
    # rule, for the 10 thresholds at once; detections overlapping nothing enough are skipped.
    thr = np.minimum(np.asarray(thresholds, np.float64), 1 - 1e-10)[:, None]
    normal, crowd = np.nonzero(~gi)[0], np.nonzero(gi)[0]
    taken = np.zeros((t_, len(normal)), bool)
    rows = np.arange(t_)
    for di in np.nonzero(iou.max(axis=1) >= thr[0, 0])[0]:
        free = ~taken & (iou[di, normal][None, :] >= thr)
        has = free.any(axis=1)
        if has.any():
            masked = np.where(free, iou[di, normal][None, :], -1.0)
            pick = len(normal) - 1 - np.argmax(masked[:, ::-1], axis=1)
            taken[rows[has], pick[has]] = True
            matched[di, has] = True
        if len(crowd):
            hit = ~has & (iou[di, crowd][None, :] >= thr).any(axis=1)
            matched[di, hit] = ignored[di, hit] = True
    return matched, ignored


class MatchTable:
    """Per-image COCO matches of one model's detections against ground truth, by category, from
    which `average_precision` computes mAP for any multiplicity of each image."""

    def __init__(self, n_images: int, thresholds: np.ndarray = IOU_THRESHOLDS):
        self.n = n_images
        self.thresholds = thresholds
        self.categories: dict[int, _Category] = {}

    def add(self, index: int, gt: Sequence[Mapping[str, Any]], dets: Detections,
            category_ids: Sequence[int] | None = None) -> None:
        """Image `index` (0..n-1): COCO annotations `gt` (bbox x y w h, iscrowd) and detections."""
        classes = np.asarray(dets.classes, np.int64)
        det_cats = np.asarray(category_ids, np.int64)[classes] if category_ids is not None else classes
        scores = np.asarray(dets.scores, np.float64)
        boxes = np.asarray(dets.boxes, np.float64).reshape(-1, 4)
        gt_cats = np.fromiter((a["category_id"] for a in gt), np.int64, len(gt))
        gt_boxes = np.array([a["bbox"] for a in gt], np.float64).reshape(-1, 4)
        gt_boxes[:, 2:] += gt_boxes[:, :2]
        # pycocotools' _prepare: ignore = iscrowd (an "ignore" key is overwritten); area "all" ignores no other
        gt_crowd = np.fromiter((bool(a.get("iscrowd", 0)) for a in gt), bool, len(gt))
        # per category, by score descending, ties in the given order (pycocotools' mergesort)
        order = np.lexsort((-scores, det_cats))
        cats, starts = np.unique(det_cats[order], return_index=True)
        spans = dict(zip(cats.tolist(), zip(starts.tolist(), [*starts[1:].tolist(), len(order)])))
        t_ = len(self.thresholds)
        for cat in spans.keys() | set(gt_cats.tolist()):
            rec = self.categories.setdefault(cat, _Category())
            lo, hi = spans.get(cat, (0, 0))
            mine = order[lo:hi][:MAX_DETS]
            g = gt_cats == cat
            if g.any():
                rec.gt_count[index] = rec.gt_count.get(index, 0) + int(np.sum(~gt_crowd[g]))
                m, ig = _match(gt_boxes[g], gt_crowd[g], gt_crowd[g], boxes[mine], self.thresholds)
            else:
                m = ig = np.zeros((len(mine), t_), bool)
            rec.scores.append(scores[mine])
            rec.image.append(np.full(len(mine), index, np.int64))
            rec.matched.append(m)
            rec.ignored.append(ig)
        self._cache = None

    def _prepared(self) -> list[tuple[np.ndarray, ...]]:
        """Per category: detections in COCO's order (score, descending, stable), cut after the
        last one that is a true positive at some threshold: the false positives after it only
        add points of the final recall and lower precision, which neither the envelope nor any
        recall threshold reads, in any resample (exact, and most of a 300-per-image tail)."""
        if getattr(self, "_cache", None) is None:
            self._cache = []
            for rec in self.categories.values():
                scores = np.concatenate(rec.scores) if rec.scores else np.zeros(0)
                order = np.argsort(-scores, kind="mergesort")
                img = np.concatenate(rec.image)[order]
                tp = np.concatenate(rec.matched)[order]
                ig = np.concatenate(rec.ignored)[order]
                useful = np.nonzero((tp & ~ig).any(axis=1))[0]
                end = int(useful[-1]) + 1 if len(useful) else 0
                idx = np.fromiter(rec.gt_count, np.int64, len(rec.gt_count))
                counts = np.fromiter(rec.gt_count.values(), np.float64, len(rec.gt_count))
                self._cache.append((img[:end], tp[:end], ig[:end], idx, counts))
        return self._cache

    def size(self) -> int:
        """Detections of the largest category that take part in the bootstrap: the memory of one
        resample is a few times this many floats (for sizing chunks of resamples)."""
        return max((len(p[0]) for p in self._prepared()), default=0)

    def average_precision(self, weights: np.ndarray) -> np.ndarray:
        """mAP for each row of `weights` (R, n) image multiplicities: (R, 2) columns mAP@0.5 and
        mAP@0.5:0.95 (NaN where no category has ground truth), as pycocotools' `accumulate`.

        pycocotools builds the precision-recall curve over every detection; only its values at
        true positives are ever read (recall rises only there, and the envelope's maximum over
        higher recall is reached at one), so this evaluates the curve at the true positives alone:
        their cumulated weight, and the cumulated weight of every counted detection up to them
        (R x detections once per category, then R x true positives per threshold)."""
        w = np.atleast_2d(np.asarray(weights, np.float64))
        r_, t_ = len(w), len(self.thresholds)
        total = np.zeros((r_, t_))
        valid = np.zeros(r_)
        rows = 2.0 * np.arange(r_, dtype=np.float64)[:, None]  # shifts rows apart for one searchsorted
        queries = (RECALL_THRESHOLDS[None, :] + rows).ravel()
        for img, tp, ig, idx, counts in self._prepared():
            npig = w[:, idx] @ counts
            ok = npig > 0
            valid += ok
            if len(img) == 0:
                continue  # ground truth and no detections (or none that can count): precision 0
            wd = w[:, img]
            seen = np.cumsum(wd, axis=1)  # weight of detections up to each one, ignored ones included
            safe = np.where(ok, npig, 1.0)[:, None]
            for t in range(t_):
                pos = np.nonzero(tp[:, t] & ~ig[:, t])[0]
                if len(pos) == 0:
                    continue
                hits = np.cumsum(wd[:, pos], axis=1)
                counted = seen[:, pos]
                ign = np.nonzero(ig[:, t])[0]
                if len(ign):  # detections matched to crowd regions count neither way
                    before = np.searchsorted(ign, pos, side="right")
                    cum_ign = np.concatenate([np.zeros((r_, 1)), np.cumsum(wd[:, ign], axis=1)], axis=1)
                    counted = counted - cum_ign[:, before]
                pr = hits / (counted + np.spacing(1))
                pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
                rc = hits / safe
                k = len(pos)
                q = np.searchsorted((rc + rows).ravel(), queries, side="left").reshape(r_, -1) \
                    - (np.arange(r_) * k)[:, None]
                picked = np.take_along_axis(pr, np.minimum(q, k - 1), axis=1)
                total[:, t] += np.where(ok, np.where(q < k, picked, 0.0).mean(axis=1), 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            per_t = total / valid[:, None]
        return np.stack([per_t[:, 0], per_t.mean(axis=1)], axis=1)


def bootstrap_weights(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) multiplicities of n images drawn with replacement, seeded (numpy's PCG64, as
    calib.stats.paired.bootstrap_sums draws)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    out = np.zeros((resamples, n))
    np.add.at(out, (np.repeat(np.arange(resamples), n), idx.ravel()), 1.0)
    return out


__all__ = ["IOU_THRESHOLDS", "MAX_DETS", "MatchTable", "bootstrap_weights", "coco_evaluator",
           "detections_as_ground_truth", "evaluate_map", "load_coco_labels", "match_images"]
