"""The task metric's contract: a consumer-shaped accumulator that the evaluation pass feeds one
batch at a time per model, and one result for the report.

`update(model_name, keys, outputs, labels=None)` receives one model's host outputs for the
batch's images (`keys` name them; a padded batch is cut to its keys by the caller or by `rows`);
`result()` pairs the reference model ("fp32") with the test model ("int8") image by image (the
same keys) and gives the headline figure of each, their drop and its paired 95% interval, and
whether the figures are against ground truth (`reference: "labels"`) or against FP32's own
outputs (`reference: "fp32"`). Paired, because both models saw the same images: see
`calib.stats.paired` for why the intervals are over images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from calib.errors import CalibError

REFERENCE_LABELS = "labels"
REFERENCE_FP32 = "fp32"


def _r(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 6)


@dataclass(frozen=True)
class MetricResult:
    """`name`: the headline figure (e.g. "top1", "mAP@0.5:0.95", "mIoU"); `fp32`, `int8`: its value
    for the reference and the test model; `drop` = fp32 - int8; `drop_ci95` its paired 95% interval
    (None when it cannot be computed, e.g. one image); `reference`: "labels" | "fp32". `task`: the
    registry name. `per_model`: every figure per model name; `extra`: task-specific figures (e.g.
    agreement); `n`: images compared; `method`: how the interval was computed."""

    task: str
    name: str
    fp32: float
    int8: float
    drop: float
    drop_ci95: list[float] | None
    reference: str
    n: int
    method: str
    per_model: dict[str, dict[str, float]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        """The report.json `metric` object: name, fp32, int8, drop, drop_ci95, reference, then detail."""
        return {"name": self.name, "fp32": _r(self.fp32), "int8": _r(self.int8), "drop": _r(self.drop),
                "drop_ci95": None if self.drop_ci95 is None else [_r(v) for v in self.drop_ci95],
                "reference": self.reference, "task": self.task, "n": self.n, "method": self.method,
                "per_model": {m: {k: _r(v) for k, v in d.items()} for m, d in self.per_model.items()},
                **({"extra": self.extra} if self.extra else {}), **({"notes": list(self.notes)} if self.notes else {})}


class Metric:
    """Base of every task metric (registered in `calib.metrics.registry`). Subclasses set `name`
    (the registry name, e.g. "classify") and implement `update` and `result`. `reference_model`
    and `test_model` name the two models compared (their `update` model names)."""

    name: ClassVar[str] = ""

    def __init__(self, reference_model: str = "fp32", test_model: str = "int8", resamples: int = 2000,
                 seed: int = 0, **params: Any):
        if params:
            raise CalibError(f"metric '{self.name}' takes no parameter(s) {', '.join(sorted(params))}")
        self.reference_model, self.test_model = reference_model, test_model
        self.resamples, self.seed = resamples, seed

    def update(self, model_name: str, keys: Sequence[str], outputs: Mapping[str, np.ndarray],
               labels: Any = None) -> None:
        raise NotImplementedError

    def result(self) -> MetricResult:
        raise NotImplementedError


class PerImage:
    """Per-image records of each model, kept by key, so the two models pair image by image
    whatever order their batches arrive in."""

    def __init__(self) -> None:
        self.keys: dict[str, list[str]] = {}
        self.values: dict[str, dict[str, Any]] = {}

    def add(self, model: str, keys: Sequence[str], values: Sequence[Any]) -> None:
        if len(keys) != len(values):
            raise CalibError(f"model '{model}': {len(keys)} image keys for {len(values)} outputs in a batch")
        store = self.values.setdefault(model, {})
        order = self.keys.setdefault(model, [])
        for k, v in zip(keys, values):
            if k not in store:
                order.append(k)
            store[k] = v

    def paired_keys(self, a: str, b: str) -> list[str]:
        """Keys both models saw, in `a`'s order; a CalibError when they saw different images."""
        for m in (a, b):
            if m not in self.values:
                raise CalibError(f"no outputs of model '{m}' were given to the metric "
                                 f"(models seen: {', '.join(self.values) or 'none'})")
        ka, kb = set(self.values[a]), set(self.values[b])
        if ka != kb:
            only = sorted(ka ^ kb)
            raise CalibError(f"models '{a}' and '{b}' saw different images ({len(only)} differ, e.g. '{only[0]}'): "
                             "a paired metric needs the same images")
        if not ka:
            raise CalibError("no evaluation images: nothing to compare")
        return list(self.keys[a])

    def column(self, model: str, keys: Sequence[str]) -> list[Any]:
        return [self.values[model][k] for k in keys]


def first_output(outputs: Mapping[str, np.ndarray], name: str | None, what: str) -> np.ndarray:
    """Output `name`, or the first output when None; a CalibError naming the outputs there are."""
    if name is None:
        if not outputs:
            raise CalibError(f"{what}: the model has no outputs")
        return np.asarray(next(iter(outputs.values())))
    if name not in outputs:
        raise CalibError(f"{what}: no output '{name}' (outputs: {', '.join(outputs)})")
    return np.asarray(outputs[name])


class Pending:
    """Per-image values of two models held until both have arrived, then handed back as pairs, so a
    metric that compares the models pixel by pixel keeps only the images in flight (the walk feeds
    both models' outputs of a batch one after the other)."""

    def __init__(self, reference: str, test: str):
        self.reference, self.test = reference, test
        self._waiting: dict[str, dict[str, Any]] = {}
        self.done: list[str] = []

    def add(self, model: str, keys: Sequence[str], values: Sequence[Any]) -> list[tuple[str, Any, Any]]:
        """Store `values` of `model`; return (key, reference value, test value) for completed keys."""
        if model not in (self.reference, self.test):
            raise CalibError(f"metric compares '{self.reference}' with '{self.test}', got outputs of '{model}'")
        out = []
        for k, v in zip(keys, values):
            slot = self._waiting.setdefault(k, {})
            slot[model] = v
            if len(slot) == 2:
                out.append((k, slot[self.reference], slot[self.test]))
                del self._waiting[k]
                self.done.append(k)
        return out

    def check_complete(self) -> None:
        if self._waiting:
            k, slot = next(iter(self._waiting.items()))
            raise CalibError(f"{len(self._waiting)} images were seen by one model only (e.g. '{k}', by "
                             f"'{next(iter(slot))}'): a paired metric needs the same images")
        if not self.done:
            raise CalibError("no evaluation images: nothing to compare")


__all__ = ["REFERENCE_FP32", "REFERENCE_LABELS", "Metric", "MetricResult", "Pending", "PerImage", "first_output"]
