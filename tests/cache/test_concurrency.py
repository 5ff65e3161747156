"""Real processes against one cache folder: concurrent writers, writers killed mid-calibration,
and writers killed in the middle of saving a cache (at every rename, mid-write(2), at random)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from calib.cache import load_cache


def _calibrate_cmd(data, model, cache_dir, calibrator="entropy", *extra):
    return [sys.executable, "-m", "calib.cli", "calibrate", "--model", str(model), "--dataset", "imagenet-val",
            "--data-dir", str(data), "--samples", "500", "--calibrator", calibrator, "--cache-dir", str(cache_dir),
            "--recalibrate", *extra]


def _leftovers(cache_dir):
    return [p.name for p in cache_dir.iterdir() if p.name.endswith(".tmp") or p.name.endswith(".partial")]


def test_concurrent_writers_never_corrupt_or_interleave(tmp_path, small_imagenet, tiny_classifier):
    cache_dir = tmp_path / "caches"
    calibrators = ["entropy", "entropy", "minmax", "minmax", "percentile", "entropy"]
    procs = [subprocess.Popen(_calibrate_cmd(small_imagenet, tiny_classifier, cache_dir, c, "--workers", "0"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in calibrators]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    paths = {o[0].strip().splitlines()[-1] for o in outs}
    assert len(paths) == 3  # one cache per calibrator: same key, same file
    index = json.loads((cache_dir / "index.json").read_text())
    assert sorted(e["calibrator"] for e in index) == ["entropy", "minmax", "percentile"]
    for path in paths:
        entry = load_cache(path, require_metadata=True)  # parses, and sidecar agrees with the cache
        assert entry.metadata.key.calibrator in path
        assert len(entry.cache.hex_scales) > 5
    assert _leftovers(cache_dir) == []


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_killed_mid_calibration_leaves_nothing(sig, tmp_path, imagenet_sample):
    cache_dir = tmp_path / "caches"
    # The real model over 500 images takes many seconds: the signal lands mid-calibration.
    proc = subprocess.Popen(_calibrate_cmd(imagenet_sample, "efficientnet_lite0", cache_dir, "entropy", "--workers", "1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    seen = ""
    while "calibrating" not in seen and time.time() < deadline:
        seen += os.read(proc.stderr.fileno(), 4096).decode(errors="replace")
    assert "calibrating" in seen, seen
    time.sleep(1.5)
    assert proc.poll() is None, "calibration finished before the signal"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    err = seen + err
    if sig == signal.SIGINT:
        assert proc.returncode == 130
        assert "calib: error: interrupted" in err and "Traceback" not in err
    else:
        assert proc.returncode == -signal.SIGKILL
    files = [p.name for p in cache_dir.iterdir()] if cache_dir.exists() else []
    assert [f for f in files if f.endswith((".cache", ".json"))] == []
    assert (_leftovers(cache_dir) if cache_dir.exists() else []) == []


# -- killed while saving ------------------------------------------------------------------------
# The child saves a large cache (version B) over an existing one with the same key (version A).
# Whatever point it dies at, a reader must find A or B whole, never a partial file, two halves
# of a pair, or an index row for something that is not there, and write nothing (no lock file,
# no index, no rename); the next writer (`save`, or `tidy`) finishes the job on disk and leaves
# no temp file behind.

TENSORS = 20000
CHILD = r"""
import os, resource, signal, sys
mode, root, version, arg = sys.argv[1:5]
from calib.cache import CacheKey, CacheMetadata, CacheStore, TrtCache

def pair(version):
    factor = 1.0 if version == "A" else 2.0
    scales = {f"/blocks.{i // 7}/conv:{i} out": factor * (i + 1) / 1024.0 for i in range(int(os.environ["TENSORS"]))}
    key = CacheKey("a" * 64, {"name": "p"}, "imagenet-val", "f" * 64, "entropy", {})
    meta = CacheMetadata(key=key, model_name="m", model_inputs=[], dataset_description=version,
                         samples=100 if version == "A" else 200, skipped=0, batch_size=4, trt_version="10.3.0",
                         algorithm="EntropyCalibration2",
                         tensors={n: {"scale": s, "amax": s * 127, "min": 0.0, "max": s * 127, "nonfinite": 0}
                                  for n, s in scales.items()})
    return TrtCache.from_scales(scales, "EntropyCalibration2"), meta

store = CacheStore(root)
if mode == "pause":          # stop before every rename until the parent says go (or kills us)
    real = os.replace
    def paused(src, dst, *a, **k):
        print("replace", os.path.basename(dst), flush=True)
        sys.stdin.readline()
        return real(src, dst, *a, **k)
    os.replace = paused
elif mode == "fsize":        # the kernel kills us (SIGXFSZ) when a file we write reaches `arg` bytes
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(arg), int(arg)))
elif mode == "loop":         # save A and B alternately until killed
    pairs = [pair("A"), pair("B")]
    for i in range(10 ** 6):
        print("saving", i, flush=True)
        store.save(*pairs[i % 2])
