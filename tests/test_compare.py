"""calib compare: every calibrator from one shared pass, caches interchangeable with
calibrate()'s, staged output; and the walkthrough notebook runs top to bottom."""

import json
from pathlib import Path

import onnx
import pytest

import calib.calibration as compare_module
from calib.cache import CacheStore
from calib.calibration import calibrate
from calib.commands.compare import compare_calibrators as compare
from calib.data.plan import plan_data
from calib.errors import CalibError
from calib.models import resolve_model
from calib.models import prepared_model
from calib.fsutil import mark_calib_onnx
from calib.session import RunConfig
from calib.quantize import quantize_model

REPO = Path(__file__).resolve().parents[1]
CALIBRATORS = ["entropy", "minmax", "percentile", "mse"]


def _config(tmp_path, model, **kw):
    return RunConfig(model=str(model), dataset="demo", samples=16, cache_dir=str(tmp_path / "caches"),
                     batch_size=8, workers=0, progress=False, **kw)


def test_compare_calibrates_all_in_one_pass_and_reports_each(tmp_path, tiny_classifier, monkeypatch):
    passes = []
    real_pass = compare_module.observe_pass
    monkeypatch.setattr(compare_module, "observe_pass", lambda *a, **k: passes.append(1) or real_pass(*a, **k))
    cfg = _config(tmp_path, tiny_classifier)
    r = compare(cfg, CALIBRATORS, tmp_path / "a", sqnr_images=3)
    assert len(passes) == 1  # one pass over the calibration images serves all four
    saved = json.loads((tmp_path / "a" / "compare.json").read_text())
    assert saved["calibrators"] == CALIBRATORS and set(saved["results"]) == set(CALIBRATORS)
    for name, x in saved["results"].items():
        for key in ("top1", "top5", "top1_drop", "agreement", "calibration_seconds", "logits_sqnr_db", "cache"):
            assert key in x, (name, key)
        assert x["reused"] is False and x["calibration_seconds"] >= saved["calibration"]["shared_pass_seconds"]
        assert abs(x["top1_drop"] - (saved["fp32"]["top1"] - x["top1"])) < 1e-12
        assert (tmp_path / "a" / f"int8-{name}.onnx").is_file()
    # The detailed sections follow the top of the ranking (highest logits SQNR on the evaluation images).
    assert r["chosen"] == saved["ranking"][0]["name"]
    # The SQNR covers every quantized tensor of every calibrator; histograms show each threshold.
    assert all(len(saved["sqnr"]["db"][n]) == len(saved["sqnr"]["tensors"]) for n in CALIBRATORS)
    assert saved["histograms"]["tensors"] and all(set(h["thresholds"]) == set(CALIBRATORS)
                                                  for h in saved["histograms"]["tensors"])
    md = (tmp_path / "a" / "compare.md").read_text()
    assert all(f"| {n}" in md for n in CALIBRATORS)
    assert (tmp_path / "a" / "report.html").is_file()
    assert not list(tmp_path.glob(".*partial"))

    # The caches are the ones calibrate() writes: calibrate() finds and reuses them; calibrating
    # afresh into another folder gives the same cache and sidecar (scales, ranges, channel
    # means for bias correction); the INT8 models compare built are exactly those they give.
    model = resolve_model(str(tiny_classifier))
    prepared = prepared_model(model)
    data = plan_data("demo", None, model.preprocess, 16)
    for name in CALIBRATORS:
        outcome = calibrate(model, prepared, data.calibration, name, CacheStore(cfg.cache_dir),
                            batch_size=cfg.calib_batch_size, workers=0, progress=False)
        assert outcome.reused and str(outcome.entry.path) == r["results"][name]["cache"]
        own = calibrate(model, prepared, data.calibration, name, CacheStore(tmp_path / "own"),
                        batch_size=cfg.calib_batch_size, workers=0, progress=False)
        assert own.entry.path.read_text() == outcome.entry.path.read_text()
        mine, theirs = outcome.entry.metadata, own.entry.metadata
        for field in ("key", "tensors", "channel_means", "samples", "skipped", "batch_size", "algorithm",
                      "model_inputs", "dataset_description", "trt_version"):
            assert getattr(mine, field) == getattr(theirs, field), field
        assert mine.channel_means
        q, _ = quantize_model(prepared, outcome.entry.cache.amax(), "ort", channel_means=mine.channel_means)
        mark_calib_onnx(q, qdq_flavor="ort", cache=outcome.entry.path.name)  # calib's provenance, as written
        assert onnx.load(str(tmp_path / "a" / f"int8-{name}.onnx")).SerializeToString() == q.SerializeToString()

    # A second comparison reuses every cache: no calibration pass at all.
    passes.clear()
    again = compare(cfg, ["minmax", "entropy"], tmp_path / "b", chosen="minmax", sqnr_images=2,
                    histogram_tensors=3)
    assert passes == [] and again["calibration"]["reused"] == ["minmax", "entropy"]
    assert again["chosen"] == "minmax" and "recollected" in again["histograms"]["note"]
    assert again["results"]["entropy"]["agreement"] == r["results"]["entropy"]["agreement"]


