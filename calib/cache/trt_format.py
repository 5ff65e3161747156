"""TensorRT's calibration cache text format.

    TRT-<version>-<Algorithm>
    <tensor name>: <8 hex digits: the float32 scale's bits, big-endian>

The version is TensorRT's NV_TENSORRT_VERSION (NvInferVersion.h): major*1000+minor*100+patch
before TensorRT 10 (8.6.1 -> 8601), major*10000+minor*100+patch from 10 on (10.3.0 -> 100300).
TensorRT ignores a cache whose header does not match its own version and calibrator, silently,
which is why calib keeps a metadata sidecar and lets `calib cache export` rewrite the header, to
released versions only (`RELEASED_TRT_VERSIONS`, from NVIDIA's release notes and archive
https://docs.nvidia.com/deeplearning/tensorrt/archives/ and PyPI's `tensorrt` releases).
The algorithm word is one of TensorRT's CalibrationAlgoType names (`ALGORITHMS`).
The scale is amax/127 (symmetric int8). Hex strings are kept as read, so a round trip is
bit-exact even for scales that are not normal floats.

Lines are separated by '\n' (a '\r' before it is dropped, for files edited on Windows); the
name is everything before the line's last ':'. So a name may hold spaces, colons, any unicode
and any length, but not '\n' or '\r', and not be empty: the writer refuses those names rather
than write a cache that reads back differently.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

from calib.errors import CalibError

DEFAULT_TRT_VERSION = "10.3.0"
ALGORITHMS = ("EntropyCalibration2", "EntropyCalibration", "MinMaxCalibration", "LegacyCalibration")
_HEADER = re.compile(r"^TRT-(\d+)-([A-Za-z0-9]+)$")
_HEX = re.compile(r"[0-9a-fA-F]{8}")

# Every TensorRT release with implicit INT8 calibration (7.x-10.x), early access (EA) and release
# candidates (RC) included: `calib cache export` writes headers for these only. TensorRT 11
# removed implicit calibration (explicit Q/DQ is its only INT8 path), so no 11.x header is useful.
RELEASED_TRT_VERSIONS: tuple[tuple[int, int, int], ...] = (
    (7, 0, 0), (7, 1, 0), (7, 1, 2), (7, 1, 3), (7, 2, 0), (7, 2, 1), (7, 2, 2), (7, 2, 3),
    (8, 0, 0), (8, 0, 1), (8, 0, 2), (8, 0, 3),
    (8, 2, 0), (8, 2, 1), (8, 2, 2), (8, 2, 3), (8, 2, 4), (8, 2, 5),
    (8, 4, 0), (8, 4, 1), (8, 4, 2), (8, 4, 3), (8, 5, 1), (8, 5, 2), (8, 5, 3), (8, 6, 0), (8, 6, 1),
    (9, 0, 0), (9, 0, 1), (9, 1, 0), (9, 2, 0), (9, 3, 0),
    (10, 0, 0), (10, 0, 1), (10, 1, 0), (10, 2, 0), (10, 3, 0), (10, 4, 0), (10, 5, 0), (10, 6, 0),
    (10, 7, 0), (10, 8, 0), (10, 9, 0), (10, 10, 0), (10, 11, 0), (10, 12, 0), (10, 13, 0), (10, 13, 2),
    (10, 13, 3), (10, 14, 1), (10, 15, 1), (10, 16, 0), (10, 16, 1),
)


def _parts(version: str) -> tuple[int, int, int]:
    parts = version.strip().split(".")
    if not 2 <= len(parts) <= 4 or not all(p.isdigit() for p in parts[:3]) or len(parts[0]) > 3:
        raise CalibError(f"TensorRT version must look like 10.3 or 8.6.1, not '{version}'")
    major, minor, patch = (int(p) for p in (parts + ["0"])[:3])
    if minor > 99 or patch > 99 or (major < 10 and minor > 9):
        raise CalibError(f"TensorRT version '{version}' cannot be written in a cache header "
                         f"(minor and patch must fit NV_TENSORRT_VERSION's digits)")
    return major, minor, patch


def version_code(version: str) -> int:
    """'10.3' / '10.3.0' / '8.6.1' -> TensorRT's integer version."""
    major, minor, patch = _parts(version)
    return major * (10000 if major >= 10 else 1000) + minor * 100 + patch


def version_string(code: int) -> str:
    if code >= 100000:
        return f"{code // 10000}.{code // 100 % 100}.{code % 100}"
    return f"{code // 1000}.{code // 100 % 10}.{code % 100}"


