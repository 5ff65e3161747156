"""TensorRT's calibration cache text format.

    TRT-<version>-<Algorithm>
    <tensor name>: <8 hex digits: the float32 scale's bits, big-endian>

The version is TensorRT's NV_TENSORRT_VERSION: major*1000+minor*100+patch before TensorRT 10
(8.6.1 -> 8601), major*10000+minor*100+patch from 10 on (10.3.0 -> 100300). TensorRT ignores a
cache whose header does not match its own version and calibrator, silently, which is why calib
keeps a metadata sidecar and lets `calib cache export` rewrite the header.
The scale is amax/127 (symmetric int8). Hex strings are kept as read, so a round trip is
bit-exact even for scales that are not normal floats.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

from calib.errors import CalibError

DEFAULT_TRT_VERSION = "10.3.0"
ALGORITHMS = ("EntropyCalibration2", "EntropyCalibration", "MinMaxCalibration", "LegacyCalibration")
_HEADER = re.compile(r"^TRT-(\d+)-([A-Za-z0-9]+)$")


def version_code(version: str) -> int:
    """'10.3' / '10.3.0' / '8.6.1' -> TensorRT's integer version."""
    parts = version.strip().split(".")
    if not parts or len(parts) > 4 or not all(p.isdigit() for p in parts[:3]):
        raise CalibError(f"TensorRT version must look like 10.3 or 8.6.1, not '{version}'")
    major, minor, patch = (int(p) for p in (parts + ["0", "0"])[:3])
    return major * (10000 if major >= 10 else 1000) + minor * 100 + patch


def version_string(code: int) -> str:
    if code >= 100000:
        return f"{code // 10000}.{code // 100 % 100}.{code % 100}"
    return f"{code // 1000}.{code // 100 % 10}.{code % 100}"


def scale_to_hex(scale: float) -> str:
    return struct.pack(">f", scale).hex()


def hex_to_scale(text: str) -> float:
    return struct.unpack(">f", bytes.fromhex(text))[0]


@dataclass
class TrtCache:
    algorithm: str
    version_code: int
    hex_scales: dict[str, str] = field(default_factory=dict)  # tensor -> 8 hex digits, as written

    @property
    def header(self) -> str:
        return f"TRT-{self.version_code}-{self.algorithm}"

    @property
    def scales(self) -> dict[str, float]:
        return {name: hex_to_scale(h) for name, h in self.hex_scales.items()}

    def amax(self) -> dict[str, float]:
        """The symmetric ranges the scales encode (scale * 127, exact in float64)."""
        return {name: s * 127.0 for name, s in self.scales.items()}

    @classmethod
    def from_scales(cls, scales: dict[str, float], algorithm: str, trt_version: str = DEFAULT_TRT_VERSION) -> "TrtCache":
        return cls(algorithm, version_code(trt_version), {n: scale_to_hex(s) for n, s in scales.items()})

    def with_version(self, trt_version: str) -> "TrtCache":
        return TrtCache(self.algorithm, version_code(trt_version), dict(self.hex_scales))

    def to_text(self) -> str:
        lines = [self.header] + [f"{name}: {h}" for name, h in self.hex_scales.items()]
        return "\n".join(lines) + "\n"


def parse(text: str, source: str = "cache") -> TrtCache:
    """Parse a TensorRT calibration cache; a malformed one is a one-line CalibError naming `source`."""
    lines = [line.rstrip("\r") for line in text.splitlines() if line.strip()]
    if not lines:
        raise CalibError(f"{source}: empty calibration cache")
    m = _HEADER.match(lines[0].strip())
    if not m:
        raise CalibError(f"{source}: not a TensorRT calibration cache (first line '{lines[0][:60]}')")
    cache = TrtCache(m.group(2), int(m.group(1)))
    for number, line in enumerate(lines[1:], start=2):
        name, sep, value = line.rpartition(":")
        value = value.strip()
        if not sep or not name or not re.fullmatch(r"[0-9a-fA-F]{8}", value):
            raise CalibError(f"{source}: line {number} is not '<tensor>: <8 hex digits>' (truncated or corrupt?)")
        cache.hex_scales[name] = value.lower()
    return cache
