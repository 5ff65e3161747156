"""The JSON sidecar that makes a TensorRT-format cache a validated artifact.

TensorRT's cache holds only names and scales; the sidecar records what produced them (model
hash and inputs, preprocessing, dataset sample list hash, calibrator and parameters), so reuse
can be checked instead of silently trusted.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field

from calib import __version__
from calib.errors import CalibError

FORMAT_VERSION = 1


@dataclass(frozen=True)
class CacheKey:
    """What must match for a cache to be reused by `calib run`."""
    model_sha256: str
    preprocess: dict
    dataset_id: str
    dataset_fingerprint: str
    calibrator: str
    calibrator_params: dict

    def digest(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class CacheMetadata:
    key: CacheKey
    model_name: str
    model_inputs: list[dict]            # [{"name": ..., "shape": [...]}]
    dataset_description: str
    samples: int                        # images actually calibrated on
    skipped: int
    batch_size: int
    trt_version: str                    # the TensorRT version the header targets
    algorithm: str                      # header algorithm word
    tensors: dict[str, dict]            # name -> {"scale", "amax", "min", "max", "nonfinite"}
    seconds: float = 0.0
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    calib_version: str = __version__
    format_version: int = FORMAT_VERSION
    imported_from: str | None = None    # for `calib cache import`
    # Per-channel means of the inputs of weighted ops (bias correction); not in TensorRT's format.
    channel_means: dict[str, list[float]] | None = None

    def to_json(self) -> str:
        d = asdict(self)
        d["key"]["digest"] = self.key.digest()
        return json.dumps(d, indent=1, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "sidecar") -> "CacheMetadata":
        try:
            d = json.loads(text)
            if d.get("format_version") != FORMAT_VERSION:
                raise CalibError(f"{source}: metadata format {d.get('format_version')} is not {FORMAT_VERSION}; "
                                 f"recalibrate or re-import the cache")
            key = dict(d.pop("key"))
            key.pop("digest", None)
            return cls(key=CacheKey(**key), **d)
        except CalibError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise CalibError(f"{source}: corrupt or truncated cache metadata ({type(e).__name__})") from None
