"""A classifier fed a folder of images without labels (`--dataset images`): judged like every other
task, against FP32's own predictions (top-1 agreement through the classify metric), never scored
0% against labels it does not have; a top-1 budget, which needs labels, is one line."""

from __future__ import annotations

import json

from tests.conftest import make_image_folder
from tests.test_cli import calib


def test_a_classifier_on_a_folder_without_labels_is_judged_against_fp32(tmp_path, tiny_classifier):
    folder = make_image_folder(tmp_path / "frames", 12)
    common = ["--model", tiny_classifier, "--dataset", "images", "--data-dir", folder, "--samples", "6",
              "--cache-dir", tmp_path / "caches", "--speed-seconds", "0", "--no-html", "--workers", "0"]
    done = calib("run", *common, "--out", tmp_path / "out", cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["task"] == "classify" and report["metric"]["reference"] == "fp32"
    assert report["metric"]["fp32"] == 1.0   # FP32 agrees with itself: never 0% against absent labels
    assert "against FP32" in done.stdout and "verdict:" in done.stdout
    refused = calib("run", *common, "--out", tmp_path / "budget", "--max-drop", "0.01", cwd=tmp_path, check=False)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "labelled images" in refused.stderr
    assert not (tmp_path / "budget").exists()
