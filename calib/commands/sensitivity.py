"""`calib sensitivity`: calibrate (or reuse the cache), rank every quantized layer by the damage it
does alone (`calib.restore.ranker`), write sensitivity.json / .md / .png and report.html.

Every task: a classifier is ranked by its logits SQNR (with agreement and top-1 beside it, and
the chance warning when FP32 itself guesses); a detector, a segmenter or a model of no known task
by the SQNR of the output a layer hurts most (`calib.restore.score.TaskScorer`), with the task
metric of the every-layer-INT8 model beside it; the task's metric is first checked to read the
model's outputs (one gray image), so a --task that does not fit fails before calibration."""

from __future__ import annotations

from pathlib import Path

from calib.calibration import calibrate
from calib.data import take
from calib.errors import CalibError
from calib.passes import load_images
from calib.report.schema import SensitivityReport
from calib.report.sensitivity import write_sensitivity_report
from calib.restore.ranker import rank_layers
from calib.restore.score import CLASSIFY, scorer_for
from calib.fsutil import staged_dir
from calib.report.header import chance_warning
from calib.session.config import RunConfig, metric_params
from calib.data.classes import class_count
from calib.session.context import report_header, setup


def rank_sensitivity(config: RunConfig, out: Path | None = None, images: int = 64,
                     weighted_only: bool = False) -> SensitivityReport:
    """Rank the layers of `config`'s model on `images` evaluation images, calibrating with
    `config.calibrator`; writes into `out` (staged: nothing is left half-written)."""
    if images < 1:
        raise CalibError("--images must be at least 1")
    s = setup(config, out, "sensitivity")
    model, flavor, data, prepared, out = s.model, s.flavor, s.data, s.prepared, s.out
    params = metric_params(config, model.task) if model.task != CLASSIFY else {}
    scorer = scorer_for(model.task, **params)
    if model.task != CLASSIFY:
        from calib.commands.task import check_task_fits

        check_task_fits(prepared, model.task, model.size, **params)   # before any calibration
    with staged_dir(out) as stage:
        placement = s.placement
        outcome = calibrate(model, prepared, data.calibration, config.calibrator, config.cache_store(),
                            batch_size=config.pass_batch_sizes()[0], workers=config.workers,
                            recalibrate=config.recalibrate, calibrator_params=config.calibrator_params,
                            progress=config.progress, placement=placement,
                            gpu_decode=config.gpu_decode)
        subset = load_images(take(data.evaluation, images, config.seed), config.batch_size, config.workers,
                             "decoding" if config.progress else None, placement.first, config.gpu_decode)
        means = outcome.entry.channel_means(config.bias_correction)
        result = rank_layers(prepared, outcome.entry.cache.amax(), flavor, subset, config.batch_size,
                             weighted_only=weighted_only, progress=config.progress, channel_means=means,
                             device=placement.first, rules=config.placement_rules(), scorer=scorer)
        header = report_header(config, s, placement, int8_models=None)
        ranked = result.as_dict()
        if model.task == CLASSIFY:   # chance is a classifier's notion: top-1 against 1 in K classes
            chance = chance_warning(ranked["fp32_top1"], ranked["images"], class_count(data.evaluation))
            if chance:
                header.warn(chance)
        report = SensitivityReport(header=header, calibrator=config.calibrator, cache=str(outcome.entry.path),
                                   out=str(out), bias_correction=bool(means), sensitivity=ranked)
        write_sensitivity_report(stage, report)
    return report
