"""Looking at caches: scale tables with outliers, differences. (Validation against a model is
`calib.cache.validate`; `validate` here is its full-check form.)"""

from __future__ import annotations

import math

import numpy as np

from calib.cache.files import CacheEntry
from calib.cache.validate import Validation, scale_problem, validate_entry

# A scale this many times the median of its cache is shown as an outlier (a range blown up by
# a few extreme activations costs that tensor most of its resolution).
OUTLIER_FACTOR = 20.0


def validate(entry: CacheEntry, model_sha256: str, required: list[str], activations: list[str]) -> Validation:
    """`validate_entry` with every check (kept for callers of the old signature)."""
    return validate_entry(entry, required, model_sha256, activations)


def scale_table(entry: CacheEntry) -> list[dict]:
    """Rows sorted by scale, largest first, with outlier flags."""
    scales = entry.cache.scales
    valid = [s for s in scales.values() if scale_problem(s) is None]
    median = float(np.median(valid)) if valid else 0.0
    tensors = entry.metadata.tensors if entry.metadata else {}
    rows = []
    for name, s in scales.items():
        info = tensors.get(name, {})
        flags = []
        problem = scale_problem(s)
        if problem is not None:
            flags.append(f"invalid: {problem}")
        elif median and s > OUTLIER_FACTOR * median:
            flags.append(f">{OUTLIER_FACTOR:g}x median")
        # TensorRT-written caches record no observed range (None).
        observed = max(abs(info.get("min") or 0.0), abs(info.get("max") or 0.0))
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
