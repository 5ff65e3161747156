"""Calibrate once, write the cache: stream the dataset, compute ranges, save scales + metadata;
several calibrators share one pass over the images (`calibrate_many`, for `calib compare`).

The cache is the single source of truth: Q/DQ models are always materialized from a cache that
was read back, so a fresh run and a reused cache produce the same bytes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import onnx

from calib.cache import CacheEntry, CacheKey, CacheMetadata, CacheStore, TrtCache, load_valid_cache
from calib.cache.trt_format import DEFAULT_TRT_VERSION
from calib.calibrators import Calibrator, TensorStatistics, get_calibrator
from calib.calibrators.registry import params_for
from calib.data import Dataset
from calib.data.decoders import CPU_DECODE_PATH as CPU_DECODE, decode_for
from calib.errors import CalibError
from calib.models import Model
from calib.passes import CollectResult
from calib.placement import CPU, Placement
from calib.calibrators.channel_means import ChannelMeans, Observers
from calib.quantize import calibrated_tensors, weighted_inputs
from calib.quantize.qdq import activation_scale


@dataclass
class CalibrationOutcome:
    entry: CacheEntry
    reused: bool
    seconds: float          # calibration time, or the time to load a reused cache
    samples: int
    skipped: list[str]
    calibrator: Calibrator | None = None  # with its statistics, when calibrated in this run


def cache_key(model: Model, dataset: Dataset, calibrator: Calibrator, decode: str = CPU_DECODE) -> CacheKey:
    """What a cache is valid for. The decode path is part of it: nvJPEG + GPU resampling produce
    slightly different pixels from Pillow, so a cache from one path is never reused by the other
    (the CPU path adds nothing to the key, so caches from before GPU decoding keep their keys; named
    arrays add "arrays", and their feed's params name every input's dtype and shape)."""
    params = model.preprocess.params if decode == CPU_DECODE else {**model.preprocess.params, "decode": decode}
    return CacheKey(model.sha256, params, dataset.source.id, dataset.fingerprint(), calibrator.name, calibrator.params)


def observe_pass(prepared: onnx.ModelProto, dataset: Dataset, stats, batch_size: int,
                 workers: int | None, progress: str | None, tensors: list[str],
                 placement: Placement = CPU, gpu_decode: str = "nvjpeg") -> tuple[CollectResult, ChannelMeans]:
    """One pass over `dataset` feeding every exposed activation to `stats` (a calibrator or a
    TensorStatistics) and the weighted ops' inputs to the channel means of bias correction
    (`calib.passes.observe_pass`), or sharded over several GPUs or a torchrun job's processes and
    merged exactly (`calib.passes.shard`). Returns the pass's result and the means."""
    from calib import passes

    if placement.sharded:
        from calib.passes.shard import observe_sharded

        # The ranks' statistics and channel means come back merged, in the one-device order.
        merged, means, multi, order = observe_sharded(prepared, dataset, placement, batch_size, tensors=tensors,
                                                      means_tensors=sorted(weighted_inputs(prepared)),
                                                      decoder=gpu_decode, workers=workers)
        target = getattr(stats, "stats", stats)  # a calibrator reads its TensorStatistics
        target.merge(merged)
        return CollectResult(multi.images, multi.skipped, multi.seconds, order), means
    means = ChannelMeans(weighted_inputs(prepared))
    return passes.observe_pass(prepared, dataset, Observers(stats, means), batch_size, placement.first, tensors,
                               workers, progress, gpu_decode), means


def model_inputs(model: Model) -> list[dict]:
    return model.inputs_json()


def calibrate(model: Model, prepared: onnx.ModelProto, dataset: Dataset, calibrator_name: str,
              store: CacheStore, batch_size: int = 4, workers: int | None = None,
              recalibrate: bool = False, calibrator_params: dict | None = None,
              trt_version: str = DEFAULT_TRT_VERSION, progress: bool = True,
              placement: Placement = CPU, gpu_decode: str = "nvjpeg") -> CalibrationOutcome:
    """Reuse a matching cache from `store`, or calibrate (on `placement`) and save one."""
    start = time.perf_counter()
    tensors = calibrated_tensors(prepared)
    decode = decode_for(model.preprocess, placement, gpu_decode)
    # --percentile applies to the percentile calibrator only (as in calibrate_many)
    calibrator = get_calibrator(calibrator_name, **params_for(calibrator_name, calibrator_params or {}))
    key = cache_key(model, dataset, calibrator, decode)
    if not recalibrate:
        # An invalid cache with this key (a NaN scale, a missing tensor) raises InvalidCache, naming
        # the tensor and that --recalibrate replaces it: it is never reused, never skipped silently.
        found = store.find(key, required=tensors)
        if found is not None:
            return CalibrationOutcome(found, True, time.perf_counter() - start, found.metadata.samples, [])
    store.check(write=True)   # a cache will be saved: the folder must take it, before the pass
    result, means = observe_pass(prepared, dataset, calibrator, batch_size, workers,
                                 f"calibrating ({calibrator.name})" if progress else None, tensors, placement,
                                 gpu_decode)
    if result.images == 0:
        raise CalibError(f"no calibration image could be decoded from {dataset.source.description}")
    return save_calibration(model, dataset, calibrator, store, result.images, result.skipped, result.tensors,
                            batch_size, result.seconds, means.means(), trt_version, decode)


