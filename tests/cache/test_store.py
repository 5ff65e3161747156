import builtins
import errno
import io
import json
import os
import shutil
import stat
import threading
import time

import pytest

from calib.cache import CacheKey, CacheMetadata, CacheStore, InvalidCache, TrtCache, load_cache
from calib.cache.store import INDEX, LOCK
from calib.errors import CalibError


def _meta(calibrator="entropy", fingerprint="f" * 64, params=None, scales=None) -> CacheMetadata:
    scales = scales or {"input": 0.5}
    key = CacheKey("a" * 64, {"name": "efficientnet-lite-224"}, "imagenet-val", fingerprint, calibrator, params or {})
    return CacheMetadata(key=key, model_name="efficientnet_lite0", model_inputs=[{"name": "input", "shape": ["batch", 3, 224, 224]}],
                         dataset_description="test", samples=10, skipped=0, batch_size=4, trt_version="10.3.0",
                         algorithm="EntropyCalibration2",
                         tensors={n: {"scale": s, "amax": s * 127, "min": -1, "max": 1, "nonfinite": 0}
                                  for n, s in scales.items()})


def _save(store, **kw):
    meta = _meta(**kw)
    scales = {n: t["scale"] for n, t in meta.tensors.items()}
    return store.save(TrtCache.from_scales(scales, "EntropyCalibration2"), meta), meta


def _temps(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith((".tmp", ".partial"))]


def test_save_find_and_index(tmp_path):
    store = CacheStore(tmp_path)
    path, meta = _save(store)
    assert path.suffix == ".cache" and path.with_suffix(".json").is_file()
    found = store.find(meta.key)
    assert found is not None and found.path == path and found.cache.scales == {"input": 0.5}
    assert store.find(_meta(fingerprint="e" * 64).key) is None  # another sample list
    assert store.find(_meta(calibrator="minmax").key) is None
    rows = store.entries()
    assert len(rows) == 1 and rows[0]["file"] == path.name and rows[0]["calibrator"] == "entropy"
    assert rows[0]["valid"] and rows[0]["problem"] is None
    assert _temps(tmp_path) == []


def test_the_key_covers_calibrator_parameters_and_the_sample_list(tmp_path):
    store = CacheStore(tmp_path)
    _, meta = _save(store, calibrator="percentile", params={"percentile": 99.99})
    assert store.find(meta.key) is not None
    assert store.find(_meta(calibrator="percentile", params={"percentile": 99.9}).key) is None
    assert store.find(_meta(calibrator="percentile", params={"percentile": 99.99}, fingerprint="e" * 64).key) is None
    digests = {_meta(params=p, fingerprint=f).key.digest() for p in ({}, {"x": 1}, {"x": 2}) for f in ("e" * 64, "f" * 64)}
    assert len(digests) == 6


# -- row 1: a corrupt cache is never reused -------------------------------------------------------

@pytest.mark.parametrize("hex_value", ["7fc00000", "bd418306", "7f800000", "00000000",
                                       "00000001", "7f7fffff"])  # subnormal, FLT_MAX: issue 22 row 1
def test_a_copied_cache_with_a_bad_scale_is_refused_not_reused(tmp_path, hex_value):
    # As in the issue: copy a valid pair into another folder, set one scale to NaN / negative.
    original, meta = _save(CacheStore(tmp_path / "a"), scales={"input": 0.5, "conv": 0.25})
    copy_dir = tmp_path / "b"
    copy_dir.mkdir()
    for p in (original, original.with_suffix(".json")):
        shutil.copy(p, copy_dir / p.name)
    cache = copy_dir / original.name
    cache.write_text(cache.read_text().replace(TrtCache.from_scales({"c": 0.25}, "x").hex_scales["c"], hex_value))
    with pytest.raises(InvalidCache, match="conv") as e:
        CacheStore(copy_dir).find(meta.key)
    assert "--recalibrate replaces it" in str(e.value) and e.value.tensor == "conv"
    assert "\n" not in str(e.value)


def test_find_with_required_tensors_refuses_a_partial_cache(tmp_path):
    store = CacheStore(tmp_path)
    _, meta = _save(store, scales={"input": 0.5})
    assert store.find(meta.key, required=["input"]) is not None
    with pytest.raises(InvalidCache, match="conv"):
        store.find(meta.key, required=["input", "conv"])


def test_a_truncated_sidecar_or_cache_with_this_key_is_refused(tmp_path):
    store = CacheStore(tmp_path)
    path, meta = _save(store)
    side = path.with_suffix(".json")
    good = side.read_text()
    side.write_text(good[:40])
    with pytest.raises(InvalidCache, match=side.name):
        store.find(meta.key)
    side.write_text(good)
    path.write_text("TRT-100300-EntropyCalibration2\ninput: 3f00")
    with pytest.raises(InvalidCache, match="line 2"):
        store.find(meta.key)


