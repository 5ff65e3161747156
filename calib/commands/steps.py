"""The steps `calib run` takes for every task, written once: calibrate (or reuse the cache) with the
run's settings, materialize the INT8 model with the user's exclusions (and the float layers a
budget needs), and the report's calibration and fallback sections. A classifier (calib.commands.run) and any
other model (calib.commands.task) differ only in how they are judged and reported: the run's
`Judge`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx

from calib.calibration import CalibrationOutcome, calibrate
from calib.data import Dataset
from calib.data.plan import DataPlan
from calib.fsutil import mark_calib_onnx
from calib.quantize import quantize_model
from calib.quantize.heads import exclusions_record
from calib.report.schema import CalibrationSection, FallbackReport, RunBase
from calib.restore.score import Scorer
from calib.restore.search import STRATEGY, THROUGHPUT_SECONDS, FallbackResult, fallback_to_budget, slower_than_fp32
from calib.session.config import RunConfig
from calib.session.context import RunSetup
from calib.stats.budget import Budget


def calibrate_run(config: RunConfig, s: RunSetup) -> CalibrationOutcome:
    """The run's cache: found by its key, or calibrated on the run's device and saved."""
    return calibrate(s.model, s.prepared, s.data.calibration, config.calibrator, config.cache_store(),
                     batch_size=config.pass_batch_sizes()[0], workers=config.workers, recalibrate=config.recalibrate,
                     calibrator_params=config.calibrator_params, progress=config.progress, placement=s.placement,
                     gpu_decode=config.gpu_decode)


@dataclass
class Int8:
    """The INT8 model a run ships: the Q/DQ model (marked with calib's provenance), the channel
    means of its bias correction, and the fallback search that chose its float layers, if a budget
    asked for one (its held-out images are then the ones to evaluate on)."""
    model: onnx.ModelProto
    means: dict | None
    fallback: FallbackResult | None = None

    def evaluation(self, data: DataPlan) -> Dataset:
        """The images the run's figures come from: the fallback's held-out subset, or all the
        evaluation images."""
        return self.fallback.final_dataset if self.fallback is not None else data.evaluation


class Judge:
    """How a run judges its INT8 model: one contract, one kind per reference (after Polygraphy's
    runners, one contract whatever runs behind it; the scorers of calib.restore.score are the same
    split one layer down). Made before any calibration, a judge has checked what can be checked
    then (a task's metric reads the model's outputs, its labels fit the images, the budget is one
    its figure can judge). `scorer` is how the fallback search scores a candidate, the way the run
    judges the result; `budget` what --max-drop and --min-agreement ask for, in the scorer's
    figure (None: no search); `judge` evaluates FP32 and INT8 on the same images, decides, and
    writes the report into the stage folder.

    `calib.commands.run.ClassifierJudge`: top-1 against the images' labels, paired intervals;
    `calib.commands.task.TaskJudge`: every output against FP32, and the task metric."""

    scorer: Scorer
    budget: Budget | None

    def judge(self, backend, stage: Path, outcome: CalibrationOutcome, int8: Int8, int8_onnx: Path) -> RunBase:
        raise NotImplementedError


def int8_model(config: RunConfig, s: RunSetup, outcome: CalibrationOutcome, judge: Judge) -> Int8:
    """The Q/DQ model of the run's flavor from the cache as read back, with the user's exclusions
    beside the heads the flavors keep float; with the judge's budget (--max-drop,
    --min-agreement), the fewest most damaging layers left float to meet it
    (calib.restore.search), each candidate scored by the judge's scorer (top-1 for a classifier,
    else the task metric against the labels or FP32); marked with its flavor, its cache and the
    exclusions."""
    rules = config.placement_rules()
    means = outcome.entry.channel_means(config.bias_correction)
    amax = outcome.entry.cache.amax()
    fallback = None
    if judge.budget is not None:
        fallback = fallback_to_budget(s.prepared, amax, s.flavor, s.data.evaluation, judge.budget,
                                      batch_size=config.batch_size, workers=config.workers, seed=config.seed,
                                      progress=config.progress, channel_means=means, device=s.placement.first,
                                      decoder=config.gpu_decode, rules=rules, scorer=judge.scorer,
                                      # what the float layers cost is a speed figure: --speed-seconds 0 skips it too
                                      throughput_seconds=THROUGHPUT_SECONDS if config.speed_seconds > 0 else 0)
        qdq = fallback.model
    else:
        qdq, _ = quantize_model(s.prepared, amax, s.flavor, channel_means=means, **rules)
    record = exclusions_record(rules)
    mark_calib_onnx(qdq, qdq_flavor=s.flavor, cache=outcome.entry.path.name, **record)
    return Int8(qdq, means, fallback)


def calibration_section(outcome: CalibrationOutcome, s: RunSetup) -> CalibrationSection:
    return CalibrationSection(samples=outcome.samples, seconds=round(outcome.seconds, 3),
                              cache=str(outcome.entry.path), reused=outcome.reused,
                              skipped=len(outcome.skipped), requested_samples=s.data.requested_samples)


def fallback_section(result: FallbackResult, final: dict | None = None,
                     final_met: bool | None = None) -> FallbackReport:
    """The "fallback" entry of a run report, for every task: the layers the search left float to
    meet the budget (on top-1, or the task metric's headline), what the ranking measured (the
    scorer's measure, which the result carries),
    the search-subset figures and what the float layers cost; `final`, the held-out figures (on the
    images the search never saw), and whether they meet the budget, come from the judge."""
    return FallbackReport(
        budget=result.budget.as_dict(), budget_text=result.budget.text(), float_layers=result.float_layers,
        layers=result.layers, search=result.search, final_images=len(result.final_dataset), strategy=STRATEGY,
        measure=result.measure, ranking=result.ranking, ranking_images=result.ranking_images,
        evaluations=result.evaluations, seconds=round(result.seconds, 1), throughput=result.throughput,
        slower_than_fp32=slower_than_fp32(result.throughput),
        note="the layers were chosen on the search subset; the final figures come from the held-out "
             "subset, which the search never saw", final=final, final_met=final_met)
