"""The check before any calibration that a task's metric reads the model's outputs
(calib.evaluate.probe), on the detector and segmenter of tests/commands/labelled_models.py."""

from __future__ import annotations

import onnx
import pytest

from calib.errors import CalibError
from calib.evaluate.probe import check_task_fits
from tests.commands.labelled_models import SIZE, box_detector, colour_segmenter


def test_the_outputs_come_back_when_the_metric_reads_them(tmp_path):
    model = onnx.load(str(colour_segmenter(tmp_path / "segmenter.onnx")))
    outputs = check_task_fits(model, "segment", (SIZE, SIZE))
    assert list(outputs) == ["classes"] and outputs["classes"].shape == (1, 3, SIZE, SIZE)


def test_a_task_that_does_not_fit_the_outputs_is_one_line(tmp_path):
    segmenter = onnx.load(str(colour_segmenter(tmp_path / "segmenter.onnx")))
    with pytest.raises(CalibError, match="cannot tell the detection layout"):
        check_task_fits(segmenter, "detect", (SIZE, SIZE))
    detector = onnx.load(str(box_detector(tmp_path / "detector.onnx")))
    assert set(check_task_fits(detector, "detect", (SIZE, SIZE))) == {"boxes", "scores"}
