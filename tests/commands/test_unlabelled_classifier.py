"""A classifier fed a folder of images without labels (`--dataset images`): judged like every other
task, against FP32's own predictions (top-1 agreement through the classify metric), never scored
0% against labels it does not have; a top-1 budget, which needs labels, is one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import make_image_folder


def _cli(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "calib.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ}, timeout=600)


def test_a_classifier_on_a_folder_without_labels_is_judged_against_fp32(tmp_path, tiny_classifier):
    folder = make_image_folder(tmp_path / "frames", 12)
    common = ["--model", tiny_classifier, "--dataset", "images", "--data-dir", folder, "--samples", "6",
              "--cache-dir", tmp_path / "caches", "--speed-seconds", "0", "--no-html", "--workers", "0"]
    done = _cli("run", *common, "--out", tmp_path / "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["task"] == "classify" and report["metric"]["reference"] == "fp32"
    assert report["metric"]["fp32"] == 1.0   # FP32 agrees with itself: never 0% against absent labels
    assert "against FP32" in done.stdout and "verdict:" in done.stdout
    refused = _cli("run", *common, "--out", tmp_path / "budget", "--max-drop", "0.01", cwd=tmp_path)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "labelled images" in refused.stderr
    assert not (tmp_path / "budget").exists()
