"""`calib run`: calibrate (or reuse the cache), materialize the INT8 model from the cache,
optionally leave the most damaging layers in float to meet an accuracy budget, evaluate FP32 and
INT8 on the same images, write report.json / report.md / report.html."""

from __future__ import annotations

import math
from pathlib import Path

import onnx

from calib.backends import get_backend
from calib.calibration import CalibrationOutcome
from calib.data import Dataset
from calib.diagnostics.histograms import pick_tensors, tensor_histograms
from calib.diagnostics.sqnr import activation_sqnr
from calib.errors import CalibError
from calib.evaluate.models import evaluate_models
from calib.stats.sqnr import finite_or_none
from calib.models import image_chw, prepared_path, save_model
from calib.quantize import excluded_nodes, required_tensors
from calib.report.plots import histogram_figures
from calib.report.run import write_run_report
from calib.report.schema import FallbackReport, RunBase, RunReport
from calib.restore.score import CLASSIFY, ClassifierScorer
from calib.restore.search import FallbackResult
from calib.commands.steps import Int8, Judge, calibrate_run, calibration_section, fallback_section, int8_model
from calib.fsutil import staged_dir
from calib.placement import CPU, Placement
from calib.report.header import chance_warning, eval_section
from calib.session.config import RunConfig
from calib.data.classes import class_count, class_names_of
from calib.session.context import RunSetup, report_header, setup


def run(config: RunConfig) -> RunBase:
    """One run for every task: set up, make the run's judge (which checks what can be checked
    before any calibration), calibrate (or reuse the cache), materialize the INT8 model (with the
    float layers a budget needs, scored as the judge scores), then judge it: a classifier on
    labelled images by top-1 and its paired intervals (`ClassifierJudge`), any other model output
    by output and by its task's metric (`calib.commands.task.TaskJudge`)."""
    backend = get_backend(config.backend)
    runnable, why = backend.can_run()
    if not runnable:  # evaluation runs the engines: say so before any calibration work
        raise CalibError(f"--backend {config.backend} cannot run engines here: {why}")
    s = setup(config, config.out)
    judge = judge_for(config, s)
    with staged_dir(s.out) as stage:
        outcome = calibrate_run(config, s)
        int8 = int8_model(config, s, outcome, judge)
        int8_onnx = stage / "int8.onnx"
        save_model(int8.model, int8_onnx)  # external data past 2 GB
        report = judge.judge(backend, stage, outcome, int8, int8_onnx)
    return report


def judge_for(config: RunConfig, s: RunSetup) -> Judge:
    """The run's judge. A classifier is judged by top-1 against its images' labels; without labels
    (a plain folder of images, named arrays), like every other task, output by output and by its
    metric against FP32, whose top-1 budget it cannot take."""
    from calib.commands.task import TaskJudge

    if s.model.task == CLASSIFY and not s.model.arrays and s.data.evaluation.labelled():
        return ClassifierJudge(config, s)
    if s.model.task == CLASSIFY and (config.max_drop is not None or config.min_agreement is not None):
        raise CalibError(f"a fallback budget on a classifier is a top-1 budget, which needs labelled images "
                         f"(imagenet-val's class folders, hf:); --dataset {config.dataset} has none: run without "
                         f"--max-drop/--min-agreement judges INT8 against FP32's own predictions")
    return TaskJudge(config, s)


class ClassifierJudge(Judge):
    """A classifier on labelled images: FP32 and INT8 on the same images (the held-out ones after
    a fallback search), top-1 against the labels with paired intervals, the decision figures and
    the verdict, the histograms and per-tensor SQNR of report.html."""

    def __init__(self, config: RunConfig, s: RunSetup) -> None:
        self.config, self.s = config, s
        self.scorer = ClassifierScorer()
        self.budget = self.scorer.budget(config.max_drop, config.min_agreement)

    def judge(self, backend, stage: Path, outcome: CalibrationOutcome, int8: Int8, int8_onnx: Path) -> RunReport:
        """The figures and the verdict; writes the report into `stage`."""
        config, s = self.config, self.s
        prepared, flavor, data, placement = s.prepared, s.flavor, s.data, s.placement
        evaluated = int8.evaluation(data)
        fp32_onnx = prepared_path(s.model)  # the prepared FP32 graph: fixed H/W, (N, K) output, dynamic batch
        ev, artifacts = evaluate_models(backend, {"fp32": fp32_onnx, "int8": int8_onnx}, evaluated, stage,
                                        config.pass_batch_sizes()[1], config.workers, config.progress,
                                        placement=placement, gpu_decode=config.gpu_decode)
        fp32_artifact, int8_artifact = (s.out / a.name if a.parent == stage else a for a in artifacts.values())
        report = build_report(config, s, outcome, ev, fp32_artifact, int8_artifact, evaluated, placement, int8_onnx)
        if config.backend == "ort":
            report.ort_kernels = integer_kernel_check(int8_onnx)
        report.placement = excluded_nodes(prepared, flavor, **config.placement_rules()).to_json()
        if int8.fallback is not None:
            report.fallback = fallback_report(int8.fallback, ev)
        add_decision_figures(report, config, backend, flavor, prepared, ev, artifacts,
                             {"fp32": fp32_onnx, "int8": int8_onnx}, int8.fallback, evaluated, placement)
        figures = None
        if config.html:
            figures = run_figures(prepared, int8.model, outcome, flavor, data.calibration, data.evaluation,
                                  config.calibrator, batch_size=config.batch_size, workers=config.workers,
                                  progress=config.progress, device=placement.first, decoder=config.gpu_decode)
        write_run_report(stage, report, figures, html=config.html)
        return report


