"""Accuracy restoration, the scorer: what the ranker and the search read of a model, so that one
ranking loop and one bisection serve every task (issue 21) instead of a copy per task.

A scorer says four things: what a model's run gives (`collect`: a classifier's logits, or every
output of a detector, a segmenter, a model of no known task), how much one model's outputs stray
from FP32's (`layer_row`: the ranking's figures, and `order`: how rows sort), what the every-layer
INT8 model looks like beside the ranking (`summary`), the budget the options ask for in its own
figure (`budget`: a `calib.stats.budget.Budget`), and the figures a budget is checked on
(`candidate`: the drop, and for a classifier the agreement).

- `ClassifierScorer` reproduces what the ranker and the search computed before scorers existed,
  to the last digit: the logits SQNR, top-1 agreement with FP32, top-1 against the labels and the
  worst image's SQNR for the ranking (ranked by the logits SQNR, then agreement); top-1, its drop
  and agreement for the search (`calib.stats.budget`: `--max-drop` and `--min-agreement`).
- `TaskScorer` (detect, segment, generic, plug-in metrics) ranks by the SQNR of the graph output
  a layer hurts most (the lowest per-output SQNR, `calib.stats.sqnr`: the figure `calib run
  --task` reports per output), keeping every output's SQNR so the report shows which output a
  layer hurts; ranking by the task metric instead would be too coarse (one layer alone rarely
  moves mAP) and far slower (NMS and COCO matching per layer). The search checks the budget on
  the task metric itself (`calib.metrics`): drop = FP32's figure − the candidate's on the search
  subset, with the metric's own reference: against ground truth where the metric was given it
  (`metric_params`, e.g. `labels=` a COCO file or a mask folder), else against FP32's own
  outputs (FP32's detections with score >= 0.25, FP32's argmax). The bootstrap interval is not
  needed to compare candidates, so the metric runs with one resample (`SEARCH_RESAMPLES`).
  `--min-agreement` is top-1 agreement, a classifier's figure: refused in one line for a task
  (for `generic` the metric already is argmax agreement, so `--max-drop 0.01` asks for 99%).

`scorer_for(task, **metric_params)` gives the scorer of a task; `calib.restore.ranker.rank_layers`
and `calib.restore.search.fallback_to_budget` take one (`scorer=`, default the classifier's), the
search with a budget the scorer made (`budget=scorer.budget(max_drop=0.01)`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from calib.errors import CalibError
from calib.metrics.base import MetricResult
from calib.passes import Images, all_outputs, logits as run_logits
from calib.stats.budget import Budget
from calib.stats.sqnr import finite_or_none, sqnr, sqnr_rows
from calib.tensor import top5

CLASSIFY = "classify"
SEARCH_RESAMPLES = 1      # the metric's bootstrap, unused in the search: as few as the metrics accept
METRIC_CHUNK = 64         # images per metric update (the metrics accumulate batch by batch)

CLASSIFIER_MEASURE = ("only this layer quantized, every other layer FP32 (isolated damage); ranked by the SQNR "
                      "of the logits against FP32, lowest first")
TASK_MEASURE = ("only this layer quantized, every other layer FP32 (isolated damage); ranked by the SQNR "
                "against FP32 of the output the layer hurts most (the lowest SQNR over the graph outputs and, for a "
                "detector, its decoded boxes and class scores), lowest first")

DECODED_BOXES, DECODED_SCORES = "decoded boxes", "decoded scores"   # a detector's views beside its outputs

# The headline figure each built-in task metric reports (calib.metrics), for messages and budget text.
HEADLINES = {"detect": "mAP@0.5:0.95", "segment": "mIoU", "generic": "argmax agreement"}


# ----------------------------------------------------------------------------- rows
@dataclass
class LayerRow:
    """One ranked layer: what it is; the scorer's subclass adds the figures."""
    layer: str
    op_type: str
    position: int
    weighted: bool


@dataclass
class LayerSensitivity(LayerRow):
    """A classifier's layer: logits SQNR (None: identical to FP32, infinite SQNR), top-1 agreement
    with FP32, top-1 against the labels, the worst image's logits SQNR."""
    logits_sqnr_db: float | None
    agreement: float
    top1: float
    worst_image_sqnr_db: float | None


