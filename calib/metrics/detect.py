"""`detect`: mAP@0.5 and mAP@0.5:0.95 of FP32 and INT8 (COCO's protocol, by a maintained
evaluator: see `calib.metrics.coco`), their drop, and the drop's 95% interval by a seeded paired
bootstrap over images.

Outputs are decoded per batch (`calib.metrics.decode`: ultralytics' (N, 4+C, A), boxes + scores
of SSD/RetinaNet, or a decoder plug-in), thresholded and put through class-wise NMS; only the
detections are kept. Reference:
- `labels=` a COCO JSON file (or its loaded dict): ground truth; sample keys are matched to its
  images by file name; `geometry` (per image `Letterbox`) maps boxes from the model's input back to
  the image's pixels, and `category_ids` maps class index -> category id (default: the labels'
  category ids in sorted order when their number is the model's class count, as ultralytics maps
  its 80 classes to COCO's ids).
- no labels: FP32's own detections with score >= `reference_conf` (default 0.25, ultralytics'
  prediction threshold) are the ground truth (`reference: "fp32"`); FP32 then scores 1.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np

from calib.errors import CalibError
from calib.metrics.base import REFERENCE_FP32, REFERENCE_LABELS, Metric, MetricResult, PerImage
from calib.metrics.coco import (MatchTable, bootstrap_weights, coco_evaluator, detections_as_ground_truth,
                                evaluate_map, load_coco_labels, match_images)
from calib.metrics.decode import Decoder, Detections, Letterbox, choose_decoder

HEADLINE = "mAP@0.5:0.95"


class DetectMetric(Metric):
    """`decoder`: a registered decoder name ("auto": by the outputs' layout) or a `Decoder`;
    `decoder_params`: its parameters (thresholds, output names, box format)."""

    name = "detect"

    def __init__(self, labels: str | os.PathLike | Mapping[str, Any] | None = None, decoder: str | Decoder = "auto",
                 decoder_params: Mapping[str, Any] | None = None, category_ids: Sequence[int] | None = None,
                 reference_conf: float = 0.25, resamples: int = 1000, **params: Any):
        super().__init__(resamples=resamples, **params)
        self.coco = load_coco_labels(labels) if isinstance(labels, (str, os.PathLike)) \
            else (dict(labels) if labels is not None else None)
        self._decoder = decoder if isinstance(decoder, Decoder) else None
        self._decoder_name = decoder if isinstance(decoder, str) else None
        self._decoder_params = dict(decoder_params or {})
        self.category_ids = list(category_ids) if category_ids is not None else None
        self.reference_conf = reference_conf
        self._dets = PerImage()
        self._classes: int | None = None

    def decoder_for(self, outputs: Mapping[str, np.ndarray]) -> Decoder:
        if self._decoder is None:
            self._decoder = choose_decoder(outputs, self._decoder_name, **self._decoder_params)
        return self._decoder

    def update(self, model_name: str, keys: Sequence[str], outputs: Mapping[str, np.ndarray],
               labels: Any = None, geometry: Sequence[Letterbox] | None = None) -> None:
        """One batch of one model. `geometry`: per image, how it was letterboxed into the input
        (needed against labels when the input is not the image's own size)."""
        decoder = self.decoder_for(outputs)
        dets = decoder.decode(outputs, len(keys))
        if hasattr(decoder, "num_classes"):
            self._classes = decoder.num_classes(outputs)
        if geometry is not None:
            if len(geometry) < len(keys):
                raise CalibError(f"detect: {len(geometry)} letterbox geometries for {len(keys)} image{'s' if len(keys) != 1 else ''}")
            dets = [Detections(g.to_original(d.boxes), d.scores, d.classes) for d, g in zip(dets, geometry)]
        self._dets.add(model_name, keys, dets)

    def check_labels(self, keys: Sequence[str]) -> None:
        """The labels against the images `keys`, before any work: each has its entry (by file
        name), no two share one, and, once an `update` has told the model's class count, the
        classes map to the labels' categories. One-line CalibErrors; nothing without labels."""
        if self.coco is None:
            return
        self._image_ids(keys)
        if self._classes is not None:
            self._category_ids()

    def _image_ids(self, keys: Sequence[str]) -> list[int]:
        ids = match_images(keys, self.coco)
        image_ids = [ids[k] for k in keys]
        if len(set(image_ids)) != len(image_ids):
            raise CalibError("labels do not match the images: two evaluation images have the same file name, "
                             "so they cannot be told apart in the COCO labels")
        return image_ids

    def _category_ids(self) -> list[int] | None:
        if self.category_ids is not None:
            return self.category_ids
        cats = sorted(c["id"] for c in self.coco.get("categories", []))
        if self._classes is not None and len(cats) == self._classes:
            return cats
        if self._classes is not None and cats and max(cats) < self._classes:
            return None  # category ids are class indices already
        raise CalibError(f"detect: the model scores {self._classes} classes and the labels have {len(cats)} "
                         "categories: pass category_ids (class index -> category id)")

    def result(self) -> MetricResult:
        a, b = self.reference_model, self.test_model
        keys = self._dets.paired_keys(a, b)
        da, db = self._dets.column(a, keys), self._dets.column(b, keys)
        if self.coco is not None:
            reference, coco = REFERENCE_LABELS, self.coco
            image_ids = self._image_ids(keys)
            cats = self._category_ids()
        else:
            reference, coco, cats = REFERENCE_FP32, detections_as_ground_truth(da, self.reference_conf), None
            image_ids = list(range(1, len(keys) + 1))
        figures = {m: evaluate_map(coco, dict(zip(image_ids, d)), cats) for m, d in ((a, da), (b, db))}
        ci, notes = self._interval(coco, image_ids, da, db, cats)
        fa, fb = figures[a][HEADLINE], figures[b][HEADLINE]
        return MetricResult(self.name, HEADLINE, fa, fb, fa - fb, ci, reference, len(keys),
                            f"COCO evaluation by {coco_evaluator()[2]}; drop interval: paired bootstrap over images "
                            f"({self.resamples} resamples, seed {self.seed})", figures,
                            {"drop_map50": figures[a]["mAP@0.5"] - figures[b]["mAP@0.5"]}, notes)

    def _interval(self, coco: Mapping[str, Any], image_ids: list[int], da: list[Detections], db: list[Detections],
                  cats: Sequence[int] | None) -> tuple[list[float] | None, list[str]]:
        n = len(image_ids)
        if n < 2:
            return None, ["no 95% interval from one image"]
        gt_by_image: dict[int, list] = {}
        for ann in coco["annotations"]:
            gt_by_image.setdefault(ann["image_id"], []).append(ann)
        tables = []
        for dets in (da, db):
            t = MatchTable(n)
            for i, (iid, d) in enumerate(zip(image_ids, dets)):
                t.add(i, gt_by_image.get(iid, []), d, cats)
            tables.append(t)
        weights = bootstrap_weights(n, self.resamples, self.seed)
        size = max(t.size() for t in tables)
        chunk = max(1, min(len(weights), 1_000_000 // max(1, size)))  # ~8 MB per array of a chunk
        drops = []
        for s in range(0, len(weights), chunk):
            w = weights[s:s + chunk]
            drops.append(tables[0].average_precision(w)[:, 1] - tables[1].average_precision(w)[:, 1])
        values = np.concatenate(drops)
        values = values[np.isfinite(values)]
        if not len(values):
            return None, ["no resample had ground truth: no interval"]
        lo, hi = np.quantile(values, [0.025, 0.975], method="inverted_cdf")
        return [float(lo), float(hi)], []