def add_decision_figures(report: RunReport, config: RunConfig, backend, flavor: str, prepared: onnx.ModelProto,
                         ev, artifacts: dict[str, Path], onnx_files: dict[str, Path],
                         fallback: FallbackResult | None, evaluated: Dataset, placement: Placement = CPU) -> None:
    """What a deployment engineer decides from: paired intervals for the drop and agreement,
    logits SQNR, speed and size, per-class changes where a class has enough images, and the
    verdict built from them (calib.stats.verdict)."""
    from calib.stats.classes import class_changes
    from calib.stats.paired import paired_from_evaluation, sqnr_ci
    from calib.evaluate.speed import measure_speed
    from calib.stats.verdict import budget_tolerance, recommend
    from calib.onnx_io import model_size_mb

    result = paired_from_evaluation(ev)
    report.top1_drop_ci95 = result.drop_ci95
    report.agreement_ci95 = result.agreement_ci95
    report.paired = result.to_json()
    if ev.signal is not None and len(ev.signal):
        report.logits_sqnr_db = finite_or_none(ev.logits_sqnr_db("int8"))
        sq = sqnr_ci(ev.signal, ev.noise["int8"], seed=config.seed)
        report.logits_sqnr_db_ci95 = sq.to_json()["ci95"]
        if sq.note:
            report.header.notes.append(f"logits SQNR: {sq.note}")
    report.size_mb = {name: model_size_mb(path) for name, path in onnx_files.items()}
    shape = image_chw(prepared)
    if config.speed_seconds > 0:
        device = placement.first  # one GPU is what a deployment runs on
        report.speed = measure_speed(backend, artifacts, shape, config.speed_seconds, device)
        report.speed["backend"] = config.backend if device == "cpu" else f"{config.backend} on {device}"
        if config.backend != "ort":
            from calib.backends import get_backend

            report.speed_ort_cpu = measure_speed(get_backend("ort"), onnx_files, shape, config.speed_seconds)
    # A tensorrt-flavor model timed on ONNX Runtime's CPU says nothing about its TensorRT speed, and
    # ONNX Runtime's CUDA provider runs any Q/DQ model as dequantize + float kernels (no integer
    # convolutions): there the INT8 speed previews nothing a deployment would run.
    on_gpu = placement.on_gpu
    representative = config.backend != "ort" or (flavor == "ort" and not on_gpu)
    ev_fp32, ev_int8 = ev.predictions["fp32"], ev.predictions["int8"]
    report.classes = class_changes(ev_fp32.labels, ev_fp32.top5[:, 0], ev_int8.top5[:, 0],
                                   names=class_names_of(evaluated)).to_json()
    verdict = recommend(result, budget_tolerance(config.max_drop), report.speed if representative else None, report.size_mb,
                        fallback.float_layers if fallback else (), backend=config.backend).to_json()
    if not representative:
        why = ("ONNX Runtime's CUDA provider runs Q/DQ models as dequantize + float kernels" if on_gpu else
               f"the {flavor} Q/DQ flavor is built for TensorRT and ONNX Runtime's CPU runs it in simulated INT8")
        verdict["note"] = f"speed not weighed: {why}; time INT8 on TensorRT (calib bench --backend tensorrt)"
    report.verdict = verdict


def integer_kernel_check(int8_onnx: Path) -> dict:
    """Which convolutions ONNX Runtime really runs as integer kernels after its own fusions."""
    from calib.backends.ort import optimized_op_counts

    ops = optimized_op_counts(int8_onnx)
    return {"QLinearConv": ops.get("QLinearConv", 0), "float_conv": ops.get("Conv", 0) + ops.get("FusedConv", 0),
            "QGemm": ops.get("QGemm", 0), "QLinearAdd": ops.get("QLinearAdd", 0),
            "QLinearMatMul": ops.get("QLinearMatMul", 0) + ops.get("MatMulIntegerToFloat", 0),
            "float_matmul": ops.get("MatMul", 0) + ops.get("FusedMatMul", 0) + ops.get("Gemm", 0)}


