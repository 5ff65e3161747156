"""A folder of caches: `<name>.cache` (TensorRT text) + `<name>.json` (metadata) + `index.json`.

The files are the truth. `find` and `entries` (`calib cache list`) read the folder itself;
`index.json` only saves re-reading unchanged caches (each row carries its files' sizes and
modification times: a row whose files changed is recomputed) and is refreshed by writers only.

Reading never writes: `find` and `entries` create no lock file, no index and no temp file, and
remove or rename nothing, so a cache folder that is read-only (a shared mount, a CI cache, a
folder of another user) can be listed and its caches reused. A reader waits for a writer that is
in the middle of a save by taking a *shared* flock on the folder's lock file, opened read-only
(where there is none, or the file system refuses flock, it goes on without: see below).

A save (a writer) holds the folder's lock file throughout and goes:
1. the cache text and the sidecar are written in full to hidden temp files
   ('.<name>.<random>.tmp') and fsynced;
2. the sidecar is renamed into place (the commit point), then the cache text;
3. the index is refreshed last.
A writer killed at any point leaves:
- before the sidecar's rename: the old pair, and temp files;
- between the two renames: the new sidecar beside the old cache text (or none), and the new
  text complete in its temp file: readers take that text (the one the committed sidecar
  describes) in memory, so they see the new pair, never the two halves;
- after both renames: the new pair; an index row that is old or missing is recomputed.
The next writer (`save`, `tidy`), holding the lock, finishes the job on disk: it renames the
new text into place (rolls forward), removes the temp files and refreshes the index.
A reader that finds a pair that disagrees anyway (edited by hand) gets InvalidCache: a cache is
never reused without `validate_entry`. Temp files are removed only when the pair they belong to
is a store pair (a file exported into the folder by `cache export` keeps its own).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import time
from pathlib import Path

from filelock import FileLock

from calib.cache.files import CacheEntry, load_cache, read_text, read_trt_cache, sidecar_path
from calib.cache.metadata import CacheKey, CacheMetadata
from calib.cache.trt_format import TrtCache
from calib.cache.validate import RECALIBRATE, InvalidCache, validate_entry
from calib.errors import CalibError
from calib.fsutil import (atomic_path, atomic_write_text, check_output_dir, file_mode, fsync_dir, make_dir,
                          temp_target)

__all__ = ["CacheEntry", "CacheStore", "INDEX", "LOCK", "load_cache", "read_trt_cache", "sidecar_path"]

INDEX = "index.json"
LOCK = ".calib.lock"
LOCK_WAIT_S = 30.0  # readers (cache list, find) wait this long for a writer's save, then go on without


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


def _described(cache_path: Path, meta: CacheMetadata) -> TrtCache | None:
    """The cache text at `cache_path` if it is complete and `meta` describes it, else None."""
    try:
        cache = read_trt_cache(cache_path)
    except CalibError:
        return None
    return None if validate_entry(CacheEntry(cache_path, cache, meta)).sidecar else cache


def _consistent(cache_path: Path, meta: CacheMetadata) -> bool:
    """The file at `cache_path` is a complete cache text that `meta` describes."""
    return _described(cache_path, meta) is not None


class CacheStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def holds_caches(self) -> bool:
        """Whether the folder holds any cache file (a lookup may then find one to reuse)."""
        return self.root.is_dir() and any(self.root.glob("*.cache"))

    def check(self, write: bool) -> None:
        """Up front, before any work: the cache folder is not a file, and with `write` (a cache
        will be saved: --recalibrate, or no cache matched) calib may create files in it (or
        create it). Reusing a cache only reads, so a read-only folder passes without `write`.
        A one-line CalibError."""
        if self.root.exists() and not self.root.is_dir():
            raise CalibError(f"cache folder {self.root} is a file, not a folder")
        if write:
            check_output_dir(self.root, empty=False)

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
    def _shared_lock(self):
        """For a reader: wait (up to LOCK_WAIT_S) until no writer is in the middle of a save,
        and keep writers out while reading, with a shared flock on the existing lock file opened
        read-only. Creates nothing and writes nothing; without a lock file (no writer ever used
        the folder) or flock (ENOSYS, a soft-lock file system) or after the wait, it goes on
        without the lock. Yields whether it is held."""
        try:
            import fcntl

            fd = os.open(self.root / LOCK, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
        except (ImportError, OSError):
            yield False
            return
        try:
            held, deadline = False, time.monotonic() + LOCK_WAIT_S
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                    held = True
                    break
                except OSError as e:
                    if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES) or time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
            yield held
        finally:
            os.close(fd)  # releases the flock

    def _recover(self) -> None:
        """A writer's, with the lock held: finish saves interrupted between their two renames
        and remove the temp files killed writers left (see the module docstring)."""
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

    def _temp_texts(self) -> dict[str, list[Path]]:
        """Cache texts saves left in temp files, by the file name they stand for."""
        try:
            names = sorted(os.listdir(self.root))
        except OSError:
            return {}
        out: dict[str, list[Path]] = {}
        for name in names:
            target = temp_target(name)
            if target is not None and target.endswith(".cache"):
                out.setdefault(target, []).append(self.root / name)
        return out

    def _committed_unrenamed(self) -> list[Path]:
        """Pairs whose save was killed after its commit point (the sidecar in place) before the
        text's rename, where no older text stands: the text is still in its temp file."""
        return [self.root / name for name in self._temp_texts()
                if not (self.root / name).exists() and sidecar_path(self.root / name).is_file()]

    def _cache_files(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        paths = [p for p in self.root.glob("*.cache") if not p.name.startswith(".") and p.is_file()]
        return sorted(paths + self._committed_unrenamed())

    def _candidates(self, digest: str) -> list[Path]:
        if not self.root.is_dir():
            return []
        pending = self._committed_unrenamed()
        paths = [p for p in self.root.glob(f"*-{digest[:12]}.cache") if not p.name.startswith(".")]
        paths += [p for p in pending if p.name.endswith(f"-{digest[:12]}.cache")]
        for row in self._read_index() or []:
            if row.get("key") == digest and isinstance(row.get("file"), str):
                paths.append(self.root / row["file"])
        return [p for p in dict.fromkeys(sorted(paths)) if p.is_file() or p in pending]

    def find(self, key: CacheKey, required: list[str] | None = None) -> CacheEntry | None:
        """The cache with exactly this key, validated (`validate_entry`, with `required` when
        given); None when there is none. A cache with this key that may not be used is
        InvalidCache (a CalibError naming the tensor, advising --recalibrate), never None and
        never returned. Works without the index; writes nothing (see the module docstring)."""
        if self.root.exists() and not self.root.is_dir():
            raise CalibError(f"cache folder {self.root} is a file, not a folder")
        digest = key.digest()
        with self._shared_lock():
            for path in self._candidates(digest):
                found = self._check(path, digest, key, required)
                if found is False:
                    continue  # another key, or a bare TensorRT cache: not this one
                if isinstance(found, InvalidCache):
                    raise found
                return found
        return None

    def _check(self, path: Path, digest: str, key: CacheKey, required: list[str] | None):
        """The entry if `path` is a usable cache for `digest`, False if it is not one for this
        key, else the InvalidCache to raise."""
        try:
            entry = self._load(path)
        except CalibError as e:
            return InvalidCache(None, [str(e)], None, RECALIBRATE)
        if entry.metadata is None or entry.metadata.key.digest() != digest:
            return False
        v = validate_entry(entry, required, key.model_sha256)
        return entry if v.ok else v.error(RECALIBRATE)

    def _load(self, path: Path) -> CacheEntry:
        """The pair at `path` as a reader sees it, without writing: as on disk, or, when a save
        was killed after its commit point (the sidecar renamed into place) before its text's
        rename, with the text that sidecar describes, from the save's temp file."""
        try:
            entry = load_cache(path)
        except CalibError:
            if path.exists() or not sidecar_path(path).is_file():
                raise
            entry = None  # the text is not in place yet
        if entry is not None and (entry.metadata is None or not validate_entry(entry).sidecar):
            return entry
        meta = entry.metadata if entry is not None else \
            CacheMetadata.from_json(read_text(sidecar_path(path), "cache metadata"), str(sidecar_path(path)))
        for tmp in self._temp_texts().get(path.name, []):
            cache = _described(tmp, meta)
            if cache is not None:
                return CacheEntry(path, cache, meta)
        return entry if entry is not None else load_cache(path)

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
            entry = self._load(path)
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
        dataset, calibrator, samples, tensors, created, key, valid, problem. Writes nothing:
        rows the index lacks or has stale are computed, not stored (writers refresh the index)."""
        if self.root.exists() and not self.root.is_dir():
            raise CalibError(f"cache folder {self.root} is a file, not a folder")
        with self._shared_lock():
            rows, _ = self._scan()
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
                self._write_index(self._scan()[0])
        except OSError as e:
            raise CalibError(f"cannot write the cache folder {self.root}: {e.strerror or e}") from None
        return path

    def tidy(self) -> list[dict]:
        """A writer's housekeeping, under the lock: finish a save interrupted between its two
        renames, remove killed writers' temp files, refresh the index. Returns the rows."""
        if not self.root.is_dir():
            if self.root.exists():
                raise CalibError(f"cache folder {self.root} is a file, not a folder")
            return []
        try:
            with self.lock():
                self._recover()
                rows, changed = self._scan()
                if changed:
                    self._write_index(rows)
        except OSError as e:
            raise CalibError(f"cannot write the cache folder {self.root}: {e.strerror or e}") from None
        return rows

    def _write_index(self, rows: list[dict]) -> None:
        atomic_write_text(self.root / INDEX, json.dumps(rows, indent=1) + "\n")
