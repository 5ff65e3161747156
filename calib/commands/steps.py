"""The steps `calib run` takes for every task, written once: calibrate (or reuse the cache) with the
run's settings, materialize the INT8 model with the user's exclusions, and the report's
calibration section. `run` (a classifier: calib.commands.run) and `run --task` (any other model:
calib.commands.task) differ only in how they evaluate and report."""

from __future__ import annotations

from calib.calibration import CalibrationOutcome, calibrate
from calib.fsutil import mark_calib_onnx
from calib.quantize import quantize_model
from calib.quantize.heads import exclusions_record
from calib.report.schema import CalibrationSection
from calib.session.config import RunConfig
from calib.session.context import RunSetup


def calibrate_run(config: RunConfig, s: RunSetup) -> CalibrationOutcome:
    """The run's cache: found by its key, or calibrated on the run's device and saved."""
    return calibrate(s.model, s.prepared, s.data.calibration, config.calibrator, config.cache_store(),
                     batch_size=config.pass_batch_sizes()[0], workers=config.workers, recalibrate=config.recalibrate,
                     calibrator_params=config.calibrator_params, progress=config.progress, placement=s.placement,
                     gpu_decode=config.gpu_decode)


def int8_model(config: RunConfig, s: RunSetup, outcome: CalibrationOutcome):
    """(the Q/DQ model of the run's flavor from the cache as read back, with the user's exclusions
    beside the heads the flavors keep float; the channel means of its bias correction)."""
    means = outcome.entry.channel_means(config.bias_correction)
    qdq, _ = quantize_model(s.prepared, outcome.entry.cache.amax(), s.flavor, channel_means=means,
                            **config.placement_rules())
    return qdq, means


def mark_int8(qdq, config: RunConfig, s: RunSetup, outcome: CalibrationOutcome) -> None:
    """calib's provenance in the INT8 model: its flavor, its cache, the user's exclusions."""
    record = exclusions_record(config.placement_rules())
    mark_calib_onnx(qdq, qdq_flavor=s.flavor, cache=outcome.entry.path.name, **record)


def calibration_section(outcome: CalibrationOutcome, s: RunSetup) -> CalibrationSection:
    return CalibrationSection(samples=outcome.samples, seconds=round(outcome.seconds, 3),
                              cache=str(outcome.entry.path), reused=outcome.reused,
                              skipped=len(outcome.skipped), requested_samples=s.data.requested_samples)
