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
