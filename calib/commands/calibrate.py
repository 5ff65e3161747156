"""`calib calibrate`: calibrate only (or reuse a matching cache) and return the cache entry."""

from __future__ import annotations

from calib.calibration import CalibrationOutcome, calibrate
from calib.data.plan import DataPlan, is_arrays, plan_data
from calib.models import prepared_model
from calib.session.config import RunConfig, check_config, config_model
from calib.session.context import check_decoder, fit_to_memory, run_at_fixed_batch


def calibrate_only(config: RunConfig) -> tuple[CalibrationOutcome, DataPlan]:
    """The calibration of `run`, alone: the same checks (options, cache folder, memory, a model
    that runs at one batch only) before the same pass."""
    placement = check_config(config)
    store = config.cache_store()
    model = config_model(config, is_arrays(config.dataset))
    check_decoder(config, model, placement)
    fit_to_memory(config, model, placement)
    data = plan_data(config.dataset, config.data_dir, model.preprocess, config.samples, config.seed, evaluate=False)
    prepared = prepared_model(model)
    run_at_fixed_batch(config, model, prepared)
    outcome = calibrate(model, prepared, data.calibration, config.calibrator,
                        store, batch_size=config.pass_batch_sizes()[0], workers=config.workers,
                        recalibrate=config.recalibrate, calibrator_params=config.calibrator_params,
                        progress=config.progress, placement=placement, gpu_decode=config.gpu_decode)
    return outcome, data
