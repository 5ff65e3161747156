"""Reading one cache from disk: the TensorRT text and its JSON sidecar, as they are.

`load_cache` only parses (a file that cannot be parsed is a one-line CalibError): it is what
`cache show` and `cache diff` use to look at a cache, broken ones included. Whether a cache may
be *used* is `calib.cache.validate`'s question; every path that uses one asks it.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path

from calib.cache.metadata import CacheMetadata
from calib.cache.trt_format import TrtCache, parse
from calib.errors import CalibError


@dataclass
class CacheEntry:
    path: Path                      # the .cache file
    cache: TrtCache
    metadata: CacheMetadata | None  # None for a bare TensorRT cache

    @property
    def sidecar(self) -> Path:
        return sidecar_path(self.path)

    def channel_means(self, enabled: bool = True) -> dict | None:
        """The channel means of bias correction from the sidecar, when it is `enabled` and the
        cache has them (caches imported from TensorRT do not)."""
        return self.metadata.channel_means if enabled and self.metadata is not None else None


def sidecar_path(cache_path: str | Path) -> Path:
    return Path(cache_path).with_suffix(".json")


def read_text(path: Path, what: str = "cache") -> str:
    """A cache or sidecar's text; a folder, a missing, special, unreadable or binary file is a
    one-line CalibError."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise CalibError(f"{what} not found: {path}") from None
    except OSError as e:
        raise CalibError(f"cannot read {what} {path}: {e.strerror or e}") from None
    if stat.S_ISDIR(mode):
        raise CalibError(f"{path} is a folder, not a {what} file")
    if not stat.S_ISREG(mode):
        raise CalibError(f"{path} is not a regular file, not a {what} file")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise CalibError(f"{path}: not a TensorRT calibration cache (binary data)" if what == "cache" else
                         f"{path}: {what} is not UTF-8 text (binary data)") from None
    except OSError as e:
        raise CalibError(f"cannot read {what} {path}: {e.strerror or e}") from None


def read_trt_cache(path: str | Path) -> TrtCache:
    """Parse a TensorRT-format cache file; a missing, binary or malformed one is a one-line CalibError."""
    path = Path(path)
    return parse(read_text(path, "cache"), str(path))


def load_cache(path: str | Path, require_metadata: bool = False) -> CacheEntry:
    """Read a cache and its sidecar as they are. Unparseable files give a one-line CalibError;
    a parseable but invalid cache (bad scales, a sidecar that disagrees) loads, for inspection:
    `validate_entry` / `load_valid_cache` decide whether it may be used."""
    path = Path(path)
    cache = read_trt_cache(path)
    meta = None
    side = sidecar_path(path)
    if side.is_file():
        meta = CacheMetadata.from_json(read_text(side, "cache metadata"), str(side))
    elif require_metadata:
        raise CalibError(f"{path}: no metadata sidecar {side.name} (import it: calib cache import {path} --model M)")
    return CacheEntry(path, cache, meta)


def is_calib_cache(path: str | Path) -> bool:
    """calib's rule for its own caches (may be overwritten without --overwrite): the file is a
    TensorRT calibration cache and its sidecar is calib metadata."""
    path = Path(path)
    try:
        read_trt_cache(path)
        CacheMetadata.from_json(read_text(sidecar_path(path), "cache metadata"), str(path))
    except CalibError:
        return False
    return True
