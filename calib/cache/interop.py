"""Caches written by TensorRT itself (trtexec, Polygraphy, an IInt8EntropyCalibrator2 subclass)
in and out of calib: import attaches metadata; export rewrites the header for a TensorRT version.

Both refuse what TensorRT would silently misuse: a header-only file, scales that are not valid
int8 scales (NaN, infinite, zero, negative, subnormal, or so large that amax overflows:
`validate.scale_problem`), a sidecar that disagrees with the text (`validate_entry`); import
refuses a cache that lacks scales for some of the model's quantized tensors unless forced (and
says which); export, given the model, refuses what `calib cache verify` refuses for it (a missing
scale, another model's cache): import, export and verify all go through `validate_cache`. Export
writes headers for released TensorRT versions only
(`trt_format.RELEASED_TRT_VERSIONS`) unless the version is explicitly assumed. Hex scales are
copied as text, never through a float: round trips are bit-exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from calib.cache.files import CacheEntry, read_trt_cache, sidecar_path
from calib.cache.metadata import CacheKey, CacheMetadata
from calib.cache.store import CacheStore
from calib.cache.trt_format import released_version, version_string
from calib.cache.validate import InvalidCache, ModelRequirements, load_valid_cache, validate_cache
from calib.errors import CalibError
from calib.fsutil import atomic_write_text, check_output_file

ALGORITHM_CALIBRATOR = {"EntropyCalibration2": "entropy", "EntropyCalibration": "entropy-legacy",
                        "MinMaxCalibration": "minmax", "LegacyCalibration": "legacy"}


@dataclass
class ImportResult:
    entry: CacheEntry
    missing: list[str] = field(default_factory=list)  # quantized tensors without a scale (with force)

    @property
    def path(self) -> Path:
        return self.entry.path


@dataclass
class ExportResult:
    path: Path
    trt_version: str                   # canonical X.Y.Z written in the header
    header: str
    warnings: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return str(self.path)


def import_cache(path: Path, model, store: CacheStore, required: list[str] | None = None,
                 force: bool = False) -> ImportResult:
    """Copy a bare TensorRT cache into `store` with a sidecar naming `model`. Hex scales are kept
    as written, so the imported cache's text equals the original's (apart from its header line
    when that was not TensorRT's canonical form).

    Refused (InvalidCache, nothing written): a header-only file, invalid scales
    (`validate.scale_problem`), a header TensorRT does not write; with `required` (the model's quantized tensors),
    a cache missing some of them unless `force` (then `missing` lists them)."""
    path = Path(path)
    cache = read_trt_cache(path)
    # The text alone (a sidecar-named file beside it is not this cache's metadata yet).
    needs = ModelRequirements(model.name, model.sha256, tuple(required)) if required is not None else None
    _, v = validate_cache(CacheEntry(path, cache, None), needs)
    if v.fatal:
        v.missing = []  # the fatal problems first; `--force` cannot fix these
        raise v.error("nothing imported")
    if v.missing and not force:
        raise InvalidCache(path, [f"partial cache: {len(v.missing)} of {len(required)} quantized tensors of "
                                  f"{model.name} have no scale: {', '.join(v.missing[:10])}"
                                  + (" …" if len(v.missing) > 10 else "")],
                           v.missing[0], "--force imports it anyway; those tensors stay in float")
    calibrator = ALGORITHM_CALIBRATOR.get(cache.algorithm, cache.algorithm.lower())
    key = CacheKey(model.sha256, model.preprocess.params, "imported", "", calibrator, {"source": path.name})
    meta = CacheMetadata(
        key=key, model_name=model.name,
        model_inputs=model.inputs_json(),
        dataset_description=f"unknown: imported from {path}", samples=0, skipped=0, batch_size=0,
        trt_version=version_string(cache.version_code), algorithm=cache.algorithm,
        tensors={n: {"scale": s, "amax": s * 127.0, "min": 0.0, "max": 0.0, "nonfinite": 0}
                 for n, s in cache.scales.items()},
        imported_from=str(path.resolve()))
    saved = store.save(cache, meta)
    return ImportResult(load_valid_cache(saved), list(v.missing))


def export_cache(path: Path, trt_version: str, out: Path, assume: bool = False, overwrite: bool = False,
                 model: ModelRequirements | None = None) -> ExportResult:
    """Write the cache with the header TensorRT `trt_version` expects: the same tensors in the
    same order with the same hex scales, only the header's version changed.

    Refused (nothing written): an invalid cache (`validate_cache`: against `model` when given,
    exactly as `calib cache verify` checks it, so a cache missing a quantized tensor's scale or
    calibrated for another model is refused), a TensorRT version never released unless `assume`
    (then a warning names the assumption),
    `out` naming the source cache, a folder, a file with a sidecar-named file beside it, or an
    existing file that is not a TensorRT cache with exactly these scales, unless `overwrite`."""
    path, out = Path(path), Path(out)
    canonical, warning = released_version(trt_version, assume)
    entry, v = validate_cache(path, model)
    if not v.ok:
        raise v.error("nothing exported")
    exported = entry.cache.with_version(canonical)
    text = exported.to_text()
    if out.exists() and path.exists() and out.resolve() == path.resolve():
        raise CalibError(f"--out {out} is the cache being exported; write the export to another file")
    if sidecar_path(out).exists():
        # calib reads X.json beside X.cache as its metadata: an export there would disagree with it.
        raise CalibError(f"{sidecar_path(out)} exists beside --out {out} and would be read as its metadata; "
                         f"choose another --out")

    def previous_export(existing: Path) -> bool:
        # A TensorRT cache holding exactly these scales (any header): replacing it loses nothing.
        return read_trt_cache(existing).hex_scales == entry.cache.hex_scales

    check_output_file(out, overwrite=overwrite, written_by_calib=previous_export)
    atomic_write_text(out, text)
    return ExportResult(out, canonical, exported.header, [warning] if warning else [])