def test_find_and_list_work_without_the_index(tmp_path):
    store = CacheStore(tmp_path)
    path, meta = _save(store)
    _save(store, calibrator="minmax")
    (tmp_path / INDEX).unlink()
    assert store.find(meta.key).path == path
    rows = store.entries()
    assert sorted(r["calibrator"] for r in rows) == ["entropy", "minmax"]
    assert not (tmp_path / INDEX).exists()  # readers never write it
    assert store.tidy() == rows
    assert len(json.loads((tmp_path / INDEX).read_text())) == 2  # a writer rebuilds it


def test_list_reads_past_a_corrupt_or_stale_index_and_shows_broken_caches(tmp_path):
    store = CacheStore(tmp_path)
    path, _ = _save(store)
    (tmp_path / INDEX).write_text("{ not json")
    assert [r["file"] for r in store.entries()] == [path.name]
    assert (tmp_path / INDEX).read_text() == "{ not json"   # left to writers
    (tmp_path / "dropped-in.cache").write_text("TRT-8601-EntropyCalibration2\nt: 7fc00000\n")
    rows = {r["file"]: r for r in store.entries()}
    assert set(rows) == {path.name, "dropped-in.cache"}
    assert not rows["dropped-in.cache"]["valid"] and "not finite" in rows["dropped-in.cache"]["problem"]
    other, _ = _save(store, calibrator="minmax")            # a writer refreshes the whole index
    index = {r["file"]: r for r in json.loads((tmp_path / INDEX).read_text())}
    assert set(index) == {path.name, "dropped-in.cache", other.name} and not index["dropped-in.cache"]["valid"]
    path.write_text(path.read_text().replace("3f000000", "3f000001"))  # edited after indexing
    assert not {r["file"]: r for r in store.entries()}[path.name]["valid"]   # the stale row is not trusted


def test_a_corrupt_index_never_leaves_a_save_half_registered(tmp_path):
    store = CacheStore(tmp_path)
    (tmp_path / INDEX).write_text("[1, 2")
    path, meta = _save(store)
    index = json.loads((tmp_path / INDEX).read_text())
    assert [r["file"] for r in index] == [path.name] and index[0]["key"] == meta.key.digest()


def test_save_refuses_what_it_cannot_write_and_writes_nothing(tmp_path):
    store = CacheStore(tmp_path / "c")
    meta = _meta(scales={"a\nb": 0.5})
    with pytest.raises(CalibError, match="cannot be written"):
        store.save(TrtCache.from_scales({"a\nb": 0.5}, "EntropyCalibration2"), meta)
    meta = _meta(scales={"t": float("nan")})
    with pytest.raises(InvalidCache, match="not saved"):
        store.save(TrtCache.from_scales({"t": float("nan")}, "EntropyCalibration2"), meta)
    with pytest.raises(InvalidCache, match="disagree"):  # a sidecar that does not describe the text
        store.save(TrtCache.from_scales({"other": 0.5}, "EntropyCalibration2"), _meta())
    assert not (tmp_path / "c").exists() or [p.name for p in (tmp_path / "c").iterdir() if p.name != ".calib.lock"] == []


