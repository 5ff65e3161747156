"""Files calib writes: atomic writes (a reader sees the old file or the whole new one, never a
part), staged output folders, permissions that follow the umask, output paths checked before
any work starts, and file hashing.

Permissions: `tempfile.mkstemp` creates 0600 files and `mkdtemp` 0700 folders whatever the
umask, which made caches and reports unreadable to the other users and CI jobs sharing a cache
folder. Every file and folder calib creates ends as an ordinary `open`/`mkdir` would make it:
0666 & ~umask, 0777 & ~umask (POSIX open(2), mkdir(2)).

Overwriting: calib replaces an existing file only when calib wrote it, or when the user says
`--overwrite`. How a command recognizes its own files is the `written_by_calib` callable it
passes to `check_output_file`; the rules calib uses:
- a calibration cache: its text is a TensorRT calibration cache and its JSON sidecar is calib
  metadata (`calib.cache.files.is_calib_cache`); for `cache export`, also a TensorRT cache
  holding exactly the scales being exported (a previous export of the same cache: nothing lost);
- an ONNX model: its `metadata_props` carry the key `calib` (`mark_calib_onnx` writes it,
  `is_calib_onnx` reads it);
- a TensorRT engine: the calib sidecar beside it (calib.backends.tensorrt).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from calib.errors import CalibError

ONNX_PROVENANCE_KEY = "calib"


# -- permissions ----------------------------------------------------------------------------

def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask is a
    set-and-return, racy with other threads creating files)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    return 0o777 & ~current_umask()


def make_dir(path: str | os.PathLike) -> Path:
    """Create `path` and its parents (0777 & ~umask); a one-line CalibError when it cannot be."""
    path = Path(path)
    if path.is_dir():
        return path
    _check_ancestors(path, path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise CalibError(f"{path} is a file, not a folder") from None
    except OSError as e:
        raise CalibError(f"cannot create folder {path}: {e.strerror or e}") from None
    return path


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (best effort: some file systems refuse a folder fsync)."""
    with contextlib.suppress(OSError):
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


# -- atomic files and folders ---------------------------------------------------------------

