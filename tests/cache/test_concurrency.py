"""Real processes against one cache folder: concurrent writers, and writers killed mid-calibration."""

import json
import os
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
    assert _leftovers(cache_dir) if cache_dir.exists() else [] == []