def test_saved_files_follow_the_umask(tmp_path):
    old = os.umask(0o002)
    try:
        path, _ = _save(CacheStore(tmp_path / "shared"))
    finally:
        os.umask(old)
    for p in (path, path.with_suffix(".json"), path.parent / INDEX, path.parent / ".calib.lock"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o664, p.name
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o775


def test_a_folder_given_as_a_cache_is_named_as_such(tmp_path):
    (tmp_path / "x.cache").mkdir()
    with pytest.raises(CalibError, match="is a folder, not a cache file"):
        load_cache(tmp_path / "x.cache")
    with pytest.raises(CalibError, match="cache not found"):
        load_cache(tmp_path / "nope.cache")


def test_a_file_given_as_the_cache_folder(tmp_path):
    (tmp_path / "f").write_text("x")
    store = CacheStore(tmp_path / "f")
    with pytest.raises(CalibError, match="is a file, not a folder"):
        store.entries()
    with pytest.raises(CalibError, match="is a file, not a folder"):
        store.find(_meta().key)
    with pytest.raises(CalibError, match="is a file, not a folder") as e:
        _save(store)
    assert "\n" not in str(e.value)


def test_an_unwritable_cache_folder_is_one_line(tmp_path):
    # /proc refuses new files even to root, whatever the mode bits say.
    with pytest.raises(CalibError, match="cannot") as e:
        _save(CacheStore("/proc/self/calib-caches"))
    assert "\n" not in str(e.value)


def test_corrupt_sidecar_and_truncated_cache_are_one_line_errors(tmp_path):
    store = CacheStore(tmp_path)
    path, _ = _save(store)
    side = path.with_suffix(".json")
    side.write_text(side.read_text()[:40])
    with pytest.raises(CalibError, match=side.name) as e:
        load_cache(path)
    assert "\n" not in str(e.value)
    side.unlink()
    path.write_text("TRT-100300-EntropyCalibration2\ninput: 3f00")
    with pytest.raises(CalibError, match="line 2"):
        load_cache(path)


def test_metadata_round_trip(tmp_path):
    meta = _meta()
    again = CacheMetadata.from_json(meta.to_json())
    assert again == meta
    d = json.loads(meta.to_json())
    assert d["key"]["digest"] == meta.key.digest()
    for field in ("format_version", "calib_version", "model_inputs", "created", "trt_version", "batch_size"):
        assert field in d


def test_reuse_never_crosses_calibrator_parameters_or_sample_lists(tmp_path, small_imagenet, tiny_classifier):
    # The key `calib run` looks caches up by, built from real objects.
    from calib.calibration import cache_key
    from calib.calibrators import get_calibrator
    from calib.data import Dataset, imagenet_val, take
    from calib.models import resolve_model

    model = resolve_model(str(tiny_classifier))
    full = Dataset.of(imagenet_val(small_imagenet), model.preprocess)
    first, second = take(full, 4, seed=0), take(full, 4, seed=1)
    assert [s.key for s in first.samples] != [s.key for s in second.samples]
    keys = {(d, p): cache_key(model, ds, get_calibrator("percentile", percentile=p))
            for d, ds in (("first", first), ("second", second)) for p in (99.9, 99.99)}
    assert len({k.digest() for k in keys.values()}) == 4
    store = CacheStore(tmp_path / "c")
    scales = {"input": 0.5}
    meta = _meta(scales=scales)
    meta.key = keys[("first", 99.9)]
    store.save(TrtCache.from_scales(scales, "EntropyCalibration2"), meta)
    assert store.find(keys[("first", 99.9)]) is not None
    assert [store.find(k) for name, k in keys.items() if name != ("first", 99.9)] == [None, None, None]



# -- issue 22 row 3: reading never writes ---------------------------------------------------------
# `calib cache list` wrote index.json and a lock file into any folder it listed, and `run` could not
# reuse a cache from a read-only folder. Readers (find, entries) now write nothing; writers
# (save, tidy) refresh the index and finish what killed writers left.

def _snapshot(folder):
    """The folder's own modification time, and every entry's name, size and modification time."""
    return folder.stat().st_mtime_ns, sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir())


@pytest.fixture()
def read_only(monkeypatch):
    """Folders appended to the returned list are read-only for this process, as on a read-only
    mount (tests run as root, whom chmod does not stop): whatever would create, change, rename or
    remove something under them fails with EROFS."""
    folders: list[str] = []

    def guard(path):
        p = os.path.abspath(os.fsdecode(os.fspath(path)))
        if any(p == f or p.startswith(f + os.sep) for f in folders):
            raise OSError(errno.EROFS, "Read-only file system", p)

    real_os_open, real_io_open = os.open, io.open

    def os_open(path, flags, *a, **k):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND):
            guard(path)
        return real_os_open(path, flags, *a, **k)

    def io_open(file, mode="r", *a, **k):
        if not isinstance(file, int) and any(c in mode for c in "wax+"):
            guard(file)
        return real_io_open(file, mode, *a, **k)

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(io, "open", io_open)
    monkeypatch.setattr(builtins, "open", io_open)
    for name in ("replace", "rename", "unlink", "remove", "mkdir", "rmdir", "utime", "chmod", "link", "symlink"):
        def guarded(path, *a, _real=getattr(os, name), **k):
            guard(path)
            return _real(path, *a, **k)
        monkeypatch.setattr(os, name, guarded)
    return folders


def test_the_read_only_seam_refuses_writes(tmp_path, read_only):
    read_only.append(str(tmp_path))
    for write in (lambda: (tmp_path / "x").write_text("x"), lambda: (tmp_path / "d").mkdir(),
                  lambda: os.open(tmp_path / "y", os.O_RDWR | os.O_CREAT)):
        with pytest.raises(OSError) as e:
            write()
        assert e.value.errno == errno.EROFS
    assert list(tmp_path.iterdir()) == []


