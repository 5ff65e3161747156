"""TensorRT INT8 calibrators (implicit quantization, TensorRT <= 10) fed by calib's data pipeline.

TensorRT's implicit INT8 path asks a calibrator object for batches of device memory and for a
calibration cache. The factories here return real subclasses of `trt.IInt8EntropyCalibrator2`
and `trt.IInt8MinMaxCalibrator`, created only once `tensorrt` imports:

- `entropy_calibrator` / `minmax_calibrator`: stream the dataset to the GPU through
  `GpuBatchStream` (decode workers -> pinned host -> async copies), reuse a matching cache from a
  `CacheStore`, and save the cache TensorRT writes back into the store, parsed by
  `calib.cache.parse` and with a `CacheMetadata` sidecar like every calib cache;
- `cache_calibrator`: no data at all: it hands TensorRT an existing cache (calib's or
  TensorRT's), its header rewritten to the running TensorRT version, since TensorRT silently
  ignores a cache whose header names another version or algorithm.

Methods follow the IInt8Calibrator interface (get_batch_size; get_batch(names) -> one device
pointer per input name, None when there are no more batches; read_calibration_cache -> bytes or
None; write_calibration_cache(buffer)); the Python subclass must initialise its base explicitly:
https://docs.nvidia.com/deeplearning/tensorrt/archives/tensorrt-861/api/c_api/classnvinfer1_1_1_i_int8_entropy_calibrator2-members.html
https://docs.nvidia.com/deeplearning/tensorrt/archives/tensorrt_500rc/tensorrt-api/python_api/infer/Int8/EntropyCalibrator.html
(and, for the Python calling conventions, Polygraphy's tools/Polygraphy/polygraphy/backend/trt/calibrator.py
in NVIDIA/TensorRT). TensorRT deprecated calibrators in 10.1 and removed them in 11.0
(https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/c-api/deprecated.html,
https://docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/tensorrt-10x-to-11x-python-api-reference.html);
asking for one where IBuilderConfig has no `int8_calibrator` (TensorRT 11, and TensorRT-RTX,
which never had calibrators) raises a CalibError that points to the explicit Q/DQ path.

TensorRT needs every calibration batch full: a shorter last batch (or one that lost undecodable
images) is dropped, and the images actually used are what the metadata records.
Exceptions inside the callbacks are kept in `.error` (raising into TensorRT's C++ would abort
the build without a message); the backend re-raises it after the build.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from calib.cache import CacheEntry, CacheKey, CacheMetadata, CacheStore, TrtCache, load_cache, parse
from calib.cache.trt_format import version_string
from calib.errors import CalibError

from .plan import QDQ_PATH
from .probe import TENSORRT, import_product, probe

# Cache header algorithm word -> TensorRT calibrator base class.
BASES = {"EntropyCalibration2": "IInt8EntropyCalibrator2",
         "MinMaxCalibration": "IInt8MinMaxCalibrator",
         "EntropyCalibration": "IInt8EntropyCalibrator"}
# calib's name for each data calibrator (part of the cache key, distinct from calib's own
# entropy/minmax calibrators, whose scales come from calib's statistics, not TensorRT's).
CALIBRATOR_NAMES = {"EntropyCalibration2": "tensorrt-entropy2", "MinMaxCalibration": "tensorrt-minmax"}


def base_for(algorithm: str) -> str:
    try:
        return BASES[algorithm]
    except KeyError:
        raise CalibError(f"no TensorRT calibrator reads '{algorithm}' caches through calib "
                         f"(supported: {', '.join(BASES)})") from None


def cache_bytes_for(cache: TrtCache, trt_version: str) -> bytes:
    """The cache as TensorRT `trt_version` accepts it: same scales, header for that version."""
    return cache.with_version(trt_version).to_text().encode("ascii")


def metadata_for_trt_cache(cache: TrtCache, key: CacheKey, model, dataset, samples: int, skipped: int,
                           batch_size: int, seconds: float) -> CacheMetadata:
    """Metadata for scales TensorRT computed: amax = scale * 127; min/max are not known."""
    tensors = {name: {"scale": s, "amax": s * 127.0, "min": None, "max": None, "nonfinite": None}
               for name, s in cache.scales.items()}
    return CacheMetadata(key=key, model_name=model.name, model_inputs=_model_inputs(model),
                         dataset_description=dataset.source.description, samples=samples, skipped=skipped,
                         batch_size=batch_size, trt_version=version_string(cache.version_code),
                         algorithm=cache.algorithm, tensors=tensors, seconds=round(seconds, 3))


def _model_inputs(model) -> list[dict]:
    # As calib's own cache metadata records the model input.
    return [{"name": model.input_name, "shape": [d if isinstance(d, int) else str(d) for d in model.input_shape]}]


def _tensorrt_for_calibration():
    """The `tensorrt` module, where it still has implicit INT8 (IBuilderConfig.int8_calibrator
    and the calibrator base classes; removed in TensorRT 11, absent from TensorRT-RTX)."""
    trt = import_product(TENSORRT)
    features = probe(trt, TENSORRT)
    if not features.int8_calibrator:
        raise CalibError(f"{features.display} has no INT8 calibrators (removed in TensorRT 11): {QDQ_PATH}")
    return trt


_CLASSES: dict[tuple[int, str], type] = {}


def _calibrator_class(trt, base_name: str) -> type:
    """One subclass per TensorRT base class, made on first use (only once tensorrt imports)."""
    key = (id(trt), base_name)
    if key in _CLASSES:
        return _CLASSES[key]
    base = getattr(trt, base_name)

    class Calibrator(base):
        def __init__(self, batch_size: int, next_batch: Callable[[], tuple[int, int] | None] | None,
                     read: Callable[[], bytes | None], write: Callable[[bytes], None]) -> None:
            base.__init__(self)  # pybind11 trampolines must initialise the base explicitly
            self.batch_size = batch_size
            self._next_batch = next_batch
            self._read = read
            self._write = write
            self.batches = 0
            self.images = 0
            self.dropped = 0
            self.error: BaseException | None = None
            self.asked_for_data = False

        def get_batch_size(self) -> int:
            return self.batch_size

        def get_batch(self, names):
            if self._next_batch is None:
                # A cache-only calibrator is asked for data only when TensorRT rejected its cache.
                self.asked_for_data = True
                return None
            if self.error is not None:
                return None
            try:
                while True:
                    got = self._next_batch()
                    if got is None:
                        return None
                    pointer, valid = got
                    if valid == self.batch_size:
                        break
                    self.dropped += valid   # TensorRT takes only full batches
                self.batches += 1
                self.images += valid
                return [pointer for _ in names]  # calib's models have one image input
            except Exception as e:  # noqa: BLE001 - kept for the backend to re-raise
                self.error = e
                return None

        def read_calibration_cache(self):
            try:
                return self._read()
            except Exception as e:  # noqa: BLE001
                self.error = e
                return None

        def write_calibration_cache(self, cache) -> None:
            try:
                self._write(bytes(cache))
            except Exception as e:  # noqa: BLE001
                self.error = e

    Calibrator.__name__ = Calibrator.__qualname__ = f"Calib{base_name[1:]}"
    _CLASSES[key] = Calibrator
    return Calibrator


def _data_calibrator(algorithm: str, model, dataset, store: CacheStore | None, batch_size: int,
                     workers: int | None, recalibrate: bool, progress: str | None):
    trt = _tensorrt_for_calibration()
    from calib.data.gpu_stream import GpuBatchStream

    stream = GpuBatchStream(dataset, batch_size, workers, progress=progress)
    key = CacheKey(model.sha256, model.preprocess.params, dataset.source.id, dataset.fingerprint(),
                   CALIBRATOR_NAMES[algorithm], {"batch_size": batch_size, "partial_batches": "dropped"})
    started = time.perf_counter()
    calibrator: Any = None

    def read() -> bytes | None:
        if store is None or recalibrate:
            return None
        entry = store.find(key)
        if entry is None or entry.cache.algorithm != algorithm:
            return None
        return cache_bytes_for(entry.cache, trt.__version__)

    def write(data: bytes) -> None:
        cache = parse(data.decode("ascii", errors="replace"), "the calibration cache TensorRT wrote")
        calibrator.cache = cache
        if store is None:
            return
        meta = metadata_for_trt_cache(cache, key, model, dataset, calibrator.images,
                                      len(stream.skips.skipped), batch_size, time.perf_counter() - started)
        calibrator.saved = store.save(cache, meta)

    calibrator = _calibrator_class(trt, BASES[algorithm])(batch_size, stream.get_batch, read, write)
    calibrator.stream, calibrator.key, calibrator.cache, calibrator.saved = stream, key, None, None
    return calibrator


def entropy_calibrator(model, dataset, store: CacheStore | None = None, batch_size: int = 16,
                       workers: int | None = None, recalibrate: bool = False, progress: str | None = None):
    """A `trt.IInt8EntropyCalibrator2` streaming `dataset` (calib.data.Dataset) for `model`
    (calib.models.Model); reuses and saves caches in `store`."""
    return _data_calibrator("EntropyCalibration2", model, dataset, store, batch_size, workers,
                            recalibrate, progress)


def minmax_calibrator(model, dataset, store: CacheStore | None = None, batch_size: int = 16,
                      workers: int | None = None, recalibrate: bool = False, progress: str | None = None):
    """A `trt.IInt8MinMaxCalibrator`, otherwise as `entropy_calibrator`."""
    return _data_calibrator("MinMaxCalibration", model, dataset, store, batch_size, workers,
                            recalibrate, progress)


def cache_calibrator(cache: TrtCache | CacheEntry | str | Path, batch_size: int = 1):
    """A calibrator without data that hands TensorRT an existing cache (header rewritten to this
    TensorRT version); its class matches the cache's algorithm, which TensorRT also checks."""
    trt = _tensorrt_for_calibration()
    if isinstance(cache, (str, Path)):
        cache = load_cache(cache).cache
    elif isinstance(cache, CacheEntry):
        cache = cache.cache
    data = cache_bytes_for(cache, trt.__version__)

    def keep(written: bytes) -> None:
        calibrator.written = written

    calibrator = _calibrator_class(trt, base_for(cache.algorithm))(batch_size, None, lambda: data, keep)
    calibrator.cache, calibrator.written = cache, None
    return calibrator


def raise_calibrator_problem(calibrator) -> None:
    """Errors inside calibrator callbacks are kept there (see above): raise them after the build."""
    if calibrator is None:
        return
    error = getattr(calibrator, "error", None)
    if isinstance(error, CalibError):
        raise error
    if error is not None:
        raise CalibError(f"INT8 calibration failed: {type(error).__name__}: {error}") from error
    if getattr(calibrator, "asked_for_data", False):
        raise CalibError("TensorRT did not accept the calibration cache (made for another model or "
                         "TensorRT version, or tensors missing) and had no data to calibrate with")
