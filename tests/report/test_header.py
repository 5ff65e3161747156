"""The header names where the figures come from (the model file, the calibration and the
evaluation data as really used, the device, the decode path) and warns where they are
questionable (issue 22)."""

from calib.report.header import chance_warning, data_origin, evaluation_text, note_lines, origin_rows
from calib.report.schema import ReportHeader
from calib.report.sensitivity import render_markdown as sensitivity_markdown


def test_the_evaluation_folder_is_read_from_the_dataset(small_imagenet, tmp_path):
    import shutil

    from calib.data.plan import plan_data
    from calib.data.transforms import get_preset

    other = tmp_path / "other"
    shutil.copytree(small_imagenet, other)
    plan = plan_data("imagenet-val", str(small_imagenet), get_preset("torchvision"), 3, 0, str(other))
    cal, ev = data_origin(plan.calibration), data_origin(plan.evaluation)
    assert cal["folder"] == str(small_imagenet) and ev["folder"] == str(other)
    assert ev["source"] == "imagenet-val" and str(other) in ev["description"]
    r = {"dataset": f"imagenet-val:{small_imagenet}", "evaluation_data": ev, "calibration_data": cal}
    assert str(other) in evaluation_text(r) and str(small_imagenet) not in evaluation_text(r)


def test_every_report_shows_model_file_data_device_and_decode_path():
    r = {"model_file": "/m/resnet50.onnx", "calibration_data": {"source": "s", "folder": "/a", "description": "A"},
         "evaluation_data": {"source": "s", "folder": "/b", "description": "B in /b"}, "device": "cuda:0",
         "decode_path": "nvjpeg+pil-bicubic"}
    assert origin_rows(r) == [("model file", "/m/resnet50.onnx"), ("calibration data", "A (/a)"),
                              ("evaluation data", "B in /b"), ("device", "cuda:0"),
                              ("decode path", "nvjpeg+pil-bicubic")]
    sens = {**r, "model": "m", "calibrator": "minmax", "notes": [], "sensitivity": {
        "rows": [], "flavor": "ort", "measure": "x", "images": 1, "fp32_top1": 1.0, "seconds": 0.1,
        "int8": {"logits_sqnr_db": 30.0, "agreement": 1.0, "top1": 1.0}, "all_float_max_abs_diff": 0.0}}
    md = sensitivity_markdown(sens)
    assert "- 1 image of B in /b" in md
    for line in ("- model file: `/m/resnet50.onnx`", "- evaluation data: `B in /b`", "- device: `cuda:0`",
                 "- decode path: `nvjpeg+pil-bicubic`"):
        assert line in md


def test_fp32_at_chance_level_is_a_warning():
    assert chance_warning(0.0, 500, 1000).startswith("FP32 top-1 is 0.00% on 500 images, no better than chance")
    assert chance_warning(0.8, 500, 1000) is None
    h = ReportHeader(model="m", dataset="d", demo=False, backend="ort", qdq_flavor="ort", notes=["plain"])
    h.warn("w")
    h.warn("w")
    assert h.notes == ["plain", "w"] and h.warnings == ["w"]
    assert note_lines({"notes": h.notes, "warnings": h.warnings}) == ["- note: plain", "- warning: w"]