def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def temp_target(name: str) -> str | None:
    """The file name a temporary file of `atomic_path` stands for, or None if `name` is not one
    ('.<target>.<random>.tmp')."""
    if not (name.startswith(".") and name.endswith(".tmp")):
        return None
    parts = name[1:].rsplit(".", 2)
    return parts[0] if len(parts) == 3 and parts[0] else None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path` (and fsync the
    folder), on any exception remove it. Temp names are '.<name>.<random>.tmp' (`temp_target`
    reads them back). The file ends with mode 0666 & ~umask, like any file `open` creates."""
    path = Path(path)
    make_dir(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise CalibError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        os.fchmod(fd, file_mode())
    finally:
        os.close(fd)
    try:
        yield Path(tmp)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    try:
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise CalibError(f"cannot write {path}: {e.strerror or e}") from None
    fsync_dir(path.parent)


STAGE_SUFFIX = ".partial"


def stage_owner(name: str) -> int | None:
    """The pid recorded in a staged folder's name ('.<out>.pid<pid>.<random>.partial'), or None
    if `name` is not one. The pid is in the name so that the next command can tell the folder of
    a run that died (SIGKILL, power loss: no `finally` ran) from one still being written."""
    if not (name.startswith(".") and name.endswith(STAGE_SUFFIX)):
        return None
    parts = name[1:-len(STAGE_SUFFIX)].rsplit(".", 2)
    if len(parts) != 3 or not parts[0] or not parts[1].startswith("pid") or not parts[1][3:].isdigit():
        return None
    return int(parts[1][3:])


def _pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists here (one we may not signal exists too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _lock_folder(folder: Path, blocking: bool = False) -> int | None:
    """An fd holding an exclusive flock on `folder`, or None where it is held elsewhere. The
    owner of a staged folder holds this lock while it writes; the kernel drops it when the
    process dies however it dies, and, unlike a pid, it also holds across hosts sharing an NFS
    folder and is not fooled by a reused pid. Where flock is not supported the lock is taken
    as free (the pid check still protects live runs on this host)."""
    import fcntl

    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError:
        pass  # no flock on this file system: keep the fd, the pid decides
    return fd


def clean_stale_stages(folder: str | os.PathLike) -> list[Path]:
    """Remove the staged folders in `folder` left by commands that died before their `finally`
    ran (SIGKILL, a crash): those whose owner pid is gone and whose lock nobody holds. A live
    run's stage (pid alive here, or its lock held from another host) is never touched. Returns
    the folders removed."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    removed = []
    for entry in entries:
        pid = stage_owner(entry.name)
        if pid is None or pid == os.getpid() or _pid_alive(pid):
            continue
        with contextlib.suppress(OSError):
            if not entry.is_dir(follow_symlinks=False):
                continue
            fd = _lock_folder(Path(entry.path))
            if fd is None:
                continue  # a live owner on another host
            try:
                shutil.rmtree(entry.path, ignore_errors=True)
            finally:
                os.close(fd)
            removed.append(Path(entry.path))
    return removed


@contextlib.contextmanager
def staged_dir(out: str | os.PathLike) -> Iterator[Path]:
    """Write a whole output folder in a hidden sibling ('.<name>.pid<pid>.<random>.partial') and
    rename it to `out` only on success, so a failed or interrupted command leaves no half-written
    folder. `out` may not exist yet or be an empty folder; checked before anything is created.
    The folder ends with mode 0777 & ~umask.

    Stale stages of dead commands in the same parent are removed first (`clean_stale_stages`).
    The final rename is one rename(2): atomic, and it replaces only a missing or empty folder, so
    of two commands writing the same `out` at once the second ends in a one-line CalibError
    (its stage removed) instead of mixing or losing either's files."""
    out = check_output_dir(out)
    make_dir(out.parent)
    clean_stale_stages(out.parent)
    try:
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.pid{os.getpid()}.", suffix=STAGE_SUFFIX, dir=out.parent))
    except OSError as e:
        raise CalibError(f"cannot write {out}: {e.strerror or e}") from None
    lock = None
    try:
        lock = _lock_folder(stage, blocking=True)
        os.chmod(stage, dir_mode())
        yield stage
        try:
            os.rename(stage, out)
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise CalibError(f"output folder {out} was written by another command while this one ran "
                                 f"(this run's results are discarded: choose another --out)") from None
            raise CalibError(f"cannot move the results into {out}: {e.strerror or e}") from None
        fsync_dir(out.parent)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if lock is not None:
            os.close(lock)


# -- output paths, checked before work starts ----------------------------------------------

def can_write_in(folder: str | os.PathLike) -> bool:
    """Whether files can be created in `folder` (a real probe, see `_writable`). Public so that
    code checking a folder before work it would otherwise lose (a model export) can ask, and
    so tests can stand in for a read-only folder where they run as root."""
    return _writable(Path(folder))


def _writable(folder: Path) -> bool:
    # A real probe, not os.access: root passes os.access everywhere, and /proc or a read-only
    # mount refuse files whatever the mode bits say. TemporaryFile uses O_TMPFILE on Linux
    # (nothing visible is created) and unlinks at once elsewhere.
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def _check_ancestors(path: Path, target: Path) -> None:
    """The nearest existing one of `path` and its ancestors must be a folder we can create
    files in (the rest will be created)."""
    for parent in [path, *path.parents]:
        if not os.path.lexists(parent):
            continue
        if not parent.is_dir():
            raise CalibError(f"cannot write {target}: {parent} is a file, not a folder")
        if not _writable(parent):
            raise CalibError(f"cannot write {target}: no permission to create files in {parent}")
        return


def check_output_file(path: str | os.PathLike, overwrite: bool = False,
                      written_by_calib: Callable[[Path], bool] | None = None) -> Path:
    """Check, before any work, that `path` can be written as a file: not a folder, its parent
    a folder (or creatable) we may write in, and not an existing file calib did not write
    (`written_by_calib(path)` says which are calib's) unless `overwrite`. One-line CalibError."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise CalibError(f"{path} is a folder, not a file (name a file to write)")
    if os.path.lexists(path) and not path.is_file() and path.exists():
        raise CalibError(f"{path} is not a regular file (name a file to write)")
    _check_ancestors(path.parent, path)
    if path.is_file() and not overwrite:
        ours = False
        if written_by_calib is not None:
            with contextlib.suppress(Exception):  # an unreadable or odd file is simply not ours
                ours = bool(written_by_calib(path))
        if not ours:
            raise CalibError(f"{path} already exists and calib did not write it (pass --overwrite to replace it)")
    return path


def check_output_dir(path: str | os.PathLike, empty: bool = True,
                     apart_from: dict[str, str | os.PathLike | None] | None = None) -> Path:
    """Check, before any work, that `path` can be an output folder: not a file, its parent a
    folder we may write in, and (with `empty`) not a folder that already holds files. A
    folder that exists without `empty` (a cache folder) must be writable. `apart_from` names
    other folders the command writes during its work ({"--cache-dir": folder}): the output folder
    may be neither one of them nor hold one, since they would fill it before its staged copy is
    renamed into place. One-line CalibError."""
    path = Path(path).expanduser()
    for option, other in (apart_from or {}).items():
        if other is not None:
            _check_apart(path, Path(other).expanduser(), option)
    if path.exists() and not path.is_dir():
        raise CalibError(f"{path} is a file, not a folder")
    if path.is_dir():
        if empty and any(path.iterdir()):
            raise CalibError(f"output folder {path} already exists and is not empty (choose another --out)")
        if not _writable(path):
            raise CalibError(f"cannot write in {path}: no permission to create files there")
        if empty:
            _check_ancestors(path.parent, path)  # the staged sibling and the rename need the parent
        return path
    _check_ancestors(path.parent, path)
    return path


def _check_apart(out: Path, other: Path, option: str) -> None:
    """Refuse an output folder that is `other` (another folder the command fills while it works,
    named by `option`) or an ancestor of it: found before any work, not by the final rename
    after a full run. Compared resolved, so './x', 'x/' and a symlink to x are all x."""
    a, b = out.resolve(strict=False), other.resolve(strict=False)
    if a == b:
        raise CalibError(f"--out {out} is also the {option} folder: choose another --out "
                         f"(the output folder must start empty, and the caches would fill it)")
    if a in b.parents:
        raise CalibError(f"{option} {other} is inside --out {out}: choose another --out or {option} "
                         f"(the output folder must start empty, and the caches would fill it)")


# -- calib's own ONNX files -----------------------------------------------------------------

def mark_calib_onnx(model, **info) -> None:
    """Record calib's provenance in an ONNX ModelProto's metadata_props (key 'calib', a JSON
    object), so a later `--out` naming this file recognizes it as calib's."""
    from calib import __version__

    record = {"calib_version": __version__, **info}
    props = {p.key: p for p in model.metadata_props}
    if ONNX_PROVENANCE_KEY in props:
        props[ONNX_PROVENANCE_KEY].value = json.dumps(record, sort_keys=True)
    else:
        entry = model.metadata_props.add()
        entry.key, entry.value = ONNX_PROVENANCE_KEY, json.dumps(record, sort_keys=True)


def is_calib_onnx(path: str | os.PathLike) -> bool:
    """True for an ONNX model whose metadata_props carry calib's provenance key."""
    from calib.onnx_io import load_model

    try:
        model = load_model(path, external_data=False)
    except Exception:  # not ONNX at all: not ours
        return False
    return any(p.key == ONNX_PROVENANCE_KEY for p in model.metadata_props)


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