store.save(*pair(version))
print("saved", flush=True)
"""


def _child(mode, root, version="B", arg="0", **kw):
    env = {**os.environ, "TENSORS": str(TENSORS), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.Popen([sys.executable, "-c", CHILD, mode, str(root), version, str(arg)], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _snapshot(folder):
    """The folder's own modification time, and every entry's name, size and modification time."""
    return folder.stat().st_mtime_ns, sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir())


def _reader_view(store, root, allowed):
    """What readers (entries, find) see: one complete, valid pair from `allowed` (or nothing, if
    None is allowed); returns its version."""
    from calib.cache import CacheMetadata, validate_entry
    from calib.cache.files import read_trt_cache

    rows = store.entries()
    if not rows:
        assert None in allowed, "the old cache is gone"
        return None
    assert len(rows) == 1 and rows[0]["valid"], rows
    path = root / rows[0]["file"]
    if path.exists():
        read_trt_cache(path)                            # parses: no partial text
    meta = CacheMetadata.from_json(path.with_suffix(".json").read_text())
    found = store.find(meta.key)                        # the committed pair (an interrupted save's text)
    assert found is not None and validate_entry(found).ok and found.path == path
    version = found.metadata.dataset_description
    assert version in allowed
    assert len(found.cache.hex_scales) == TENSORS
    factor = 1.0 if version == "A" else 2.0
    assert found.cache.scales["/blocks.0/conv:0 out"] == factor / 1024.0
    return version


def _assert_whole(root, allowed):
    """Readers see one whole pair and write nothing, whatever a killed writer left; the next
    writer (`tidy`, as `save` does first) then leaves that pair on disk, no temp file, a current index."""
    from calib.cache import CacheStore, load_cache, validate_entry
    from calib.cache.store import INDEX

    store = CacheStore(root)
    before = _snapshot(root)
    version = _reader_view(store, root, allowed)
    assert _snapshot(root) == before                    # reading never writes
    store.tidy()
    assert _leftovers(root) == []
    assert _reader_view(store, root, allowed) == version
    caches = sorted(root.glob("*.cache"))
    assert all(validate_entry(load_cache(c)).ok for c in caches)   # rolled forward on disk
    index = json.loads((root / INDEX).read_text())
    assert [r["file"] for r in index] == [c.name for c in caches]
    return version


@pytest.fixture()
def old_pair(tmp_path):
    root = tmp_path / "store"
    proc = _child("plain", root, "A")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return root


@pytest.mark.parametrize("kill_at", [1, 2, 3])
def test_sigkill_at_each_rename_of_a_save(old_pair, kill_at):
    """Renames: 1 the sidecar (commit point), 2 the cache text, 3 the index."""
    proc = _child("pause", old_pair, "B")
    renames = []
    for _ in range(kill_at):
        line = proc.stdout.readline()
        assert line.startswith("replace"), line + proc.stderr.read()
        renames.append(line.split()[1])
        if len(renames) < kill_at:
            proc.stdin.write("go\n")
            proc.stdin.flush()
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    expected = {1: lambda n: n.endswith(".json") and n != "index.json", 2: lambda n: n.endswith(".cache"),
                3: lambda n: n == "index.json"}[kill_at]
    assert expected(renames[-1]), renames
    assert _leftovers(old_pair) != []  # it died with temp files on disk
    # Before the sidecar's rename the old pair stands; from it on, the new one.
    assert _assert_whole(old_pair, {"A"} if kill_at == 1 else {"B"}) == ("A" if kill_at == 1 else "B")


def test_sigkill_during_a_first_save_leaves_nothing_or_the_new_pair(tmp_path):
    root = tmp_path / "store"
    for kill_at in (1, 2):
        shutil.rmtree(root, ignore_errors=True)
        proc = _child("pause", root, "B")
        for i in range(kill_at):
            assert proc.stdout.readline().startswith("replace")
            if i + 1 < kill_at:
                proc.stdin.write("go\n")
                proc.stdin.flush()
        proc.kill()
        proc.communicate(timeout=60)
        assert _assert_whole(root, {None} if kill_at == 1 else {"B"}) == (None if kill_at == 1 else "B")
        assert _leftovers(root) == []


@pytest.mark.parametrize("where", ["cache-text", "sidecar"])
def test_killed_by_the_kernel_in_the_middle_of_writing(old_pair, where):
    """RLIMIT_FSIZE: the kernel kills the writer (SIGXFSZ) inside write(2) once a file reaches
    the limit: half-way through the cache text, or through the sidecar (written second, larger)."""
    text = next(old_pair.glob("*.cache")).stat().st_size
    side = next(p for p in old_pair.glob("*.json") if p.name != "index.json")
    limit = text // 2 if where == "cache-text" else (text + side.stat().st_size) // 2
    assert (0 < limit < text) if where == "cache-text" else (text < limit < side.stat().st_size)
    proc = _child("fsize", old_pair, "B", limit)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGXFSZ, err
    assert any(old_pair.joinpath(n).stat().st_size == limit for n in _leftovers(old_pair)), "not killed mid-write"
    assert _assert_whole(old_pair, {"A"}) == "A"


def test_sigkill_at_random_moments_of_repeated_saves(tmp_path):
    import random

    root = tmp_path / "store"
    rng = random.Random(0)
    seen = set()
    for attempt in range(3):
        proc = _child("loop", root)
        target = 2 + attempt
        while True:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            if line.split()[-1] == str(target):
                break
        time.sleep(rng.uniform(0.0, 0.4))   # somewhere inside save number `target` (or the next)
        proc.kill()
        proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        seen.add(_assert_whole(root, {"A", "B"}))
    assert seen <= {"A", "B"}