def test_list_and_find_in_a_read_only_folder_write_nothing(tmp_path, read_only):
    root = tmp_path / "ro"
    store = CacheStore(root)
    path, meta = _save(store)
    other, _ = _save(store, calibrator="minmax")
    # As a folder copied without its index and lock file, with what a killed writer left: readers
    # used to create both, and to remove the temp file.
    (root / INDEX).unlink()
    (root / LOCK).unlink()
    (root / f".{path.name}.k1ll3d.tmp").write_text("TRT-100300-EntropyCalibration2\ninput: 3f")
    (root / "dropped-in.cache").write_text("TRT-8601-EntropyCalibration2\nt: 7fc00000\n")
    read_only.append(str(root))
    before = _snapshot(root)
    assert store.find(meta.key).path == path
    assert store.find(_meta(fingerprint="e" * 64).key) is None
    rows = {r["file"]: r for r in store.entries()}
    assert set(rows) == {path.name, other.name, "dropped-in.cache"}
    assert rows[path.name]["valid"] and rows[other.name]["valid"] and not rows["dropped-in.cache"]["valid"]
    assert _snapshot(root) == before
    # Writing there is refused in one line, and still leaves everything as it was.
    with pytest.raises(CalibError, match="cannot") as e:
        _save(store, calibrator="percentile")
    assert "\n" not in str(e.value) and _snapshot(root) == before


def test_readers_leave_a_stale_index_and_the_lock_file_alone(tmp_path):
    store = CacheStore(tmp_path)
    path, meta = _save(store)
    _save(store, calibrator="minmax")
    path.write_text(path.read_text().replace("3f000000", "3f000001"))   # the index row is stale now
    before = _snapshot(tmp_path)
    with pytest.raises(InvalidCache):
        store.find(meta.key)
    assert not {r["file"]: r for r in store.entries()}[path.name]["valid"]
    assert _snapshot(tmp_path) == before


def test_readers_see_an_interrupted_save_whole_and_the_next_writer_finishes_it(tmp_path, read_only):
    """Killed between its two renames: the new sidecar beside the old text, the new text in its
    temp file. A reader takes that text, in memory; `tidy` (or the next save) renames it into place."""
    store = CacheStore(tmp_path)
    path, meta = _save(store, scales={"input": 0.5})
    new_meta = _meta(scales={"input": 0.25})
    new_text = TrtCache.from_scales({"input": 0.25}, "EntropyCalibration2").to_text()
    path.with_suffix(".json").write_text(new_meta.to_json())               # renamed: the commit point
    (tmp_path / f".{path.name}.a8c2x9.tmp").write_text(new_text)          # not renamed yet
    read_only.append(str(tmp_path))
    before = _snapshot(tmp_path)
    assert store.find(meta.key).cache.scales == {"input": 0.25}
    assert store.entries()[0]["valid"]
    assert _snapshot(tmp_path) == before
    read_only.clear()
    store.tidy()
    assert path.read_text() == new_text and _temps(tmp_path) == []
    assert load_cache(path).cache.scales == {"input": 0.25}


def test_readers_wait_for_a_writer_in_the_middle_of_a_save(tmp_path):
    store = CacheStore(tmp_path)
    _, meta = _save(store)
    done = []
    with store.lock():                      # a writer mid-save
        reader = threading.Thread(target=lambda: done.append(store.find(meta.key)))
        reader.start()
        time.sleep(0.5)
        assert done == []                   # waiting on the shared lock, not reading half a save
    reader.join(timeout=10)
    assert done and done[0] is not None


def test_calibrate_reuses_a_cache_from_a_read_only_folder(tmp_path, small_imagenet, tiny_classifier, read_only):
    """What `calib run` does with --cache-dir pointing at a read-only folder holding its cache."""
    from calib.calibration import calibrate
    from calib.data import Dataset, imagenet_val, take
    from calib.models import prepared_model, resolve_model

    model = resolve_model(str(tiny_classifier))
    prepared = prepared_model(model)
    data = take(Dataset.of(imagenet_val(small_imagenet), model.preprocess), 8, seed=0)
    store = CacheStore(tmp_path / "caches")
    first = calibrate(model, prepared, data, "minmax", store, workers=0, progress=False)
    assert not first.reused
    read_only.append(str(tmp_path / "caches"))
    before = _snapshot(tmp_path / "caches")
    again = calibrate(model, prepared, data, "minmax", store, workers=0, progress=False)
    assert again.reused and again.entry.cache == first.entry.cache
    assert _snapshot(tmp_path / "caches") == before


def test_the_up_front_check_asks_for_write_access_only_to_save(tmp_path, read_only):
    """`calib run` refused a read-only cache folder up front, even to reuse a cache from it. The
    store's check asks for write access only when a cache will be saved."""
    store = CacheStore(tmp_path / "ro")
    _save(store)
    read_only.append(str(tmp_path / "ro"))
    store.check(write=False)
    with pytest.raises(CalibError, match="no permission") as e:
        store.check(write=True)
    assert "\n" not in str(e.value)
    CacheStore(tmp_path / "new").check(write=True)          # created by the save, later
    assert not (tmp_path / "new").exists()
    (tmp_path / "f").write_text("x")
    for write in (False, True):
        with pytest.raises(CalibError, match="is a file, not a folder"):
            CacheStore(tmp_path / "f").check(write=write)