def released_version(version: str, assume: bool = False) -> tuple[str, str | None]:
    """Check `version` against the released TensorRT versions.

    Returns (canonical 'X.Y.Z', warning or None). A version TensorRT never released is a
    CalibError, unless `assume` is set: then the warning names the assumption.
    """
    major, minor, patch = _parts(version)
    canonical = f"{major}.{minor}.{patch}"
    if (major, minor, patch) in RELEASED_TRT_VERSIONS:
        return canonical, None
    if assume:
        return canonical, (f"TensorRT {canonical} is not a release calib knows; the header "
                           f"TRT-{version_code(canonical)}-... assumes it numbers versions as "
                           f"{'10.x' if major >= 10 else '8.x'} does")
    if major == 11:
        raise CalibError(f"TensorRT {canonical} has no implicit INT8 calibration and reads no calibration cache "
                         f"(TensorRT 11 builds INT8 from the Q/DQ model: calib build --qdq-flavor tensorrt)")
    same_minor = [f"{a}.{b}.{c}" for a, b, c in RELEASED_TRT_VERSIONS if (a, b) == (major, minor)]
    hint = (f"released {major}.{minor}.x: {', '.join(same_minor)}" if same_minor else
            f"known releases: {_dotted(RELEASED_TRT_VERSIONS[0])} to {_dotted(RELEASED_TRT_VERSIONS[-1])}")
    raise CalibError(f"TensorRT {canonical} is not a released TensorRT version ({hint}); "
                     f"pass the exact version your TensorRT reports, or --assume-version to write it anyway")


def _dotted(v: tuple[int, int, int]) -> str:
    return ".".join(str(x) for x in v)


def scale_to_hex(scale: float) -> str:
    return struct.pack(">f", scale).hex()


def hex_to_scale(text: str) -> float:
    return struct.unpack(">f", bytes.fromhex(text))[0]


def check_tensor_name(name: str) -> None:
    """A CalibError if `name` cannot be written as a cache line that reads back as itself."""
    if not isinstance(name, str) or not name:
        raise CalibError(f"tensor name {name!r} cannot be written to a TensorRT cache (empty)")
    if "\n" in name or "\r" in name:
        raise CalibError(f"tensor name {name!r} cannot be written to a TensorRT cache (it holds a line break)")
    if not name.strip(" \t\v\f"):
        raise CalibError(f"tensor name {name!r} cannot be written to a TensorRT cache (only blanks)")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise CalibError(f"tensor name {name!r} cannot be written to a TensorRT cache (not valid unicode)") from None


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
        """The cache file's text; a CalibError (nothing written) for what the format cannot hold."""
        if not re.fullmatch(r"[A-Za-z0-9]+", self.algorithm or ""):
            raise CalibError(f"calibration algorithm {self.algorithm!r} cannot be written in a cache header")
        lines = [self.header]
        for name, h in self.hex_scales.items():
            check_tensor_name(name)
            if not isinstance(h, str) or not _HEX.fullmatch(h):
                raise CalibError(f"scale {h!r} of tensor {name!r} is not 8 hex digits")
            lines.append(f"{name}: {h}")
        return "\n".join(lines) + "\n"


def parse(text: str, source: str = "cache") -> TrtCache:
    """Parse a TensorRT calibration cache; a malformed one is a one-line CalibError naming `source`."""
    lines = [(n, line[:-1] if line.endswith("\r") else line) for n, line in enumerate(text.split("\n"), start=1)]
    lines = [(n, line) for n, line in lines if line.strip()]
    if not lines:
        raise CalibError(f"{source}: empty calibration cache")
    m = _HEADER.match(lines[0][1].strip().lstrip("\ufeff"))
    if not m:
        raise CalibError(f"{source}: not a TensorRT calibration cache (first line '{lines[0][1][:60]}')")
    cache = TrtCache(m.group(2), int(m.group(1)))
    for number, line in lines[1:]:
        name, sep, value = line.rpartition(":")
        value = value.strip()
        if not sep or not name.strip(" \t\v\f") or not _HEX.fullmatch(value):
            raise CalibError(f"{source}: line {number} is not '<tensor>: <8 hex digits>' (truncated or corrupt?)")
        if name in cache.hex_scales:
            raise CalibError(f"{source}: line {number} repeats tensor '{name[:80]}'")
        cache.hex_scales[name] = value.lower()
    return cache
