"""`calib run` as a library call (calib.commands.run)."""

import json

from calib.commands.run import run
from calib.session import RunConfig


def test_one_evaluation_image_gives_no_sqnr_interval_and_the_report_says_why(tmp_path, tiny_classifier):
    """A bootstrap of one image is that image again: report.json has the SQNR and no interval
    (null), a note says why, and the markdown prints no interval."""
    config = RunConfig(model=str(tiny_classifier), samples=4, eval_samples=1, cache_dir=str(tmp_path / "caches"),
                       out=str(tmp_path / "out"), workers=0, progress=False, html=False, speed_seconds=0)
    run(config)
    r = json.loads((tmp_path / "out" / "report.json").read_text())
    assert r["eval"]["samples"] == 1 and r["paired"]["n"] == 1
    assert r["logits_sqnr_db"] is not None and r["logits_sqnr_db_ci95"] is None
    assert any(n.startswith("logits SQNR: no 95% interval from one image") for n in r["notes"])
    md = (tmp_path / "out" / "report.md").read_text()
    assert "- logits SQNR INT8 vs FP32:" in md and "95% CI ∞" not in md
    assert "note: logits SQNR: no 95% interval from one image" in md


def test_a_model_that_runs_only_at_batch_1_is_calibrated_and_evaluated_at_batch_1(tmp_path, recwarn):
    """Issue 22: a batch axis declared dynamic that ONNX Runtime runs at batch 1 only (the dynamo
    export of a ViT) was refused; it now runs at batch 1 end to end, its INT8 model too."""
    import onnx

    from tests.models.test_prepare import batch_one_model

    path = batch_one_model(tmp_path / "vitlike.onnx", classes=1000)
    config = RunConfig(model=str(path), samples=4, eval_samples=3, cache_dir=str(tmp_path / "caches"),
                       out=str(tmp_path / "out"), workers=0, progress=False, html=False)
    run(config)
    r = json.loads((tmp_path / "out" / "report.json").read_text())
    assert r["eval"]["samples"] == 3 and r["calibration"]["samples"] == 4 and not r.get("speed")
    sidecar = json.loads(next((tmp_path / "caches").glob("*.json")).read_text())
    assert sidecar["batch_size"] == 1
    int8 = onnx.load(str(tmp_path / "out" / "int8.onnx"))
    assert int8.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    assert sum("runs only at batch 1" in str(w.message) for w in recwarn) == 1
