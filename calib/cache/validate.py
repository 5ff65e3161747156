"""The one validation every use of a cache goes through (reuse, build, export, import, compare,
sensitivity, verify).

A cache may be used only when:
- its header is one TensorRT writes: a known calibration algorithm (TensorRT's
  CalibrationAlgoType names) and a version number that reads back as itself;
- it holds at least one scale (a header-only file is not a cache);
- every scale is a valid int8 scale (`scale_problem`): finite, positive and a normal float32,
  and so are the two numbers computed from it, amax = scale*127 and 1/scale. Scale = amax/127;
  NaN, inf, zero or negative scales quantize everything to garbage, and so do the extremes that
  pass as "finite and positive": a subnormal scale (1.4e-45) has no normal reciprocal (x/scale
  overflows: numpy's "divide by zero", every activation clipped to +-127, top-1 0%), and
  FLT_MAX's amax overflows float32. calib's own writer never produces one
  (`calib.quantize.qdq.activation_scale` clamps into the rule);
- with a sidecar, the sidecar describes this very text: the same tensors, the same scales bit
  for bit, the same algorithm and TensorRT version (a cache edited by hand, or a pair half
  replaced, disagrees);
- with `model_sha256`, the sidecar names that model;
- with `required`, every tensor the model quantizes has a scale.

`validate_cache` is the form every command that is handed a cache file uses (verify, build,
export, import): the file, then these rules, with one model's `ModelRequirements` when there is
a model to check against. A cache one of them refuses, the others refuse too.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

from calib.cache.files import CacheEntry, load_cache
from calib.cache.trt_format import ALGORITHMS, scale_to_hex, version_code, version_string
from calib.errors import CalibError

RECALIBRATE = "--recalibrate replaces it"

INT8_LEVELS = 127                                          # amax = scale * 127 (symmetric int8)
FLT_MAX = struct.unpack(">f", bytes.fromhex("7f7fffff"))[0]  # the largest float32
FLT_MIN = 2.0 ** -126                                      # the smallest normal float32
SCALE_RULE = "a scale must be a normal float32 > 0, with amax = scale*127 and 1/scale normal float32 too"


def _f32(x: float) -> float:
    return struct.unpack(">f", struct.pack(">f", x))[0]


def _normal_f32(x: float) -> bool:
    """`x` (exact, in float64) lies in the range of positive normal float32 numbers."""
    return FLT_MIN <= x <= FLT_MAX


def scale_problem(scale: float) -> str | None:
    """Why `scale` cannot be a symmetric int8 scale, or None when it can: it is finite, positive
    and a normal float32, and so are amax = scale*127 and 1/scale (computed exactly in float64,
    so no rounding lets an overflowing amax through). The one rule for a scale: every reader of
    a cache asks it (through `validate_entry`), and `calib.quantize.qdq.activation_scale`, the
    writer, clamps into it (`MIN_SCALE`..`MAX_SCALE`)."""
    if math.isnan(scale) or math.isinf(scale):
        return "not finite"
    if scale <= 0:
        return "not positive" if scale == 0 else "negative"
    if _f32(scale) != scale:
        return "not a float32"
    if scale < FLT_MIN:
        return "subnormal float32"
    if not _normal_f32(scale * INT8_LEVELS):
        return "amax = scale*127 overflows float32"
    if not _normal_f32(1.0 / scale):
        return "1/scale is not a normal float32"
    return None


def _max_scale() -> float:
    s = _f32(FLT_MAX / INT8_LEVELS)          # rounded to nearest: may round up past the limit
    while scale_problem(s) is not None:
        s = struct.unpack(">f", (struct.unpack(">I", struct.pack(">f", s))[0] - 1).to_bytes(4, "big"))[0]
    return s


MIN_SCALE = FLT_MIN        # the smallest valid scale (also what an all-zero tensor gets)
MAX_SCALE = _max_scale()   # the largest valid scale: its amax is still a finite float32


def _names(names: list[str], limit: int = 5) -> str:
    return ", ".join(f"'{n[:80]}'" for n in names[:limit]) + (" …" if len(names) > limit else "")


@dataclass(frozen=True)
class ModelRequirements:
    """What one model asks of a cache (`calib.commands.build.cache_requirements` computes it
    from the model and its Q/DQ flavor): a scale for each tensor the flavor quantizes, a sidecar
    naming this model's hash, and (reported, not refused) no scales for tensors it lacks."""
    name: str
    sha256: str
    required: tuple[str, ...]
    activations: tuple[str, ...] | None = None


