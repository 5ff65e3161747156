"""Caches written by TensorRT itself (trtexec, Polygraphy, an IInt8EntropyCalibrator2 subclass)
in and out of calib: import attaches metadata; export rewrites the header for a TensorRT version."""

from __future__ import annotations

from pathlib import Path

from calib.cache.metadata import CacheKey, CacheMetadata
from calib.cache.store import CacheEntry, CacheStore, load_cache, read_trt_cache
from calib.cache.trt_format import version_string
from calib.fsutil import atomic_write_text

ALGORITHM_CALIBRATOR = {"EntropyCalibration2": "entropy", "EntropyCalibration": "entropy-legacy",
                        "MinMaxCalibration": "minmax", "LegacyCalibration": "legacy"}


def import_cache(path: Path, model, store: CacheStore) -> CacheEntry:
    """Copy a bare TensorRT cache into `store` with a sidecar naming `model`. Hex scales are kept
    as written, so the imported cache's text equals the original's."""
    path = Path(path)
    cache = read_trt_cache(path)
    calibrator = ALGORITHM_CALIBRATOR.get(cache.algorithm, cache.algorithm.lower())
    key = CacheKey(model.sha256, model.preprocess.params, "imported", "", calibrator, {"source": path.name})
    meta = CacheMetadata(
        key=key, model_name=model.name,
        model_inputs=[{"name": model.input_name, "shape": [d if isinstance(d, int) else str(d) for d in model.input_shape]}],
        dataset_description=f"unknown: imported from {path}", samples=0, skipped=0, batch_size=0,
        trt_version=version_string(cache.version_code), algorithm=cache.algorithm,
        tensors={n: {"scale": s, "amax": s * 127.0, "min": 0.0, "max": 0.0, "nonfinite": 0}
                 for n, s in cache.scales.items()},
        imported_from=str(path.resolve()))
    saved = store.save(cache, meta)
    return load_cache(saved)


def export_cache(path: Path, trt_version: str, out: Path) -> Path:
    """Write the cache with the header TensorRT `trt_version` expects (same scales, same order)."""
    entry = load_cache(path)
    atomic_write_text(out, entry.cache.with_version(trt_version).to_text())
    return Path(out)