@dataclass
class TaskLayerSensitivity(LayerRow):
    """A task model's layer: `sqnr_db` the lowest per-output SQNR (None: identical to FP32),
    `worst_output` the output it belongs to, `worst_image_sqnr_db` that output's worst image,
    `outputs_sqnr_db` every output's SQNR (a detector's decoded boxes and scores among them:
    `TaskScorer.views`)."""
    sqnr_db: float | None
    worst_output: str
    worst_image_sqnr_db: float | None
    outputs_sqnr_db: dict[str, float | None] = field(default_factory=dict)


# ----------------------------------------------------------------------------- scorers
class Scorer:
    """What the ranker and the search read of a model (see the module docstring). `Outputs` is the
    scorer's own: a classifier's logits array, a task model's {output name: array}."""

    task: str = CLASSIFY
    measure: str = CLASSIFIER_MEASURE

    # -- running a model
    def collect(self, runner: Any, images: Images, batch_size: int) -> Any:
        raise NotImplementedError

    def head(self, outputs: Any, n: int) -> Any:
        """The outputs of the first `n` images."""
        raise NotImplementedError

    # -- comparing two models' outputs
    def max_abs_diff(self, reference: Any, outputs: Any) -> float:
        raise NotImplementedError

    def reproduces(self, reference: Any, outputs: Any) -> bool:
        """The every-layer-float model's outputs are FP32's (up to float rounding)."""
        raise NotImplementedError

    def sqnr(self, reference: Any, outputs: Any) -> float:
        """One SQNR (dB) of `outputs` against `reference`: the ORT_ENABLE_ALL vs BASIC guard."""
        raise NotImplementedError

    # -- the ranking
    def layer_row(self, layer: Any, reference: Any, outputs: Any, images: Images) -> LayerRow:
        raise NotImplementedError

    def order(self, row: LayerRow) -> tuple:
        raise NotImplementedError

    def reference_figures(self, reference: Any, images: Images) -> dict:
        """What the sensitivity result says of FP32 beside the ranking."""
        raise NotImplementedError

    def summary(self, reference: Any, outputs: Any, images: Images) -> dict:
        """The every-layer-INT8 model's figures beside the ranking."""
        raise NotImplementedError

    # -- the search
    def budget(self, max_drop: float | None = None, min_agreement: float | None = None) -> Budget | None:
        """The budget `--max-drop` and `--min-agreement` ask for, in this scorer's figure (None:
        neither given, no search); a one-line CalibError for one the scorer cannot judge."""
        raise NotImplementedError

    def candidate(self, reference: Any, outputs: Any, images: Images) -> dict:
        """A candidate's figures on the search subset; at least "drop"."""
        raise NotImplementedError

    def search_figures(self, reference: Any, images: Images, int8: dict) -> dict:
        """The search section's figures of FP32 on the search subset, with the all-INT8 candidate."""
        raise NotImplementedError

    def missed(self, figures: dict) -> str:
        """How a candidate misses the budget, in words (the end of a one-line CalibError)."""
        raise NotImplementedError


class ClassifierScorer(Scorer):
    """The classifier's figures, from the logits (the first output), exactly as before scorers."""

    task = CLASSIFY
    measure = CLASSIFIER_MEASURE

    def collect(self, runner: Any, images: Images, batch_size: int) -> np.ndarray:
        return run_logits(runner, images, batch_size)

    def head(self, outputs: np.ndarray, n: int) -> np.ndarray:
        return outputs[:n]

    def max_abs_diff(self, reference: np.ndarray, outputs: np.ndarray) -> float:
        return float(np.max(np.abs(outputs - reference)))

    def reproduces(self, reference: np.ndarray, outputs: np.ndarray) -> bool:
        return self.max_abs_diff(reference, outputs) <= 1e-3 * max(1.0, float(np.max(np.abs(reference))))

    def sqnr(self, reference: np.ndarray, outputs: np.ndarray) -> float:
        return sqnr(reference, outputs)

    def _score(self, fp32: np.ndarray, logits: np.ndarray, labels: np.ndarray) -> dict:
        db, rows = sqnr(fp32, logits), sqnr_rows(fp32, logits)
        a, b = top5(fp32)[:, 0], top5(logits)[:, 0]
        return {"logits_sqnr_db": finite_or_none(db),
                "agreement": float(np.mean(a == b)), "top1": float(np.mean(b == labels)),
                "worst_image_sqnr_db": finite_or_none(float(np.min(rows)))}

    def layer_row(self, layer: Any, reference: np.ndarray, outputs: np.ndarray, images: Images) -> LayerSensitivity:
        return LayerSensitivity(layer.id, layer.op_type, layer.position, layer.weighted,
                                **self._score(reference, outputs, images.labels))

    def order(self, row: LayerSensitivity) -> tuple:
        return (math.inf if row.logits_sqnr_db is None else row.logits_sqnr_db, row.agreement, row.position)

    def reference_figures(self, reference: np.ndarray, images: Images) -> dict:
        return {"fp32_top1": float(np.mean(top5(reference)[:, 0] == images.labels))}

    def summary(self, reference: np.ndarray, outputs: np.ndarray, images: Images) -> dict:
        return self._score(reference, outputs, images.labels)

    def budget(self, max_drop: float | None = None, min_agreement: float | None = None) -> Budget | None:
        if max_drop is None and min_agreement is None:
            return None
        return Budget(max_drop, min_agreement)

    def candidate(self, reference: np.ndarray, outputs: np.ndarray, images: Images) -> dict:
        a, b = top5(reference)[:, 0], top5(outputs)[:, 0]
        fp32_top1, top1 = float(np.mean(a == images.labels)), float(np.mean(b == images.labels))
        return {"top1": top1, "drop": fp32_top1 - top1, "agreement": float(np.mean(a == b))}

    def search_figures(self, reference: np.ndarray, images: Images, int8: dict) -> dict:
        return {"images": len(images), **self.reference_figures(reference, images), "int8": int8}

    def missed(self, figures: dict) -> str:
        return (f"a top-1 drop of {100 * figures['drop']:.2f} points and {100 * figures['agreement']:.2f}% "
                "agreement")


