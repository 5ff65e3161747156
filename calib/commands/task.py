"""How `calib run` judges (`TaskJudge`) a model that is not a classifier (task detect, segment or generic), or any
model fed named arrays (--dataset npz, a dataset reader: no labels, so judged against FP32 whatever
its task): FP32 and INT8 (its head float) on the same samples through the evaluation pass, every
output against FP32 and the task metric (calib.metrics), the verdict from the metric's drop
(calib.stats.verdict), written as report.json / report.md / report.html (calib.report.task).

With `--labels` (a COCO JSON file for detect, a folder of masks for segment) the task metric is
against that ground truth (`reference: "labels"`), read and checked against the evaluation images
before any calibration (`calib.data.labels`), so a label file that does not fit costs no
calibration pass; without, against FP32's own outputs (`reference: "fp32"`)."""

from __future__ import annotations

from pathlib import Path

from calib.calibration import CalibrationOutcome
from calib.commands.steps import Int8, Judge, calibration_section, fallback_section
from calib.data.labels import TaskLabels, read_labels
from calib.evaluate.models import build_artifacts
from calib.evaluate.probe import check_task_fits
from calib.metrics.base import REFERENCE_LABELS
from calib.metrics.outputs import outputs_json
from calib.models import fixed_batch, prepared_path
from calib.onnx_io import model_size_mb
from calib.passes.evaluation import judge
from calib.quantize import excluded_nodes
from calib.report.header import eval_section
from calib.report.schema import FallbackReport, TaskReport
from calib.restore.score import scorer_for
from calib.restore.search import FallbackResult
from calib.report.task import write_task_report
from calib.session.config import RunConfig, metric_params
from calib.session.context import RunSetup, report_header
from calib.stats.verdict import NO_SCORE, budget_tolerance, recommend_metric


def check_task(config: RunConfig, s: RunSetup) -> TaskLabels:
    """What is checked before any calibration: that the task's metric reads the model's outputs,
    and that the labels (--labels) fit the evaluation images. Returns the labels (none: the
    metric is against FP32)."""
    params = metric_params(config, s.model.task)
    probe = check_task_fits(s.prepared, s.model.task, s.model.preprocess.zeros(1) if s.model.arrays else s.model.size,
                            **params)
    return read_labels(s.model.task, config.labels, s.data.evaluation, probe, **params)


class TaskJudge(Judge):
    """A detector, a segmenter, a model of no known task, or any model without labels of its own:
    every output against FP32 and the task metric, against `--labels` or FP32's own outputs. Made
    before any calibration: the metric must read the outputs and the labels fit the images
    (`check_task`)."""

    def __init__(self, config: RunConfig, s: RunSetup) -> None:
        self.config, self.s = config, s
        self.labels = check_task(config, s)
        self.scorer = scorer_for(s.model.task, self.labels.inputs, **self.labels.params)
        self.budget = self.scorer.budget(config.max_drop, config.min_agreement)   # in the task metric's figure

    def judge(self, backend, stage: Path, outcome: CalibrationOutcome, int8: Int8, int8_onnx: Path) -> TaskReport:
        """FP32 and INT8 on the same images through the evaluation pass, every output and the task
        metric judged (`calib.passes.evaluation.judge`), the verdict from the metric's drop; writes
        the report into `stage`."""
        config, s = self.config, self.s
        model, data = s.model, s.data
        evaluated = int8.evaluation(data)   # the held-out images after a fallback search
        onnx_files = {"fp32": prepared_path(model), "int8": int8_onnx}
        # What the report says whatever the evaluation finds, made before it.
        calibration = calibration_section(outcome, s)
        header = report_header(config, s, s.placement, {"int8": int8_onnx})
        artifacts = build_artifacts(backend, onnx_files, stage)
        runners = {}
        try:
            for name, artifact in artifacts.items():
                runners[name] = backend.load(artifact, s.placement.first if s.placement.on_gpu else None)
            judged, skipped, seconds = judge(runners, evaluated, self.labels.metric(), config.pass_batch_sizes()[1],
                                             s.placement.first, config.gpu_decode, config.workers,
                                             "evaluating" if config.progress else None, inputs=self.labels.inputs,
                                             fixed_batch=fixed_batch(s.prepared))
        finally:
            for r in runners.values():
                r.close()
        metric = judged.metric.result()
        size_mb = {name: model_size_mb(path) for name, path in onnx_files.items()}
        against_labels = metric.fp32 if metric.reference == REFERENCE_LABELS else None
        if against_labels is not None and against_labels < NO_SCORE:
            header.warn(f"FP32 itself scores {metric.fp32:.4f} {metric.name} against the labels: the labels, their class "
                        f"mapping or the preprocessing are probably not the model's; every INT8 figure beside it is "
                        f"then meaningless")
        report = TaskReport(
            header=header, task=model.task, calibrator=config.calibrator,
            calibrator_params=outcome.entry.metadata.key.calibrator_params if outcome.entry.metadata else {},
            preprocess=model.preprocess.params,
            fp32_model=str(artifacts["fp32"]), int8_model=str(s.out / artifacts["int8"].name),
            calibration=calibration,
            eval=eval_section(_Evaluated(judged.keys, skipped, seconds), data.calibration, evaluated, header),
            outputs=outputs_json(judged.outputs.result()), metric=metric.to_json(),
            placement=excluded_nodes(s.prepared, s.flavor, **config.placement_rules()).to_json(),
            size_mb=size_mb, labels=str(self.labels.path) if self.labels.path is not None else None,
            # The budget, when one is set, is the verdict's tolerance, as for a classifier.
            verdict=recommend_metric(metric.name, metric.drop, metric.drop_ci95, metric.n,
                                     budget_tolerance(config.max_drop), size_mb,
                                     int8.fallback.float_layers if int8.fallback is not None else (),
                                     fp32_against_labels=against_labels).to_json(),
            fallback=task_fallback(int8.fallback, metric) if int8.fallback is not None else None)
        write_task_report(stage, report, html=config.html)
        return report


def task_fallback(result: FallbackResult, metric) -> FallbackReport:
    """The "fallback" entry of a task report: the search on the task metric, and the held-out
    figures (the report's metric, computed on the images the search never saw)."""
    final = {"images": metric.n, "metric": metric.name, "fp32": metric.fp32, "value": metric.int8,
             "drop": metric.drop}
    return fallback_section(result, final, result.budget.meets(metric.drop))


class _Evaluated:
    """What eval_section reads of an evaluation: the images evaluated and skipped, the seconds."""

    def __init__(self, keys: list[str], skipped: list[str], seconds: float) -> None:
        self.keys, self.skipped, self.seconds = keys, skipped, seconds