def build_report(config: RunConfig, s: RunSetup, outcome: CalibrationOutcome, ev, fp32_artifact: Path,
                 int8_artifact: Path, evaluated: Dataset | None = None,
                 placement: Placement = CPU, int8_onnx: Path | None = None) -> RunReport:
    """The run report; `evaluated` is the dataset the figures come from (the held-out part of the
    evaluation images with a fallback budget; all of them otherwise); `int8_onnx` the INT8 model
    that was evaluated, as an ONNX file (what the report may say about how it ran)."""
    model, data = s.model, s.data
    evaluated = evaluated if evaluated is not None else data.evaluation
    fp32, int8 = ev.summary("fp32"), ev.summary("int8")
    header = report_header(config, s, placement, {"int8": int8_onnx} if int8_onnx else None)
    chance = chance_warning(fp32["top1"], len(ev.keys), class_count(evaluated))
    if chance:
        header.warn(chance)
    return RunReport(
        header=header,
        calibrator=config.calibrator,
        calibrator_params=outcome.entry.metadata.key.calibrator_params if outcome.entry.metadata else {},
        preprocess=model.preprocess.params,
        fp32_model=str(fp32_artifact),
        int8_model=str(int8_artifact),
        calibration=calibration_section(outcome, s),
        eval=eval_section(ev, data.calibration, evaluated, header),
        fp32=fp32,
        int8=int8,
        bias_correction=bool(outcome.entry.channel_means(config.bias_correction)),
        top1_drop=fp32["top1"] - int8["top1"],
        agreement=ev.agreement(),
    )


def fallback_report(result: FallbackResult, ev=None) -> FallbackReport:
    """The "fallback" entry of a classifier's report; `ev` is the Evaluation of "fp32" and "int8"
    (the fallback model) on the held-out subset, which gives the final figures."""
    if ev is None:
        return fallback_section(result)
    fp32, int8 = ev.summary("fp32"), ev.summary("int8")
    agreement = ev.agreement("fp32", "int8")
    final = {"images": len(ev.keys), "fp32_top1": fp32["top1"], "top1": int8["top1"],
             "drop": fp32["top1"] - int8["top1"], "agreement": agreement}
    return fallback_section(result, final, result.budget.meets(final["drop"], agreement))


def run_figures(prepared: onnx.ModelProto, qdq: onnx.ModelProto, outcome: CalibrationOutcome, flavor: str,
                calibration: Dataset, evaluation: Dataset, calibrator: str, batch_size: int = 16,
                workers: int | None = None, sqnr_images: int = 16, histogram_tensors: int = 6,
                histogram_samples: int | None = 128, progress: bool = True, device: str = "cpu",
                decoder: str = "nvjpeg") -> dict:
    """The figures of `calib run`'s report.html: histograms of a few tensors with the threshold,
    and per-tensor SQNR of the INT8 model on the first `sqnr_images` evaluation images."""
    amax = outcome.entry.cache.amax()
    order = [t for t in required_tensors(prepared, flavor) if t in amax]
    peaks = {}
    if outcome.entry.metadata:
        peaks = {t: max(-v.get("min", 0.0), v.get("max", 0.0)) for t, v in outcome.entry.metadata.tensors.items()}
    subset = evaluation.subset(evaluation.samples[:max(1, sqnr_images)])
    sq = activation_sqnr(prepared, {calibrator: qdq}, subset, order, min(batch_size, 4), workers,
                         "SQNR" if progress else None, device, decoder)[calibrator]
    logits = sq.pop(prepared.graph.output[0].name, math.inf)
    picked = pick_tensors({calibrator: amax}, order, peaks, histogram_tensors, {calibrator: sq})
    stats = getattr(outcome.calibrator, "stats", None)
    note = ""
    if stats is None or not stats.has_histogram or not all(t in stats for t in picked):
        stats, n = tensor_histograms(prepared, calibration, picked, batch_size, workers, histogram_samples,
                                     "histograms" if progress else None, device, decoder)
        why = "the cache was reused" if outcome.reused else f"{calibrator} keeps no histogram"
        note = f"recollected on {n} calibration images ({why})"
    figures = histogram_figures(stats, picked, {calibrator: amax}, calibrator)
    return {"histograms": figures, "histogram_note": note, "sqnr": {t: finite_or_none(v) for t, v in sq.items()},
            "sqnr_tensors": order, "sqnr_images": len(subset), "logits_sqnr_db": finite_or_none(logits)}
