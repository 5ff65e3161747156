"""Calibration caches: TensorRT text format, metadata sidecar, one validation, a locked folder of them."""

from calib.cache.files import CacheEntry, is_calib_cache, load_cache, sidecar_path
from calib.cache.metadata import CacheKey, CacheMetadata
from calib.cache.store import CacheStore
from calib.cache.trt_format import DEFAULT_TRT_VERSION, TrtCache, parse, released_version, version_code
from calib.cache.validate import (InvalidCache, ModelRequirements, Validation, load_valid_cache, scale_problem,
                                 validate_cache, validate_entry)

__all__ = ["CacheEntry", "CacheKey", "CacheMetadata", "CacheStore", "DEFAULT_TRT_VERSION", "InvalidCache",
           "ModelRequirements", "TrtCache", "Validation", "is_calib_cache", "load_cache", "load_valid_cache", "parse",
           "released_version", "scale_problem", "sidecar_path", "validate_cache", "validate_entry", "version_code"]