def test_a_failed_compare_leaves_nothing_behind(tmp_path, tiny_classifier, monkeypatch):
    import calib.evaluate.models

    def boom(*a, **k):
        raise CalibError("no evaluation image could be decoded")

    monkeypatch.setattr(calib.evaluate.models, "evaluate", boom)  # what evaluate_models calls
    with pytest.raises(CalibError):
        compare(_config(tmp_path, tiny_classifier), ["minmax"], tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".*partial"))


def test_bad_calibrator_lists_fail_before_any_work(tmp_path, tiny_classifier):
    cfg = _config(tmp_path, tiny_classifier)
    with pytest.raises(CalibError, match="unknown calibrator 'nope'"):
        compare(cfg, ["entropy", "nope"], tmp_path / "out")
    with pytest.raises(CalibError, match="--chosen"):
        compare(cfg, ["entropy"], tmp_path / "out", chosen="mse")
    assert not (tmp_path / "caches").exists() and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_walkthrough_notebook_runs_top_to_bottom(imagenet_sample, tmp_path, monkeypatch):
    """The one EfficientNet-Lite0 test: the notebook on a handful of the shared images."""
    import nbformat
    from nbclient import NotebookClient

    path = REPO / "notebooks" / "calibration_walkthrough.ipynb"
    nb = nbformat.read(str(path), as_version=4)
    # The kernel inherits the environment: outputs go to tmp_path, not into the repository.
    monkeypatch.setenv("CALIB_WALKTHROUGH_OUT", str(tmp_path / "walkthrough"))
    monkeypatch.setenv("CALIB_TEST_IMAGES", str(imagenet_sample))
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3  # the plots were drawn
    out = tmp_path / "walkthrough"
    compared = json.loads((out / "compare" / "compare.json").read_text())
    assert set(compared["results"]) == set(CALIBRATORS)
    assert compared["fp32"]["top1"] > 0.5  # real images, correct preprocessing
    assert json.loads((out / "sensitivity" / "sensitivity.json").read_text())["sensitivity"]["rows"]
    detected = json.loads((out / "detect" / "report.json").read_text())   # section 4: the detector
    assert detected["task"] == "detect" and detected["metric"]["reference"] == "fp32"
    assert any(n["reason"] == "head" for n in detected["placement"]["nodes"])


def test_compare_ranks_by_logits_sqnr_with_intervals(tmp_path, tiny_classifier):
    """The ranking covers every calibrator, is ordered by the logits SQNR on the evaluation images,
    each interval contains its estimate, and the detailed sections follow the top of it."""
    cfg = _config(tmp_path, tiny_classifier)
    r = compare(cfg, ["entropy", "minmax"], tmp_path / "r", sqnr_images=2).to_json()
    ranking = r["ranking"]
    assert [x["name"] for x in ranking] and {x["name"] for x in ranking} == {"entropy", "minmax"}
    sq = [x["logits_sqnr_db"] for x in ranking]
    assert all(v is not None for v in sq) and sq == sorted(sq, reverse=True)
    for x in ranking:
        lo, hi = x["logits_sqnr_db_ci95"]
        assert lo <= x["logits_sqnr_db"] <= hi
        lo, hi = x["agreement_ci95"]
        assert lo <= x["agreement"] <= hi
        assert r["results"][x["name"]]["agreement_ci95"] == x["agreement_ci95"]
    assert r["chosen"] == ranking[0]["name"]
    md = (tmp_path / "r" / "compare.md").read_text()
    assert "significantly better than" in md and "95% CI" in md


def test_one_evaluation_image_gives_no_sqnr_intervals_and_the_report_says_why(tmp_path, tiny_classifier):
    """The ranking keeps each calibrator's logits SQNR, with no bootstrap interval (null) and no
    "significantly better" claim from one image; a note says why."""
    cfg = RunConfig(model=str(tiny_classifier), dataset="demo", samples=4, eval_samples=1,
                    cache_dir=str(tmp_path / "caches"), batch_size=8, workers=0, progress=False)
    compare(cfg, ["minmax", "mse"], tmp_path / "one", sqnr_images=1)
    saved = json.loads((tmp_path / "one" / "compare.json").read_text())
    assert saved["eval"]["samples"] == 1
    for row in saved["ranking"]:
        assert row["logits_sqnr_db"] is not None and row["logits_sqnr_db_ci95"] is None
        assert row["sqnr_better_than"] == []
    assert any(n.startswith("logits SQNR: no 95% interval from one image") for n in saved["notes"])
