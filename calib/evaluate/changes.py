"""Which classes and images INT8 changed: per-class top-1 of FP32 vs INT8, and the images it
broke (FP32 right, INT8 wrong) or fixed."""

from __future__ import annotations

import numpy as np

from calib.data.classes import class_name


def class_changes(labels: np.ndarray, fp32_top1: np.ndarray, int8_top1: np.ndarray, imagenet: bool = True,
                  top: int = 12) -> list[dict]:
    """Classes whose top-1 accuracy changed most from FP32 to INT8 (largest |change| first)."""
    rows = []
    for c in np.unique(labels):
        mask = labels == c
        n = int(mask.sum())
        a, b = int(np.sum(fp32_top1[mask] == c)), int(np.sum(int8_top1[mask] == c))
        if a == b:
            continue
        try:
            name = class_name(int(c)) if imagenet else str(int(c))
        except IndexError:
            name = str(int(c))
        rows.append({"class": int(c), "name": name, "images": n, "fp32_correct": a, "int8_correct": b,
                     "fp32_top1": a / n, "int8_top1": b / n, "change": (b - a) / n})
    rows.sort(key=lambda r: (-abs(r["change"]), -r["images"], r["class"]))
    return rows[:top]


def flips(labels: np.ndarray, fp32_top1: np.ndarray, int8_top1: np.ndarray) -> dict[str, int]:
    """Images INT8 fixed (FP32 wrong, INT8 right) and broke (FP32 right, INT8 wrong)."""
    return {"fixed": int(np.sum((fp32_top1 != labels) & (int8_top1 == labels))),
            "broken": int(np.sum((fp32_top1 == labels) & (int8_top1 != labels)))}
