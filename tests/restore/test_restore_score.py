"""calib.restore.score: one ranking and one search for every task. The classifier's scorer gives
exactly the figures the ranker computed before scorers (checked against that formula restated
here); the task scorer finds a deliberately broken layer of a YOLO-style detector by the SQNR of
what it hurts (its decoded class scores), and the search meets an mAP budget with that layer in
float, refusing --min-agreement, a classifier's figure, in one line."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from PIL import Image

from calib.calibrators import get_calibrator
from calib.data import Dataset, get_preset
from calib.data.sources import UNLABELED, ImageSource, Sample
from calib.errors import CalibError
from calib.onnx_io import ort_session
from calib.passes import Images, expose, observe_pass
from calib.quantize import quantizable_layers, quantize_model
from calib.restore.ranker import rank_layers
from calib.restore.score import (CLASSIFIER_MEASURE, DECODED_SCORES, TASK_MEASURE, ClassifierScorer, TaskScorer,
                                 scorer_for)
from calib.restore.search import fallback_to_budget
from calib.stats.sqnr import finite_or_none, sqnr, sqnr_rows
from tests.quantize.head_models import SsdHead, YoloHead, build, export

VICTIM = "/cv3.0/cv3.0.1/Conv"   # the class-score convolution of the detector's first level: the only
#                                  reader of its input, so shrinking that input's amax breaks it alone


# ----------------------------------------------------------------------------- classifier: unchanged
def _ranking_before_scorers(model, amax, flavor, x, labels):
    """The ranker's figures as they were computed before scorers: per layer, only that layer
    quantized; logits SQNR, top-1 agreement, top-1, worst image; sorted by (SQNR, agreement, position)."""
    fp32 = ort_session(model, "all").run(None, {"input": x})[0]
    rows = []
    for layer in quantizable_layers(model, flavor):
        q = quantize_model(model, amax, flavor, quantized_layers={layer.id})[0]
        logits = ort_session(q, "all").run(None, {"input": x})[0]
        a, b = fp32.argmax(1), logits.argmax(1)
        rows.append({"layer": layer.id, "op_type": layer.op_type, "position": layer.position,
                     "weighted": layer.weighted, "logits_sqnr_db": finite_or_none(sqnr(fp32, logits)),
                     "agreement": float(np.mean(a == b)), "top1": float(np.mean(b == labels)),
                     "worst_image_sqnr_db": finite_or_none(float(np.min(sqnr_rows(fp32, logits))))})
    rows.sort(key=lambda r: (math.inf if r["logits_sqnr_db"] is None else r["logits_sqnr_db"], r["agreement"],
                             r["position"]))
    return rows


@pytest.mark.parametrize("flavor", ["ort", "tensorrt"])
def test_the_classifier_scorer_gives_the_ranking_of_before_scorers(tiny_classifier, flavor):
    model = onnx.load(str(tiny_classifier))
    x = np.random.default_rng(1).standard_normal((24, 3, 16, 16)).astype(np.float32)
    exposed, names = expose(model)
    amax = {n: float(np.abs(v).max()) for n, v in zip(names, ort_session(exposed, "basic").run(names, {"input": x}))}
    amax["r2"] /= 30   # one broken layer, so the order is not a tie
    labels = np.arange(len(x)) % 7
    images = Images(x, labels, [str(i) for i in range(len(x))])
    default = rank_layers(model, amax, flavor, images, batch_size=8, progress=False, check_images=0)
    explicit = rank_layers(model, amax, flavor, images, batch_size=8, progress=False, check_images=0,
                           scorer=ClassifierScorer())
    expected = _ranking_before_scorers(model, amax, flavor, x, labels)
    for result in (default, explicit):
        d = result.as_dict()
        assert d["rows"] == expected
        assert d["measure"] == CLASSIFIER_MEASURE and "task" not in d
        assert list(d)[:4] == ["measure", "images", "flavor", "fp32_top1"]   # the JSON layout of before
        assert set(d["int8"]) == {"logits_sqnr_db", "agreement", "top1", "worst_image_sqnr_db"}


# ----------------------------------------------------------------------------- a detector
class Frames(ImageSource):
    """Seeded smooth random frames of several sizes, no labels (a detector's folder of images)."""

    def __init__(self, n: int):
        super().__init__([Sample(f"f{i}.png", UNLABELED) for i in range(n)], "frames", f"{n} random frames")

    def open(self, sample: Sample) -> Image.Image:
        i = int(sample.key[1:-4])
        rng = np.random.default_rng(i)
        small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        return Image.fromarray(small).resize((80 + 4 * (i % 5), 60), Image.BILINEAR)


@pytest.fixture(scope="module")
def detector():
    """The YOLO-style detector (one (N, 4 + C, A) output), its frames and its minmax amax."""
    model = export(build(YoloHead))
    data = Dataset.of(Frames(72), get_preset("letterbox", 64))
    cal = get_calibrator("minmax")
    observe_pass(model, data.subset(data.samples[:24]), cal, batch_size=12, workers=0, progress=None)
    amax = {k: r.amax for k, r in cal.compute().items()}
    return model, data.subset(data.samples[24:]), amax


def _broken(model, amax, flavor):
    victim = next(layer for layer in quantizable_layers(model, flavor) if layer.id == VICTIM)
    return dict(amax, **{victim.inputs[0]: amax[victim.inputs[0]] / 100})


def _images(dataset) -> Images:
    from calib.passes import load_images

    return load_images(dataset, 12, 0)


@pytest.mark.parametrize("flavor", ["ort", "tensorrt"])
def test_the_task_ranking_puts_a_broken_layer_of_a_detector_first(detector, flavor):
    model, evaluation, amax = detector
    images = _images(evaluation.subset(evaluation.samples[:16]))
    result = rank_layers(model, _broken(model, amax, flavor), flavor, images, batch_size=8, progress=False,
                         scorer=scorer_for("detect"))
    first, second = result.rows[0], result.rows[1]
    assert result.ranking()[0] == VICTIM
    assert first.sqnr_db < second.sqnr_db - 10
    # It is the class scores the layer ruins: the decoded scores, not the output that mixes them with
    # box pixels, are its lowest SQNR, and every output's SQNR is kept for the report.
    assert first.worst_output == DECODED_SCORES
    assert set(first.outputs_sqnr_db) == {"out", "decoded boxes", DECODED_SCORES}
    assert first.outputs_sqnr_db["out"] > first.sqnr_db + 10
    d = result.as_dict()
    assert d["task"] == "detect" and d["measure"] == TASK_MEASURE and "fp32_top1" not in d
    assert d["int8"]["metric"]["name"] == "mAP@0.5:0.95" and d["int8"]["metric"]["reference"] == "fp32"
    assert "agreement" not in d["rows"][0] and "top1" not in d["int8"]
    assert result.all_float_max_abs_diff < 1e-3 and len(result.rows) == len(quantizable_layers(model, flavor))


def test_the_task_search_meets_an_map_budget_with_the_broken_layer_in_float(detector):
    model, evaluation, amax = detector
    broken = _broken(model, amax, "tensorrt")
    budget = 0.15
    scorer = scorer_for("detect")
    result = fallback_to_budget(model, broken, "tensorrt", evaluation, scorer.budget(max_drop=budget), batch_size=12,
                                workers=0, throughput_seconds=0, progress=False, scorer=scorer)
    s = result.search
    assert s["task"] == "detect" and s["metric"] == "mAP@0.5:0.95" and s["reference"] == "fp32" and s["fp32"] == 1.0
    assert s["int8"]["drop"] > budget                       # the broken layer misses the budget ...
    assert s["fallback"]["drop"] <= budget                  # ... the chosen model meets it on the search subset
    assert abs(s["fallback"]["value"] + s["fallback"]["drop"] - s["fp32"]) < 1e-9
    assert result.ranking[0] == VICTIM and VICTIM in result.float_layers
    assert 0 < len(result.float_layers) < result.layers
    assert not {x.key for x in result.final_dataset.samples} & {x.key for x in result.search_dataset.samples}


def test_a_task_budget_is_max_drop_and_min_agreement_is_refused_in_one_line():
    scorer = scorer_for("detect")
    for kw, words in (({"min_agreement": 0.99}, ["--min-agreement", "detect", "--max-drop", "mAP@0.5:0.95"]),
                      ({"max_drop": 0.01, "min_agreement": 0.99}, ["--min-agreement"]),
                      ({"max_drop": 1.5}, ["--max-drop", "mAP@0.5:0.95", "1.5"])):
        with pytest.raises(CalibError) as err:
            scorer.budget(**kw)
        assert "\n" not in str(err.value) and all(w in str(err.value) for w in words), str(err.value)
    assert scorer.budget() is None and ClassifierScorer().budget() is None   # no budget asked: no search
    budget = scorer.budget(max_drop=0.01)
    assert budget.what == "mAP@0.5:0.95" and budget.min_agreement is None and budget.meets(0.01)
    assert ClassifierScorer().budget(0.01, 0.99).what == "top-1"


def test_scorers_are_named_by_task():
    assert isinstance(scorer_for("classify"), ClassifierScorer)
    for task in ("detect", "segment", "generic"):
        scorer = scorer_for(task)
        assert isinstance(scorer, TaskScorer) and scorer.task == task and scorer.measure == TASK_MEASURE
    assert scorer_for("detect", decoder="ultralytics").metric_params == {"decoder": "ultralytics"}
    with pytest.raises(CalibError, match="pose-ish"):
        scorer_for("pose-ish")
    with pytest.raises(CalibError, match="no metric parameter"):
        scorer_for("classify", labels="x.json")


def test_a_two_output_detector_is_compared_output_by_output_and_decoded():
    """SSD's boxes and scores outputs: each output's SQNR, and the decoded views beside them; a
    generic model has its graph outputs only."""
    model = export(build(SsdHead), outputs=("boxes", "scores"))
    x = np.random.default_rng(0).random((4, 3, 64, 64)).astype(np.float32)
    boxes, scores = ort_session(model, "basic").run(None, {"images": x})
    reference = {"boxes": boxes, "scores": scores}
    noisy = {"boxes": boxes, "scores": scores + 0.01 * np.abs(scores).max()}
    images = Images(x, np.full(4, UNLABELED), list("abcd"))
    row = scorer_for("detect", decoder="boxes-scores").layer_row(
        quantizable_layers(model, "ort")[0], reference, noisy, images)
    assert row.outputs_sqnr_db["boxes"] is None                      # untouched: infinite SQNR
    assert row.worst_output in ("scores", DECODED_SCORES) and row.sqnr_db is not None
    assert set(row.outputs_sqnr_db) == {"boxes", "scores", "decoded boxes", DECODED_SCORES}
    generic = scorer_for("generic").layer_row(quantizable_layers(model, "ort")[0], reference, noisy, images)
    assert set(generic.outputs_sqnr_db) == {"boxes", "scores"} and generic.worst_output == "scores"
