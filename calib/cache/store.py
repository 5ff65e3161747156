"""A folder of caches: `<name>.cache` (TensorRT text) + `<name>.json` (metadata) + `index.json`.

The files are the truth. `find` and `entries` (`calib cache list`) read the folder itself;
`index.json` only saves re-reading unchanged caches (each row carries its files' sizes and
modification times) and is rebuilt whenever it is missing, corrupt or stale.

A save holds the folder's lock file throughout and goes:
1. the cache text and the sidecar are written in full to hidden temp files
   ('.<name>.<random>.tmp') and fsynced;
2. the sidecar is renamed into place (the commit point), then the cache text;
3. the index row is written last.
A writer killed at any point leaves, for the next store operation (`find`, `save`, `entries`,
which hold the lock while they tidy up) to see:
- before the sidecar's rename: the old pair, and temp files, which the next operation removes;
- between the two renames: the new sidecar beside the old cache text (or none), and the new
  text complete in its temp file: the next operation renames it into place (rolls forward),
  so readers see the new pair, never the two halves;
- after both renames: the new pair; an index row that is old or missing is rebuilt.
A reader that finds a pair that disagrees anyway (edited by hand) gets InvalidCache: a cache is
never reused without `validate_entry`. Temp files are removed only when the pair they belong to
is a store pair (a file exported into the folder by `cache export` keeps its own).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path

from filelock import FileLock

from calib.cache.files import CacheEntry, load_cache, read_text, read_trt_cache, sidecar_path
from calib.cache.metadata import CacheKey, CacheMetadata
from calib.cache.trt_format import TrtCache
from calib.cache.validate import RECALIBRATE, InvalidCache, validate_entry
from calib.errors import CalibError
from calib.fsutil import atomic_path, atomic_write_text, file_mode, fsync_dir, make_dir, temp_target

__all__ = ["CacheEntry", "CacheStore", "INDEX", "LOCK", "load_cache", "read_trt_cache", "sidecar_path"]

INDEX = "index.json"
LOCK = ".calib.lock"
LOCK_WAIT_S = 30.0  # readers (cache list, find) tidying up wait this long for a writer, then go on without


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:60] or "x"


def _stamp(path: Path) -> list:
    """Sizes and modification times of a cache and its sidecar: an index row is trusted only
    while these are unchanged."""
    out = []
    for p in (path, sidecar_path(path)):
        try:
            st = p.stat()
            out += [st.st_size, st.st_mtime_ns]
        except OSError:
            out += [None, None]
    return out


def _write_synced(path: Path, text: str) -> None:
    with open(path, "wb") as f:
        f.write(text.encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())


def _consistent(cache_path: Path, meta: CacheMetadata) -> bool:
    """The file at `cache_path` is a complete cache text that `meta` describes."""
    try:
        cache = read_trt_cache(cache_path)
    except CalibError:
        return False
    return not validate_entry(CacheEntry(cache_path, cache, meta)).sidecar


class CacheStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    # -- locking and tidying up ---------------------------------------------------------------

    def _lock_path(self) -> str:
        # Created here, readable and writable as the umask allows (0664 under umask 002), so
        # every user sharing the folder can take the lock: older filelock releases create it
        # 0644 whatever the umask.
        path = self.root / LOCK
        if not path.exists():
            with contextlib.suppress(OSError):
                fd = os.open(path, os.O_RDWR | os.O_CREAT, file_mode())
                try:
                    os.fchmod(fd, file_mode())
                finally:
                    os.close(fd)
        return str(path)

    def lock(self) -> FileLock:
        make_dir(self.root)
        return FileLock(self._lock_path())

    @contextlib.contextmanager
    def _maybe_locked(self):
        """The lock if it can be had (a read-only shared folder cannot be locked: readers go
        on without tidying up); yields whether it is held."""
        lock = None
        try:
            if self.root.is_dir():
                lock = FileLock(self._lock_path(), timeout=LOCK_WAIT_S)
                lock.acquire()
        except Exception:  # Timeout, PermissionError, read-only file system
            lock = None
        try:
            yield lock is not None
        finally:
            if lock is not None:
                lock.release()

    def _recover(self) -> None:
        """With the lock held: finish saves interrupted between their two renames and remove
        the temp files killed writers left (see the module docstring)."""
        temps: dict[str, list[Path]] = {}
        try:
            names = os.listdir(self.root)
        except OSError:
            return
        for name in names:
            target = temp_target(name)
            if target is not None:
                temps.setdefault(target, []).append(self.root / name)
        for target, paths in temps.items():
            t = Path(target)
            if target != INDEX:
                if t.suffix not in (".cache", ".json"):
                    continue
                partner = t.with_suffix(".json" if t.suffix == ".cache" else ".cache").name
                if not (self.root / partner).exists() and partner not in temps:
                    continue  # not a store pair (e.g. a `cache export` into this folder): not ours
            dest = self.root / target
            if t.suffix == ".cache" and sidecar_path(dest).is_file():
                try:
                    meta = CacheMetadata.from_json(read_text(sidecar_path(dest), "cache metadata"))
                except CalibError:
                    meta = None
                if meta is not None and not _consistent(dest, meta):
                    for tmp in paths:
                        if _consistent(tmp, meta):
                            with contextlib.suppress(OSError):
                                os.replace(tmp, dest)
                                fsync_dir(self.root)
                            break
            for tmp in paths:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    # -- reading ------------------------------------------------------------------------------

    def path_for(self, meta: CacheMetadata) -> Path:
        k = meta.key
        return self.root / f"{_slug(meta.model_name)}-{_slug(k.dataset_id)}-{_slug(k.calibrator)}-{k.digest()[:12]}.cache"

    def _cache_files(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.glob("*.cache") if not p.name.startswith(".") and p.is_file())

    def _candidates(self, digest: str) -> list[Path]:
        paths = [p for p in self.root.glob(f"*-{digest[:12]}.cache") if not p.name.startswith(".")] \
            if self.root.is_dir() else []
        for row in self._read_index() or []:
            if row.get("key") == digest and isinstance(row.get("file"), str):
                paths.append(self.root / row["file"])
        return [p for p in dict.fromkeys(sorted(paths)) if p.is_file()]

    def find(self, key: CacheKey, required: list[str] | None = None) -> CacheEntry | None:
        """The cache with exactly this key, validated (`validate_entry`, with `required` when
        given); None when there is none. A cache with this key that may not be used is
        InvalidCache (a CalibError naming the tensor, advising --recalibrate), never None and
        never returned. Works without the index."""
        if self.root.exists() and not self.root.is_dir():
            raise CalibError(f"cache folder {self.root} is a file, not a folder")
        digest = key.digest()
        for path in self._candidates(digest):
            failure = self._check(path, digest, key, required)
            if failure is None:
                return load_cache(path)
            if failure is False:
                continue  # another key, or a bare TensorRT cache: not this one
            with self._maybe_locked() as locked:  # an interrupted save is rolled forward
                if locked:
                    self._recover()
                    failure = self._check(path, digest, key, required)
            if failure is None:
                return load_cache(path)
            if failure is not False:
                raise failure
        return None

    def _check(self, path: Path, digest: str, key: CacheKey, required: list[str] | None):
        """None if `path` is a usable cache for `digest`, False if it is not one for this
        key, else the InvalidCache to raise."""
        try:
            entry = load_cache(path)
        except CalibError as e:
            return InvalidCache(None, [str(e)], None, RECALIBRATE)
        if entry.metadata is None or entry.metadata.key.digest() != digest:
            return False
        v = validate_entry(entry, required, key.model_sha256)
        return None if v.ok else v.error(RECALIBRATE)

    def _read_index(self) -> list[dict] | None:
        """The index rows, or None when it is missing or corrupt (then it is rebuilt)."""
        p = self.root / INDEX
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            return None
        return data

    def _row(self, path: Path) -> dict:
        row = {"file": path.name, "model": "-", "model_sha256": None, "dataset": "-", "calibrator": "-",
               "samples": 0, "tensors": 0, "created": "-", "key": None, "valid": False, "problem": None,
               "stamp": _stamp(path)}
        try:
            entry = load_cache(path)
        except CalibError as e:
            row["problem"] = str(e)
            return row
        meta = entry.metadata
        row["tensors"] = len(entry.cache.hex_scales)
        if meta is not None:
            row.update(model=meta.model_name, model_sha256=meta.key.model_sha256, dataset=meta.key.dataset_id,
                       calibrator=meta.key.calibrator, samples=meta.samples, created=meta.created,
                       key=meta.key.digest())
        v = validate_entry(entry)
        row["valid"] = v.ok
        if not v.ok:
            row["problem"] = "; ".join(v.problems())
        elif meta is None:
            row["problem"] = f"no metadata sidecar (a bare TensorRT {entry.cache.algorithm} cache)"
        return row

    def _scan(self) -> tuple[list[dict], bool]:
        """Rows for every cache file in the folder, from the index where it is current;
        whether the index needs rewriting."""
        index = self._read_index()
        known = {r.get("file"): r for r in index or []}
        rows, changed = [], index is None
        for path in self._cache_files():
            row = known.get(path.name)
            if row is None or row.get("stamp") != _stamp(path):
                row, changed = self._row(path), True
            rows.append(row)
        return rows, changed or len(rows) != len(known)

    def entries(self) -> list[dict]:
        """One row per cache file in the folder (index or not): file, model, model_sha256,
        dataset, calibrator, samples, tensors, created, key, valid, problem. Rebuilds the index
        when it is missing, corrupt or stale (where the folder is writable)."""
        if self.root.exists() and not self.root.is_dir():
            raise CalibError(f"cache folder {self.root} is a file, not a folder")
        with self._maybe_locked() as locked:
            if locked:
                self._recover()
            rows, changed = self._scan()
            if locked and changed:
                with contextlib.suppress(CalibError, OSError):
                    atomic_write_text(self.root / INDEX, json.dumps(rows, indent=1) + "\n")
        return rows

    # -- writing ------------------------------------------------------------------------------

    def save(self, cache: TrtCache, meta: CacheMetadata, path: Path | None = None) -> Path:
        """Write the pair (see the module docstring). A cache that is invalid or that the text
        format cannot hold is refused before anything is written."""
        path = Path(path) if path is not None else self.path_for(meta)
        text = cache.to_text()  # refuses tensor names the format cannot hold
        v = validate_entry(CacheEntry(path, cache, meta))
        if not v.ok:
            raise v.error("not saved")
        side_text = meta.to_json()
        try:
            with self.lock():
                self._recover()
                # Nested: both temps written and fsynced, then the sidecar renamed, then the text.
                with atomic_path(path) as tmp_cache, atomic_path(sidecar_path(path)) as tmp_side:
                    _write_synced(tmp_cache, text)
                    _write_synced(tmp_side, side_text)
                index = self._read_index()
                if index is None:
                    rows, _ = self._scan()
                else:
                    rows = [r for r in index if r.get("file") != path.name and (self.root / str(r.get("file"))).is_file()]
                    rows.append(self._row(path))
                atomic_write_text(self.root / INDEX, json.dumps(rows, indent=1) + "\n")
        except OSError as e:
            raise CalibError(f"cannot write the cache folder {self.root}: {e.strerror or e}") from None
        return path