@dataclass
class Validation:
    model_sha256: str | None
    cache_model_sha256: str | None
    missing: list[str] = field(default_factory=list)      # quantized tensors without a scale
    bad_scales: list[str] = field(default_factory=list)   # not valid int8 scales (`scale_problem`)
    extra: list[str] = field(default_factory=list)        # scales for tensors the model lacks
    header: list[str] = field(default_factory=list)       # what is wrong with the header / the file
    sidecar: list[str] = field(default_factory=list)      # how the sidecar disagrees with the text
    sidecar_tensors: list[str] = field(default_factory=list)  # tensors the disagreement is about
    path: Path | None = None
    scales: dict[str, float] = field(default_factory=dict, repr=False)

    @property
    def hash_matches(self) -> bool:
        return self.model_sha256 is None or self.cache_model_sha256 is None or \
            self.cache_model_sha256 == self.model_sha256

    @property
    def ok(self) -> bool:
        return not self.header and not self.sidecar and self.hash_matches and not self.missing \
            and not self.bad_scales

    @property
    def fatal(self) -> bool:
        """Problems no --force can override (a broken file, a sidecar that disagrees, invalid
        scales), as opposed to a cache for another model or one missing some tensors."""
        return bool(self.header or self.sidecar or self.bad_scales)

    @property
    def tensor(self) -> str | None:
        """The first tensor a problem is about (for the one-line error)."""
        for names in (self.bad_scales, self.sidecar_tensors, self.missing):
            if names:
                return names[0]
        return None

    def problems(self) -> list[str]:
        """One phrase per problem; the bad-scale one last, the missing one just before (build
        names the last)."""
        out = list(self.header) + list(self.sidecar)
        if not self.hash_matches:
            out.append(f"model hash {self.model_sha256[:16]}… does not match the cache's "
                       f"{self.cache_model_sha256[:16]}… (calibrated for another model)")
        if self.missing:
            out.append(f"{len(self.missing)} quantized tensor(s) have no scale: {_names(self.missing)}")
        if self.bad_scales:
            shown = []
            for n in self.bad_scales[:5]:
                s = self.scales.get(n, float("nan"))
                shown.append(f"'{n[:80]}' = {s:g} ({scale_problem(s) or 'invalid'})")
            out.append(f"{len(self.bad_scales)} invalid scale(s): {', '.join(shown)}"
                       + (" …" if len(self.bad_scales) > 5 else "") + f" ({SCALE_RULE})")
        return out

    def error(self, advice: str | None = RECALIBRATE) -> "InvalidCache":
        return InvalidCache(self.path, self.problems(), self.tensor, advice)


class InvalidCache(CalibError):
    """A cache that must not be used: names the file, what is wrong (and the first tensor it
    is about), and what to do."""

    def __init__(self, path: Path | str | None, problems: list[str], tensor: str | None = None,
                 advice: str | None = RECALIBRATE):
        self.path = Path(path) if path is not None else None
        self.problems = list(problems) or ["invalid"]
        self.tensor = tensor
        self.advice = advice
        where = f"{path}: " if path is not None else ""
        message = f"{where}invalid calibration cache: {'; '.join(self.problems)}"
        super().__init__(message + (f" ({advice})" if advice else ""))


