"""`classify`: today's classification figures as a task metric: top-1, top-5 and top-1 agreement
with FP32; the drop in top-1 with Tango's paired score interval and the exact McNemar test
(`calib.stats.paired`, the same figures `calib run` reports today).

With labels (class indices per image, the batch's labels; a negative label means "unlabelled")
top-1 is against them; without, against FP32's own top-1 (`reference: "fp32"`: FP32 scores 1 and
INT8's top-1 is its agreement)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from calib import tensor
from calib.errors import CalibError
from calib.metrics.base import REFERENCE_FP32, REFERENCE_LABELS, Metric, MetricResult, PerImage, first_output
from calib.stats.paired import paired


class ClassifyMetric(Metric):
    """`output`: the logits output's name (default: the first output)."""

    name = "classify"

    def __init__(self, output: str | None = None, **params: Any):
        super().__init__(**params)
        self.output = output
        self._top5 = PerImage()
        self._labels: dict[str, int] = {}

    def update(self, model_name: str, keys: Sequence[str], outputs: Mapping[str, np.ndarray],
               labels: Any = None) -> None:
        x = first_output(outputs, self.output, "classify")
        n = len(keys)
        if x.ndim < 2 or x.shape[0] < n:
            raise CalibError(f"classify: output of shape {list(x.shape)} is not (N, classes) logits for {n} image{'s' if n != 1 else ''}")
        top = tensor.top5(np.asarray(x, np.float32)[:n].reshape(n, -1))
        self._top5.add(model_name, keys, list(top))
        if labels is not None:
            y = np.asarray(labels).ravel()[:n]
            if len(y) != n:
                raise CalibError(f"classify: {len(y)} labels for {n} image{'s' if n != 1 else ''}")
            self._labels.update(zip(keys, (int(v) for v in y)))

    def result(self) -> MetricResult:
        a, b = self.reference_model, self.test_model
        keys = self._top5.paired_keys(a, b)
        ta, tb = (np.stack(self._top5.column(m, keys)) for m in (a, b))
        y = np.array([self._labels.get(k, -1) for k in keys])
        labelled = bool(len(y)) and bool(np.all(y >= 0))
        notes = []
        if not labelled and np.any(y >= 0):
            notes.append(f"{int(np.sum(y < 0))} of {len(y)} images have no label: figures are against FP32")
        truth = y if labelled else ta[:, 0]
        r = paired(ta[:, 0] == truth, tb[:, 0] == truth, ta[:, 0], tb[:, 0])
        top5 = {m: float(np.mean(np.any(t == truth[:, None], axis=1))) for m, t in ((a, ta), (b, tb))}
        per_model = {a: {"top1": r.acc_a, "top5": top5[a]}, b: {"top1": r.acc_b, "top5": top5[b]}}
        return MetricResult(self.name, "top1", r.acc_a, r.acc_b, r.drop, list(r.drop_ci95),
                            REFERENCE_LABELS if labelled else REFERENCE_FP32, r.n,
                            "Tango score interval, paired over images (calib.stats.paired)", per_model,
                            {"agreement": r.agreement, "agreement_ci95": r.agreement_ci95,
                             "p_value": r.p_value, "significant": r.significant, "discordant": r.discordant}, notes)
