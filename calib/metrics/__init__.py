"""Judging every task (issue 21): per-output fidelity of INT8 against FP32 (`outputs`) and the
task metric from a registry (`registry`: classify, detect, segment, generic, plug-ins through the
`calib.metrics` entry-point group). Pure numpy/scipy on host arrays, above `calib.stats` whose
intervals it reuses; the COCO evaluator is imported only by detection, when it computes."""

from calib.metrics.base import REFERENCE_FP32, REFERENCE_LABELS, Metric, MetricResult
from calib.metrics.outputs import OutputFidelity, OutputsAccumulator, outputs_json
from calib.metrics.registry import available_metrics, get_metric, metric_class, register

__all__ = ["REFERENCE_FP32", "REFERENCE_LABELS", "Metric", "MetricResult", "OutputFidelity", "OutputsAccumulator",
           "available_metrics", "get_metric", "metric_class", "outputs_json", "register"]
