"""`segment`: mean IoU of FP32 and INT8 and their pixel agreement, with paired bootstrap intervals
over images (`calib.stats.paired.bootstrap_sums`: every figure here is a ratio of per-image sums).

mIoU follows the usual dataset-level definition (PASCAL VOC's and mmsegmentation's): per class,
intersection and union summed over all images, IoU = I / U, averaged over the classes that occur
(U > 0); pixels labelled `ignore_index` (255, VOC's and Cityscapes' void) do not count. Pixel
agreement is the fraction of counted pixels where INT8's class equals FP32's.

Outputs: (N, C, H, W) scores (class = argmax over C) or (N, H, W) integer class maps. Reference:
label masks, given per batch (`labels`, (N, H, W) class ids) or as a folder (`labels=` a folder
of `<image stem>.png` or `.npy` masks, read with Pillow/numpy); without either, FP32's argmax
(`reference: "fp32"`; FP32 then scores 1). A mask must already have the output's spatial size:
`calib run --labels` puts a mask of its image's size through the image's crop and resize (or
letterbox), nearest neighbour, before it comes here (`calib.data.labels`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from calib.errors import CalibError
from calib.metrics.base import REFERENCE_FP32, REFERENCE_LABELS, Metric, MetricResult, Pending, first_output
from calib.stats.paired import bootstrap_sums

IGNORE_INDEX = 255


def class_map(x: np.ndarray, n: int, what: str) -> np.ndarray:
    """(n, H, W) class ids from (N, C, H, W) scores or an (N, H, W) integer map."""
    a = np.asarray(x)
    if a.ndim == 4 and a.shape[0] >= n:
        return a[:n].argmax(axis=1)
    if a.ndim == 3 and a.shape[0] >= n and a.dtype.kind in "iu":
        return a[:n].astype(np.int64)
    raise CalibError(f"{what}: expected (N, C, H, W) class scores or an (N, H, W) integer class map for {n} image{'s' if n != 1 else ''}, "
                     f"found {list(a.shape)} {a.dtype}")


def intersection_union(pred: np.ndarray, truth: np.ndarray, classes: int,
                       ignore_index: int = IGNORE_INDEX) -> tuple[np.ndarray, np.ndarray]:
    """Per-class intersection and union pixel counts of one image (pixels of `ignore_index` excluded)."""
    keep = truth != ignore_index
    p, t = pred[keep].ravel(), truth[keep].ravel()
    if t.size and (t.min() < 0 or t.max() >= classes):
        raise CalibError(f"label mask has class {int(t.max() if t.max() >= classes else t.min())}, outside the "
                         f"model's 0..{classes - 1} (ignore index {ignore_index})")
    inter = np.bincount(t[p == t], minlength=classes)[:classes]
    area_p = np.bincount(np.clip(p, 0, classes - 1), minlength=classes)[:classes]
    area_t = np.bincount(t, minlength=classes)[:classes]
    return inter.astype(np.float64), (area_p + area_t - inter).astype(np.float64)


def mean_iou(inter: np.ndarray, union: np.ndarray) -> np.ndarray:
    """mIoU of summed (..., C) intersections and unions over classes with union > 0 (NaN if none)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
        return iou.sum(-1) / (union > 0).sum(-1)