def save_calibration(model: Model, dataset: Dataset, calibrator: Calibrator, store: CacheStore, images: int,
                     skipped: list[str], tensors: list[str], batch_size: int, seconds: float,
                     channel_means: dict[str, list[float]] | None,
                     trt_version: str = DEFAULT_TRT_VERSION, decode: str = CPU_DECODE) -> CalibrationOutcome:
    """Compute `calibrator`'s ranges over its (already observed) statistics and save the cache
    and sidecar; `calib compare` calls this once per calibrator after one shared pass."""
    key, inputs = cache_key(model, dataset, calibrator, decode), model_inputs(model)
    ranges = calibrator.compute()
    scales = {name: activation_scale(ranges[name].amax, 127) for name in tensors if name in ranges}
    cache = TrtCache.from_scales(scales, calibrator.trt_algorithm, trt_version)
    hex_scales = cache.scales
    meta_tensors = {name: {"scale": hex_scales[name], "amax": ranges[name].amax, "min": ranges[name].min,
                           "max": ranges[name].max, "nonfinite": ranges[name].nonfinite} for name in scales}
    meta = CacheMetadata(key=key, model_name=model.name, model_inputs=inputs,
                         dataset_description=dataset.source.description,
                         samples=images, skipped=len(skipped), batch_size=batch_size, trt_version=trt_version,
                         algorithm=calibrator.trt_algorithm, tensors=meta_tensors, seconds=round(seconds, 3),
                         channel_means=channel_means)
    path = store.save(cache, meta)
    entry = load_valid_cache(path, required=list(scales), model_sha256=model.sha256)  # as read back
    return CalibrationOutcome(entry, False, seconds, images, skipped, calibrator)


@dataclass
class SharedCalibration:
    outcomes: dict[str, CalibrationOutcome]
    collect_seconds: float            # the one shared pass (0 when every cache was reused)
    compute_seconds: dict[str, float]  # each fresh calibrator's compute() after it
    stats: TensorStatistics | None    # the shared statistics, when a pass ran


def calibrate_many(model, prepared: onnx.ModelProto, dataset: Dataset, names: list[str], store: CacheStore,
                   calibrator_params: dict | None = None, batch_size: int = 4, workers: int | None = None,
                   recalibrate: bool = False, progress: bool = True,
                   placement: Placement = CPU, gpu_decode: str = "nvjpeg") -> SharedCalibration:
    """Reuse every matching cache; calibrate the others in ONE collection pass (on `placement`)
    whose TensorStatistics all of them read, then save each one's cache."""
    params = calibrator_params or {}
    decode = decode_for(model.preprocess, placement, gpu_decode)
    outcomes: dict[str, CalibrationOutcome] = {}
    fresh: list[str] = []
    for name in names:
        probe = get_calibrator(name, **params_for(name, params))
        if not recalibrate:
            start = time.perf_counter()
            found = store.find(cache_key(model, dataset, probe, decode), required=calibrated_tensors(prepared))
            if found is not None:
                outcomes[name] = CalibrationOutcome(found, True, time.perf_counter() - start,
                                                    found.metadata.samples, [])
                continue
        fresh.append(name)
    if not fresh:
        return SharedCalibration(outcomes, 0.0, {}, None)
    store.check(write=True)   # caches will be saved: the folder must take them, before the pass
    stats = TensorStatistics(histogram=True)  # the plots want histograms even for minmax
    calibrators = [get_calibrator(n, stats, **params_for(n, params)) for n in fresh]
    result, means = observe_pass(prepared, dataset, stats, batch_size, workers,   # the same pass as calibrate()'s
                                 f"calibrating ({', '.join(fresh)})" if progress else None, calibrated_tensors(prepared),
                                 placement, gpu_decode)
    if result.images == 0:
        raise CalibError(f"no calibration image could be decoded from {dataset.source.description}")
    compute_seconds = {}
    channel_means = means.means()
    for cal in calibrators:
        start = time.perf_counter()
        # Metadata seconds: the shared pass plus this calibrator's own computation.
        outcome = save_calibration(model, dataset, cal, store, result.images, result.skipped, result.tensors,
                                   batch_size, result.seconds, channel_means, decode=decode)
        compute_seconds[cal.name] = time.perf_counter() - start
        outcome.seconds = result.seconds + compute_seconds[cal.name]
        outcomes[cal.name] = outcome
    return SharedCalibration({n: outcomes[n] for n in names}, result.seconds, compute_seconds, stats)
