"""Calibration caches: TensorRT text format, metadata sidecar, a locked folder of them."""

from calib.cache.metadata import CacheKey, CacheMetadata
from calib.cache.store import CacheEntry, CacheStore, load_cache, sidecar_path
from calib.cache.trt_format import DEFAULT_TRT_VERSION, TrtCache, parse, version_code

__all__ = ["CacheEntry", "CacheKey", "CacheMetadata", "CacheStore", "DEFAULT_TRT_VERSION", "TrtCache",
           "load_cache", "parse", "sidecar_path", "version_code"]