class TaskScorer(Scorer):
    """Every graph output against FP32 for the ranking; the task metric (`calib.metrics`, made by
    `get_metric(task, **metric_params)`) for the search. Ground truth reaches the metric through
    `metric_params` (`labels=` a COCO file for detect, a mask folder for segment); the images'
    own labels are class indices, which only a classifier reads."""

    measure = TASK_MEASURE

    def __init__(self, task: str, metric_params: Mapping[str, Any] | None = None,
                 inputs: Callable[[list[str]], dict] | None = None):
        from calib.metrics.registry import metric_class

        metric_class(task)   # an unknown task is a one-line CalibError here, before any work
        self.task = task
        self.metric_params = dict(metric_params or {})
        self.inputs = inputs   # per images, what the metric's update takes of them (calib.data.labels)
        self._decoder_of: tuple | None = None      # (the metric's decoder or None,), found on first outputs
        self._ref: tuple | None = None             # (FP32's outputs, their views)

    @property
    def headline(self) -> str:
        return HEADLINES.get(self.task, f"the {self.task} metric")

    def collect(self, runner: Any, images: Images, batch_size: int) -> dict[str, np.ndarray]:
        return all_outputs(runner, images, batch_size)

    def head(self, outputs: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        return {name: x[:n] for name, x in outputs.items()}

    def max_abs_diff(self, reference: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> float:
        return max(_abs_diff(reference[name], outputs[name]) for name in reference)

    def reproduces(self, reference: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> bool:
        # Per output, against its own scale: boxes in pixels beside scores in [0, 1].
        return all(_abs_diff(ref, outputs[name]) <= 1e-3 * max(1.0, float(np.max(np.abs(ref), initial=0.0)))
                   for name, ref in reference.items())

    def sqnr(self, reference: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> float:
        return min(sqnr(reference[name], outputs[name]) for name in reference)

    def views(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """What the ranking compares: every graph output and, for a metric that decodes its outputs
        (detect's `decoder_for`), the decoded boxes and class scores of every anchor, each at one
        scale (ultralytics' single output holds box pixels beside scores in [0, 1]: an SQNR over
        both hears the boxes only, and a layer that ruins the scores goes unseen)."""
        decoder = self._decoder(outputs)
        if decoder is None:
            return dict(outputs)
        pairs = decoder.candidates(outputs, len(next(iter(outputs.values()))))
        return {**outputs, DECODED_BOXES: np.stack([b for b, _ in pairs]),
                DECODED_SCORES: np.stack([c for _, c in pairs])}

    def _decoder(self, outputs: dict[str, np.ndarray]) -> Any:
        if self._decoder_of is None:
            from calib.metrics.registry import get_metric

            metric = get_metric(self.task, **self.metric_params)
            self._decoder_of = (metric.decoder_for(outputs),) if hasattr(metric, "decoder_for") else (None,)
        return self._decoder_of[0]

    def _reference_views(self, reference: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """FP32's views, decoded once per reference (the ranking compares every layer with it)."""
        if self._ref is None or self._ref[0] is not reference:
            self._ref = (reference, self.views(reference))
        return self._ref[1]

    def _outputs_sqnr(self, reference: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> dict:
        reference, outputs = self._reference_views(reference), self.views(outputs)
        per = {name: sqnr(ref, outputs[name]) for name, ref in reference.items()}
        worst = min(per, key=lambda name: per[name])   # the first output among equals
        rows = sqnr_rows(reference[worst], outputs[worst]) if len(reference[worst]) else np.zeros(1)
        return {"sqnr_db": finite_or_none(per[worst]), "worst_output": worst,
                "worst_image_sqnr_db": finite_or_none(float(np.min(rows))),
                "outputs_sqnr_db": {name: finite_or_none(v) for name, v in per.items()}}

    def layer_row(self, layer: Any, reference: dict, outputs: dict, images: Images) -> TaskLayerSensitivity:
        return TaskLayerSensitivity(layer.id, layer.op_type, layer.position, layer.weighted,
                                    **self._outputs_sqnr(reference, outputs))

    def order(self, row: TaskLayerSensitivity) -> tuple:
        return (math.inf if row.sqnr_db is None else row.sqnr_db, row.position)

    def reference_figures(self, reference: dict, images: Images) -> dict:
        return {"task": self.task}

    def summary(self, reference: dict, outputs: dict, images: Images) -> dict:
        m = self.metric(reference, outputs, images)
        return {**self._outputs_sqnr(reference, outputs),
                "metric": {"name": m.name, "fp32": m.fp32, "int8": m.int8, "drop": m.drop, "reference": m.reference}}

    def metric(self, reference: dict, outputs: dict, images: Images) -> MetricResult:
        """The task metric (`calib.metrics.MetricResult`) of `outputs` against `reference` ("fp32")."""
        from calib.metrics.registry import get_metric

        params = {"resamples": SEARCH_RESAMPLES, **self.metric_params}
        metric = get_metric(self.task, **params)
        n = len(images)
        for start in range(0, n, METRIC_CHUNK):
            keys = images.keys[start:start + METRIC_CHUNK]
            rows = slice(start, start + len(keys))
            extra = self.inputs(keys) if self.inputs is not None else {}
            metric.update("fp32", keys, {name: x[rows] for name, x in reference.items()}, **extra)
            metric.update("int8", keys, {name: x[rows] for name, x in outputs.items()}, **extra)
        return metric.result()

    def budget(self, max_drop: float | None = None, min_agreement: float | None = None) -> Budget | None:
        if min_agreement is not None:
            raise CalibError(f"--min-agreement is top-1 agreement with FP32, a classifier's figure: a {self.task} "
                             f"model's budget is --max-drop, the largest drop in {self.headline} (FP32 − INT8)")
        return Budget(max_drop, what=self.headline) if max_drop is not None else None

    def candidate(self, reference: dict, outputs: dict, images: Images) -> dict:
        m = self.metric(reference, outputs, images)
        return {"value": m.int8, "drop": m.drop}

    def search_figures(self, reference: dict, images: Images, int8: dict) -> dict:
        m = self.metric(reference, reference, images)
        return {"images": len(images), "task": self.task, "metric": m.name, "reference": m.reference,
                "fp32": m.fp32, "int8": int8}

    def missed(self, figures: dict) -> str:
        fp32 = figures["value"] + figures["drop"]
        return f"a drop in {self.headline} of {figures['drop']:.4f} (FP32 {fp32:.4f}, INT8 {figures['value']:.4f})"


def _abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(b64 - a64), initial=0.0))


def scorer_for(task: str, inputs: Callable[[list[str]], dict] | None = None, **metric_params: Any) -> Scorer:
    """The scorer of a task: the classifier's for "classify", else the task metric's (its
    `metric_params` as `calib.metrics.get_metric` takes them, e.g. labels=, decoder=; `inputs`,
    per images, what its update takes of them: a run's labels, `calib.data.labels.TaskLabels`)."""
    if task == CLASSIFY:
        if metric_params or inputs is not None:
            raise CalibError(f"the classifier's scorer takes no metric parameter(s) {', '.join(sorted(metric_params))}")
        return ClassifierScorer()
    return TaskScorer(task, metric_params, inputs)


__all__ = ["CLASSIFIER_MEASURE", "ClassifierScorer", "LayerRow", "LayerSensitivity", "Scorer", "TASK_MEASURE",
           "TaskLayerSensitivity", "TaskScorer", "scorer_for"]
