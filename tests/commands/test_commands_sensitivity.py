"""`calib sensitivity` on models that are not classifiers (issue 21): a detector through the real
command line ranks its layers by the SQNR of the output each hurts most, says so in its measure,
and prints no classifier-only figure (top-1, agreement, the chance warning); a segmenter of no
declared task is ranked as generic."""

from __future__ import annotations

import json

import numpy as np
import onnx
from PIL import Image

from calib.restore.score import TASK_MEASURE
from tests.quantize.head_models import SegHead, YoloHead, build, export
from tests.test_cli import calib


def _frames(root):
    rng = np.random.default_rng(0)
    for i in range(8):
        folder = root / f"cam{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (rng.random((10, 16, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).resize((90 - 5 * i, 40 + 7 * i)).save(folder / f"f{i}.png")
    return root


def test_sensitivity_of_a_detector_through_the_command_line(tmp_path):
    detector = tmp_path / "yolo.onnx"
    onnx.save(export(build(YoloHead)), str(detector))
    frames = _frames(tmp_path / "frames")
    out = tmp_path / "out"
    proc = calib("sensitivity", "--model", detector, "--task", "detect", "--dataset", "images", "--data-dir", frames,
                 "--samples", 5, "--preprocess", "letterbox", "--input-size", 64, "--images", 3,
                 "--cache-dir", tmp_path / "caches", "--out", out)
    assert proc.returncode == 0
    saved = json.loads((out / "sensitivity.json").read_text())
    s = saved["sensitivity"]
    assert s["task"] == "detect" and s["measure"] == TASK_MEASURE and "output the layer hurts most" in s["measure"]
    assert "fp32_top1" not in s and not {"agreement", "top1", "logits_sqnr_db"} & set(s["int8"])
    assert s["int8"]["metric"]["name"] == "mAP@0.5:0.95" and s["int8"]["metric"]["reference"] == "fp32"
    row = s["rows"][0]
    assert row["worst_output"] in row["outputs_sqnr_db"] and "out" in row["outputs_sqnr_db"]
    assert s["ranking"] == [r["layer"] for r in s["rows"]] and s["all_float_max_abs_diff"] < 1e-3
    assert not any("chance" in w for w in saved["warnings"])
    md = (out / "sensitivity.md").read_text()
    html = (out / "report.html").read_text()
    for text in (md, html):
        assert "top-1" not in text and "agreement" not in text and "mAP@0.5:0.95" in text
        assert "output the layer hurts most" in text and "decoded scores" in text
    assert (out / "sensitivity.png").stat().st_size > 0
    assert f"output {row['worst_output']}" in proc.stdout          # the console's top ten


def test_a_segmenter_of_no_declared_task_is_ranked_as_generic(tmp_path):
    from calib.commands.sensitivity import rank_sensitivity
    from calib.session import RunConfig

    path = tmp_path / "seg.onnx"
    onnx.save(export(build(SegHead)), str(path))
    config = RunConfig(model=str(path), dataset="images", data_dir=str(_frames(tmp_path / "frames")), samples=5,
                       preprocess="letterbox", input_size="64", cache_dir=str(tmp_path / "caches"), workers=0,
                       progress=False)
    report = rank_sensitivity(config, tmp_path / "out", images=3).to_json()
    s = report["sensitivity"]
    assert s["task"] == "generic" and s["int8"]["metric"]["name"].startswith("argmax_agreement")
    assert all(set(r["outputs_sqnr_db"]) == {"out"} for r in s["rows"])   # nothing decoded for a generic model