def validate_entry(entry: CacheEntry, required: list[str] | None = None, model_sha256: str | None = None,
                   activations: list[str] | None = None) -> Validation:
    """Everything that must hold before `entry` is used (see the module docstring)."""
    cache, meta = entry.cache, entry.metadata
    scales = cache.scales
    v = Validation(model_sha256, meta.key.model_sha256 if meta else None, path=entry.path, scales=scales)
    if cache.algorithm not in ALGORITHMS:
        v.header.append(f"header names calibrator '{cache.algorithm}', which TensorRT does not have "
                        f"({', '.join(ALGORITHMS)})")
    try:
        if version_code(version_string(cache.version_code)) != cache.version_code:
            raise CalibError("")
    except CalibError:
        v.header.append(f"header version {cache.version_code} is not a TensorRT version number")
    if not cache.hex_scales:
        v.header.append("no scales (a header without tensors)")
    v.bad_scales = [t for t, s in scales.items() if scale_problem(s) is not None]
    if meta is not None:
        _check_sidecar(v, entry)
    if required is not None:
        v.missing = [t for t in required if t not in scales]
    if activations is not None:
        known = set(activations)
        v.extra = [t for t in scales if t not in known]
    return v


def _check_sidecar(v: Validation, entry: CacheEntry) -> None:
    cache, meta, side = entry.cache, entry.metadata, entry.sidecar.name
    if meta.algorithm != cache.algorithm:
        v.sidecar.append(f"sidecar {side} says algorithm {meta.algorithm}, the header {cache.algorithm}")
    try:
        if version_code(meta.trt_version) != cache.version_code:
            v.sidecar.append(f"sidecar {side} says TensorRT {meta.trt_version}, the header {cache.version_code}")
    except CalibError:
        v.sidecar.append(f"sidecar {side} names no valid TensorRT version ('{meta.trt_version}')")
    only_cache = [t for t in cache.hex_scales if t not in meta.tensors]
    only_side = [t for t in meta.tensors if t not in cache.hex_scales]
    if only_cache or only_side:
        v.sidecar.append(f"cache and sidecar {side} disagree on {len(only_cache) + len(only_side)} tensor(s): "
                         f"{_names(only_cache + only_side, 3)}")
    differ = []
    for name, h in cache.hex_scales.items():
        info = meta.tensors.get(name)
        if info is None:
            continue
        try:
            same = scale_to_hex(float(info["scale"])) == h
        except (KeyError, TypeError, ValueError, OverflowError):
            same = False
        if not same:
            differ.append(name)
    if differ:
        v.sidecar.append(f"{len(differ)} scale(s) differ from sidecar {side}: {_names(differ, 3)}")
    v.sidecar_tensors = only_cache + only_side + differ


def validate_cache(cache: str | Path | CacheEntry, model: ModelRequirements | None = None,
                   require_metadata: bool = False) -> tuple[CacheEntry, Validation]:
    """The one validation of a cache a command is handed (verify, build, export, import): the
    file parsed (`load_cache`; a CalibError when it cannot be), then `validate_entry`, against
    `model` when given. Returns the entry and the verdict; each command decides what its
    --force may override (`Validation.fatal` never)."""
    entry = cache if isinstance(cache, CacheEntry) else load_cache(cache, require_metadata=require_metadata)
    if model is None:
        return entry, validate_entry(entry)
    return entry, validate_entry(entry, list(model.required), model.sha256,
                                 list(model.activations) if model.activations is not None else None)


def load_valid_cache(path: str | Path, required: list[str] | None = None, model_sha256: str | None = None,
                     advice: str | None = None, require_metadata: bool = False) -> CacheEntry:
    """`load_cache` then `validate_entry`: the entry, or InvalidCache (a CalibError) saying why
    it may not be used."""
    entry = load_cache(path, require_metadata=require_metadata)
    v = validate_entry(entry, required, model_sha256)
    if not v.ok:
        raise v.error(advice)
    return entry
