"""The HTML reports are complete and self-contained: every section, every embedded image
decodes, nothing is fetched from the network at view time."""

import base64
import io
import json
import re

import pytest
from PIL import Image

from calib.backends.ort import OrtRunner
from calib.cache import CacheStore
from calib.calibration import calibrate
from calib.commands.compare import compare_calibrators as compare
from calib.commands.run import build_report, fallback_report, run_figures as run_html_extras
from calib.data.plan import plan_data
from calib.passes import evaluate
from calib.restore.search import fallback_to_budget
from calib.models import resolve_model
from calib.models import prepared_model
from calib.quantize import quantize_model
from calib.commands.sensitivity import rank_sensitivity as sensitivity
from calib.report.run import render_html as render_run_html, write_run_report
from calib.session import RunConfig, RunSetup

IMG = re.compile(r'<img\b[^>]*\bsrc="([^"]*)"')
EXTERNAL = re.compile(r'\b(?:src|href|action|srcset|poster)\s*=\s*["\']?\s*(?:https?:)?//', re.I)


def check_self_contained(text: str, sections: list[str], min_images: int) -> None:
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    for s in sections:
        assert f'<section id="{s}">' in text, f"section {s} missing"
    assert text.count("<section") == text.count("</section>")
    sources = IMG.findall(text)
    assert len(sources) >= min_images
    for src in sources:
        assert src.startswith("data:image/png;base64,"), src[:40]
        image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1], validate=True)))
        image.load()
        assert image.size[0] > 100 and image.size[1] > 100
    assert not EXTERNAL.search(text)
    assert "http://" not in text and "https://" not in text
    assert "<script" not in text.lower() and "@import" not in text and "url(" not in text


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from tests.conftest import make_classifier

    return make_classifier(tmp_path_factory.mktemp("model") / "tiny.onnx")


def test_compare_report_is_complete(tmp_path, tiny_model):
    cfg = RunConfig(model=str(tiny_model), dataset="demo", samples=8, cache_dir=str(tmp_path / "caches"),
                    batch_size=8, workers=0, progress=False)
    r = compare(cfg, ["entropy", "minmax", "percentile", "mse"], tmp_path / "out", sqnr_images=2)
    text = (tmp_path / "out" / "report.html").read_text()
    n_hist = len(r["histograms"]["tensors"])
    # accuracy bars + one histogram per picked tensor + the SQNR plot
    check_self_contained(text, ["summary", "histograms", "sqnr", "classes", "notes"], 2 + n_hist)
    assert len(IMG.findall(text)) == 2 + n_hist
    for name in r["calibrators"]:
        assert name in text
    assert "(chosen)" in text
    # One image per class on the demo: the class section says why there is no per-class table,
    # and the header does not claim the evaluation images are "other" than the calibration ones.
    assert "No class has 10 or more evaluation images" in text and " other images of " not in text


def test_run_report_with_figures_and_fallback(tmp_path, tiny_model):
    """What commands.run writes: report.html from build_report()'s report, the fallback
    entry, and run_figures()'s figures."""
    model = resolve_model(str(tiny_model))
    prepared = prepared_model(model)
    data = plan_data("demo", None, model.preprocess, 8)
    config = RunConfig(model=str(tiny_model), samples=8, calibrator="entropy", workers=0)
    outcome = calibrate(model, prepared, data.calibration, "entropy", CacheStore(tmp_path / "caches"),
                        batch_size=8, workers=0, progress=False)
    amax = outcome.entry.cache.amax()
    from calib.stats.budget import Budget

    fb = fallback_to_budget(prepared, amax, "ort", data.evaluation, Budget(min_agreement=1.0), batch_size=8, workers=0,
                            throughput_seconds=0.05, progress=False)
    runners = {"fp32": OrtRunner(model.path), "int8": OrtRunner(fb.model.SerializeToString())}
    ev, _ = evaluate(runners, fb.final_dataset, 8, workers=0, progress=None)
    report = build_report(config, RunSetup(model, "ort", data, prepared, tmp_path / "run"), outcome, ev, model.path,
                          tmp_path / "run" / "int8.onnx")
    report.fallback = fallback_report(fb, ev)
    qdq, _ = quantize_model(prepared, amax, "ort")
    extras = run_html_extras(prepared, qdq, outcome, "ort", data.calibration, data.evaluation, "entropy",
                             batch_size=8, workers=0, sqnr_images=2, progress=False)
    json.dumps(report.to_json())  # report.json stays serialisable with the fallback entry
    write_run_report(tmp_path, report, extras, html=True)
    text = (tmp_path / "report.html").read_text()
    check_self_contained(text, ["summary", "fallback", "histograms", "sqnr", "notes"], 1 + len(extras["histograms"]))
    assert "held-out" in text and "throughput" in text
    # Without extras (figures off), the tables alone still make a complete page.
    check_self_contained(render_run_html(report), ["summary", "fallback", "notes"], 0)


def test_sensitivity_report_is_complete(tmp_path, tiny_model):
    cfg = RunConfig(model=str(tiny_model), dataset="demo", samples=8, cache_dir=str(tmp_path / "caches"),
                    batch_size=8, workers=0, progress=False)
    d = sensitivity(cfg, tmp_path / "out", images=3)
    text = (tmp_path / "out" / "report.html").read_text()
    check_self_contained(text, ["sensitivity", "notes"], 1)
    for row in d["sensitivity"]["rows"]:
        assert row["layer"] in text


def test_the_checker_catches_external_urls_and_broken_images():
    ok = '<!DOCTYPE html><html><section id="a"></section></html>'
    check_self_contained(ok, ["a"], 0)
    for bad in ['<img src="https://example.com/x.png">', '<link href="//cdn.example/x.css">',
                '<img src="data:image/png;base64,AAAA">']:
        with pytest.raises(Exception):
            check_self_contained(ok.replace("</section>", bad + "</section>"), ["a"], 1)
