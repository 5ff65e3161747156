"""`calib run` on a model that is not a classifier (task detect, segment or generic), or on any model
fed named arrays (--dataset npz, a dataset reader: no labels, so judged against FP32 whatever its
task): calibrate (or reuse the cache), materialize the INT8 model with its head float, evaluate
FP32 and INT8 on the same samples through the evaluation pass, judging every output against FP32
and the task metric (calib.metrics), and write report.json / report.md / report.html
(calib.report.task).

Still to come (issue 21): labels (`--labels`), the verdict and the budgets (`--max-drop`) driven by
the task metric, speed figures; `run` refuses the budgets for these tasks in one line."""

from __future__ import annotations

from calib.commands.steps import calibrate_run, calibration_section, int8_model, mark_int8
from calib.evaluate.models import build_artifacts
from calib.fsutil import staged_dir
from calib.metrics.outputs import outputs_json
from calib.metrics.registry import get_metric
from calib.models import fixed_batch, prepared_path, save_model
from calib.onnx_io import model_size_mb
from calib.passes.evaluation import judge
from calib.quantize import excluded_nodes
from calib.report.header import eval_section
from calib.report.schema import TaskReport
from calib.report.task import write_task_report
from calib.session.config import RunConfig
from calib.session.context import RunSetup, report_header


def run_task(config: RunConfig, s: RunSetup, backend) -> TaskReport:
    model, flavor, data, prepared = s.model, s.flavor, s.data, s.prepared
    eval_batch = config.pass_batch_sizes()[1]
    check_task_fits(prepared, model.task, model.preprocess.zeros(1) if model.arrays else model.size)   # before any
    # calibration: a task that cannot read the outputs
    with staged_dir(s.out) as stage:
        outcome = calibrate_run(config, s)
        qdq, _ = int8_model(config, s, outcome)
        mark_int8(qdq, config, s, outcome)
        int8_onnx = stage / "int8.onnx"
        save_model(qdq, int8_onnx)
        onnx_files = {"fp32": prepared_path(model), "int8": int8_onnx}
        artifacts = build_artifacts(backend, onnx_files, stage)
        runners = {}
        try:
            for name, artifact in artifacts.items():
                runners[name] = backend.load(artifact, s.placement.first if s.placement.on_gpu else None)
            judged, skipped, seconds = judge(runners, data.evaluation, get_metric(model.task), eval_batch,
                                             s.placement.first, config.gpu_decode, config.workers,
                                             "evaluating" if config.progress else None, fixed_batch(prepared))
        finally:
            for r in runners.values():
                r.close()
        evaluated = _Evaluated(judged.keys, skipped, seconds)
        header = report_header(config, s, s.placement, {"int8": int8_onnx})
        report = TaskReport(
            header=header, task=model.task, calibrator=config.calibrator,
            calibrator_params=outcome.entry.metadata.key.calibrator_params if outcome.entry.metadata else {},
            preprocess=model.preprocess.params,
            fp32_model=str(artifacts["fp32"]), int8_model=str(s.out / artifacts["int8"].name),
            calibration=calibration_section(outcome, s),
            eval=eval_section(evaluated, data.calibration, data.evaluation, header),
            outputs=outputs_json(judged.outputs.result()), metric=judged.metric.result().to_json(),
            placement=excluded_nodes(prepared, flavor, **config.placement_rules()).to_json(),
            size_mb={name: model_size_mb(path) for name, path in onnx_files.items()})
        write_task_report(stage, report, html=config.html)
    return report


def check_task_fits(prepared, task: str, size: "tuple[int, int] | dict") -> None:
    """The task's metric must read the model's outputs (a detector's layout, a segmenter's class
    map): one gray image (or, for a model fed named arrays, `size` is a feed of zeros) through the
    FP32 model and the metric, so a --task that does not fit the outputs ends in the metric's one
    line before calibration, not after the evaluation."""
    import numpy as np

    from calib.backends.ort import OrtRunner

    batch = fixed_batch(prepared) or 1
    feed = ({k: np.zeros((batch, *v.shape[1:]), v.dtype) for k, v in size.items()} if isinstance(size, dict)
            else np.zeros((1, 3, *size), np.float32))
    runner = OrtRunner(prepared, exact=False)
    try:
        values = runner.infer(feed)
    finally:
        runner.close()
    outputs = dict(zip(runner.output_names, values))
    metric = get_metric(task)
    keys = ["probe"] if not isinstance(size, dict) else [f"probe{i}" for i in range(batch)]
    metric.update("fp32", keys, outputs)
    metric.update("int8", keys, outputs)
    metric.result()


class _Evaluated:
    """What eval_section reads of an evaluation: the images evaluated and skipped, the seconds."""

    def __init__(self, keys: list[str], skipped: list[str], seconds: float) -> None:
        self.keys, self.skipped, self.seconds = keys, skipped, seconds
