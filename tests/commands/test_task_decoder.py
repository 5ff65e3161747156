"""`--decoder` and `--decoder-param` (issue 21: "decoders for the common export layouts ... a decode
plug-in for the rest"): a detector whose layout `auto` cannot read (a transposed YOLO export,
(N, A, 4+C)) is read once the user names it; a decoder option for a task without a decoder, or a
parameter that is not KEY=VALUE, is one line."""

from __future__ import annotations

import json

import onnx
import torch
from torch import nn

from tests.conftest import make_image_folder
from tests.test_cli import calib
from tests.quantize.head_models import YoloHead, build, export


class Transposed(nn.Module):
    """YOLO's head exported as (N, A, 4+C), as `model.export(..., format="onnx")` users often permute it."""

    def __init__(self):
        super().__init__()
        self.head = build(YoloHead)

    def forward(self, x):
        return self.head(x).transpose(1, 2)


def test_a_transposed_yolo_output_is_read_once_the_decoder_is_named(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "yolo_t.onnx"
    onnx.save(export(Transposed()), str(path))
    folder = make_image_folder(tmp_path / "frames", 8)
    common = ["run", "--model", path, "--task", "detect", "--dataset", "images", "--data-dir", folder,
              "--samples", "4", "--preprocess", "letterbox", "--input-size", "64", "--cache-dir", tmp_path / "c",
              "--speed-seconds", "0", "--no-html", "--workers", "0"]
    auto = calib(*common, "--out", tmp_path / "auto", cwd=tmp_path, check=False)
    assert auto.returncode == 2 and "transposed" in auto.stderr and len(auto.stderr.strip().splitlines()) == 1
    named = calib(*common, "--out", tmp_path / "named", "--decoder", "ultralytics", "--decoder-param",
                 "transposed=true", cwd=tmp_path, check=False)
    assert named.returncode == 0, named.stderr
    report = json.loads((tmp_path / "named" / "report.json").read_text())
    assert report["metric"]["fp32"] == 1.0 and report["metric"]["name"].startswith("mAP")
    for bad, says in ((["--decoder-param", "transposed"], "KEY=VALUE"),
                      (["--task", "segment", "--decoder", "ultralytics"], "no decoder")):
        done = calib(*common, "--out", tmp_path / "bad", *bad, cwd=tmp_path, check=False)
        assert done.returncode == 2 and says in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "bad").exists() and not (tmp_path / "auto").exists()
