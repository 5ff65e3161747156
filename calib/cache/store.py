"""A folder of caches: `<name>.cache` (TensorRT text) + `<name>.json` (metadata) + `index.json`.

Writers hold a lock file for the whole save, and every file is written atomically, sidecar and
cache before the index entry: a killed writer leaves the old state, never a partial cache.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from calib.cache.metadata import CacheKey, CacheMetadata
from calib.cache.trt_format import TrtCache, parse
from calib.errors import CalibError
from calib.fsutil import atomic_write_text

INDEX = "index.json"
LOCK = ".calib.lock"


@dataclass
class CacheEntry:
    path: Path                      # the .cache file
    cache: TrtCache
    metadata: CacheMetadata | None  # None for a bare TensorRT cache

    @property
    def sidecar(self) -> Path:
        return sidecar_path(self.path)


def sidecar_path(cache_path: Path) -> Path:
    return Path(cache_path).with_suffix(".json")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:60] or "x"


def read_trt_cache(path: Path) -> TrtCache:
    """Parse a TensorRT-format cache file; a missing, binary or malformed one is a one-line CalibError."""
    if not path.is_file():
        raise CalibError(f"cache not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CalibError(f"{path}: not a TensorRT calibration cache (binary data)") from None
    return parse(text, str(path))


def load_cache(path: str | Path, require_metadata: bool = False) -> CacheEntry:
    """Read a cache and its sidecar; corrupt or truncated files give a one-line CalibError."""
    path = Path(path)
    cache = read_trt_cache(path)
    meta = None
    side = sidecar_path(path)
    if side.is_file():
        meta = CacheMetadata.from_json(side.read_text(encoding="utf-8", errors="replace"), str(side))
        missing = set(cache.hex_scales) ^ set(meta.tensors)
        if missing:
            raise CalibError(f"{path}: cache and sidecar {side.name} disagree on {len(missing)} tensor(s) "
                             f"(e.g. {sorted(missing)[0]})")
    elif require_metadata:
        raise CalibError(f"{path}: no metadata sidecar {side.name} (import it: calib cache import {path} --model M)")
    return CacheEntry(path, cache, meta)


class CacheStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def lock(self) -> FileLock:
        self.root.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.root / LOCK))

    def path_for(self, meta: CacheMetadata) -> Path:
        k = meta.key
        return self.root / f"{_slug(meta.model_name)}-{_slug(k.dataset_id)}-{_slug(k.calibrator)}-{k.digest()[:12]}.cache"

    def find(self, key: CacheKey) -> CacheEntry | None:
        """A valid cache with exactly this key, or None."""
        digest = key.digest()
        for path in sorted(self.root.glob(f"*-{digest[:12]}.cache")):
            entry = load_cache(path)
            if entry.metadata is not None and entry.metadata.key.digest() == digest:
                return entry
        return None

    def save(self, cache: TrtCache, meta: CacheMetadata, path: Path | None = None) -> Path:
        path = path or self.path_for(meta)
        with self.lock():
            atomic_write_text(sidecar_path(path), meta.to_json())
            atomic_write_text(path, cache.to_text())
            index = [e for e in self._read_index() if e.get("file") != path.name]
            index.append({"file": path.name, "model": meta.model_name, "model_sha256": meta.key.model_sha256,
                          "dataset": meta.key.dataset_id, "calibrator": meta.key.calibrator,
                          "samples": meta.samples, "tensors": len(meta.tensors), "created": meta.created,
                          "key": meta.key.digest()})
            atomic_write_text(self.root / INDEX, json.dumps(index, indent=1) + "\n")
        return path

    def _read_index(self) -> list[dict]:
        p = self.root / INDEX
        if not p.is_file():
            return []
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
            if not isinstance(data, list):
                raise ValueError
            return data
        except ValueError:
            raise CalibError(f"{p}: corrupt cache index (delete it; `calib cache list` rebuilds nothing else)") from None

    def entries(self) -> list[dict]:
        """Index rows whose files still exist."""
        return [e for e in self._read_index() if (self.root / e.get("file", "")).is_file()]
