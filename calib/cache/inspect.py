"""Looking at caches: validation against a model, scale tables with outliers, differences."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from calib.cache.store import CacheEntry

# A scale this many times the median of its cache is shown as an outlier (a range blown up by
# a few extreme activations costs that tensor most of its resolution).
OUTLIER_FACTOR = 20.0


@dataclass
class Validation:
    model_sha256: str
    cache_model_sha256: str | None
    missing: list[str] = field(default_factory=list)      # quantized tensors without a scale
    bad_scales: list[str] = field(default_factory=list)   # not finite or not positive
    extra: list[str] = field(default_factory=list)        # scales for tensors the model lacks

    @property
    def hash_matches(self) -> bool:
        return self.cache_model_sha256 is None or self.cache_model_sha256 == self.model_sha256

    @property
    def ok(self) -> bool:
        return self.hash_matches and not self.missing and not self.bad_scales

    def problems(self) -> list[str]:
        out = []
        if not self.hash_matches:
            out.append(f"model hash {self.model_sha256[:16]}… does not match the cache's "
                       f"{self.cache_model_sha256[:16]}… (calibrated for another model)")
        if self.missing:
            out.append(f"{len(self.missing)} quantized tensor(s) have no scale: {', '.join(self.missing[:5])}"
                       + (" …" if len(self.missing) > 5 else ""))
        if self.bad_scales:
            out.append(f"{len(self.bad_scales)} scale(s) are not finite and positive: {', '.join(self.bad_scales[:5])}")
        return out


def validate(entry: CacheEntry, model_sha256: str, required: list[str], activations: list[str]) -> Validation:
    scales = entry.cache.scales
    cache_sha = entry.metadata.key.model_sha256 if entry.metadata else None
    return Validation(
        model_sha256, cache_sha,
        missing=[t for t in required if t not in scales],
        bad_scales=[t for t, s in scales.items() if not (math.isfinite(s) and s > 0)],
        extra=[t for t in scales if t not in set(activations)])


def scale_table(entry: CacheEntry) -> list[dict]:
    """Rows sorted by scale, largest first, with outlier flags."""
    scales = entry.cache.scales
    finite = [s for s in scales.values() if math.isfinite(s) and s > 0]
    median = float(np.median(finite)) if finite else 0.0
    tensors = entry.metadata.tensors if entry.metadata else {}
    rows = []
    for name, s in scales.items():
        info = tensors.get(name, {})
        flags = []
        if not (math.isfinite(s) and s > 0):
            flags.append("invalid")
        elif median and s > OUTLIER_FACTOR * median:
            flags.append(f">{OUTLIER_FACTOR:g}x median")
        observed = max(abs(info.get("min", 0.0)), abs(info.get("max", 0.0)))
        if observed and math.isfinite(s) and s * 127 < 0.05 * observed:
            flags.append("clips >95% of observed range")
        if info.get("nonfinite"):
            flags.append(f"{info['nonfinite']} NaN/Inf seen")
        rows.append({"tensor": name, "scale": s, "amax": s * 127, "observed_max": observed or None,
                     "flags": flags})
    rows.sort(key=lambda r: -r["scale"] if math.isfinite(r["scale"]) else -math.inf)
    return rows


def diff(a: CacheEntry, b: CacheEntry) -> dict:
    """Per-tensor scale ratio b/a, largest change (either direction) first."""
    sa, sb = a.cache.scales, b.cache.scales
    rows = []
    for name in sa.keys() & sb.keys():
        ratio = sb[name] / sa[name] if sa[name] else math.inf
        rows.append({"tensor": name, "a": sa[name], "b": sb[name], "ratio": ratio,
                     "change": abs(math.log(ratio)) if 0 < ratio < math.inf else math.inf})
    rows.sort(key=lambda r: -r["change"])
    return {"rows": rows, "only_a": sorted(sa.keys() - sb.keys()), "only_b": sorted(sb.keys() - sa.keys())}