class MaskFolder:
    """Label masks in a folder, one per image: `<stem>.png` (class ids as pixel values) or `<stem>.npy`."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise CalibError(f"segmentation labels {self.folder} are not a folder of masks")

    def path_of(self, key: str) -> Path | None:
        """The mask file of image `key` (`<stem>.png`, else `<stem>.npy`), or None."""
        stem = Path(str(key)).stem
        for suffix in (".png", ".npy"):
            p = self.folder / (stem + suffix)
            if p.is_file():
                return p
        return None

    def load(self, key: str) -> np.ndarray:
        p = self.path_of(key)
        if p is None:
            stem = Path(str(key)).stem
            raise CalibError(f"labels do not match the images: no mask '{stem}.png' or '{stem}.npy' in {self.folder}")
        try:
            if p.suffix == ".npy":
                return np.load(p)
            from PIL import Image

            with Image.open(p) as im:
                return np.asarray(im)
        except Exception as e:   # a truncated PNG, a pickled .npy: the file's fault, said in one line
            raise CalibError(f"cannot read the label mask {p}: {' '.join(str(e).split()) or type(e).__name__}") from None


class SegmentMetric(Metric):
    """`output`: the scores output (default: the first); `labels`: a mask folder (or pass masks per
    batch to `update`)."""

    name = "segment"

    def __init__(self, labels: str | os.PathLike | None = None, output: str | None = None,
                 ignore_index: int = IGNORE_INDEX, **params: Any):
        super().__init__(**params)
        self.masks = MaskFolder(labels) if labels is not None else None
        self.output, self.ignore_index = output, ignore_index
        self._pending = Pending(self.reference_model, self.test_model)
        self._truth: dict[str, np.ndarray] = {}
        self._rows: list[tuple[np.ndarray, ...]] = []
        self._classes: int | None = None
        self._labelled: bool | None = None

    def update(self, model_name: str, keys: Sequence[str], outputs: Mapping[str, np.ndarray],
               labels: Any = None) -> None:
        x = first_output(outputs, self.output, "segment")
        if x.ndim == 4:
            classes = x.shape[1]
            if self._classes not in (None, classes):
                raise CalibError(f"segment: {classes} classes in this batch, {self._classes} before")
            self._classes = classes
        maps = class_map(x, len(keys), "segment")
        if labels is not None or self.masks is not None:
            masks = labels if labels is not None else [self.masks.load(k) for k in keys]
            for k, m, pred in zip(keys, masks, maps):
                m = np.asarray(m)
                if m.shape != pred.shape:
                    raise CalibError(f"labels do not match the images: mask of '{k}' is {list(m.shape)}, the "
                                     f"output's class map {list(pred.shape)}")
                self._truth[k] = m.astype(np.int64)
        for key, ref, test in self._pending.add(model_name, keys, list(maps)):
            self._rows.append(self._row(key, ref, test))

    def _row(self, key: str, ref: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, ...]:
        classes = self._classes or int(max(ref.max(), test.max())) + 1
        truth = self._truth.pop(key, None)
        labelled = truth is not None
        if self._labelled is None:
            self._labelled = labelled
        elif self._labelled != labelled:
            raise CalibError(f"labels do not match the images: some images have label masks and '{key}' has none")
        if truth is None:
            truth = ref
        ia, ua = intersection_union(ref, truth, classes, self.ignore_index)
        ib, ub = intersection_union(test, truth, classes, self.ignore_index)
        counted = truth != self.ignore_index
        agree = float(np.sum((ref == test) & counted))
        return ia, ua, ib, ub, np.array([agree, float(np.sum(counted))])

    def result(self) -> MetricResult:
        self._pending.check_complete()
        c = max(len(r[0]) for r in self._rows)  # integer class maps: classes seen so far, padded
        rows = np.stack([np.concatenate([*(np.pad(v, (0, c - len(v))) for v in r[:4]), r[4]]) for r in self._rows])
        sums = rows.sum(0)
        fa = float(mean_iou(sums[:c], sums[c:2 * c]))
        fb = float(mean_iou(sums[2 * c:3 * c], sums[3 * c:4 * c]))
        n = len(rows)
        drop = bootstrap_sums(rows[:, :4 * c], lambda s: mean_iou(s[:, :c], s[:, c:2 * c])
                              - mean_iou(s[:, 2 * c:3 * c], s[:, 3 * c:4 * c]), self.resamples, self.seed)
        agree = bootstrap_sums(rows[:, -2:], lambda s: s[:, 0] / s[:, 1], self.resamples, self.seed)
        a, b = self.reference_model, self.test_model
        return MetricResult(self.name, "mIoU", fa, fb, fa - fb, drop.ci95,
                            REFERENCE_LABELS if self._labelled else REFERENCE_FP32, n,
                            f"paired bootstrap over images of summed intersections and unions ({self.resamples} "
                            f"resamples, seed {self.seed}; calib.stats.paired.bootstrap_sums)",
                            {a: {"mIoU": fa}, b: {"mIoU": fb}},
                            {"pixel_agreement": agree.estimate, "pixel_agreement_ci95": agree.ci95, "classes": c},
                            [] if drop.ci95 is not None else [drop.note])
