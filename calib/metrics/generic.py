"""`generic`: for a model of no known task, INT8 judged against FP32 output by output: the
per-output fidelity (`calib.metrics.outputs`: SQNR with its interval, cosine) and, for dense
outputs, argmax agreement: the fraction of positions whose argmax over axis 1 (the channel or
class axis of (N, C, ...) outputs, ONNX's layout) is the same for both models.

Headline (`metric`): argmax agreement of the first dense output (an output of rank >= 2 with more
than one channel): FP32 = 1, INT8 = the agreement, drop = disagreement, with a paired bootstrap
interval over images of the summed per-image counts (`calib.stats.paired.bootstrap_sums`).
Without a dense output the headline is the first output's mean cosine similarity (FP32 = 1).
Always `reference: "fp32"`: there is nothing else to compare with.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from calib.errors import CalibError
from calib.metrics.base import REFERENCE_FP32, Metric, MetricResult, Pending
from calib.metrics.outputs import OutputsAccumulator, cosine_rows
from calib.stats.paired import bootstrap_sums


def is_dense(shape: Sequence[int]) -> bool:
    """(N, C, ...) with C > 1: argmax over C means something."""
    return len(shape) >= 2 and shape[1] > 1


class GenericMetric(Metric):
    name = "generic"

    def __init__(self, **params: Any):
        super().__init__(**params)
        self._pending = Pending(self.reference_model, self.test_model)
        self.fidelity = OutputsAccumulator(self.resamples, self.seed)
        self._agree: dict[str, list[tuple[float, float]]] = {}
        self._cosine: dict[str, list[float]] = {}
        self._order: list[str] = []

    def update(self, model_name: str, keys: Sequence[str], outputs: Mapping[str, np.ndarray],
               labels: Any = None) -> None:
        n = len(keys)
        if any(np.asarray(v).ndim == 0 or np.asarray(v).shape[0] < n for v in outputs.values()):
            raise CalibError(f"generic: every output needs a batch axis of {n} image{'s' if n != 1 else ''}, found "
                             + ", ".join(f"{k} {list(np.asarray(v).shape)}" for k, v in outputs.items()))
        per_image = [{k: np.asarray(v)[i] for k, v in outputs.items()} for i in range(n)]
        if not self._order:
            self._order = list(outputs)
        done = self._pending.add(model_name, keys, per_image)
        if not done:
            return
        ref = {name: np.stack([r[name] for _, r, _ in done]) for name in self._order}
        test = {}
        for name in self._order:
            if any(name not in t for _, _, t in done):
                raise CalibError(f"output '{name}' of the reference model is missing from the test model's outputs")
            test[name] = np.stack([t[name] for _, _, t in done])
        self.fidelity.update(ref, test)
        for name in self._order:
            r, t = ref[name], test[name]
            if is_dense(r.shape):
                same = (r.argmax(axis=1) == t.argmax(axis=1)).reshape(len(r), -1)
                self._agree.setdefault(name, []).extend((float(s.sum()), float(s.size)) for s in same)
            r64, t64 = r.reshape(len(r), -1).astype(np.float64), t.reshape(len(t), -1).astype(np.float64)
            self._cosine.setdefault(name, []).extend(cosine_rows(np.einsum("ij,ij->i", r64, r64),
                                                                 np.einsum("ij,ij->i", t64, t64),
                                                                 np.einsum("ij,ij->i", r64, t64)).tolist())

    def result(self) -> MetricResult:
        self._pending.check_complete()
        a, b = self.reference_model, self.test_model
        outputs = [o.to_json() for o in self.fidelity.result()]
        agreement = {}
        for name, counts in self._agree.items():
            boot = bootstrap_sums(np.array(counts), lambda s: s[:, 0] / s[:, 1], self.resamples, self.seed)
            agreement[name] = {"agreement": boot.estimate, "agreement_ci95": boot.ci95}
        extra = {"argmax_agreement": agreement, "outputs": outputs}
        n = len(self._pending.done)
        method = f"paired bootstrap over images ({self.resamples} resamples, seed {self.seed})"
        if agreement:
            name = next(iter(agreement))
            counts = np.array(self._agree[name])
            value = agreement[name]["agreement"]
            boot = bootstrap_sums(counts, lambda s: 1.0 - s[:, 0] / s[:, 1], self.resamples, self.seed)
            return MetricResult(self.name, f"argmax_agreement:{name}", 1.0, value, 1.0 - value, boot.ci95,
                                REFERENCE_FP32, n, method, {a: {"argmax_agreement": 1.0}, b: {"argmax_agreement": value}},
                                extra, [] if boot.ci95 is not None else [boot.note])
        name = self._order[0]
        cos = np.array(self._cosine[name])
        boot = bootstrap_sums(np.stack([1.0 - cos], 1), lambda s: s[:, 0] / n, self.resamples, self.seed)
        value = float(cos.mean())
        return MetricResult(self.name, f"cosine:{name}", 1.0, value, 1.0 - value, boot.ci95, REFERENCE_FP32, n, method,
                            {a: {"cosine": 1.0}, b: {"cosine": value}}, extra,
                            [] if boot.ci95 is not None else [boot.note])
